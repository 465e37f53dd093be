package qos

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

var (
	rootHandle  = netlink.MakeHandle(RootMajor, 0)
	capHandle   = netlink.MakeHandle(RootMajor, 1)    // the interface's cap: rate = ceil = Ceil
	classHandle = netlink.MakeHandle(RootMajor, 0x10) // the default class: Rate, borrowing up to Ceil
	leafHandle  = netlink.MakeHandle(LeafMajor, 0)
	ingressQ    = netlink.MakeHandle(0xffff, 0)
)

func handle(ns *netns.NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	return h, nil
}

func linkByName(h *netlink.Handle, ns *netns.NS, ifname string) (netlink.Link, error) {
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %q in namespace %q: %w", ifname, ns.Name, err)
	}
	return l, nil
}

// Apply makes the egress shaping kvmnet installs on ifname in ns equal to
// q; nil removes it. It writes nothing when the kernel already has it
// (compared after Normalize), changes the class and netem in place when
// only their values change, and refuses (ErrForeign) to replace a root
// qdisc someone else installed. A qdisc kind the kernel lacks is a
// *kernelfeat.MissingError ("kernel lacks the netem qdisc
// (CONFIG_NET_SCH_NETEM)"), and what the call had installed is removed.
func Apply(ns *netns.NS, ifname string, q *model.QoS) error {
	return onLink(ns, ifname, "qos", func(h *netlink.Handle, l netlink.Link) error {
		return apply(h, l, Normalize(q))
	})
}

// onLink runs fn with a netlink handle bound to ns and the link ifname
// there; fn's error is prefixed with what and where.
func onLink(ns *netns.NS, ifname, what string, fn func(h *netlink.Handle, l netlink.Link) error) error {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := linkByName(h, ns, ifname)
	if err != nil {
		return err
	}
	if err := fn(h, l); err != nil {
		return fmt.Errorf("%s on %q in namespace %q: %w", what, ifname, ns.Name, err)
	}
	return nil
}

// Observe returns the shaping kvmnet installed on ifname's egress in ns,
// nil when it installed none (whatever else is there).
func Observe(ns *netns.NS, ifname string) (q *model.QoS, err error) {
	err = onLink(ns, ifname, "qos", func(h *netlink.Handle, l netlink.Link) error {
		st, err := read(h, l)
		if err == nil {
			q = st.qos
		}
		return err
	})
	return q, err
}

// state is what a link's egress has.
type state struct {
	root    netlink.Qdisc        // the root qdisc, kvmnet's or not (nil: none)
	ours    bool                 // root is kvmnet's
	leaf    bool                 // kvmnet's netem leaf under the htb class
	classes [2]*netlink.HtbClass // kvmnet's cap and default classes
	qos     *model.QoS
	foreign string // description of someone else's root qdisc
}

func read(h *netlink.Handle, l netlink.Link) (*state, error) {
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	st := &state{}
	var leaf *netlink.Netem
	for _, q := range qs {
		a := q.Attrs()
		switch {
		case a.Parent == netlink.HANDLE_ROOT:
			st.root = q
		case a.Parent == classHandle && a.Handle == leafHandle:
			if n, ok := q.(*netlink.Netem); ok {
				leaf = n
			}
		}
	}
	if st.root == nil {
		return st, nil
	}
	a := st.root.Attrs()
	if a.Handle != rootHandle {
		if a.Handle>>16 != 0 { // handle 0: is the kernel's default qdisc
			st.foreign = fmt.Sprintf("%s qdisc with handle %x:", st.root.Type(), a.Handle>>16)
		}
		return st, nil
	}
	switch r := st.root.(type) {
	case *netlink.Htb:
		st.ours = true
		cs, err := h.ClassList(l, rootHandle)
		if err != nil {
			return nil, fmt.Errorf("list classes: %w", err)
		}
		st.qos = &model.QoS{}
		var capc, leafc *netlink.HtbClass
		for _, c := range cs {
			if hc, ok := c.(*netlink.HtbClass); ok {
				switch hc.Attrs().Handle {
				case capHandle:
					capc = hc
				case classHandle:
					leafc = hc
				}
			}
		}
		if leafc != nil {
			st.qos = &model.QoS{Rate: leafc.Rate * 8, Ceil: leafc.Ceil * 8, Burst: ticksBurst(leafc.Buffer, leafc.Rate)}
			st.classes = [2]*netlink.HtbClass{capc, leafc}
		}
		if capc == nil || leafc == nil || capc.Rate != leafc.Ceil || capc.Ceil != leafc.Ceil || !sameParent(capc.Attrs().Parent, rootHandle) || leafc.Attrs().Parent != capHandle {
			// Not the hierarchy Apply builds (edited by hand): report a
			// burst of 0, which no wanted QoS has, so it is rewritten.
			st.qos.Burst = 0
		}
		if leaf != nil {
			st.leaf = true
			st.qos.Netem = netemOf(leaf)
		}
	case *netlink.Netem:
		st.ours = true
		st.qos = &model.QoS{Netem: netemOf(r)}
	default:
		st.foreign = fmt.Sprintf("%s qdisc with kvmnet's handle %x:", st.root.Type(), RootMajor)
	}
	return st, nil
}

func netemOf(n *netlink.Netem) *model.Netem {
	return &model.Netem{
		DelayUS: ticksUS(n.Latency), JitterUS: ticksUS(n.Jitter),
		LossPct: u32Pct(n.Loss), DuplicatePct: u32Pct(n.Duplicate),
		ReorderPct: u32Pct(n.ReorderProb), CorruptPct: u32Pct(n.CorruptProb),
	}
}

func apply(h *netlink.Handle, l netlink.Link, want *model.QoS) (err error) {
	st, err := read(h, l)
	if err != nil {
		return err
	}
	if Equal(st.qos, want) && (want == nil || st.ours) {
		return nil
	}
	if st.foreign != "" {
		if want == nil {
			return nil // nothing of kvmnet's to remove
		}
		return fmt.Errorf("the interface has a root %s: %w", st.foreign, ErrForeign)
	}
	idx := l.Attrs().Index
	delRoot := func() error {
		if err := h.QdiscDel(st.root); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("delete root qdisc: %w", err)
		}
		return nil
	}
	if want == nil {
		if st.ours {
			return delRoot()
		}
		return nil
	}
	created := false
	defer func() {
		// A failure after this call installed a new root: take it away,
		// so the interface is as it was (unshaped) rather than half-built.
		if err != nil && created {
			if derr := h.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: rootHandle, Parent: netlink.HANDLE_ROOT}}); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", derr))
			}
		}
	}()
	if want.Rate == 0 { // netem alone, at the root
		if _, isHtb := st.root.(*netlink.Htb); st.ours && isHtb {
			if err := delRoot(); err != nil {
				return err
			}
		}
		n := netem(idx, rootHandle, netlink.HANDLE_ROOT, want)
		if err := kernelfeat.Check(kernelfeat.Netem, h.QdiscReplace(n)); err != nil {
			return fmt.Errorf("netem root qdisc: %w", err)
		}
		return nil
	}
	if _, isHtb := st.root.(*netlink.Htb); !st.ours || !isHtb {
		if st.ours {
			if err := delRoot(); err != nil {
				return err
			}
		}
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Handle: rootHandle, Parent: netlink.HANDLE_ROOT})
		htb.Defcls = classHandle & 0xffff
		if err := kernelfeat.Check(kernelfeat.Qdisc("htb"), h.QdiscAdd(htb)); err != nil {
			return fmt.Errorf("htb root qdisc: %w", err)
		}
		created = true
	}
	rate, ceil := want.Rate/8, want.Ceil/8
	// Two classes: the cap 6b76:1 (rate = ceil = Ceil) and under it the
	// default class 6b76:10 with Rate, borrowing from the cap up to Ceil.
	// (A class directly under the root cannot borrow: its Ceil would be
	// ignored.) Each is written only when it differs.
	for i, c := range []*netlink.HtbClass{
		{ClassAttrs: netlink.ClassAttrs{LinkIndex: idx, Handle: capHandle, Parent: rootHandle},
			Rate: ceil, Ceil: ceil, Buffer: burstTicks(want.Burst, ceil), Cbuffer: burstTicks(want.Burst, ceil)},
		{ClassAttrs: netlink.ClassAttrs{LinkIndex: idx, Handle: classHandle, Parent: capHandle},
			Rate: rate, Ceil: ceil, Buffer: burstTicks(want.Burst, rate), Cbuffer: burstTicks(want.Burst, ceil)},
	} {
		// The quantum only sets how much a class dequeues at a time; set
		// it, so the kernel does not warn that rate/r2q is out of range.
		c.Quantum = uint32(min(max(c.Rate/10, 1600), 200000))
		if old := st.classes[i]; old != nil && sameParent(old.Attrs().Parent, c.Parent) && old.Rate == c.Rate && old.Ceil == c.Ceil &&
			old.Buffer == c.Buffer && old.Cbuffer == c.Cbuffer { // (the quantum follows the rate; an inner class reports another)
			continue
		}
		if err := h.ClassReplace(c); err != nil {
			return fmt.Errorf("htb class %x:%x: %w", RootMajor, c.Handle&0xffff, err)
		}
	}
	switch {
	case want.Netem != nil:
		n := netem(idx, leafHandle, classHandle, want)
		if err := kernelfeat.Check(kernelfeat.Netem, h.QdiscReplace(n)); err != nil {
			return fmt.Errorf("netem under the htb class: %w", err)
		}
	case st.leaf:
		if err := h.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: leafHandle, Parent: classHandle}}); err != nil {
			return fmt.Errorf("delete netem: %w", err)
		}
	}
	return nil
}

// sameParent: the kernel reports a top-level class's parent as the root
// (ffff:ffff), not as the qdisc's handle it was created with.
func sameParent(have, want uint32) bool {
	return have == want || (want == rootHandle && have == netlink.HANDLE_ROOT)
}

func netem(idx int, hdl, parent uint32, q *model.QoS) *netlink.Netem {
	n := q.Netem
	limit := uint32(1000)
	if q.Rate > 0 && n.DelayUS > 0 {
		// Room for two delays' worth of full-size packets at the rate.
		limit = max(limit, uint32(min(q.Ceil/8*uint64(n.DelayUS)/1e6/1500*2, 1<<20)))
	}
	out := &netlink.Netem{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: hdl, Parent: parent},
		Latency:    usTicks(n.DelayUS), Jitter: usTicks(n.JitterUS), Limit: limit,
		Loss: pctU32(n.LossPct), Duplicate: pctU32(n.DuplicatePct),
		ReorderProb: pctU32(n.ReorderPct), CorruptProb: pctU32(n.CorruptPct),
	}
	if out.ReorderProb > 0 {
		out.Gap = 1 // as tc does: without a gap netem never reorders
	}
	return out
}

// ---- ingress ---------------------------------------------------------------

// ApplyIngress shapes what arrives on ifname in ns: it redirects ifname's
// ingress to a kvmnet-marked ifb (IfbName(ifname), alias AliasPrefix+ifname)
// in the same namespace and applies q to the ifb's egress (see Apply). nil
// removes the filter, the ifb and the ingress qdisc if kvmnet added it.
// Use it where the peer's egress cannot be shaped instead (a tap).
func ApplyIngress(ns *netns.NS, ifname string, q *model.QoS) (err error) {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := linkByName(h, ns, ifname)
	if err != nil {
		return err
	}
	wrap := func(err error) error {
		if err == nil {
			return nil
		}
		return fmt.Errorf("ingress qos on %q in namespace %q: %w", ifname, ns.Name, err)
	}
	want := Normalize(q)
	in, err := readIngress(h, l)
	if err != nil {
		return wrap(err)
	}
	if want == nil {
		return wrap(removeIngress(h, l, in))
	}
	if in.foreignIfb {
		return wrap(fmt.Errorf("a link named %q exists: %w", IfbName(ifname), ErrForeign))
	}
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
				}
			}
		}
	}()
	idx := l.Attrs().Index
	createdQdisc := in.createdQdisc
	if !in.hasQdisc {
		ing := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: ingressQ, Parent: netlink.HANDLE_INGRESS}}
		if err := kernelfeat.Check(kernelfeat.Qdisc("ingress"), h.QdiscAdd(ing)); err != nil {
			return wrap(fmt.Errorf("ingress qdisc: %w", err))
		}
		createdQdisc = true
		undo = append(undo, func() error { return h.QdiscDel(ing) })
	}
	ifb := in.ifb
	alias := fmt.Sprintf("%s%s qdisc=%s", AliasPrefix, ifname, map[bool]string{true: "kvmnet", false: "other"}[createdQdisc])
	if ifb == nil {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.TxQLen = IfbName(ifname), l.Attrs().MTU, 1000
		nl := &netlink.Ifb{LinkAttrs: la}
		if err := kernelfeat.Check(kernelfeat.LinkKind("ifb"), h.LinkAdd(nl)); err != nil {
			return wrap(fmt.Errorf("create ifb %q: %w", la.Name, err))
		}
		undo = append(undo, func() error { return h.LinkDel(nl) })
		if ifb, err = h.LinkByName(la.Name); err != nil {
			return wrap(err)
		}
	}
	if ifb.Attrs().Alias != alias {
		if err := h.LinkSetAlias(ifb, alias); err != nil {
			return wrap(fmt.Errorf("mark ifb %q: %w", ifb.Attrs().Name, err))
		}
	}
	if ifb.Attrs().Flags&unix.IFF_UP == 0 {
		if err := h.LinkSetUp(ifb); err != nil {
			return wrap(fmt.Errorf("bring ifb %q up: %w", ifb.Attrs().Name, err))
		}
	}
	if err := apply(h, ifb, want); err != nil {
		return wrap(fmt.Errorf("ifb %q: %w", ifb.Attrs().Name, err))
	}
	if in.filter == nil || in.redirect != ifb.Attrs().Index {
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: ingressQ, Priority: FilterPref, Protocol: unix.ETH_P_ALL},
			Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
		}
		op := h.FilterAdd
		if in.filter != nil {
			op = h.FilterReplace
			f.Handle = in.filter.Attrs().Handle
		}
		if err := op(f); err != nil {
			return wrap(fmt.Errorf("u32 redirect filter to %q: %w", ifb.Attrs().Name, err))
		}
	}
	return nil
}

// ObserveIngress returns the ingress shaping kvmnet installed on ifname:
// the shaping of its ifb, when the redirect filter points there; nil when
// there is none.
func ObserveIngress(ns *netns.NS, ifname string) (*model.QoS, error) {
	h, err := handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := linkByName(h, ns, ifname)
	if err != nil {
		return nil, err
	}
	in, err := readIngress(h, l)
	if err != nil {
		return nil, fmt.Errorf("ingress qos on %q in namespace %q: %w", ifname, ns.Name, err)
	}
	if in.ifb == nil || in.filter == nil || in.redirect != in.ifb.Attrs().Index {
		return nil, nil
	}
	st, err := read(h, in.ifb)
	if err != nil {
		return nil, err
	}
	return st.qos, nil
}

type ingressState struct {
	hasQdisc, createdQdisc bool
	ifb                    netlink.Link // kvmnet's ifb for this interface
	foreignIfb             bool
	filter                 netlink.Filter // kvmnet's redirect filter
	redirect               int            // where it redirects to
	others                 int            // other filters on the ingress qdisc
}

func readIngress(h *netlink.Handle, l netlink.Link) (*ingressState, error) {
	in := &ingressState{}
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			in.hasQdisc = true
		}
	}
	name := IfbName(l.Attrs().Name)
	if ifb, err := h.LinkByName(name); err == nil {
		if of, ok := IngressOf(ifb.Attrs().Alias); ok && of == l.Attrs().Name && ifb.Type() == "ifb" {
			in.ifb = ifb
			in.createdQdisc = strings.Contains(ifb.Attrs().Alias, " qdisc=kvmnet")
		} else {
			in.foreignIfb = true
		}
	}
	if !in.hasQdisc {
		return in, nil
	}
	fs, err := h.FilterList(l, ingressQ)
	if err != nil {
		return nil, fmt.Errorf("list ingress filters: %w", err)
	}
	for _, f := range fs {
		if f.Attrs().Priority != FilterPref {
			in.others++
			continue
		}
		// kvmnet's preference holds a u32 hash table and, in it, the
		// match-all key with the redirect.
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok {
					in.filter, in.redirect = f, m.Ifindex
				}
			}
		}
	}
	return in, nil
}

func removeIngress(h *netlink.Handle, l netlink.Link, in *ingressState) error {
	var errs []error
	if in.filter != nil {
		// Handle 0: the whole preference (hash table and key) goes.
		all := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: ingressQ, Priority: FilterPref, Protocol: unix.ETH_P_ALL}}
		if err := h.FilterDel(all); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete redirect filter: %w", err))
		}
	}
	if in.ifb != nil {
		if err := h.LinkDel(in.ifb); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete ifb %q: %w", in.ifb.Attrs().Name, err))
		}
	}
	if in.hasQdisc && in.createdQdisc && in.others == 0 {
		ing := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressQ, Parent: netlink.HANDLE_INGRESS}}
		if err := h.QdiscDel(ing); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("delete ingress qdisc: %w", err))
		}
	}
	return errors.Join(errs...)
}
