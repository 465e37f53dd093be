package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/qos"
	"github.com/kvmnet/kvmnet/internal/state"
	"github.com/kvmnet/kvmnet/topology"
)

// Fault is a deliberate departure from the topology, injected at runtime
// (`kvmnet link NODE/IFACE down`). `status` reports it as deliberate drift;
// the next `up` repairs it and forgets it.
type Fault struct {
	Kind   string    `json:"kind"`   // "link"
	Target string    `json:"target"` // namespace/interface, as in the file
	Detail string    `json:"detail"` // "down"
	Time   time.Time `json:"time"`
}

func faultsPath(store *state.Store) string { return filepath.Join(store.Dir, "faults.json") }

// Faults returns the faults injected into network t since its last up.
func Faults(t *topology.Topology, opts ...Option) ([]Fault, error) {
	o := build(opts)
	store, err := state.Open(o.stateDir, t.ID())
	if err != nil {
		return nil, err
	}
	defer store.Close()
	return readFaults(store)
}

func readFaults(store *state.Store) ([]Fault, error) {
	b, err := os.ReadFile(faultsPath(store))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Fault
	return out, json.Unmarshal(b, &out)
}

// target resolves "ns/ifname" to an open namespace and a connection to it,
// checking that the interface is kvmnet's own in network t.
func target(t *topology.Topology, target string) (*netns.NS, *link.Conn, string, error) {
	nsName, ifname, ok := strings.Cut(target, "/")
	if !ok || t.Namespace(nsName) == nil {
		return nil, nil, "", fmt.Errorf("%q: name an interface as NAMESPACE/INTERFACE of network %s", target, t.ID())
	}
	ns, err := netns.Open(t.NSName(nsName))
	if err != nil {
		return nil, nil, "", err
	}
	c, err := link.Dial(ns)
	if err != nil {
		ns.Close()
		return nil, nil, "", err
	}
	fail := func(err error) (*netns.NS, *link.Conn, string, error) {
		c.Close()
		ns.Close()
		return nil, nil, "", err
	}
	obs, err := c.Observe()
	if err != nil {
		return fail(err)
	}
	l := obs.Links[ifname]
	switch {
	case obs.Owner != t.ID():
		return fail(fmt.Errorf("namespace %q is not part of network %s", ns.Name, t.ID()))
	case ifname == "lo" || (l != nil && l.Owner != t.ID()):
		return fail(fmt.Errorf("interface %q in namespace %q was not created by kvmnet; refusing to touch it", ifname, ns.Name))
	case l == nil:
		return fail(fmt.Errorf("no interface %q in namespace %q", ifname, ns.Name))
	}
	return ns, c, ifname, nil
}

// SetQoS shapes interface target ("vm1/eth0") of network t with q at
// runtime, without changing the file, and records it as a deliberate fault;
// a nil q restores the declared shaping and forgets the fault. status (which
// reads the kernel) shows it as drift; the next up restores the declared
// shaping.
func SetQoS(ctx context.Context, t *topology.Topology, tgt string, q *model.QoS, opts ...Option) error {
	o := build(opts)
	store, err := state.Open(o.stateDir, t.ID())
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Lock(30 * time.Second); err != nil {
		return err
	}
	ns, c, ifname, err := target(t, tgt)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer c.Close()
	apply := q
	if q == nil {
		if dn := model.Desired(t).Namespaces[ns.Name]; dn != nil && dn.Links[ifname] != nil {
			apply = dn.Links[ifname].QoS
		}
	}
	if err := qos.Apply(ns, ifname, apply); err != nil {
		return err
	}
	_ = store.Record(stateEntry("qos", tgt, "set "+apply.String()))
	faults, err := readFaults(store)
	if err != nil {
		return err
	}
	kept := faults[:0]
	for _, f := range faults {
		if !(f.Kind == "qos" && f.Target == tgt) {
			kept = append(kept, f)
		}
	}
	if q != nil {
		kept = append(kept, Fault{Kind: "qos", Target: tgt, Detail: q.String(), Time: time.Now().UTC()})
	}
	return writeFaults(store, kept)
}

// SetLinkState takes interface target ("vm1/eth0", namespace as in the
// file) of network t down or up, without changing the file, and records it
// as a deliberate fault. Only interfaces kvmnet owns can be touched.
func SetLinkState(ctx context.Context, t *topology.Topology, target string, up bool, opts ...Option) error {
	o := build(opts)
	nsName, ifname, ok := strings.Cut(target, "/")
	if !ok || t.Namespace(nsName) == nil {
		return fmt.Errorf("%q: name an interface as NAMESPACE/INTERFACE of network %s", target, t.ID())
	}
	store, err := state.Open(o.stateDir, t.ID())
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Lock(30 * time.Second); err != nil {
		return err
	}
	ns, err := netns.Open(t.NSName(nsName))
	if err != nil {
		return err
	}
	defer ns.Close()
	c, err := link.Dial(ns)
	if err != nil {
		return err
	}
	defer c.Close()
	obs, err := c.Observe()
	if err != nil {
		return err
	}
	l := obs.Links[ifname]
	switch {
	case obs.Owner != t.ID():
		return fmt.Errorf("namespace %q is not part of network %s", ns.Name, t.ID())
	case ifname == "lo" || (l != nil && l.Owner != t.ID()):
		return fmt.Errorf("interface %q in namespace %q was not created by kvmnet; refusing to touch it", ifname, ns.Name)
	case l == nil:
		return fmt.Errorf("no interface %q in namespace %q", ifname, ns.Name)
	}
	if err := c.SetUp(ifname, up); err != nil {
		return err
	}
	state := map[bool]string{true: "up", false: "down"}[up]
	_ = store.Record(stateEntry("link", target, "set "+state))
	faults, err := readFaults(store)
	if err != nil {
		return err
	}
	kept := faults[:0]
	for _, f := range faults {
		if !(f.Kind == "link" && f.Target == target) {
			kept = append(kept, f)
		}
	}
	if !up {
		kept = append(kept, Fault{Kind: "link", Target: target, Detail: "down", Time: time.Now().UTC()})
	}
	return writeFaults(store, kept)
}

func writeFaults(store *state.Store, faults []Fault) error {
	if len(faults) == 0 {
		err := os.Remove(faultsPath(store))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	b, err := json.MarshalIndent(faults, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(faultsPath(store), b, 0o644)
}

func stateEntry(op, target, change string) state.Entry {
	return state.Entry{Command: "fault", Op: op, Target: target, Change: change}
}
