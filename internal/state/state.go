// Package state keeps kvmnet's on-disk records of a network: a lock that
// serialises commands on one network, the change journal (the audit
// trail: one JSON line per kernel step, with its outcome, summarised in the
// system log: syslog.go), and the state directory's generation counter. Ownership itself
// lives in the kernel (marks on links and namespaces), so a lost state
// directory never makes kvmnet forget what it owns.
package state

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where state lives unless configured otherwise.
const DefaultDir = "/var/lib/kvmnet"

// Store is the state directory of one network.
type Store struct {
	Dir     string // DefaultDir/<network>
	Network string
	base    string
	lock    *os.File
	journal *os.File
	buf     *bufio.Writer
	// What this command recorded, for the system log (syslog.go).
	command  string
	recorded int
	failed   []sysLine
}

// Open creates (if needed) and opens the state directory of network under base.
func Open(base, network string) (*Store, error) {
	if base == "" {
		base = DefaultDir
	}
	dir := filepath.Join(base, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &Store{Dir: dir, Network: network, base: base}, nil
}

// Lock takes the network's exclusive lock, waiting up to timeout for another
// kvmnet command on the same network to finish.
func (s *Store) Lock(timeout time.Duration) error {
	f, err := os.OpenFile(filepath.Join(s.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			s.lock = f
			return nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return fmt.Errorf("network %q is locked by another kvmnet command (%s)", s.Network, filepath.Join(s.Dir, "lock"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Entry is one journal line.
type Entry struct {
	Time    time.Time `json:"time"`
	Network string    `json:"network"`
	Command string    `json:"command"`
	Op      string    `json:"op"`
	Target  string    `json:"target"`
	Change  string    `json:"change"`
	Error   string    `json:"error,omitempty"`
}

// Record appends e to the journal (journal.jsonl in the state directory).
func (s *Store) Record(e Entry) error {
	if s.journal == nil {
		f, err := os.OpenFile(filepath.Join(s.Dir, "journal.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		s.journal = f
		s.buf = bufio.NewWriterSize(f, 64<<10)
	}
	e.Network = s.Network
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	s.command = e.Command
	s.recorded++
	if e.Error != "" {
		s.failed = append(s.failed, sysLine{sysErr, fmt.Sprintf("%s %s: step failed: %s: %s", e.Command, s.Network, e.Change, e.Error)})
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = s.buf.Write(append(b, '\n'))
	return err
}

// JournalPath is the journal file's path.
func (s *Store) JournalPath() string { return filepath.Join(s.Dir, "journal.jsonl") }

// Close releases the lock and the journal. A store that journaled steps
// says so in the system log (syslog.go); one that held the lock counts one
// more generation (see Generation) before letting go.
func (s *Store) Close() error {
	if s.journal != nil {
		s.buf.Flush()
		s.journal.Close()
		s.journal = nil
		lines := s.failed
		if len(lines) > maxSyslogFailures {
			lines = append(lines[:maxSyslogFailures:maxSyslogFailures], sysLine{sysErr, fmt.Sprintf("%s %s: %d more steps failed (see the journal)",
				s.command, s.Network, len(s.failed)-maxSyslogFailures)})
		}
		syslog(append(lines, sysLine{sysNotice, fmt.Sprintf("%s %s: %d steps journaled, %d failed (%s)",
			s.command, s.Network, s.recorded, len(s.failed), s.JournalPath())}))
	}
	if s.lock != nil {
		bump(s.base)
		unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
		s.lock.Close()
	}
	return nil
}

// Generation returns the change counter of the state directory base: every
// command that has held a network's lock there (and so may have changed its
// network) adds one as it releases the lock. A command that reads the kernel
// before it knows which network it is about to lock (kvmnet up observes while
// the topology loads) compares the generation from before its reads with the
// one once it holds the lock: equal, no kvmnet command can have changed a
// network in between. Missing or unreadable, the generation is 0.
func Generation(base string) uint64 {
	b, err := os.ReadFile(generationPath(base))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func generationPath(base string) string {
	if base == "" {
		base = DefaultDir
	}
	return filepath.Join(base, "generation")
}

// bump adds one to the generation of base, under a lock of its own (the
// networks' locks are separate). It cannot fail where the network's lock
// could be taken, short of a full disk: the file is small and in the same
// directory tree, written in place.
func bump(base string) {
	f, err := os.OpenFile(generationPath(base), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX) != nil {
		return
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	g, _ := strconv.ParseUint(strings.TrimSpace(string(b[:n])), 10, 64)
	out := strconv.AppendUint(nil, g+1, 10)
	if _, err := f.WriteAt(append(out, '\n'), 0); err == nil {
		f.Truncate(int64(len(out) + 1))
	}
}
