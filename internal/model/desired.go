package model

import (
	"net/netip"
	"slices"

	"github.com/kvmnet/kvmnet/topology"
)

// Sysctl keys kvmnet derives from the topology.
const (
	SysctlIPv6DisableAll     = "net.ipv6.conf.all.disable_ipv6"
	SysctlIPv6DisableDefault = "net.ipv6.conf.default.disable_ipv6"
	SysctlIPv4Forward        = "net.ipv4.ip_forward"
	SysctlIPv6Forward        = "net.ipv6.conf.all.forwarding"
	SysctlPromoteSecondaries = "net.ipv4.conf.all.promote_secondaries"
)

// Desired builds the state a validated, normalized topology asks for.
//
// Besides what the file says, it derives two things:
//   - IPv6 is switched off (disable_ipv6) in every namespace that declares no
//     IPv6 address, before any link is made there. An interface without IPv6
//     then sends no DAD, router solicitation or MLD report, so a bridge with N
//     ports does not flood N such packets to N ports (which makes a naive
//     build quadratic). Namespaces with IPv6 addresses keep it on.
//   - A routed or NAT uplink turns on forwarding in its namespace.
//   - promote_secondaries is on, as on most distributions: when an edit
//     replaces an interface's address in the same subnet, the new one is
//     added first (as a secondary) and survives the old one's removal, and
//     so do the routes through it.
//
// Sysctls the user declares override derived ones.
func Desired(t *topology.Topology) *State {
	id := t.ID()
	s := &State{Network: id, Namespaces: map[string]*Namespace{}}
	nsOf := func(name string) *Namespace { return s.Namespaces[t.NSName(name)] }
	for _, ns := range t.Namespaces {
		full := t.NSName(ns.Name)
		s.Namespaces[full] = &Namespace{
			Name: full, Owner: id,
			Sysctls: map[string]string{},
			Links:   map[string]*Link{},
			Routes:  map[string]*Route{},
		}
	}
	addrs := func(list []string) []netip.Prefix {
		out := make([]netip.Prefix, 0, len(list))
		for _, a := range list {
			if p, err := netip.ParsePrefix(a); err == nil {
				out = append(out, p)
			}
		}
		SortPrefixes(out)
		return out
	}
	for _, b := range t.Bridges {
		opts := &BridgeOpts{STP: b.STP, AgeingTime: *b.AgeingTime, VLANFiltering: b.VLANFiltering}
		if b.VLANFiltering {
			opts.DefaultPVID = b.PVID()
		}
		l := &Link{
			Name: b.Name, Kind: KindBridge, Owner: id, MAC: b.MAC, MTU: b.MTU, Up: true,
			Addrs: addrs(b.Addresses), Bridge: opts,
		}
		nsOf(b.Namespace).Links[b.Name] = l
	}
	// portVLANs is the membership of a port of bridge br in ns, or nil when
	// br does not filter VLANs.
	portVLANs := func(ns, br string, pv *topology.PortVLAN) []VLANEntry {
		b := t.Bridge(ns, br)
		if b == nil || !b.VLANFiltering {
			return nil
		}
		return PortVLANEntries(pv.Membership(b.PVID()))
	}
	veth := func(a, b topology.Endpoint, mtu int) {
		nsOf(a.Namespace).Links[a.Name] = &Link{
			Name: a.Name, Kind: KindVeth, Owner: id, MAC: a.MAC, MTU: mtu, Up: true,
			Master: a.Bridge, Addrs: addrs(a.Addresses),
			Peer:      PeerRef{NS: t.NSName(b.Namespace), Name: b.Name},
			PortVLANs: portVLANs(a.Namespace, a.Bridge, a.VLAN),
		}
	}
	for _, l := range t.Links {
		a, b := l.Endpoints[0], l.Endpoints[1]
		veth(a, b, l.MTU)
		veth(b, a, l.MTU)
	}
	if u := t.Uplink; u != nil && u.Mode != topology.ModeIsolated {
		self := topology.Endpoint{Namespace: u.Namespace, Name: u.Name, MAC: u.MAC, Addresses: u.Addresses}
		if u.Mode == topology.ModeBridge {
			self.Bridge, self.VLAN = u.Bridge, u.VLAN
		}
		if u.Peer != nil {
			veth(self, *u.Peer, topology.DefaultMTU)
			veth(*u.Peer, self, topology.DefaultMTU)
		} else {
			nsOf(u.Namespace).Links[u.Name] = &Link{
				Name: u.Name, Kind: KindDevice, Owner: id, MAC: u.MAC, Up: true,
				Master: self.Bridge, Addrs: addrs(u.Addresses), Origin: u.Device,
				PortVLANs: portVLANs(u.Namespace, self.Bridge, self.VLAN),
			}
		}
		if u.Mode == topology.ModeRouted || u.Mode == topology.ModeNAT {
			nsOf(u.Namespace).Sysctls[SysctlIPv4Forward] = "1"
		}
	}
	for _, v := range t.VLANs {
		nsOf(v.Namespace).Links[v.Name] = &Link{
			Name: v.Name, Kind: KindVLAN, Owner: id, MAC: v.MAC, MTU: v.MTU, Up: true,
			Master: v.Bridge, Addrs: addrs(v.Addresses), Parent: v.Parent, VID: v.ID,
			PortVLANs: portVLANs(v.Namespace, v.Bridge, nil),
		}
	}
	// kvmnet manages the nftables table of every host namespace: NAT mode
	// masquerades, behind the uplink, every IPv4 subnet the host reaches
	// through its other interfaces (connected or routed); other modes want
	// no table there.
	for _, h := range t.NamespacesWithRole(topology.RoleHost) {
		nsOf(h).Masquerade = []Masquerade{}
	}
	if u := t.Uplink; u != nil && u.Mode == topology.ModeNAT {
		n := nsOf(u.Namespace)
		seen := map[netip.Prefix]bool{}
		for _, a := range n.Links[u.Name].Addrs {
			seen[a.Masked()] = true // the uplink's own subnet needs no NAT
		}
		add := func(p netip.Prefix) {
			if p = p.Masked(); p.Addr().Is4() && p.Bits() > 0 && !seen[p] {
				seen[p] = true
				n.Masquerade = append(n.Masquerade, Masquerade{OutIface: u.Name, Source: p})
			}
		}
		for _, ln := range SortedNames(n.Links) {
			if ln != u.Name {
				for _, a := range n.Links[ln].Addrs {
					add(a)
				}
			}
		}
		for _, r := range t.Namespace(u.Namespace).Routes {
			if p, err := netip.ParsePrefix(r.To); err == nil {
				add(p)
			}
		}
		slices.SortFunc(n.Masquerade, CompareMasquerade)
	}
	policy(t, s)
	mirrors(t, s)
	for _, ns := range t.Namespaces {
		n := nsOf(ns.Name)
		if n.Masquerade == nil && ns.Role == topology.RoleHost {
			n.Masquerade = []Masquerade{}
		}
		for _, r := range ns.Routes {
			rt := &Route{Dev: r.Dev, Metric: r.Metric}
			if r.Via != "" {
				rt.Via, _ = netip.ParseAddr(r.Via)
			}
			if r.To == "default" {
				if rt.Via.Is6() {
					rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				} else {
					rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				}
			} else {
				rt.Dst, _ = netip.ParsePrefix(r.To)
			}
			if rt.Dst.Addr().Is6() && rt.Metric == 0 {
				rt.Metric = 1024 // the kernel's IPv6 default (IP6_RT_PRIO_USER)
			}
			n.Routes[rt.Key()] = rt
		}
		v6 := false
		for _, l := range n.Links {
			for _, a := range l.Addrs {
				v6 = v6 || a.Addr().Is6()
			}
		}
		for _, r := range n.Routes {
			v6 = v6 || r.Dst.Addr().Is6()
		}
		off := "1"
		if v6 {
			off = "0"
			if n.Sysctls[SysctlIPv4Forward] == "1" {
				n.Sysctls[SysctlIPv6Forward] = "1"
			}
		}
		n.Sysctls[SysctlPromoteSecondaries] = "1"
		n.Sysctls[SysctlIPv6DisableAll] = off
		n.Sysctls[SysctlIPv6DisableDefault] = off
		for k, v := range ns.Sysctls {
			n.Sysctls[k] = v
		}
	}
	return s
}

// SortPrefixes orders prefixes canonically (address, then length).
func SortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}
