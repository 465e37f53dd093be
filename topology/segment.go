package topology

import "strconv"

// Segments groups interfaces into L2 broadcast domains, VLANs included.
//
// It is computed in two passes. The first joins what passes frames unchanged,
// whatever their tag: the two ends of a veth, and a bridge without VLAN
// filtering with its ports. The second works on (wire, tag) pairs: a port of
// a VLAN-filtering bridge joins its untagged traffic to the bridge's PVID
// VLAN and its tagged VLANs to the same VLANs of the bridge, and a VLAN
// sub-interface's untagged traffic is its parent's traffic tagged with its
// ID. An interface's segment is the segment of its untagged traffic.
type Segments struct {
	wire *unionFind // pass 1: tag-agnostic
	tag  *unionFind // pass 2: "wire#tag"
}

type unionFind struct{ parent map[string]string }

func newUnionFind() *unionFind { return &unionFind{parent: map[string]string{}} }

func (u *unionFind) find(k string) string {
	if _, ok := u.parent[k]; !ok {
		u.parent[k] = k
	}
	for u.parent[k] != k {
		u.parent[k] = u.parent[u.parent[k]]
		k = u.parent[k]
	}
	return k
}

func (u *unionFind) union(a, b string) {
	ra, rb := u.find(a), u.find(b)
	if ra != rb {
		if ra < rb {
			u.parent[rb] = ra
		} else {
			u.parent[ra] = rb
		}
	}
}

func ifKey(ns, name string) string { return ns + "/" + name }

// node is the pass-2 key of the traffic of interface k carrying tag (0: untagged).
func (s *Segments) node(k string, tag int) string {
	return s.wire.find(k) + "#" + strconv.Itoa(tag)
}

// Of returns the segment ID of interface name in namespace ns (of its
// untagged traffic). Interfaces on one segment share an ID; the ID is
// otherwise opaque.
func (s *Segments) Of(ns, name string) string { return s.tag.find(s.node(ifKey(ns, name), 0)) }

// OfVLAN returns the segment of the traffic of interface name in namespace
// ns that carries VLAN tag vid.
func (s *Segments) OfVLAN(ns, name string, vid int) string {
	return s.tag.find(s.node(ifKey(ns, name), vid))
}

// port is an interface declared a port of a bridge in its namespace, with
// its VLAN membership (nil for a VLAN sub-interface or the default).
type port struct {
	ns, name, bridge string
	vlan             *PortVLAN
}

// eachPort calls fn for every declared bridge port: link ends, the uplink's
// peer and the uplink itself in bridge mode, VLAN sub-interfaces.
func (t *Topology) eachPort(fn func(p port)) {
	each := func(e Endpoint) {
		if e.Bridge != "" {
			fn(port{e.Namespace, e.Name, e.Bridge, e.VLAN})
		}
	}
	for _, l := range t.Links {
		if len(l.Endpoints) == 2 {
			each(l.Endpoints[0])
			each(l.Endpoints[1])
		}
	}
	if u := t.Uplink; u != nil && u.Mode != ModeIsolated {
		if u.Peer != nil {
			each(*u.Peer)
		}
		if u.Mode == ModeBridge && u.Bridge != "" {
			fn(port{u.Namespace, u.Name, u.Bridge, u.VLAN})
		}
	}
	for _, v := range t.VLANs {
		if v.Bridge != "" {
			fn(port{v.Namespace, v.Name, v.Bridge, nil})
		}
	}
}

// Segments computes the L2 segments of the topology.
func (t *Topology) Segments() *Segments {
	s := &Segments{wire: newUnionFind(), tag: newUnionFind()}
	filtering := func(ns, br string) *Bridge {
		if b := t.Bridge(ns, br); b != nil && b.VLANFiltering {
			return b
		}
		return nil
	}
	for _, l := range t.Links {
		if len(l.Endpoints) == 2 {
			a, b := l.Endpoints[0], l.Endpoints[1]
			s.wire.union(ifKey(a.Namespace, a.Name), ifKey(b.Namespace, b.Name))
		}
	}
	if u := t.Uplink; u != nil && u.Mode != ModeIsolated && u.Peer != nil {
		s.wire.union(ifKey(u.Namespace, u.Name), ifKey(u.Peer.Namespace, u.Peer.Name))
	}
	var ports []port
	t.eachPort(func(p port) { ports = append(ports, p) })
	subifs := t.VLANs
	// Pass 1: bridges that do not filter VLANs pass every tag.
	for _, p := range ports {
		if filtering(p.ns, p.bridge) == nil {
			s.wire.union(ifKey(p.ns, p.name), ifKey(p.ns, p.bridge))
		}
	}
	// Pass 2.
	for _, b := range t.Bridges {
		if b.VLANFiltering {
			k := ifKey(b.Namespace, b.Name)
			s.tag.union(s.node(k, 0), s.node(k, b.PVID()))
		}
	}
	for _, p := range ports {
		b := filtering(p.ns, p.bridge)
		if b == nil {
			continue
		}
		pk, bk := ifKey(p.ns, p.name), ifKey(p.ns, p.bridge)
		pvid, _, tagged := p.vlan.Membership(b.PVID())
		if pvid != 0 {
			s.tag.union(s.node(pk, 0), s.node(bk, pvid))
		}
		for _, v := range tagged {
			s.tag.union(s.node(pk, v), s.node(bk, v))
		}
	}
	for _, v := range subifs {
		s.tag.union(s.node(ifKey(v.Namespace, v.Name), 0), s.node(ifKey(v.Namespace, v.Parent), v.ID))
	}
	return s
}
