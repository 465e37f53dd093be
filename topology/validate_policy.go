package topology

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Policy vocabularies.
var (
	Hooks          = []string{"input", "forward", "output"}
	Actions        = []string{"accept", "drop", "reject"}
	Policies       = []string{"accept", "drop"}
	RuleProtos     = []string{"tcp", "udp", "icmp", "icmpv6"}
	SGProtos       = []string{"tcp", "udp", "icmp", "icmpv6", "all"}
	CTStates       = []string{"new", "established", "related", "invalid"}
	SetTypes       = []string{"ipv4_addr", "ipv6_addr", "inet_service"}
	ProbeProtos    = []string{"icmp", "tcp", "udp", "arp"}
	Expectations   = []string{"reachable", "blocked"}
	ICMPTypeNames  = []string{"echo-reply", "destination-unreachable", "redirect", "echo-request", "router-advertisement", "router-solicitation", "time-exceeded", "parameter-problem", "timestamp-request", "timestamp-reply"}
	ICMPv6TypeName = []string{"destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-request", "echo-reply", "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "mld-listener-query", "mld-listener-report"}
)

var setNameRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

// ParseRate reads a bandwidth in bits per second: "10mbit", "1.5gbit",
// "500kbit", "64000bit" or a plain number of bits per second. Units are
// SI (kbit = 1000 bit), as in tc.
func ParseRate(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || f*mult > 1e13 {
		return 0, fmt.Errorf("%q is not a rate (want e.g. 10mbit, 1gbit, 500kbit)", s)
	}
	return uint64(f * mult), nil
}

// ParseSize reads a size in bytes: "32kb", "1mb", "15000" (kb = 1024 bytes, as in tc).
func ParseSize(s string) (uint32, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"mb", 1 << 20}, {"kb", 1 << 10}, {"b", 1}}
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || f*mult > 1<<30 {
		return 0, fmt.Errorf("%q is not a size (want e.g. 32kb, 1mb, 15000)", s)
	}
	return uint32(f * mult), nil
}

// ParsePercent reads "1%", "0.5" or "100" as a percentage 0..100.
func ParsePercent(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "%")
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f > 100 {
		return 0, fmt.Errorf("%q is not a percentage 0..100 (want e.g. 1%% or 0.5)", s)
	}
	return f, nil
}

// ParsePort reads a port "80" or a range "8000-8080" (1..65535).
func ParsePort(s string) (from, to uint16, err error) {
	a, b, isRange := strings.Cut(strings.TrimSpace(s), "-")
	pf, err1 := strconv.Atoi(a)
	pt := pf
	var err2 error
	if isRange {
		pt, err2 = strconv.Atoi(b)
	}
	switch {
	case err1 != nil || err2 != nil:
		return 0, 0, fmt.Errorf("%q is not a port or a port range (want e.g. 80 or 8000-8080)", s)
	case pf < 1 || pf > 65535 || pt < 1 || pt > 65535:
		return 0, 0, fmt.Errorf("port %s is out of range 1..65535", s)
	case pt < pf:
		return 0, 0, fmt.Errorf("port range %s runs backwards", s)
	}
	return uint16(pf), uint16(pt), nil
}

// ParseAddrOrPrefix reads "192.168.1.0/24" or "192.168.1.7" (as /32) into a
// masked prefix.
func ParseAddrOrPrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p != p.Masked() {
			return p, fmt.Errorf("%s has host bits set; did you mean %s?", p, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or a prefix (want e.g. 192.168.1.0/24)", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func (v *validator) oneOf(val string, allowed []string, f, what string) bool {
	if slices.Contains(allowed, val) {
		return true
	}
	v.c.add(f, "unknown %s %q; want one of %s", what, val, joinQuoted(allowed))
	return false
}

// policy checks sets, security groups, firewalls, guards, QoS and
// expectations.
func (v *validator) policy() {
	sets := map[string]Set{}
	for i, s := range v.t.Sets {
		f := fmt.Sprintf("sets[%d]", i)
		switch {
		case !setNameRe.MatchString(s.Name):
			v.c.add(f+".name", "set name %q: use a letter, then letters, digits and '_' (at most 32)", s.Name)
		case sets[s.Name].Name != "":
			v.c.add(f+".name", "set %q is already declared", s.Name)
		default:
			sets[s.Name] = s
		}
		if !v.oneOf(s.Type, SetTypes, f+".type", "set type") {
			continue
		}
		if len(s.Elements) == 0 {
			v.c.add(f+".elements", "a set needs at least one element")
		}
		for k, e := range s.Elements {
			ef := fmt.Sprintf("%s.elements[%d]", f, k)
			if s.Type == "inet_service" {
				if _, _, err := ParsePort(e); err != nil {
					v.c.add(ef, "%v", err)
				}
				continue
			}
			p, err := ParseAddrOrPrefix(e)
			switch {
			case err != nil:
				v.c.add(ef, "%v", err)
			case (s.Type == "ipv4_addr") != p.Addr().Is4():
				v.c.add(ef, "%s does not belong in a set of type %s", e, s.Type)
			}
		}
	}
	sgs := map[string]bool{}
	for i, g := range v.t.SecurityGroups {
		f := fmt.Sprintf("security_groups[%d]", i)
		switch {
		case !setNameRe.MatchString(g.Name):
			v.c.add(f+".name", "security group name %q: use a letter, then letters, digits and '_' (at most 32)", g.Name)
		case sgs[g.Name]:
			v.c.add(f+".name", "security group %q is already declared", g.Name)
		default:
			sgs[g.Name] = true
		}
		for dir, rules := range map[string][]SGRule{"ingress": g.Ingress, "egress": g.Egress} {
			for k, r := range rules {
				v.sgRule(r, dir, fmt.Sprintf("%s.%s[%d]", f, dir, k))
			}
		}
	}
	for i, ns := range v.t.Namespaces {
		if ns.Firewall != nil {
			v.firewall(ns.Name, ns.Firewall, fmt.Sprintf("namespaces[%d].firewall", i), sets)
		}
	}
	v.eachEndpoint(func(e Endpoint, f string) {
		for k, g := range e.SecurityGroups {
			if !sgs[g] {
				v.c.add(fmt.Sprintf("%s.security_groups[%d]", f, k), "security group %q is not declared (add it under security_groups)", g)
			}
		}
		if e.Guard != nil {
			if e.Guard.BroadcastLimit < 0 {
				v.c.add(f+".guard.broadcast_limit", "broadcast_limit %d is negative", e.Guard.BroadcastLimit)
			}
			if p := v.peerOf(e); p == nil || p.Bridge == "" {
				v.c.add(f+".guard", "a guard is enforced at the bridge port on the other end of this NIC's link, and that end is not a bridge port")
			}
		}
		if e.QoS != nil {
			v.qos(e, f+".qos")
		}
	})
	v.expectations()
}

// peerOf returns the other end of e's link (or of the uplink), or nil.
func (v *validator) peerOf(e Endpoint) *Endpoint {
	for _, l := range v.t.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		for j, x := range l.Endpoints {
			if x.Namespace == e.Namespace && x.Name == e.Name {
				return &l.Endpoints[1-j]
			}
		}
	}
	if u := v.t.Uplink; u != nil && u.Peer != nil && u.Peer.Namespace == e.Namespace && u.Peer.Name == e.Name {
		return &Endpoint{Namespace: u.Namespace, Name: u.Name, Bridge: u.Bridge}
	}
	return nil
}

func (v *validator) ports(ps List, proto, f string) {
	if len(ps) > 0 && proto != "tcp" && proto != "udp" {
		v.c.add(f, "ports need proto tcp or udp")
		return
	}
	for k, p := range ps {
		if _, _, err := ParsePort(p); err != nil {
			v.c.add(fmt.Sprintf("%s[%d]", f, k), "%v", err)
		}
	}
}

func (v *validator) prefixes(ps List, f string) (fams map[bool]bool) {
	fams = map[bool]bool{}
	for k, s := range ps {
		p, err := ParseAddrOrPrefix(s)
		if err != nil {
			v.c.add(fmt.Sprintf("%s[%d]", f, k), "%v", err)
			continue
		}
		fams[p.Addr().Is4()] = true
	}
	return fams
}

func (v *validator) sgRule(r SGRule, dir, f string) {
	v.oneOf(r.Proto, SGProtos, f+".proto", "protocol")
	v.ports(r.Port, r.Proto, f+".port")
	if dir == "ingress" && len(r.To) > 0 {
		v.c.add(f+".to", "an ingress rule says where traffic comes from: use from")
	}
	if dir == "egress" && len(r.From) > 0 {
		v.c.add(f+".from", "an egress rule says where traffic goes: use to")
	}
	v.prefixes(r.From, f+".from")
	v.prefixes(r.To, f+".to")
}

func (v *validator) firewall(ns string, fw *Firewall, f string, sets map[string]Set) {
	for hook, p := range map[string]string{"input": fw.Input, "forward": fw.Forward, "output": fw.Output} {
		if p != "" {
			v.oneOf(p, Policies, f+"."+hook, "policy")
		}
	}
	for k, r := range fw.Rules {
		rf := fmt.Sprintf("%s.rules[%d]", f, k)
		if r.Hook != "" {
			v.oneOf(r.Hook, Hooks, rf+".hook", "hook")
		}
		v.oneOf(r.Action, Actions, rf+".action", "action")
		if r.Proto != "" {
			v.oneOf(r.Proto, RuleProtos, rf+".proto", "protocol")
		}
		v.ports(r.SPort, r.Proto, rf+".sport")
		v.ports(r.DPort, r.Proto, rf+".dport")
		fams := v.prefixes(r.SAddr, rf+".saddr")
		for k := range v.prefixes(r.DAddr, rf+".daddr") {
			fams[k] = true
		}
		setRef := func(name, field string, addr bool) {
			if name == "" {
				return
			}
			s, ok := sets[name]
			switch {
			case !ok:
				v.c.add(rf+"."+field, "set %q is not declared (add it under sets)", name)
			case addr && s.Type == "inet_service":
				v.c.add(rf+"."+field, "set %q holds ports, not addresses", name)
			case !addr && s.Type != "inet_service":
				v.c.add(rf+"."+field, "set %q holds addresses, not ports", name)
			case addr:
				fams[s.Type == "ipv4_addr"] = true
			}
		}
		setRef(r.SAddrSet, "saddr_set", true)
		setRef(r.DAddrSet, "daddr_set", true)
		setRef(r.DPortSet, "dport_set", false)
		if r.DPortSet != "" && r.Proto != "tcp" && r.Proto != "udp" {
			v.c.add(rf+".dport_set", "ports need proto tcp or udp")
		}
		if len(fams) > 1 {
			v.c.add(rf, "the rule mixes IPv4 and IPv6 addresses; split it in two")
		}
		if (r.Proto == "icmp" && fams[false]) || (r.Proto == "icmpv6" && fams[true]) {
			v.c.add(rf+".proto", "%s does not go with the rule's %s addresses", r.Proto, map[bool]string{true: "IPv4", false: "IPv6"}[r.Proto == "icmpv6"])
		}
		for k, s := range r.CTState {
			v.oneOf(s, CTStates, fmt.Sprintf("%s.ct_state[%d]", rf, k), "conntrack state")
		}
		for _, x := range []struct{ name, field string }{{r.IIf, "iif"}, {r.OIf, "oif"}} {
			if x.name != "" && (x.name == "lo" || v.ifaces[ns][x.name] == "") && x.name != "lo" {
				v.c.add(rf+"."+x.field, "interface %q is not declared in namespace %q", x.name, ns)
			}
		}
		if len(r.ICMPType) > 0 {
			names := ICMPTypeNames
			switch r.Proto {
			case "icmp":
			case "icmpv6":
				names = ICMPv6TypeName
			default:
				v.c.add(rf+".icmp_type", "icmp_type needs proto icmp or icmpv6")
				names = nil
			}
			for k, ty := range r.ICMPType {
				if names != nil {
					v.oneOf(ty, names, fmt.Sprintf("%s.icmp_type[%d]", rf, k), r.Proto+" type")
				}
			}
		}
		if len(r.Log) > 127 {
			v.c.add(rf+".log", "the log prefix is %d bytes long; at most 127", len(r.Log))
		}
	}
}

func (v *validator) qos(e Endpoint, f string) {
	rate := func(r *Rate, rf string) {
		if r == nil {
			return
		}
		rt, err := ParseRate(r.Rate)
		if err != nil {
			v.c.add(rf+".rate", "%v", err)
		}
		if r.Ceil != "" {
			c, err := ParseRate(r.Ceil)
			if err != nil {
				v.c.add(rf+".ceil", "%v", err)
			} else if rt != 0 && c < rt {
				v.c.add(rf+".ceil", "ceil %s is below the rate %s", r.Ceil, r.Rate)
			}
		}
		if r.Burst != "" {
			if _, err := ParseSize(r.Burst); err != nil {
				v.c.add(rf+".burst", "%v", err)
			}
		}
	}
	rate(e.QoS.Egress, f+".egress")
	rate(e.QoS.Ingress, f+".ingress")
	if e.QoS.Ingress != nil {
		if p := v.peerOf(e); p != nil && p.QoS != nil && (p.QoS.Egress != nil || p.QoS.Netem != nil) {
			v.c.add(f+".ingress", "this NIC's ingress is shaped as the egress of %q in namespace %q, which has its own qos.egress or netem; give the limit in one place", p.Name, p.Namespace)
		}
	}
	if n := e.QoS.Netem; n != nil {
		for _, d := range []struct{ val, field string }{{n.Delay, "delay"}, {n.Jitter, "jitter"}} {
			if d.val == "" {
				continue
			}
			if dur, err := time.ParseDuration(d.val); err != nil || dur < 0 || dur > time.Minute {
				v.c.add(f+".netem."+d.field, "%q is not a duration up to 1m (want e.g. 50ms)", d.val)
			}
		}
		if n.Jitter != "" && n.Delay == "" {
			v.c.add(f+".netem.jitter", "jitter varies the delay: give delay too")
		}
		for _, p := range []struct {
			val   Scalar
			field string
		}{{n.Loss, "loss"}, {n.Duplicate, "duplicate"}, {n.Reorder, "reorder"}, {n.Corrupt, "corrupt"}} {
			if p.val != "" {
				if _, err := ParsePercent(string(p.val)); err != nil {
					v.c.add(f+".netem."+p.field, "%v", err)
				}
			}
		}
		if n.Reorder != "" && n.Delay == "" {
			v.c.add(f+".netem.reorder", "reordering sends some packets ahead of delayed ones: give delay too")
		}
	}
}

func (v *validator) expectations() {
	for i, x := range v.t.Expect {
		f := fmt.Sprintf("expect[%d]", i)
		proto := x.Proto
		if proto == "" {
			proto = "icmp"
		}
		if vm := v.t.VM(x.From); vm != nil && vm.Boot == nil {
			// From inside a built-in guest, through its agent: ICMP and TCP.
			if proto != "icmp" && proto != "tcp" {
				v.c.add(f+".proto", "a probe from VM %q runs in its guest agent, which sends icmp and tcp probes only", x.From)
			}
		} else {
			v.nsRef(x.From, f+".from")
		}
		v.oneOf(proto, ProbeProtos, f+".proto", "probe protocol")
		if x.Expect != "" {
			v.oneOf(x.Expect, Expectations, f+".expect", "expectation")
		}
		switch {
		case x.To == "":
			v.c.add(f+".to", "name a namespace or an address to probe")
		case v.t.Namespace(x.To) != nil:
		default:
			if _, err := netip.ParseAddr(x.To); err != nil {
				v.c.add(f+".to", "%q is neither a namespace of this network nor an IP address", x.To)
			}
		}
		if proto == "tcp" || proto == "udp" {
			if x.Port < 1 || x.Port > 65535 {
				v.c.add(f+".port", "a %s probe needs a port 1..65535", proto)
			}
		} else if x.Port != 0 {
			v.c.add(f+".port", "%s probes have no port", proto)
		}
	}
}

// Lint returns warnings: valid configurations that are probably mistakes.
// The reference design's hardened policy accepts `ct state new` without
// `established,related`, which drops every reply: that is flagged.
func (t *Topology) Lint() ErrorList {
	c := &errs{t: t}
	for i, ns := range t.Namespaces {
		fw := ns.Firewall
		if fw == nil {
			continue
		}
		for _, hook := range Hooks {
			established, newAt := false, -1
			for k, r := range fw.Rules {
				h := r.Hook
				if h == "" {
					h = "input"
				}
				if h != hook || r.Action != "accept" {
					continue
				}
				if slices.Contains(r.CTState, "established") {
					established = true
				}
				if slices.Contains(r.CTState, "new") && newAt < 0 {
					newAt = k
				}
			}
			policy := map[string]string{"input": fw.Input, "forward": fw.Forward, "output": fw.Output}[hook]
			if newAt >= 0 && !established && policy == "drop" {
				c.add(fmt.Sprintf("namespaces[%d].firewall.rules[%d].ct_state", i, newAt),
					"warning: %s accepts ct state new but nothing accepts established,related, and its policy is drop: replies to allowed connections will be dropped; accept ct_state [established, related] first", hook)
			}
		}
	}
	t.lintDNS(c)
	sortErrors(c.list)
	return c.list
}
