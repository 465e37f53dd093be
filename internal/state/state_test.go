package state

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A store that held its network's lock adds one to the state directory's
// generation when it lets go; one that never locked does not. Concurrent
// releases of different networks' locks count every one.
func TestGeneration(t *testing.T) {
	base := t.TempDir()
	if g := Generation(base); g != 0 {
		t.Fatalf("fresh directory: generation %d, want 0", g)
	}
	s, err := Open(base, "a")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if g := Generation(base); g != 0 {
		t.Fatalf("a store that never locked changed the generation to %d", g)
	}
	var wg sync.WaitGroup
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(base, n)
			if err != nil {
				t.Error(err)
				return
			}
			if err := s.Lock(10 * time.Second); err != nil {
				t.Error(err)
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	if g := Generation(base); g != 8 {
		t.Fatalf("after 8 locked commands: generation %d, want 8", g)
	}
}

// A command that journaled steps says so in the system log: one line per
// failed step (err), then a summary (notice), facility daemon, tag kvmnet;
// a command that journaled nothing sends nothing.
func TestSyslog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("KVMNET_SYSLOG", sock)
	base := t.TempDir()

	s, err := Open(base, "net1")
	if err != nil {
		t.Fatal(err)
	}
	s.Lock(time.Second)
	s.Close() // nothing journaled: nothing said
	s, _ = Open(base, "net1")
	s.Lock(time.Second)
	s.Record(Entry{Command: "up", Op: "create-ns", Target: "vm1", Change: "+ vm1: namespace"})
	s.Record(Entry{Command: "up", Op: "create-link", Target: "vm1/eth0", Change: "+ vm1: link eth0", Error: "file exists"})
	s.Close()

	var got []string
	l.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	for len(got) < 2 {
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("read the log socket: %v (got %q)", err, got)
		}
		got = append(got, string(buf[:n]))
	}
	pid := fmt.Sprintf(" kvmnet[%d]: ", os.Getpid())
	want := []struct{ pri, msg string }{
		{"<27>", "up net1: step failed: + vm1: link eth0: file exists"},
		{"<29>", "up net1: 2 steps journaled, 1 failed (" + filepath.Join(base, "net1", "journal.jsonl") + ")"},
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w.pri) || !strings.HasSuffix(got[i], pid+w.msg) {
			t.Errorf("line %d: %q, want %s<timestamp>%s%s", i, got[i], w.pri, pid, w.msg)
		}
	}
	l.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := l.Read(buf); err == nil {
		t.Errorf("one line too many: %q", buf[:n])
	}
}
