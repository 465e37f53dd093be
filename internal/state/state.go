// Package state keeps kvmnet's on-disk records of a network: a lock that
// serialises commands on one network, and the change journal (the audit
// trail: one JSON line per kernel step, with its outcome). Ownership itself
// lives in the kernel (marks on links and namespaces), so a lost state
// directory never makes kvmnet forget what it owns.
package state

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where state lives unless configured otherwise.
const DefaultDir = "/var/lib/kvmnet"

// Store is the state directory of one network.
type Store struct {
	Dir     string // DefaultDir/<network>
	Network string
	lock    *os.File
	journal *os.File
	buf     *bufio.Writer
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
	return &Store{Dir: dir, Network: network}, nil
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
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = s.buf.Write(append(b, '\n'))
	return err
}

// JournalPath is the journal file's path.
func (s *Store) JournalPath() string { return filepath.Join(s.Dir, "journal.jsonl") }

// Close releases the lock and the journal.
func (s *Store) Close() error {
	if s.journal != nil {
		s.buf.Flush()
		s.journal.Close()
	}
	if s.lock != nil {
		unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
		s.lock.Close()
	}
	return nil
}
