package lab

import (
	"fmt"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// hostDevices moves real NICs between the namespace kvmnet runs in (the
// host's root namespace) and a network namespace. It is wired in only with
// the explicit opt-in; the NIC's root-namespace name is kept in its mark so
// that down can return it under that name.
type hostDevices struct{}

func rootNS() (*netns.NS, error) { return netns.Initial() }

func (hostDevices) MoveIn(to *link.Conn, l *model.Link, mark string) error {
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

func (hostDevices) Return(from *link.Conn, l *model.Link) error {
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
	return rc.SetUp(l.Origin, true)
}
