package supervise

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/vm"
)

func TestConfigWrittenOnce(t *testing.T) {
	dir := t.TempDir()
	c := &Config{Network: "n1"}
	if wrote, err := WriteConfig(dir, c); err != nil || !wrote {
		t.Fatalf("first write: %v %v", wrote, err)
	}
	fi, _ := os.Stat(filepath.Join(dir, ConfigFile))
	if wrote, err := WriteConfig(dir, c); err != nil || wrote {
		t.Fatalf("second write of the same configuration: %v %v", wrote, err)
	}
	fi2, _ := os.Stat(filepath.Join(dir, ConfigFile))
	if !fi.ModTime().Equal(fi2.ModTime()) || !ConfigUnchanged(dir, c) {
		t.Fatal("the configuration file was rewritten")
	}
	if ConfigUnchanged(dir, &Config{Network: "n2"}) || c.Hash() == (&Config{Network: "n2"}).Hash() {
		t.Fatal("a different configuration reads as unchanged")
	}
	back, err := ReadConfig(dir)
	if err != nil || back.Network != "n1" {
		t.Fatalf("ReadConfig: %+v %v", back, err)
	}
}

func TestReadStates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if st := Read(dir); st.State != StateNotRunning {
		t.Fatalf("no pidfile: %+v", st)
	}
	// A live process that is not a supervisor of n1 (this test) is no
	// supervisor: a reused pid does not count.
	if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	if st := Read(dir); st.State != StateDead {
		t.Fatalf("foreign pid: %+v", st)
	}
	if Alive(dir, os.Getpid()) {
		t.Fatal("this test reads as a supervisor")
	}
	if got := Args(dir); strings.Join(got, " ") != "supervise --network n1 --state-dir "+filepath.Dir(dir) {
		t.Fatalf("Args = %v", got)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunWatchesVMs runs the supervisor in-process (no DHCP servers, so no
// namespace is needed) over two VM state directories: one never started,
// one whose QEMU is gone although nobody stopped it. The second is
// reported crashed (health and log) and left alone; at the end the
// pidfile is removed.
func TestRunWatchesVMs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n1")
	for _, name := range []string{"idle", "dead"} {
		if err := os.MkdirAll(filepath.Join(dir, VMsDir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	state := `{"name": "dead", "pid": 2147483646, "started": "2026-01-01T00:00:00Z", "accel": "tcg", "args": [], "stop_requested": false}`
	if err := os.WriteFile(filepath.Join(dir, VMsDir, "dead", vm.StateFile), []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteConfig(dir, &Config{Network: "n1", Interval: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, dir, slog.New(slog.NewTextHandler(&logs, nil))) }()
	deadline := time.Now().Add(5 * time.Second)
	var st Status
	for {
		st = Read(dir)
		if st.Health != nil && len(st.Health.VMs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no health report with two VMs: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	h := st.Health
	if h.PID != os.Getpid() || h.Network != "n1" || h.VMs[0].Name != "dead" || h.VMs[0].State != vm.StateCrashed || h.VMs[1].State != vm.StateStopped {
		t.Fatalf("health: %+v", h)
	}
	if len(h.Events) != 1 || h.Events[0].VM != "dead" || h.Events[0].State != vm.StateCrashed {
		t.Fatalf("events: %+v", h.Events)
	}
	time.Sleep(100 * time.Millisecond) // several more rounds: the crash is reported once
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "vm crashed; not restarting it"); n != 1 {
		t.Fatalf("the crash was logged %d times:\n%s", n, logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, PidFile)); !os.IsNotExist(err) {
		t.Fatalf("pidfile after the end: %v", err)
	}
}
