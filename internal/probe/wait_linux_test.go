package probe

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lateCtx has a deadline already past but reports it only on the second
// look: the moment between checking a context and computing the time left.
type lateCtx struct {
	context.Context
	looks int
}

func (c *lateCtx) Deadline() (time.Time, bool) { return time.Now().Add(-5 * time.Millisecond), true }

func (c *lateCtx) Err() error {
	c.looks++
	if c.looks > 1 {
		return context.DeadlineExceeded
	}
	return nil
}

// TestWaitPastDeadline: wait on a socket that never becomes readable
// returns when the deadline has passed (a negative poll timeout would
// wait forever: the probes hung once under load).
func TestWaitPastDeadline(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	done := make(chan bool, 1)
	go func() { done <- wait(&lateCtx{Context: context.Background()}, fds[0], unix.POLLIN) }()
	select {
	case ok := <-done:
		if ok {
			t.Error("wait reported an event that never happened")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("wait did not return after its deadline")
	}
}
