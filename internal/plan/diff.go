package plan

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/qos"
)

// Diff returns the ordered steps that turn observed into desired.
//
// observed holds every namespace whose name desired uses (owned or not) and
// every namespace owned by desired.Network. Objects kvmnet does not own are
// never changed: a name collision with one is a *ConflictError. Diff of an
// empty desired state (no namespaces) against the observed network is `down`.
//
// The order is: create namespaces, set sysctls (before links, so defaults
// such as disable_ipv6 apply to new links), delete links that are removed or
// must be replaced, create bridges then veths then moved NICs, change link
// attributes, add addresses then delete old ones (removing the last address
// of a subnet first would make the kernel flush the routes through it), routes,
// and last delete namespaces.
func Diff(desired, observed *model.State) ([]Step, error) {
	d := differ{net: desired.Network, desired: desired, observed: observed, done: map[string]bool{}}
	return d.run()
}

type differ struct {
	net               string
	desired, observed *model.State
	done              map[string]bool // "ns/name" of veth ends already handled
	qosChanged        map[string]bool // namespaces with a QoS step
	born              map[string]bool // "ns/name" of links this plan creates
	marks             map[string]model.Marks
	errs              []error

	createNS, sysctl, unmirror, delLink, createLink, setLink, portVLANs, delAddr, addAddr, delRoute, addRoute, firewall, delNS []Step
}

func (d *differ) step(op Op, ns string) Step { return Step{Op: op, NS: ns, Network: d.net} }

func (d *differ) run() ([]Step, error) {
	deleting := map[string]bool{}
	for _, name := range model.SortedNames(d.observed.Namespaces) {
		o := d.observed.Namespaces[name]
		if o.Owner == d.net && d.desired.Namespaces[name] == nil {
			deleting[name] = true
		}
	}
	for _, name := range model.SortedNames(d.desired.Namespaces) {
		d.namespace(d.desired.Namespaces[name], d.observed.Namespaces[name])
	}
	for _, name := range model.SortedNames(d.desired.Namespaces) {
		d.mirrors(d.desired.Namespaces[name], d.observed.Namespaces[name])
	}
	for _, name := range model.SortedNames(d.observed.Namespaces) {
		if deleting[name] {
			o := d.observed.Namespaces[name]
			for _, ln := range model.SortedNames(o.Links) {
				if l := o.Links[ln]; l.Kind == model.KindDevice && l.Owner == d.net {
					d.unmirrorDevice(name, l)
					s := d.step(OpReturnDevice, name)
					s.Link = l
					d.delLink = append(d.delLink, s)
				}
			}
			d.delNS = append(d.delNS, d.step(OpDeleteNS, name))
		}
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	// Bridges before the veths that join them, moved NICs last.
	slices.SortStableFunc(d.createLink, func(a, b Step) int { return kindRank(a) - kindRank(b) })
	var out []Step
	for _, part := range [][]Step{d.createNS, d.sysctl, d.unmirror, d.delLink, d.createLink, d.setLink, d.portVLANs, d.addAddr, d.delAddr, d.delRoute, d.addRoute, d.firewall, d.delNS} {
		out = append(out, part...)
	}
	return out, nil
}

// kindRank orders creations: bridges, then veths (which may be their
// ports), then moved NICs, then VLAN sub-interfaces (whose parent may be
// any of those).
func kindRank(s Step) int {
	switch {
	case s.Op == OpCreateLink && s.Link.Kind == model.KindBridge:
		return 0
	case s.Op == OpCreateLink && s.Link.Kind == model.KindVeth:
		return 1
	case s.Op == OpMoveDevice:
		return 2
	}
	return 3
}

func (d *differ) namespace(want, have *model.Namespace) {
	name := want.Name
	if have != nil && have.Owner != d.net {
		d.errs = append(d.errs, &ConflictError{NS: name, Owner: have.Owner})
		return
	}
	if have == nil {
		d.createNS = append(d.createNS, d.step(OpCreateNS, name))
		have = &model.Namespace{Name: name}
	}
	changed := false
	for _, k := range model.SortedNames(want.Sysctls) {
		if v := want.Sysctls[k]; have.Sysctls[k] != v {
			s := d.step(OpSysctl, name)
			s.Key, s.Value, s.OldValue = k, v, have.Sysctls[k]
			d.sysctl = append(d.sysctl, s)
			changed = true
		}
	}
	// Record what was applied in the namespace's mark, so that the next
	// observation can trust it instead of reading /proc/sys.
	if hash := model.SysctlHash(want.Sysctls); changed || hash != have.Marks[model.AspectSysctl] {
		d.sysctl = append(d.sysctl, d.mark(name, model.AspectSysctl, hash, have.Marks[model.AspectSysctl]))
	}
	for _, ln := range model.SortedNames(want.Links) {
		d.link(name, want.Links[ln], have)
	}
	for _, ln := range model.SortedNames(have.Links) {
		l := have.Links[ln]
		if want.Links[ln] != nil || l.Owner != d.net {
			continue
		}
		d.removeLink(name, l)
	}
	for _, r := range sortedRoutes(want.Routes) {
		old := have.Routes[r.Key()]
		if old != nil && old.Equal(r) {
			continue
		}
		s := d.step(OpAddRoute, name)
		s.Route, s.OldRoute = r, old
		d.addRoute = append(d.addRoute, s)
	}
	if want.NFT != have.NFT {
		s := d.step(OpFirewall, name)
		s.Masq, s.Firewall, s.Guards, s.OldNFT = want.Masquerade, want.Firewall, want.Guards, have.NFT
		d.firewall = append(d.firewall, s, d.mark(name, model.AspectNFT, model.NFTHash(want.NFT), have.Marks[model.AspectNFT]))
	}
	if h := model.QoSHash(want); d.qosChanged[name] || h != have.Marks[model.AspectQoS] {
		d.firewall = append(d.firewall, d.mark(name, model.AspectQoS, h, have.Marks[model.AspectQoS]))
	}
	for _, r := range sortedRoutes(have.Routes) {
		if want.Routes[r.Key()] == nil {
			s := d.step(OpDelRoute, name)
			s.Route = r
			d.delRoute = append(d.delRoute, s)
		}
	}
}

// removeLink deletes an owned link, in a namespace that stays, that is no
// longer desired. A veth pair is deleted once, explicitly even when its peer's
// namespace is being deleted: namespace teardown is asynchronous, and the
// port would linger on its bridge for a while. (Links inside namespaces that
// are deleted are left to the namespace deletion: deleting links one by one
// costs an RCU grace period each.)
func (d *differ) removeLink(ns string, l *model.Link) {
	key := ns + "/" + l.Name
	if d.done[key] {
		return
	}
	d.done[key] = true
	if l.Kind == model.KindVeth {
		d.done[l.Peer.String()] = true
	}
	op := OpDeleteLink
	if l.Kind == model.KindDevice {
		op = OpReturnDevice
		d.unmirrorDevice(ns, l)
	}
	s := d.step(op, ns)
	s.Link = l
	d.delLink = append(d.delLink, s)
}

// observedLink returns the observed link ns/name, or nil.
func (d *differ) observedLink(ns, name string) *model.Link {
	if o := d.observed.Namespaces[ns]; o != nil {
		return o.Links[name]
	}
	return nil
}

// vethIntact reports whether the observed veth end l and its peer exist and
// point at each other as desired.
func (d *differ) vethIntact(ns string, want, have *model.Link) bool {
	if have.Kind != model.KindVeth || have.Peer != want.Peer {
		return false
	}
	p := d.observedLink(want.Peer.NS, want.Peer.Name)
	return p != nil && p.Kind == model.KindVeth && p.Owner == d.net && p.Peer == (model.PeerRef{NS: ns, Name: want.Name})
}

func (d *differ) link(ns string, want *model.Link, have *model.Namespace) {
	key := ns + "/" + want.Name
	if d.done[key] {
		return
	}
	d.done[key] = true
	cur := have.Links[want.Name]
	if cur != nil && cur.Owner != d.net {
		d.errs = append(d.errs, &ConflictError{NS: ns, Name: want.Name, What: "interface", Owner: cur.Owner})
		return
	}
	if want.Kind == model.KindVeth {
		d.done[want.Peer.String()] = true
		peerCur := d.observedLink(want.Peer.NS, want.Peer.Name)
		if peerCur != nil && peerCur.Owner != d.net {
			d.errs = append(d.errs, &ConflictError{NS: want.Peer.NS, Name: want.Peer.Name, What: "interface", Owner: peerCur.Owner})
			return
		}
		if cur != nil && d.vethIntact(ns, want, cur) {
			d.update(ns, want, cur)
			peerWant := d.desired.Namespaces[want.Peer.NS].Links[want.Peer.Name]
			d.update(want.Peer.NS, peerWant, peerCur)
			return
		}
		// Broken or missing pair: remove whatever is left, then create both ends.
		for _, x := range []struct {
			ns string
			l  *model.Link
		}{{ns, cur}, {want.Peer.NS, peerCur}} {
			if x.l != nil {
				s := d.step(OpDeleteLink, x.ns)
				s.Link = x.l
				d.delLink = append(d.delLink, s)
			}
		}
		d.create(ns, want)
		return
	}
	if cur != nil && (cur.Kind != want.Kind || (want.Kind == model.KindDevice && cur.Origin != want.Origin) ||
		(want.Kind == model.KindVLAN && (cur.Parent != want.Parent || cur.VID != want.VID))) {
		s := d.step(OpDeleteLink, ns)
		if cur.Kind == model.KindDevice {
			s.Op = OpReturnDevice
			d.unmirrorDevice(ns, cur)
		}
		s.Link = cur
		d.delLink = append(d.delLink, s)
		cur = nil
	}
	if cur == nil {
		d.create(ns, want)
		return
	}
	d.update(ns, want, cur)
}

// create emits the creation of want (both ends, for a veth) and its addresses.
func (d *differ) create(ns string, want *model.Link) {
	op := OpCreateLink
	if want.Kind == model.KindDevice {
		op = OpMoveDevice
	}
	s := d.step(op, ns)
	s.Link = want
	d.bear(ns, want.Name)
	d.newPortVLANs(ns, want)
	d.qos(ns, want, nil)
	if want.Kind == model.KindVeth {
		peer := d.desired.Namespaces[want.Peer.NS].Links[want.Peer.Name]
		s.Peer = peer
		d.bear(want.Peer.NS, want.Peer.Name)
		d.newPortVLANs(want.Peer.NS, peer)
		d.qos(want.Peer.NS, peer, nil)
		// Create from the end that has a master, so it is set in the same request.
		if want.Master == "" && peer.Master != "" {
			s.NS, s.Link, s.Peer = want.Peer.NS, peer, want
		}
		d.addresses(want.Peer.NS, peer, nil)
	}
	d.createLink = append(d.createLink, s)
	if want.Kind == model.KindDevice {
		// A moved NIC keeps its MAC and MTU unless the topology sets them,
		// and comes in down: settle it like an existing link.
		d.update(ns, want, &model.Link{Name: want.Name, Kind: model.KindDevice, MAC: want.MAC, MTU: want.MTU, Up: false})
		return
	}
	d.addresses(ns, want, nil)
}

// update emits the attribute and address changes that turn cur into want.
func (d *differ) update(ns string, want, cur *model.Link) {
	if want == nil || cur == nil {
		return
	}
	set, old := &LinkAttrs{}, &LinkAttrs{}
	changed := false
	if want.MTU != 0 && want.MTU != cur.MTU {
		set.MTU, old.MTU, changed = ptr(want.MTU), ptr(cur.MTU), true
	}
	if want.MAC != "" && want.MAC != cur.MAC {
		set.MAC, old.MAC, changed = ptr(want.MAC), ptr(cur.MAC), true
	}
	if want.Master != cur.Master {
		set.Master, old.Master, changed = ptr(want.Master), ptr(cur.Master), true
	}
	if want.Bridge != nil {
		cb := cur.Bridge
		if cb == nil {
			cb = &model.BridgeOpts{}
		}
		if want.Bridge.STP != cb.STP {
			set.STP, old.STP, changed = ptr(want.Bridge.STP), ptr(cb.STP), true
		}
		if want.Bridge.AgeingTime != cb.AgeingTime {
			set.Ageing, old.Ageing, changed = ptr(want.Bridge.AgeingTime), ptr(cb.AgeingTime), true
		}
		if want.Bridge.VLANFiltering != cb.VLANFiltering {
			set.VLANFiltering, old.VLANFiltering, changed = ptr(want.Bridge.VLANFiltering), ptr(cb.VLANFiltering), true
		}
		if want.Bridge.DefaultPVID != 0 && want.Bridge.DefaultPVID != cb.DefaultPVID {
			set.DefaultPVID, old.DefaultPVID, changed = ptr(want.Bridge.DefaultPVID), ptr(cb.DefaultPVID), true
		}
	}
	if want.Up != cur.Up {
		set.Up, old.Up, changed = ptr(want.Up), ptr(cur.Up), true
	}
	if changed {
		s := d.step(OpSetLink, ns)
		s.Link, s.Set, s.Old = want, set, old
		d.setLink = append(d.setLink, s)
	}
	d.qos(ns, want, cur.QoS)
	if want.PortVLANs != nil && !slices.Equal(want.PortVLANs, cur.PortVLANs) {
		s := d.step(OpPortVLANs, ns)
		s.Link, s.VLANs, s.OldVLANs = want, want.PortVLANs, cur.PortVLANs
		d.portVLANs = append(d.portVLANs, s)
	}
	d.addresses(ns, want, cur)
}

// qos emits the shaping change of link want (whose qdiscs are now cur).
func (d *differ) qos(ns string, want *model.Link, cur *model.QoS) {
	if want == nil || qos.Equal(want.QoS, cur) {
		return
	}
	s := d.step(OpQoS, ns)
	s.Link, s.QoS, s.OldQoS = want, want.QoS, cur
	d.portVLANs = append(d.portVLANs, s)
	if d.qosChanged == nil {
		d.qosChanged = map[string]bool{}
	}
	d.qosChanged[ns] = true
}

// newPortVLANs sets the VLAN membership of a port about to be created on a
// VLAN-filtering bridge, which the kernel starts at the bridge's default PVID.
func (d *differ) newPortVLANs(ns string, l *model.Link) {
	if l == nil || l.PortVLANs == nil {
		return
	}
	var def []model.VLANEntry
	if br := d.desired.Namespaces[ns].Links[l.Master]; br != nil && br.Bridge != nil && br.Bridge.DefaultPVID != 0 {
		def = []model.VLANEntry{{VID: br.Bridge.DefaultPVID, PVID: true, Untagged: true}}
	}
	if slices.Equal(def, l.PortVLANs) {
		return
	}
	s := d.step(OpPortVLANs, ns)
	s.Link, s.VLANs, s.OldVLANs = l, l.PortVLANs, def
	d.portVLANs = append(d.portVLANs, s)
}

func (d *differ) addresses(ns string, want, cur *model.Link) {
	var have []netip.Prefix
	if cur != nil {
		have = cur.Addrs
	}
	for _, a := range have {
		if !containsPrefix(want.Addrs, a) {
			s := d.step(OpDelAddr, ns)
			s.Link, s.Addr = want, a
			d.delAddr = append(d.delAddr, s)
		}
	}
	for _, a := range want.Addrs {
		if !containsPrefix(have, a) {
			s := d.step(OpAddAddr, ns)
			s.Link, s.Addr = want, a
			d.addAddr = append(d.addAddr, s)
		}
	}
}

// mark records hash as the applied state of aspect in namespace ns; the
// step carries every aspect's hash as it will then be.
func (d *differ) mark(ns, aspect, hash, old string) Step {
	if d.marks == nil {
		d.marks = map[string]model.Marks{}
	}
	cur := d.marks[ns]
	if cur == nil {
		cur = model.Marks{}
		if o := d.observed.Namespaces[ns]; o != nil && o.Owner == d.net {
			for k, v := range o.Marks {
				cur[k] = v
			}
		}
	}
	next := model.Marks{}
	for k, v := range cur {
		next[k] = v
	}
	next[aspect] = hash
	d.marks[ns] = next
	s := d.step(OpMark, ns)
	s.Key, s.Value, s.OldValue, s.Marks, s.OldMarks = aspect, hash, old, next, cur
	return s
}

func (d *differ) bear(ns, name string) {
	if d.born == nil {
		d.born = map[string]bool{}
	}
	d.born[ns+"/"+name] = true
}

// mirrors emits the port mirror changes of a namespace, after every link
// exists. A mirror names its destination by ifindex, so it is rebuilt when
// this plan creates (or recreates) its port or its destination, whatever the
// observation (perhaps trusted from the mark) says.
func (d *differ) mirrors(want, have *model.Namespace) {
	name := want.Name
	if have == nil {
		have = &model.Namespace{Name: name}
	}
	changed := false
	for _, ln := range model.SortedNames(want.Links) {
		w := want.Links[ln]
		var cur *model.Mirror
		if h := have.Links[ln]; h != nil && !d.born[name+"/"+ln] {
			cur = h.Mirror
		}
		stale := w.Mirror != nil && d.born[name+"/"+w.Mirror.To]
		if w.Mirror.Equal(cur) && !stale {
			continue
		}
		s := d.step(OpMirror, name)
		s.Link, s.Mirror, s.OldMirror = w, w.Mirror, cur
		d.firewall = append(d.firewall, s)
		changed = true
	}
	if h := model.MirrorHash(want); changed || h != have.Marks[model.AspectMirror] {
		d.firewall = append(d.firewall, d.mark(name, model.AspectMirror, h, have.Marks[model.AspectMirror]))
	}
}

// unmirrorDevice removes the mirror of a real NIC before it goes back to
// the root namespace, which must get it as it was.
func (d *differ) unmirrorDevice(ns string, l *model.Link) {
	if l.Mirror == nil {
		return
	}
	s := d.step(OpMirror, ns)
	s.Link, s.OldMirror = l, l.Mirror
	d.unmirror = append(d.unmirror, s)
}
