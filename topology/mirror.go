package topology

import (
	"fmt"
	"slices"
)

// Mirror directions, relative to the mirrored port: ingress is what arrives
// on the port (for a bridge port: what its VM or host sends into the
// bridge), egress what leaves through it.
const (
	MirrorBoth    = "both"
	MirrorIngress = "ingress"
	MirrorEgress  = "egress"
)

// MirrorDirections lists the valid directions in documentation order.
var MirrorDirections = []string{MirrorBoth, MirrorIngress, MirrorEgress}

// Mirror is a port mirror (a switch's SPAN session): a copy of every frame
// crossing Ports goes out of To, an interface in the same namespace that is
// usually the near end of a link to a monitoring namespace where an IDS or
// tcpdump listens. kvmnet builds it with tc (a clsact qdisc on each port and
// a u32 match-all filter whose action is `mirred egress mirror dev To`).
type Mirror struct {
	// Name identifies the mirror in plans and status.
	Name string `yaml:"name" json:"name"`
	// Namespace holding the ports and To (usually the bridge namespace).
	Namespace string `yaml:"namespace" json:"namespace"`
	// Ports are the mirrored interfaces: bridge ports, the uplink, a VLAN
	// sub-interface, a bridge device, any interface declared in Namespace.
	Ports []string `yaml:"ports" json:"ports"`
	// Direction is both (default), ingress or egress.
	Direction string `yaml:"direction,omitempty" json:"direction,omitempty"`
	// To is the interface the copies leave through. It must not be a
	// bridge port (the copies would be switched back into the network).
	To string `yaml:"to" json:"to"`
}

// Dir is the mirror's direction with the default applied.
func (m *Mirror) Dir() string {
	if m.Direction == "" {
		return MirrorBoth
	}
	return m.Direction
}

// Copies reports which sides of each port the mirror copies.
func (m *Mirror) Copies() (ingress, egress bool) {
	d := m.Dir()
	return d != MirrorEgress, d != MirrorIngress
}

// masterOf is the bridge that interface name in ns is declared a port of
// ("" for none).
func (t *Topology) masterOf(ns, name string) string {
	master := ""
	t.eachPort(func(p port) {
		if p.ns == ns && p.name == name {
			master = p.bridge
		}
	})
	return master
}

// mirrors checks each port mirror: a unique name, declared ports and
// destination in its namespace, a destination that is no bridge port and
// not itself mirrored, and each port in one mirror only (a second mirror of
// the same port would be a second copy of every frame).
func (v *validator) mirrors() {
	names := map[string]string{}
	ports := map[string]string{} // ns/port -> field of the mirror that has it
	dests := map[string]bool{}
	for _, m := range v.t.Mirrors {
		dests[m.Namespace+"/"+m.To] = true
	}
	for i, m := range v.t.Mirrors {
		f := fmt.Sprintf("mirrors[%d]", i)
		switch {
		case m.Name == "":
			v.c.add(f+".name", "the mirror needs a name")
		case !idRe.MatchString(m.Name):
			v.c.add(f+".name", "%q: use letters, digits, '-' and '_' only, starting with a letter or digit", m.Name)
		case names[m.Name] != "":
			v.c.add(f+".name", "mirror %q is already declared at %s", m.Name, v.c.at(names[m.Name]))
		default:
			names[m.Name] = f + ".name"
		}
		if m.Direction != "" && !slices.Contains(MirrorDirections, m.Direction) {
			v.c.add(f+".direction", "unknown direction %q; want one of %s", m.Direction, joinQuoted(MirrorDirections))
		}
		if !v.nsRef(m.Namespace, f+".namespace") {
			continue
		}
		declared := func(name, ff, what string) bool {
			if name == "lo" || v.ifaces[m.Namespace][name] == "" {
				v.c.add(ff, "%s %q is not declared in namespace %q (declare it as a link end, a bridge, a VLAN sub-interface or the uplink)", what, name, m.Namespace)
				return false
			}
			return true
		}
		switch {
		case m.To == "":
			v.c.add(f+".to", "name the interface the copies leave through (e.g. the near end of a link to a monitoring namespace)")
		case !declared(m.To, f+".to", "interface"):
		case v.t.Bridge(m.Namespace, m.To) != nil:
			v.c.add(f+".to", "%q is a bridge: copies sent into it would be switched back into the network; use the near end of a link to a monitoring namespace", m.To)
		case v.t.masterOf(m.Namespace, m.To) != "":
			v.c.add(f+".to", "%q is a port of bridge %q: copies sent out of it would reach the network, not only the monitor; use an interface that is no bridge port (the near end of a link to a monitoring namespace)", m.To, v.t.masterOf(m.Namespace, m.To))
		}
		if len(m.Ports) == 0 {
			v.c.add(f+".ports", "name at least one interface to mirror")
		}
		for k, p := range m.Ports {
			pf := fmt.Sprintf("%s.ports[%d]", f, k)
			key := m.Namespace + "/" + p
			switch {
			case !declared(p, pf, "port"):
			case p == m.To:
				v.c.add(pf, "%q is the mirror's destination; it cannot mirror itself", p)
			case dests[key]:
				v.c.add(pf, "%q is the destination of a mirror; mirroring it would copy the copies", p)
			case ports[key] != "":
				v.c.add(pf, "%q is already mirrored at %s; a port can be in one mirror only", p, v.c.at(ports[key]))
			default:
				ports[key] = pf
			}
		}
	}
}
