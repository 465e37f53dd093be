package topology

// Segments groups interfaces into L2 broadcast domains: the two ends of a
// veth are on one segment, and a bridge joins itself and all its ports.
type Segments struct {
	parent map[string]string
}

func ifKey(ns, name string) string { return ns + "/" + name }

func (s *Segments) find(k string) string {
	if _, ok := s.parent[k]; !ok {
		s.parent[k] = k
	}
	for s.parent[k] != k {
		s.parent[k] = s.parent[s.parent[k]]
		k = s.parent[k]
	}
	return k
}

func (s *Segments) union(a, b string) {
	ra, rb := s.find(a), s.find(b)
	if ra != rb {
		if ra < rb {
			s.parent[rb] = ra
		} else {
			s.parent[ra] = rb
		}
	}
}

// Of returns the segment ID of interface name in namespace ns. Interfaces on
// one segment share an ID; the ID is otherwise opaque.
func (s *Segments) Of(ns, name string) string { return s.find(ifKey(ns, name)) }

// Segments computes the L2 segments of the topology.
func (t *Topology) Segments() *Segments {
	s := &Segments{parent: map[string]string{}}
	join := func(e Endpoint) {
		if e.Bridge != "" {
			s.union(ifKey(e.Namespace, e.Name), ifKey(e.Namespace, e.Bridge))
		}
	}
	for _, l := range t.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		a, b := l.Endpoints[0], l.Endpoints[1]
		s.union(ifKey(a.Namespace, a.Name), ifKey(b.Namespace, b.Name))
		join(a)
		join(b)
	}
	if u := t.Uplink; u != nil && u.Mode != ModeIsolated {
		if u.Peer != nil {
			s.union(ifKey(u.Namespace, u.Name), ifKey(u.Peer.Namespace, u.Peer.Name))
			join(*u.Peer)
		}
		if u.Mode == ModeBridge && u.Bridge != "" {
			s.union(ifKey(u.Namespace, u.Name), ifKey(u.Namespace, u.Bridge))
		}
	}
	return s
}
