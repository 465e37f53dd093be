package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// hostDevices moves real NICs between the namespace kvmnet runs in (the
// host's root namespace) and a network namespace. It is wired in only with
// the explicit opt-in. The NIC's root-namespace name is kept in its mark, and
// its addresses and routes (which the kernel flushes on a move) in the
// network's state directory, so that down returns it as it was.
type hostDevices struct {
	dir string // <state dir>/<network>/devices
}

func (d hostDevices) record(origin string) string { return filepath.Join(d.dir, origin+".json") }

func rootNS() (*netns.NS, error) { return netns.Initial() }

func (d hostDevices) MoveIn(to *link.Conn, l *model.Link, mark string) error {
	root, err := rootNS()
	if err != nil {
		return err
	}
	defer root.Close()
	rc, err := link.Dial(root)
	if err != nil {
		return err
	}
	defer rc.Close()
	alias, err := rc.Alias(l.Origin)
	if err != nil {
		return fmt.Errorf("host NIC %q: %w", l.Origin, err)
	}
	if _, owned := model.ParseMark(alias); owned {
		return fmt.Errorf("host NIC %q is already marked by kvmnet (%q)", l.Origin, alias)
	}
	cfg, err := rc.Snapshot(l.Origin)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(d.record(l.Origin), b, 0o644); err != nil {
		return fmt.Errorf("save the configuration of host NIC %q: %w", l.Origin, err)
	}
	if err := rc.SetUp(l.Origin, false); err != nil {
		return err
	}
	if err := rc.MoveTo(l.Origin, to.NS.Fd()); err != nil {
		return err
	}
	if l.Name != l.Origin {
		if err := to.Rename(l.Origin, l.Name); err != nil {
			return err
		}
	}
	return to.SetAlias(l.Name, mark)
}

func (d hostDevices) Return(from *link.Conn, l *model.Link) error {
	root, err := rootNS()
	if err != nil {
		return err
	}
	defer root.Close()
	if err := from.SetUp(l.Name, false); err != nil {
		return err
	}
	if err := from.SetAlias(l.Name, ""); err != nil {
		return err
	}
	if l.Origin != "" && l.Origin != l.Name {
		if err := from.Rename(l.Name, l.Origin); err != nil {
			return err
		}
	}
	if err := from.MoveTo(l.Origin, root.Fd()); err != nil {
		return err
	}
	rc, err := link.Dial(root)
	if err != nil {
		return err
	}
	defer rc.Close()
	// Put back what it had before the move; without a record (state
	// directory lost), at least bring it up.
	b, err := os.ReadFile(d.record(l.Origin))
	if errors.Is(err, os.ErrNotExist) {
		return rc.SetUp(l.Origin, true)
	}
	var cfg link.DeviceConfig
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("read the saved configuration of host NIC %q: %w", l.Origin, err), rc.SetUp(l.Origin, true))
	}
	if err := rc.Restore(l.Origin, cfg); err != nil {
		return fmt.Errorf("restore host NIC %q: %w", l.Origin, err)
	}
	return os.Remove(d.record(l.Origin))
}
