// Package apply executes a plan against the kernel, one step at a time, with
// an undo stack: when a step fails, the steps already done are undone in
// reverse order and the error names the failing step and its cause.
package apply

import (
	"errors"
	"fmt"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/qos"
)

// Executor applies steps for one network. It caches one namespace handle and
// one netlink connection per namespace. Not safe for concurrent use.
type Executor struct {
	// Network is the owning network ID, written into every mark.
	Network string
	// BeforeStep, when set, runs before each step; an error it returns fails
	// the step (tests inject faults with it).
	BeforeStep func(plan.Step) error
	// AfterStep, when set, is told the outcome of each step (the journal).
	AfterStep func(s plan.Step, err error)
	// Devices moves real NICs; nil refuses every move.
	Devices DeviceMover
	// Tables keeps the nftables tables kvmnet wrote per namespace (the state
	// directory), so that undoing the replacement of one can rebuild the old
	// one. nil: a replaced table cannot be rebuilt.
	Tables TableStore

	// replaced holds, per namespace, the tables an OpFirewall of this run
	// replaced (as the store knew them).
	replaced map[string]nft.Table

	writes int
	nss    map[string]*netns.NS
	conns  map[string]*link.Conn
}

// TableStore remembers the last nftables tables kvmnet wrote in each
// namespace.
type TableStore interface {
	Load(ns string) (nft.Table, bool)
	Save(ns string, t nft.Table) error
}

// DeviceMover moves a real NIC between the root namespace and a network
// namespace (see lab: it is only wired in with the explicit opt-in).
type DeviceMover interface {
	MoveIn(to *link.Conn, l *model.Link, mark string) error
	Return(from *link.Conn, l *model.Link) error
}

// ErrDeviceMoveRefused is returned for a move of a real NIC without opt-in.
var ErrDeviceMoveRefused = errors.New("moving a real host NIC needs the explicit opt-in (--move-host-nic)")

// Writes is the number of kernel writes done so far (requests that change
// something, namespace creations and deletions, sysctl writes).
func (e *Executor) Writes() int {
	n := e.writes
	for _, c := range e.conns {
		n += c.Writes
	}
	return n
}

// Close releases cached handles.
func (e *Executor) Close() {
	for _, c := range e.conns {
		e.writes += c.Writes
		c.Close()
	}
	for _, ns := range e.nss {
		ns.Close()
	}
	e.conns, e.nss = nil, nil
}

func (e *Executor) ns(name string) (*netns.NS, error) {
	if e.nss == nil {
		e.nss = map[string]*netns.NS{}
	}
	if ns, ok := e.nss[name]; ok {
		return ns, nil
	}
	ns, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	e.nss[name] = ns
	return ns, nil
}

func (e *Executor) conn(name string) (*link.Conn, error) {
	if e.conns == nil {
		e.conns = map[string]*link.Conn{}
	}
	if c, ok := e.conns[name]; ok {
		return c, nil
	}
	ns, err := e.ns(name)
	if err != nil {
		return nil, err
	}
	c, err := link.Dial(ns)
	if err != nil {
		return nil, err
	}
	e.conns[name] = c
	return c, nil
}

func (e *Executor) forget(name string) {
	if c, ok := e.conns[name]; ok {
		e.writes += c.Writes
		c.Close()
		delete(e.conns, name)
	}
	if ns, ok := e.nss[name]; ok {
		ns.Close()
		delete(e.nss, name)
	}
}

// StepError says which step failed and why; Rollback holds any errors met
// while undoing the steps before it.
type StepError struct {
	Step     plan.Step
	Err      error
	Rollback error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("step %q failed: %v", e.Step.String(), e.Err)
	if e.Rollback != nil {
		msg += fmt.Sprintf("; rollback was incomplete: %v", e.Rollback)
	} else {
		msg += "; everything this run changed was rolled back"
	}
	return msg
}

func (e *StepError) Unwrap() error { return e.Err }

// Apply executes steps in order. On the first failure it undoes, newest
// first, every step it completed, and returns a *StepError. Steps inside a
// namespace this run created are not undone one by one: deleting the
// namespace undoes them all.
func (e *Executor) Apply(steps []plan.Step) error {
	var done []plan.Step
	created := map[string]bool{}
	for _, s := range steps {
		var err error
		if e.BeforeStep != nil {
			err = e.BeforeStep(s)
		}
		if err == nil {
			err = e.run(s)
		}
		if e.AfterStep != nil {
			e.AfterStep(s, err)
		}
		if err != nil {
			return &StepError{Step: s, Err: err, Rollback: e.Undo(done, created)}
		}
		if s.Op == plan.OpCreateNS {
			created[s.NS] = true
		}
		done = append(done, s)
	}
	return nil
}

// Undo reverts done (newest first). Steps confined to namespaces in created
// are covered by deleting those namespaces.
func (e *Executor) Undo(done []plan.Step, created map[string]bool) error {
	var errs []error
	for i := len(done) - 1; i >= 0; i-- {
		s := done[i]
		if s.Op != plan.OpCreateNS && created[s.NS] && (s.Link == nil || s.Link.Kind != model.KindVeth || created[s.Link.Peer.NS]) {
			continue
		}
		inv, err := s.Inverse()
		if s.Op == plan.OpFirewall && s.OldNFT != "" {
			// Rebuild the replaced tables from the store, if it holds
			// exactly what was there.
			old, ok := e.replaced[s.NS]
			if ok && nft.Canonical(old) == s.OldNFT {
				inv, err = s, nil
				inv.Masq, inv.Firewall, inv.Guards, inv.OldNFT = old.Masquerade, old.Firewall, old.Guards, ""
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("undo %q: %w", s.String(), err))
			continue
		}
		err = e.run(inv)
		if e.AfterStep != nil {
			e.AfterStep(inv, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("undo %q: %w", s.String(), err))
		}
	}
	return errors.Join(errs...)
}

func (e *Executor) run(s plan.Step) error {
	mark := model.Mark(e.Network, s.Link)
	switch s.Op {
	case plan.OpCreateNS:
		ns, err := netns.Create(s.NS)
		if err != nil {
			return err
		}
		e.writes++
		if e.nss == nil {
			e.nss = map[string]*netns.NS{}
		}
		e.nss[s.NS] = ns
		c, err := e.conn(s.NS)
		if err != nil {
			return err
		}
		return c.MarkNamespace(model.NSMark(e.Network, nil))
	case plan.OpDeleteNS:
		e.forget(s.NS)
		e.writes++
		return netns.Delete(s.NS)
	case plan.OpFirewall:
		ns, err := e.ns(s.NS)
		if err != nil {
			return err
		}
		e.writes++
		t := nft.Table{Masquerade: s.Masq, Firewall: s.Firewall, Guards: s.Guards}
		if e.Tables != nil {
			if old, ok := e.Tables.Load(s.NS); ok {
				if e.replaced == nil {
					e.replaced = map[string]nft.Table{}
				}
				if _, seen := e.replaced[s.NS]; !seen {
					e.replaced[s.NS] = old
				}
			}
		}
		if err := nft.Apply(ns, t); err != nil {
			return err
		}
		if e.Tables != nil {
			return e.Tables.Save(s.NS, t)
		}
		return nil
	case plan.OpQoS:
		ns, err := e.ns(s.NS)
		if err != nil {
			return err
		}
		e.writes++
		return qos.Apply(ns, s.Link.Name, s.QoS)
	case plan.OpMirror:
		ns, err := e.ns(s.NS)
		if err != nil {
			return err
		}
		e.writes++
		return qos.ApplyMirror(ns, s.Link.Name, s.Mirror)
	case plan.OpMark:
		c, err := e.conn(s.NS)
		if err != nil {
			return err
		}
		return c.MarkNamespace(model.NSMark(e.Network, s.Marks))
	case plan.OpSysctl:
		ns, err := e.ns(s.NS)
		if err != nil {
			return err
		}
		e.writes++
		if err := netns.WriteSysctl(ns, s.Key, s.Value); err != nil {
			return fmt.Errorf("set sysctl %s=%s in namespace %q: %w", s.Key, s.Value, s.NS, err)
		}
		return nil
	}

	c, err := e.conn(s.NS)
	if err != nil {
		return err
	}
	switch s.Op {
	case plan.OpCreateLink:
		switch s.Link.Kind {
		case model.KindBridge:
			return c.CreateBridge(s.Link, mark)
		case model.KindVeth:
			if s.Peer == nil {
				return fmt.Errorf("create veth %q: the plan has no peer for it", s.Link.Name)
			}
			pc, err := e.conn(s.Link.Peer.NS)
			if err != nil {
				return err
			}
			if err := c.CreateVeth(s.Link, s.Peer, pc, mark, model.Mark(e.Network, s.Peer)); err != nil {
				return err
			}
			if s.Peer.Master != "" {
				return pc.SetMaster(s.Peer.Name, s.Peer.Master)
			}
			return nil
		case model.KindVLAN:
			return c.CreateVLAN(s.Link, mark)
		}
		return fmt.Errorf("create %s %q: kvmnet cannot create this kind of link", s.Link.Kind, s.Link.Name)
	case plan.OpDeleteLink:
		return c.DeleteLink(s.Link.Name)
	case plan.OpMoveDevice:
		if e.Devices == nil {
			return ErrDeviceMoveRefused
		}
		return e.Devices.MoveIn(c, s.Link, mark)
	case plan.OpReturnDevice:
		if e.Devices == nil {
			return ErrDeviceMoveRefused
		}
		return e.Devices.Return(c, s.Link)
	case plan.OpSetLink:
		return setLink(c, s.Link.Name, s.Set)
	case plan.OpPortVLANs:
		return c.SetPortVLANs(s.Link.Name, s.VLANs)
	case plan.OpAddAddr:
		return c.AddAddr(s.Link.Name, s.Addr)
	case plan.OpDelAddr:
		return c.DelAddr(s.Link.Name, s.Addr)
	case plan.OpAddRoute:
		return c.ReplaceRoute(s.Route)
	case plan.OpDelRoute:
		return c.DelRoute(s.Route)
	}
	return fmt.Errorf("unknown step %q", s.Op)
}

func setLink(c *link.Conn, name string, a *plan.LinkAttrs) error {
	if a.Up != nil && !*a.Up {
		if err := c.SetUp(name, false); err != nil {
			return err
		}
	}
	if a.Master != nil {
		if err := c.SetMaster(name, *a.Master); err != nil {
			return err
		}
	}
	if a.MTU != nil {
		if err := c.SetMTU(name, *a.MTU); err != nil {
			return err
		}
	}
	if a.MAC != nil {
		if err := c.SetMAC(name, *a.MAC); err != nil {
			return err
		}
	}
	if a.STP != nil || a.Ageing != nil || a.VLANFiltering != nil || a.DefaultPVID != nil {
		ch := link.BridgeChange{STP: a.STP, Ageing: a.Ageing, VLANFiltering: a.VLANFiltering, DefaultPVID: a.DefaultPVID}
		if err := c.SetBridgeOpts(name, ch); err != nil {
			return err
		}
	}
	if a.Up != nil && *a.Up {
		return c.SetUp(name, true)
	}
	return nil
}
