package qos

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// A port mirror is a clsact qdisc on the port and, on each mirrored side
// (ingress ffff:fff2, egress ffff:fff3), a u32 match-all filter of
// preference MirrorPref whose one action is `mirred egress mirror` to the
// destination's ifindex. clsact runs before any root qdisc, so a mirror
// coexists with kvmnet's shaping of the same port. Other filters on the
// clsact qdisc are left alone, and so is the qdisc while any remain.

var clsactHandle = netlink.MakeHandle(0xffff, 0)

// mirrorState is what the kernel holds of kvmnet's mirror on a link.
type mirrorState struct {
	clsact  bool   // a clsact qdisc is attached
	ingress string // the qdisc on ffff: is another kind (e.g. "ingress"), or ""
	to      [2]int // ifindex mirrored to per side (0: no filter), [ingress, egress]
	found   [2]bool
	stats   [2]netlink.GnetStatsBasic // what each side's action copied
	others  int                       // filters of other preferences on clsact
}

var sides = [2]uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}

func readMirror(h *netlink.Handle, l netlink.Link) (*mirrorState, error) {
	st := &mirrorState{}
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if q.Attrs().Parent != netlink.HANDLE_CLSACT {
			continue
		}
		if q.Type() == "clsact" {
			st.clsact = true
		} else {
			st.ingress = q.Type()
		}
	}
	if !st.clsact {
		return st, nil
	}
	return st, st.readFilters(h, l)
}

// readFilters reads kvmnet's mirror filters on l's clsact qdisc into st.
func (st *mirrorState) readFilters(h *netlink.Handle, l netlink.Link) error {
	for i, parent := range sides {
		fs, err := h.FilterList(l, parent)
		if err != nil {
			return fmt.Errorf("list clsact filters: %w", err)
		}
		for _, f := range fs {
			if f.Attrs().Priority != MirrorPref {
				st.others++
				continue
			}
			st.found[i] = true
			if u, ok := f.(*netlink.U32); ok {
				for _, a := range u.Actions {
					if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_MIRROR {
						st.to[i] = m.Ifindex
						if s := m.Statistics; s != nil && s.Basic != nil {
							st.stats[i] = *s.Basic
						}
					}
				}
			}
		}
	}
	return nil
}

// mirror turns a state into the model: nil when kvmnet mirrors nothing.
// A destination that no longer resolves (deleted and recreated since) is
// named "?" so that it differs from any desired mirror.
func (st *mirrorState) mirror(h *netlink.Handle) *model.Mirror {
	var m model.Mirror
	names := map[int]string{}
	for i := range sides {
		if !st.found[i] {
			continue
		}
		name, ok := names[st.to[i]]
		if !ok {
			name = "?"
			if st.to[i] != 0 {
				if d, err := h.LinkByIndex(st.to[i]); err == nil {
					name = d.Attrs().Name
				}
			}
			names[st.to[i]] = name
		}
		switch {
		case m.To == "":
			m.To = name
		case m.To != name:
			m.To = "?"
		}
		if i == 0 {
			m.Ingress = true
		} else {
			m.Egress = true
		}
	}
	if m.To == "" {
		return nil
	}
	return &m
}

// MirrorSide is one mirrored direction of a port as the kernel has it.
type MirrorSide struct {
	Direction string // "ingress" or "egress"
	ToIndex   int    // the destination's ifindex (0: gone)
	Packets   uint64 // frames copied so far
	Bytes     uint64
}

// MirrorSides returns kvmnet's mirror filters on l (through h, bound to
// l's namespace), for status and diagnosis. The caller has found a clsact
// qdisc on l (one qdisc dump serves every link of the namespace).
func MirrorSides(h *netlink.Handle, l netlink.Link) ([]MirrorSide, error) {
	st := &mirrorState{clsact: true}
	if err := st.readFilters(h, l); err != nil {
		return nil, err
	}
	var out []MirrorSide
	for i, dir := range []string{"ingress", "egress"} {
		if st.found[i] {
			out = append(out, MirrorSide{Direction: dir, ToIndex: st.to[i], Packets: uint64(st.stats[i].Packets), Bytes: st.stats[i].Bytes})
		}
	}
	return out, nil
}

// ObserveMirror returns kvmnet's mirror of ifname in ns, or nil.
func ObserveMirror(ns *netns.NS, ifname string) (m *model.Mirror, err error) {
	err = onLink(ns, ifname, "mirror", func(h *netlink.Handle, l netlink.Link) error {
		st, err := readMirror(h, l)
		if err == nil {
			m = st.mirror(h)
		}
		return err
	})
	return m, err
}

// ApplyMirror makes kvmnet's mirror of ifname in ns equal to m (nil: none).
// It writes nothing when the kernel already has it; a side whose filter is
// wrong is rebuilt (its old filter goes first, so a frame is copied once).
// A port with an `ingress` qdisc (which excludes clsact) is refused.
func ApplyMirror(ns *netns.NS, ifname string, m *model.Mirror) error {
	return onLink(ns, ifname, "mirror", func(h *netlink.Handle, l netlink.Link) error {
		return applyMirror(h, l, m)
	})
}

func applyMirror(h *netlink.Handle, l netlink.Link, m *model.Mirror) error {
	st, err := readMirror(h, l)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	want := [2]bool{}
	to := 0
	if m != nil {
		want = [2]bool{m.Ingress, m.Egress}
		d, err := h.LinkByName(m.To)
		if err != nil {
			return fmt.Errorf("destination %q: %w", m.To, err)
		}
		to = d.Attrs().Index
		if st.ingress != "" {
			return fmt.Errorf("the interface has an %s qdisc, which leaves no room for the clsact qdisc a mirror needs: %w", st.ingress, ErrForeign)
		}
		if !st.clsact {
			q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: clsactHandle, Parent: netlink.HANDLE_CLSACT}}
			if err := kernelfeat.Check(kernelfeat.Qdisc("clsact"), h.QdiscAdd(q)); err != nil {
				return fmt.Errorf("clsact qdisc: %w", err)
			}
			st.clsact = true
		}
	}
	for i, parent := range sides {
		ok := st.found[i] == want[i] && (!want[i] || st.to[i] == to)
		if ok {
			continue
		}
		if st.found[i] {
			// Handle 0: the whole preference (hash table and key) goes.
			all := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: parent, Priority: MirrorPref, Protocol: unix.ETH_P_ALL}}
			if err := h.FilterDel(all); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete mirror filter: %w", err)
			}
			st.found[i] = false
		}
		if !want[i] {
			continue
		}
		a := netlink.NewMirredAction(to)
		a.MirredAction = netlink.TCA_EGRESS_MIRROR
		a.Attrs().Action = netlink.TC_ACT_PIPE
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: parent, Priority: MirrorPref, Protocol: unix.ETH_P_ALL},
			Actions:     []netlink.Action{a},
		}
		if err := kernelfeat.Check(kernelfeat.Mirror, h.FilterAdd(f)); err != nil {
			return fmt.Errorf("u32 mirror filter: %w", err)
		}
		st.found[i] = true
	}
	if m == nil && st.clsact && st.others == 0 && !st.found[0] && !st.found[1] {
		q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: clsactHandle, Parent: netlink.HANDLE_CLSACT}}
		if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("delete clsact qdisc: %w", err)
		}
	}
	return nil
}
