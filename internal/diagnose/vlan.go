package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kvmnet/kvmnet/internal/model"
)

// CheckVLAN: a port of a VLAN-filtering bridge does not carry what the
// endpoint behind it sends or needs, or differs from the topology.
const CheckVLAN = "vlan-mismatch"

// hasVLANFiltering reports whether the topology has a VLAN-filtering bridge
// (the only place where a port's VLANs decide what passes).
func hasVLANFiltering(s *model.State) bool {
	for _, ns := range s.Namespaces {
		for _, l := range ns.Links {
			if l.Bridge != nil && l.Bridge.VLANFiltering {
				return true
			}
		}
	}
	return false
}

// vlanLink returns what the kernel has for interface n in the VLAN read
// (nil when none was read).
func (d *diag) vlanLink(n *node) *model.Link {
	if n == nil || d.vl[n.ns.Name] == nil {
		return nil
	}
	return d.vl[n.ns.Name].Links[n.i.Name]
}

// filteringBridge reports whether n is a VLAN-filtering bridge, with its
// default PVID.
func (d *diag) filteringBridge(n *node) (bool, int) {
	l := d.vlanLink(n)
	if l == nil || l.Bridge == nil || !l.Bridge.VLANFiltering {
		return false, 0
	}
	return true, cmp1(l.Bridge.DefaultPVID)
}

func cmp1(v int) int {
	if v == 0 {
		return 1
	}
	return v
}

func vlanEntry(es []model.VLANEntry, vid int) (model.VLANEntry, bool) {
	for _, e := range es {
		if e.VID == vid {
			return e, true
		}
	}
	return model.VLANEntry{}, false
}

func pvidOf(es []model.VLANEntry) (model.VLANEntry, bool) {
	for _, e := range es {
		if e.PVID {
			return e, true
		}
	}
	return model.VLANEntry{}, false
}

// showEntries prints a membership the way `bridge vlan show` does.
func showEntries(es []model.VLANEntry) string {
	if len(es) == 0 {
		return "no VLAN"
	}
	var out []string
	for _, e := range es {
		s := fmt.Sprint(e.VID)
		if e.PVID {
			s += " PVID"
		}
		if e.Untagged {
			s += " Egress Untagged"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// describeEntries names a membership in the topology's terms.
func describeEntries(es []model.VLANEntry) string {
	if len(es) == 1 && es[0].PVID && es[0].Untagged {
		return fmt.Sprintf("an access port of VLAN %d", es[0].VID)
	}
	var tagged []string
	native := 0
	for _, e := range es {
		switch {
		case e.PVID && e.Untagged:
			native = e.VID
		case !e.Untagged:
			tagged = append(tagged, fmt.Sprint(e.VID))
		}
	}
	if len(tagged) == 0 {
		return "a port carrying " + showEntries(es)
	}
	s := "a trunk of VLANs " + strings.Join(tagged, ", ")
	if native != 0 {
		s += fmt.Sprintf(" (native %d)", native)
	}
	return s
}

// vlanFix returns the `bridge vlan` commands that turn membership have of
// port into want: additions first (a new PVID takes over from the old one),
// then deletions.
func vlanFix(ns, port string, have, want []model.VLANEntry) []string {
	var cmds []string
	for _, w := range want {
		if h, ok := vlanEntry(have, w.VID); ok && h == w {
			continue
		}
		c := fmt.Sprintf("bridge -n %s vlan add dev %s vid %d", ns, port, w.VID)
		if w.PVID {
			c += " pvid"
		}
		if w.Untagged {
			c += " untagged"
		}
		cmds = append(cmds, c)
	}
	for _, h := range have {
		if _, ok := vlanEntry(want, h.VID); !ok {
			cmds = append(cmds, fmt.Sprintf("bridge -n %s vlan del dev %s vid %d", ns, port, h.VID))
		}
	}
	return cmds
}

// sender is an interface whose frames reach a bridge port: the veth end on
// the other side (untagged frames) or a VLAN sub-interface on it (frames
// tagged vid).
type sender struct {
	n   *node
	vid int
}

func (s sender) what() string {
	if s.vid == 0 {
		return fmt.Sprintf("%s sends untagged frames", s.n.key())
	}
	return fmt.Sprintf("%s (VLAN sub-interface, id %d) sends frames tagged %d", s.n.key(), s.vid, s.vid)
}

// senders lists what reaches port from its veth peer: untagged traffic when
// the peer holds addresses, and each VLAN sub-interface of the peer. A peer
// that is itself a bridge port (a trunk between bridges, or a VM's NIC) is
// left out: what passes there is decided by that bridge, or in a guest.
func (d *diag) senders(port *node) []sender {
	p := port.peer
	if p == nil || p.isPort() {
		return nil
	}
	var out []sender
	for _, a := range p.i.Addresses {
		if !a.Addr().IsLinkLocalUnicast() {
			out = append(out, sender{n: p})
			break
		}
	}
	if obs := d.vl[p.ns.Name]; obs != nil {
		for _, name := range model.SortedNames(obs.Links) {
			l := obs.Links[name]
			if l.Kind == model.KindVLAN && l.Parent == p.i.Name {
				if sn := d.ifaces[p.ns.Name+"/"+name]; sn != nil {
					out = append(out, sender{n: sn, vid: l.VID})
				}
			}
		}
	}
	return out
}

// problem says what goes wrong with s's frames at a port with membership
// es ("" when they pass both ways).
func (s sender) problem(port string, es []model.VLANEntry) string {
	if s.vid == 0 {
		e, ok := pvidOf(es)
		switch {
		case !ok:
			return fmt.Sprintf("port %s has no PVID: it drops untagged frames", port)
		case !e.Untagged:
			return fmt.Sprintf("untagged frames enter VLAN %d at port %s, but VLAN %d leaves it tagged: the replies never reach %s", e.VID, port, e.VID, s.n.i.Name)
		}
		return ""
	}
	e, ok := vlanEntry(es, s.vid)
	switch {
	case !ok:
		return fmt.Sprintf("port %s does not carry VLAN %d: it drops frames tagged %d", port, s.vid, s.vid)
	case e.Untagged:
		return fmt.Sprintf("VLAN %d leaves port %s untagged: the replies arrive on %s, not on %s", s.vid, port, s.n.peerParent(), s.n.i.Name)
	}
	return ""
}

// peerParent names the interface a sub-interface's untagged replies land on.
func (n *node) peerParent() string {
	if i := strings.LastIndexByte(n.i.Name, '.'); i > 0 {
		return n.i.Name[:i]
	}
	return "its parent"
}

// vlanIn returns the VLAN in which s's frames travel on the bridge behind
// port (0 when they do not get in).
func (s sender) vlanIn(es []model.VLANEntry) int {
	if s.vid == 0 {
		if e, ok := pvidOf(es); ok {
			return e.VID
		}
		return 0
	}
	if _, ok := vlanEntry(es, s.vid); ok {
		return s.vid
	}
	return 0
}

// vlanAt returns the VLAN-filtering bridge and the VLAN on it in which
// interface h's frames travel, and the port they enter by (nil for the
// bridge's own addresses); ok is false when they do not reach such a
// bridge directly.
func (d *diag) vlanAt(h *node) (br *node, vid int, via *node, ok bool) {
	base, tag := h, 0
	if l := d.vlanLink(h); l != nil && l.Kind == model.KindVLAN {
		if p := d.ifaces[h.ns.Name+"/"+l.Parent]; p != nil {
			base, tag = p, l.VID
		}
	}
	if f, pvid := d.filteringBridge(base); f {
		if tag == 0 {
			tag = pvid
		}
		return base, tag, nil, true
	}
	port := base.peer
	if port == nil || port.master == nil {
		return nil, 0, nil, false
	}
	if f, _ := d.filteringBridge(port.master); !f {
		return nil, 0, nil, false
	}
	pl := d.vlanLink(port)
	if pl == nil {
		return nil, 0, nil, false
	}
	v := sender{n: base, vid: tag}.vlanIn(pl.PortVLANs)
	if v == 0 {
		return nil, 0, nil, false
	}
	return port.master, v, port, true
}

// gatewayEvidence says where the gateways s needs sit when they are in
// another VLAN of the same bridge than the one s's frames join (vid).
func (d *diag) gatewayEvidence(s sender, br *node, vid int) []string {
	var ev []string
	for _, gw := range d.gateways(s.n.ns.Name) {
		in := false
		for _, a := range s.n.i.Addresses {
			in = in || a.Masked().Contains(gw)
		}
		if !in {
			continue
		}
		for _, h := range d.holders(gw) {
			hb, hv, via, ok := d.vlanAt(h)
			if !ok || hb != br || hv == vid {
				continue
			}
			at := "the bridge's own interface"
			if via != nil {
				at = "port " + via.i.Name
			}
			ev = append(ev, fmt.Sprintf("%s's gateway %s (%s) is in VLAN %d on %s (%s), %s's frames are in VLAN %d: they cannot reach each other",
				s.n.key(), gw, h.key(), hv, br.i.Name, at, s.n.i.Name, vid))
		}
	}
	return ev
}

// subnetsOf is for messages: the subnets s's interface holds.
func subnetsOf(n *node) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range n.i.Addresses {
		if !a.Addr().IsLinkLocalUnicast() {
			out = append(out, a.Masked())
		}
	}
	return out
}

// checkVLANs (step 2): each port of a VLAN-filtering bridge carries what the
// topology declares for it and what the endpoint behind it sends (untagged
// frames need a PVID that leaves untagged, a VLAN sub-interface's tag must be
// carried tagged), and the endpoint's frames join the VLAN its gateway is in.
// The membership is the kernel's (`bridge vlan show`), read by the code
// status uses.
func (d *diag) checkVLANs() {
	for _, nsName := range model.SortedNames(d.vl) {
		obs := d.vl[nsName]
		for _, ln := range model.SortedNames(obs.Links) {
			l := obs.Links[ln]
			brl := obs.Links[l.Master]
			if l.Master == "" || brl == nil || brl.Bridge == nil || !brl.Bridge.VLANFiltering {
				continue
			}
			port := d.ifaces[nsName+"/"+ln]
			if port == nil || port.master == nil {
				continue
			}
			d.checkPort(port, l.PortVLANs)
		}
	}
}

func (d *diag) checkPort(port *node, have []model.VLANEntry) {
	ns, name, br := port.ns.Name, port.i.Name, port.master
	show := fmt.Sprintf("bridge -n %s vlan show dev %s: %s", ns, name, showEntries(have))
	var want []model.VLANEntry
	if port.want != nil {
		want = port.want.PortVLANs
	}
	drift := want != nil && !slices.Equal(have, want)
	var ev []string
	type trouble struct {
		s   sender
		why string
	}
	var troubles []trouble
	for _, s := range d.senders(port) {
		line := s.what()
		if why := s.problem(name, have); why != "" {
			troubles = append(troubles, trouble{s, why})
			line += ": " + why
		} else {
			vid := s.vlanIn(have)
			line += fmt.Sprintf(": they join VLAN %d on %s", vid, br.i.Name)
			ev = append(ev, line)
			ev = append(ev, d.gatewayEvidence(s, br, vid)...)
			continue
		}
		ev = append(ev, line)
	}
	if drift {
		cmds := vlanFix(ns, name, have, want)
		ev = append([]string{show, fmt.Sprintf("the topology declares %s: %s", describeEntries(want), showEntries(want))}, ev...)
		d.add(Finding{Severity: Error, Step: 2, Check: CheckVLAN, Namespace: ns, Interface: name,
			Summary:  fmt.Sprintf("port %s of %s is %s; the topology declares %s", name, br.i.Name, describeEntries(have), describeEntries(want)),
			Evidence: ev,
			Fix:      strings.Join(cmds, " && ") + " (or kvmnet up)"})
		return
	}
	for _, tr := range troubles {
		s := tr.s
		ev := []string{show, tr.why}
		if s.vid != 0 {
			ev = append(ev, fmt.Sprintf("ip -n %s -d link show %s: vlan protocol 802.1Q id %d on %s", s.n.ns.Name, s.n.i.Name, s.vid, port.peer.i.Name))
		}
		if sub := subnetsOf(s.n); len(sub) > 0 {
			ev = append(ev, fmt.Sprintf("%s holds %s", s.n.key(), prefixes(s.n.i.Addresses)))
		}
		loc := port
		var fix string
		switch {
		case s.vid != 0 && s.n.want != nil && s.n.want.VID != 0 && s.n.want.VID != s.vid:
			// A declared sub-interface recreated with another ID.
			loc = s.n
			ev = append(ev, fmt.Sprintf("the topology declares %s with id %d", s.n.key(), s.n.want.VID))
			fix = fmt.Sprintf("ip -n %s link del %s && kvmnet up (recreates it with id %d)", s.n.ns.Name, s.n.i.Name, s.n.want.VID)
		case s.vid != 0 && s.n.want == nil:
			// A sub-interface the topology does not declare: made by hand.
			loc = s.n
			ev = append(ev, fmt.Sprintf("the topology declares no %s in %s", s.n.i.Name, d.nodeOf[s.n.ns.Name]))
			alt := ""
			if pv, ok := pvidOf(have); ok {
				alt = fmt.Sprintf(" (port %s takes untagged frames into VLAN %d)", name, pv.VID)
			}
			fix = fmt.Sprintf("ip -n %s link del %s%s, or carry VLAN %d tagged on the port: bridge -n %s vlan add dev %s vid %d (and declare it: vlan: {trunk: [%d]} on %s/%s, and the sub-interface under vlans:)",
				s.n.ns.Name, s.n.i.Name, alt, s.vid, ns, name, s.vid, s.vid, d.nodeOf[ns], name)
		case s.vid != 0:
			fix = fmt.Sprintf("bridge -n %s vlan add dev %s vid %d, and add VLAN %d to the port's trunk in the topology (vlan: {trunk: [...]} on %s/%s), then kvmnet up",
				ns, name, s.vid, s.vid, d.nodeOf[ns], name)
		default:
			vid := 0
			for _, gw := range d.gateways(s.n.ns.Name) {
				for _, h := range d.holders(gw) {
					if hb, hv, _, ok := d.vlanAt(h); ok && hb == br && vid == 0 {
						vid = hv
					}
				}
			}
			v := "<VLAN>"
			if vid != 0 {
				v = fmt.Sprint(vid)
			}
			fix = fmt.Sprintf("bridge -n %s vlan add dev %s vid %s pvid untagged (an access port: vlan: {access: %s} on %s/%s in the topology)", ns, name, v, v, d.nodeOf[ns], name)
		}
		d.add(Finding{Severity: Error, Step: 2, Check: CheckVLAN, Namespace: loc.ns.Name, Interface: loc.i.Name,
			Summary:  fmt.Sprintf("%s; port %s of %s is %s", s.what(), name, br.i.Name, describeEntries(have)),
			Evidence: ev, Fix: fix})
	}
}
