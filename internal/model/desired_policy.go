package model

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kvmnet/kvmnet/topology"
)

// policy adds firewalls, security groups, port guards and QoS to s.
func policy(t *topology.Topology, s *State) {
	nsOf := func(name string) *Namespace { return s.Namespaces[t.NSName(name)] }
	sgs := map[string]topology.SecurityGroup{}
	for _, g := range t.SecurityGroups {
		sgs[g.Name] = g
	}
	// Security groups first: they decide what reaches each NIC, then the
	// namespace's own rules filter the rest.
	ends := endpoints(t)
	for _, e := range ends {
		if len(e.ep.SecurityGroups) == 0 {
			continue
		}
		n := nsOf(e.ep.Namespace)
		tap := vmTapOn(t, e.ep)
		if tap != "" {
			// A QEMU VM's traffic is bridged through this namespace: mark
			// what it sends at its tap, so the rules can tell direction.
			n.Guards = append(n.Guards, PortGuard{Port: tap, Mark: VMMark})
		}
		fw := firewallOf(n)
		fw.Rules = append(fw.Rules, securityGroupRules(e.ep, tap, sgs)...)
	}
	for i, ns := range t.Namespaces {
		if ns.Firewall == nil {
			continue
		}
		fw := firewallOf(nsOf(ns.Name))
		for hook, p := range map[string]string{"input": ns.Firewall.Input, "forward": ns.Firewall.Forward, "output": ns.Firewall.Output} {
			if p != "" {
				fw.Policy[hook] = p
			}
		}
		for k, r := range ns.Firewall.Rules {
			fw.Rules = append(fw.Rules, firewallRules(r, fmt.Sprintf("namespaces[%d].firewall.rules[%d]", i, k))...)
		}
	}
	if len(t.Sets) > 0 {
		for _, n := range s.Namespaces {
			if n.Firewall == nil {
				continue
			}
			for _, set := range t.Sets {
				if usesSet(n.Firewall, set.Name) {
					n.Firewall.Sets = append(n.Firewall.Sets, Set{Name: set.Name, Type: set.Type, Elements: slices.Clone([]string(set.Elements))})
				}
			}
		}
	}
	for _, e := range ends {
		if g := e.ep.Guard; g != nil && e.peer != nil && e.peer.Bridge != "" {
			pg := PortGuard{Port: e.peer.Name, BroadcastPPS: g.BroadcastLimit}
			if g.AntiSpoof {
				pg.MACs = []string{e.ep.MAC}
				for _, a := range e.ep.Addresses {
					if p, err := netip.ParsePrefix(a); err == nil {
						pg.IPs = append(pg.IPs, p.Addr())
					}
				}
			}
			pns := nsOf(e.peer.Namespace)
			pns.Guards = append(pns.Guards, pg)
		}
		if q := e.ep.QoS; q != nil {
			if q.Egress != nil || q.Netem != nil {
				nsOf(e.ep.Namespace).Links[e.ep.Name].QoS = qosOf(q.Egress, q.Netem)
			}
			if q.Ingress != nil && e.peer != nil {
				nsOf(e.peer.Namespace).Links[e.peer.Name].QoS = qosOf(q.Ingress, nil)
			}
		}
	}
	for _, n := range s.Namespaces {
		slices.SortFunc(n.Guards, func(a, b PortGuard) int { return compareStrings(a.Port, b.Port) })
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type endpointRef struct {
	ep    topology.Endpoint
	peer  *topology.Endpoint
	field string
}

// endpoints lists every link end and the uplink's peer, with its peer.
func endpoints(t *topology.Topology) []endpointRef {
	var out []endpointRef
	for i, l := range t.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		for j := range l.Endpoints {
			p := l.Endpoints[1-j]
			out = append(out, endpointRef{l.Endpoints[j], &p, fmt.Sprintf("links[%d].endpoints[%d]", i, j)})
		}
	}
	if u := t.Uplink; u != nil && u.Peer != nil && u.Mode != topology.ModeIsolated {
		self := topology.Endpoint{Namespace: u.Namespace, Name: u.Name, Bridge: u.Bridge}
		out = append(out, endpointRef{*u.Peer, &self, "uplink.peer"})
	}
	return out
}

func firewallOf(n *Namespace) *Firewall {
	if n.Firewall == nil {
		n.Firewall = &Firewall{Policy: map[string]string{"input": "accept", "forward": "accept", "output": "accept"}}
	}
	return n.Firewall
}

func usesSet(fw *Firewall, name string) bool {
	for _, r := range fw.Rules {
		if r.SAddrSet == name || r.DAddrSet == name || r.DPortSet == name {
			return true
		}
	}
	return false
}

// parsePrefixes splits prefixes by family. "Anywhere" (0.0.0.0/0, ::/0)
// matches every address of its family: it restricts the rule to the family
// and adds no address match, so it is returned as a non-nil empty list.
func parsePrefixes(list []string) (v4, v6 []netip.Prefix) {
	for _, s := range list {
		p, err := topology.ParseAddrOrPrefix(s)
		if err != nil {
			continue
		}
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return dropAnywhere(v4), dropAnywhere(v6)
}

func dropAnywhere(ps []netip.Prefix) []netip.Prefix {
	if ps == nil {
		return nil
	}
	out := []netip.Prefix{}
	for _, p := range ps {
		if p.Bits() == 0 {
			return []netip.Prefix{} // anywhere: no match on this family
		}
		out = append(out, p)
	}
	return out
}

func parsePorts(list []string) []PortRange {
	var out []PortRange
	for _, s := range list {
		if f, t, err := topology.ParsePort(s); err == nil {
			out = append(out, PortRange{From: f, To: t})
		}
	}
	return out
}

// firewallRules compiles one topology rule (already validated).
func firewallRules(r topology.FirewallRule, origin string) []Rule {
	hook := r.Hook
	if hook == "" {
		hook = "input"
	}
	rule := Rule{
		Hook: hook, Action: r.Action, Proto: r.Proto,
		SAddrSet: r.SAddrSet, DAddrSet: r.DAddrSet, DPortSet: r.DPortSet,
		SPorts: parsePorts(r.SPort), DPorts: parsePorts(r.DPort),
		CTState: slices.Clone([]string(r.CTState)), IIf: r.IIf, OIf: r.OIf,
		ICMPTypes: slices.Clone([]string(r.ICMPType)), Log: r.Log, Origin: origin,
	}
	s4, s6 := parsePrefixes(r.SAddr)
	d4, d6 := parsePrefixes(r.DAddr)
	switch {
	case s4 != nil || d4 != nil:
		rule.Family, rule.SAddr, rule.DAddr = "ip", nilIfEmpty(s4), nilIfEmpty(d4)
	case s6 != nil || d6 != nil:
		rule.Family, rule.SAddr, rule.DAddr = "ip6", nilIfEmpty(s6), nilIfEmpty(d6)
	case r.Proto == "icmp":
		rule.Family = "ip"
	case r.Proto == "icmpv6":
		rule.Family = "ip6"
	}
	return []Rule{rule}
}

// vmTapOn returns the tap of the QEMU VM NIC that rides on link end e, or "".
func vmTapOn(t *topology.Topology, e topology.Endpoint) string {
	for _, v := range t.VMs {
		if v.NS() != e.Namespace {
			continue
		}
		for j, n := range v.NICs {
			if n.Uplink == e.Name {
				return topology.VMTap(j)
			}
		}
	}
	return ""
}

// securityGroupRules turns the groups attached to NIC e into rules on its
// interface: replies accepted, the groups' ingress accepted, the rest of the
// inbound traffic dropped; and the same outbound when a group lists egress.
//
// When a QEMU VM's NIC rides on e (vmTap is its tap), the VM's traffic is
// bridged through the namespace and crosses the forward hook with the
// bridge as both devices: the rules go there and tell direction by the mark
// the tap sets on what the VM sends (model.VMMark). DHCP replies to the VM
// are let in too (the request was a broadcast, so conntrack cannot match
// them).
func securityGroupRules(e topology.Endpoint, vmTap string, sgs map[string]topology.SecurityGroup) []Rule {
	iface := e.Name
	v6 := false
	for _, a := range e.Addresses {
		if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is6() {
			v6 = true
		}
	}
	var out []Rule
	dir := func(hook string, pick func(topology.SecurityGroup) []topology.SGRule, peers func(topology.SGRule) []string) {
		match := func(r Rule) Rule {
			switch {
			case vmTap != "":
				r.Hook, r.Mark, r.MarkNot = "forward", VMMark, hook == "input"
			case hook == "input":
				r.IIf = iface
			default:
				r.OIf = iface
			}
			return r
		}
		var rules []Rule
		any := false
		for _, name := range e.SecurityGroups {
			for k, sr := range pick(sgs[name]) {
				any = true
				origin := fmt.Sprintf("security group %s %s[%d] on %s/%s", name, map[string]string{"input": "ingress", "output": "egress"}[hook], k, e.Namespace, iface)
				base := Rule{Hook: hook, Action: "accept", Origin: origin}
				if sr.Proto != "all" {
					base.Proto = sr.Proto
				}
				base.DPorts = parsePorts(sr.Port)
				p4, p6 := parsePrefixes(peers(sr))
				set := func(r *Rule, ps []netip.Prefix) {
					if hook == "input" {
						r.SAddr = nilIfEmpty(ps)
					} else {
						r.DAddr = nilIfEmpty(ps)
					}
				}
				switch {
				case p4 == nil && p6 == nil:
					if sr.Proto == "icmp" {
						base.Family = "ip"
					} else if sr.Proto == "icmpv6" {
						base.Family = "ip6"
					}
					rules = append(rules, match(base))
				default:
					if p4 != nil && sr.Proto != "icmpv6" {
						r := base
						r.Family = "ip"
						set(&r, p4)
						rules = append(rules, match(r))
					}
					if p6 != nil && sr.Proto != "icmp" {
						r := base
						r.Family = "ip6"
						set(&r, p6)
						rules = append(rules, match(r))
					}
				}
			}
		}
		if !any && hook == "output" {
			return // no egress rules: outbound is free
		}
		word := map[string]string{"input": "ingress", "output": "egress"}[hook]
		out = append(out, match(Rule{Hook: hook, Action: "accept", CTState: []string{"established", "related"}, Origin: fmt.Sprintf("security groups on %s/%s: replies", e.Namespace, iface)}))
		if vmTap != "" && hook == "input" {
			out = append(out, match(Rule{Hook: hook, Action: "accept", Proto: "udp", Family: "ip",
				SPorts: []PortRange{{67, 67}}, DPorts: []PortRange{{68, 68}},
				Origin: fmt.Sprintf("security groups on %s/%s: DHCP replies to the VM", e.Namespace, iface)}))
		}
		if v6 {
			out = append(out, match(Rule{Hook: hook, Action: "accept", Proto: "icmpv6", Family: "ip6",
				ICMPTypes: []string{"nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"},
				Origin:    fmt.Sprintf("security groups on %s/%s: IPv6 neighbour discovery", e.Namespace, iface)}))
		}
		out = append(out, rules...)
		out = append(out, match(Rule{Hook: hook, Action: "drop", Origin: fmt.Sprintf("security groups on %s/%s: default deny %s", e.Namespace, iface, word)}))
	}
	dir("input", func(g topology.SecurityGroup) []topology.SGRule { return g.Ingress }, func(r topology.SGRule) []string { return r.From })
	dir("output", func(g topology.SecurityGroup) []topology.SGRule { return g.Egress }, func(r topology.SGRule) []string { return r.To })
	return out
}

// qosOf converts a validated rate and netem spec.
func qosOf(r *topology.Rate, n *topology.Netem) *QoS {
	q := &QoS{}
	if r != nil {
		q.Rate, _ = topology.ParseRate(r.Rate)
		q.Ceil = q.Rate
		if r.Ceil != "" {
			q.Ceil, _ = topology.ParseRate(r.Ceil)
		}
		if r.Burst != "" {
			q.Burst, _ = topology.ParseSize(r.Burst)
		} else {
			q.Burst = uint32(max(q.Ceil/8/1000, 1600)) // 1 ms at ceil, at least a frame
		}
	}
	if n != nil {
		ne := &Netem{}
		if d, err := parseDurationUS(n.Delay); err == nil {
			ne.DelayUS = d
		}
		if d, err := parseDurationUS(n.Jitter); err == nil {
			ne.JitterUS = d
		}
		ne.LossPct, _ = percent(n.Loss)
		ne.DuplicatePct, _ = percent(n.Duplicate)
		ne.ReorderPct, _ = percent(n.Reorder)
		ne.CorruptPct, _ = percent(n.Corrupt)
		q.Netem = ne
	}
	return q
}

func percent(s topology.Scalar) (float64, error) {
	if s == "" {
		return 0, nil
	}
	return topology.ParsePercent(string(s))
}

func nilIfEmpty(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// QoSFromSpec validates and converts one NIC's qos as the topology gives it
// (for runtime shaping from the command line).
func QoSFromSpec(q *topology.QoS) (*QoS, error) {
	t := &topology.Topology{Name: "qos", Namespaces: []topology.Namespace{{Name: "x", Role: topology.RoleEndpoint}},
		Links: []topology.Link{{MTU: topology.DefaultMTU, Endpoints: []topology.Endpoint{{Namespace: "x", Name: "eth0", QoS: q}, {Namespace: "y", Name: "eth0"}}}}}
	t.Namespaces = append(t.Namespaces, topology.Namespace{Name: "y", Role: topology.RoleEndpoint})
	if err := t.Normalize(); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return qosOf(q.Egress, q.Netem), nil
}
