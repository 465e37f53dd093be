package diagnose

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/topology"
)

func (d *diag) check() {
	d.checkPresence()
	d.checkDHCP()
	d.checkLinks()
	d.checkDuplicates()
	d.checkMTU()
	d.checkProbes()
	d.checkLoss()
	d.checkDNS()
	d.checkFDB()
	d.checkVLANs()
	d.checkMirrors()
	d.checkRoutes()
	d.checkForwarding()
	d.checkRPFilter()
	d.checkFirewall()
	d.checkLoops()
}

func ipn(ns string) string { return "ip -n " + ns }

// checkPresence: namespaces, interfaces, veth peers and addresses the
// topology declares must exist (step 1: without them nothing answers).
func (d *diag) checkPresence() {
	for _, name := range model.SortedNames(d.desired.Namespaces) {
		want := d.desired.Namespaces[name]
		ns := d.nss[name]
		if ns == nil {
			d.add(Finding{Severity: Error, Step: 1, Check: CheckNamespaceMissing, Namespace: name,
				Summary:  "the namespace does not exist",
				Evidence: []string{fmt.Sprintf("no /run/netns/%s", name)},
				Fix:      "kvmnet up (builds it)"})
			continue
		}
		if ns.Owner != d.t.ID() {
			d.add(Finding{Severity: Error, Step: 1, Check: CheckNamespaceMissing, Namespace: name,
				Summary:  "the namespace exists but is not this network's",
				Evidence: []string{fmt.Sprintf("its mark names owner %q, want %q", ns.Owner, d.t.ID())},
				Fix:      fmt.Sprintf("remove or rename the foreign namespace (ip netns del %s), then kvmnet up", name)})
			continue
		}
		for _, ln := range model.SortedNames(want.Links) {
			l := want.Links[ln]
			n := d.ifaces[name+"/"+ln]
			if n == nil {
				f := Finding{Severity: Error, Step: 1, Check: CheckInterfaceMissing, Namespace: name, Interface: ln,
					Summary:  fmt.Sprintf("%s %s is missing", l.Kind, ln),
					Evidence: []string{fmt.Sprintf("%s link show %s: does not exist", ipn(name), ln)},
					Fix:      "kvmnet up (recreates it)"}
				if l.Kind == model.KindVeth {
					f.Summary = fmt.Sprintf("veth %s (peer %s) is missing", ln, l.Peer)
					if d.ifaces[l.Peer.String()] == nil {
						f.Evidence = append(f.Evidence, fmt.Sprintf("its peer %s is gone too: deleting one end of a veth deletes both", l.Peer))
					}
				}
				d.add(f)
				continue
			}
			if l.Kind == model.KindVeth && n.peer == nil {
				ev := []string{fmt.Sprintf("the topology joins %s/%s to %s", name, ln, l.Peer)}
				if p := d.ifaces[l.Peer.String()]; p == nil {
					ev = append(ev, fmt.Sprintf("%s does not exist", l.Peer))
				} else {
					ev = append(ev, fmt.Sprintf("%s exists but is not %s's peer (its peer is ifindex %d)", l.Peer, ln, p.i.PeerIndex))
				}
				if n.i.PeerIndex != 0 {
					ev = append(ev, fmt.Sprintf("the kernel's peer of %s is ifindex %d (netnsid %d)", ln, n.i.PeerIndex, n.i.PeerNetNSID))
				}
				d.add(Finding{Severity: Error, Step: 1, Check: CheckPeerMissing, Namespace: name, Interface: ln,
					Summary: fmt.Sprintf("the other end of %s is not %s", ln, l.Peer), Evidence: ev,
					Fix: fmt.Sprintf("%s link del %s; kvmnet up (recreates the pair)", ipn(name), ln)})
			}
			for _, a := range l.Addrs {
				if !containsPrefix(n.i.Addresses, a) {
					d.add(Finding{Severity: Error, Step: 1, Check: CheckAddressMissing, Namespace: name, Interface: ln,
						Summary:  fmt.Sprintf("address %s is missing", a),
						Evidence: []string{fmt.Sprintf("%s has %s; the topology declares %s", ln, prefixes(n.i.Addresses), a)},
						Fix:      fmt.Sprintf("%s addr add %s dev %s (or kvmnet up)", ipn(name), a, ln)})
				}
			}
		}
	}
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

func prefixes(ps []netip.Prefix) string { return addrList(ps) }

// addrList lists addresses or prefixes, "no address" for none.
func addrList[T fmt.Stringer](a []T) string {
	if len(a) == 0 {
		return "no address"
	}
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

// checkLinks: every declared interface administratively up with carrier.
func (d *diag) checkLinks() {
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		if n.want == nil || !n.want.Up {
			continue
		}
		ns, name := n.ns.Name, n.i.Name
		if !n.i.AdminUp {
			ev := []string{fmt.Sprintf("%s link show %s: state DOWN, no UP flag", ipn(ns), name)}
			if n.peer != nil {
				ev = append(ev, fmt.Sprintf("its peer %s has no carrier because of it", n.peer.key()))
			}
			d.add(Finding{Severity: Error, Step: 1, Check: CheckLinkDown, Namespace: ns, Interface: name,
				Summary: fmt.Sprintf("%s is administratively down", name), Evidence: ev,
				Fix: fmt.Sprintf("%s link set %s up (or kvmnet up)", ipn(ns), name)})
			continue
		}
		if n.i.Carrier || n.i.Kind == "bridge" {
			continue
		}
		ev := []string{fmt.Sprintf("%s is up but has no carrier (operstate %s)", name, n.i.OperState)}
		fix := fmt.Sprintf("check the other end of %s", name)
		if n.peer != nil && !n.peer.i.AdminUp {
			ev = append(ev, fmt.Sprintf("its peer %s is administratively down", n.peer.key()))
			fix = fmt.Sprintf("%s link set %s up", ipn(n.peer.ns.Name), n.peer.i.Name)
		} else if n.peer == nil && n.i.Kind == "veth" {
			ev = append(ev, "its veth peer is not in this network")
		}
		d.add(Finding{Severity: Error, Step: 1, Check: CheckNoCarrier, Namespace: ns, Interface: name,
			Summary: fmt.Sprintf("%s has no carrier", name), Evidence: ev, Fix: fix})
	}
}

// culprit picks, among interfaces sharing a value, the one that differs from
// the topology (the user's mistake); else the last one.
func culprit(ns []*node, differs func(*node) bool) *node {
	for _, n := range ns {
		if differs(n) {
			return n
		}
	}
	return ns[len(ns)-1]
}

func (d *diag) checkDuplicates() {
	explained := map[string]bool{}
	for _, seg := range d.segs {
		byMAC := map[string][]*node{}
		byIP := map[netip.Addr][]*node{}
		for _, n := range seg {
			if n.i.MAC != "" {
				byMAC[n.i.MAC] = append(byMAC[n.i.MAC], n)
			}
			for _, a := range n.i.Addresses {
				if !a.Addr().IsLinkLocalUnicast() {
					byIP[a.Addr()] = append(byIP[a.Addr()], n)
				}
			}
		}
		for _, mac := range model.SortedNames(byMAC) {
			ns := byMAC[mac]
			if len(ns) < 2 {
				continue
			}
			c := culprit(ns, func(n *node) bool { return n.want != nil && n.want.MAC != "" && n.want.MAC != mac })
			var where []string
			for _, n := range ns {
				where = append(where, n.key())
			}
			ev := []string{fmt.Sprintf("MAC %s is on %s, on one L2 segment", mac, strings.Join(where, " and "))}
			ev = append(ev, d.fdbEvidence(mac)...)
			fix := fmt.Sprintf("give %s a unique MAC: %s link set %s address <unique MAC>", c.key(), ipn(c.ns.Name), c.i.Name)
			if c.want != nil && c.want.MAC != "" && c.want.MAC != mac {
				fix = fmt.Sprintf("%s link set %s address %s (the declared MAC; or kvmnet up)", ipn(c.ns.Name), c.i.Name, c.want.MAC)
			}
			d.add(Finding{Severity: Error, Step: 2, Check: CheckDuplicateMAC, Namespace: c.ns.Name, Interface: c.i.Name,
				Summary: fmt.Sprintf("duplicate MAC %s: the bridge sends one host's frames to the other", mac), Evidence: ev, Fix: fix})
		}
		ips := make([]netip.Addr, 0, len(byIP))
		for ip := range byIP {
			ips = append(ips, ip)
		}
		sort.Slice(ips, func(a, b int) bool { return ips[a].Less(ips[b]) })
		for _, ip := range ips {
			ns := byIP[ip]
			if len(ns) < 2 {
				continue
			}
			c := culprit(ns, func(n *node) bool {
				if n.want == nil {
					return true
				}
				for _, a := range n.want.Addrs {
					if a.Addr() == ip {
						return false
					}
				}
				return true
			})
			var where []string
			for _, n := range ns {
				where = append(where, fmt.Sprintf("%s (MAC %s)", n.key(), n.i.MAC))
			}
			ev := []string{fmt.Sprintf("%s is held by %s, on one L2 segment", ip, strings.Join(where, " and "))}
			for _, n := range ns {
				if macs := d.arp[n.key()+" "+ip.String()]; len(macs) > 0 {
					ev = append(ev, fmt.Sprintf("ARP probe for %s from %s answered by %s", ip, n.key(), strings.Join(macs, ", ")))
				}
				explained[n.key()+" "+ip.String()] = true
			}
			bits := 32
			for _, a := range c.i.Addresses {
				if a.Addr() == ip {
					bits = a.Bits()
				}
			}
			d.add(Finding{Severity: Error, Step: 1, Check: CheckDuplicateIP, Namespace: c.ns.Name, Interface: c.i.Name,
				Summary: fmt.Sprintf("duplicate IP %s: ARP answers from two hosts", ip), Evidence: ev,
				Fix: fmt.Sprintf("%s addr del %s/%d dev %s", ipn(c.ns.Name), ip, bits, c.i.Name)})
		}
	}
	// ARP conflicts with hosts this network does not show.
	for _, k := range model.SortedNames(d.arp) {
		if explained[k] {
			continue
		}
		key, ip, _ := strings.Cut(k, " ")
		n := d.ifaces[key]
		if n == nil {
			continue
		}
		d.add(Finding{Severity: Error, Step: 1, Check: CheckDuplicateIP, Namespace: n.ns.Name, Interface: n.i.Name,
			Summary:  fmt.Sprintf("duplicate IP %s: another host on the segment claims it", ip),
			Evidence: []string{fmt.Sprintf("ARP probe for %s from %s answered by %s (not %s)", ip, key, strings.Join(d.arp[k], ", "), n.i.MAC)},
			Fix:      fmt.Sprintf("find the host with MAC %s and change its address, or give %s another address", d.arp[k][0], key)})
	}
}

func (d *diag) fdbEvidence(mac string) []string {
	var ev []string
	for _, n := range d.ifaces {
		if n.i.Kind != "bridge" {
			continue
		}
		b := n.ns.Bridge(n.i.Name)
		if b == nil {
			continue
		}
		for _, e := range b.FDB {
			if e.MAC == mac && e.Master && e.Learned {
				ev = append(ev, fmt.Sprintf("bridge -n %s fdb: %s dev %s master %s (age %.0fs)", n.ns.Name, mac, e.Port, b.Name, e.AgeSeconds))
			}
		}
	}
	sort.Strings(ev)
	return ev
}

// checkMTU: one MTU per L2 segment; a DF probe at the segment MTU must pass.
func (d *diag) checkMTU() {
	probeOf := map[string]Probe{}
	for _, p := range d.rep.Probes {
		probeOf[d.t.NSName(p.Node)] = p
	}
	for _, seg := range d.segs {
		count := map[int]int{}
		declared := map[int]int{}
		for _, n := range seg {
			if n.i.Kind == "bridge" {
				continue
			}
			count[n.i.MTU]++
			if n.want != nil && n.want.MTU > 0 {
				declared[n.want.MTU]++
			}
		}
		if len(count) < 2 {
			continue
		}
		want := mode(declared)
		if want == 0 {
			want = mode(count)
		}
		var probeEv []string
		for _, n := range seg {
			if p, ok := probeOf[n.ns.Name]; ok && p.Result.OK && p.Large != nil && !p.Large.OK {
				probeEv = append(probeEv, fmt.Sprintf("from %s: %d-byte DF ping to %s failed (%s) while 56-byte pings pass",
					n.ns.Name, p.Large.Size, p.Gateway, orNoReply(p.Large.Error)))
			}
		}
		sort.Strings(probeEv)
		for _, n := range seg {
			if n.i.Kind == "bridge" || n.i.MTU == want {
				continue
			}
			ev := []string{fmt.Sprintf("%s has MTU %d; the rest of its L2 segment has %d", n.key(), n.i.MTU, want)}
			if n.i.MTU < want && n.peer != nil && n.peer.i.Stats.TxDropped > 0 {
				ev = append(ev, fmt.Sprintf("its peer %s dropped %d frames on transmit (too large for %s)", n.peer.key(), n.peer.i.Stats.TxDropped, n.i.Name))
			}
			if n.i.MTU < want && n.isPort() {
				ev = append(ev, fmt.Sprintf("the bridge %s silently drops frames larger than %d leaving by %s", n.master.i.Name, n.i.MTU, n.i.Name))
			}
			ev = append(ev, probeEv...)
			d.add(Finding{Severity: Error, Step: 1, Check: CheckMTU, Namespace: n.ns.Name, Interface: n.i.Name,
				Summary: fmt.Sprintf("MTU mismatch: %s has %d, the segment %d", n.i.Name, n.i.MTU, want), Evidence: ev,
				Fix: fmt.Sprintf("%s link set %s mtu %d (or kvmnet up)", ipn(n.ns.Name), n.i.Name, want)})
		}
	}
	// A DF probe that fails with no mismatch on the segment: the path MTU
	// is smaller somewhere else.
	for _, p := range d.rep.Probes {
		if !p.Result.OK || p.Large == nil || p.Large.OK {
			continue
		}
		ns := d.t.NSName(p.Node)
		dup := false
		for _, f := range d.rep.Findings {
			dup = dup || f.Check == CheckMTU
		}
		if dup {
			continue
		}
		d.add(Finding{Severity: Error, Step: 1, Check: CheckMTU, Namespace: ns,
			Summary: fmt.Sprintf("the path to %s does not carry full-size frames", p.Gateway),
			Evidence: []string{fmt.Sprintf("%d-byte DF ping to %s failed (%s) while 56-byte pings pass",
				p.Large.Size, p.Gateway, orNoReply(p.Large.Error))},
			Fix: "make every hop's MTU equal (kvmnet status shows each interface's MTU)"})
	}
}

func orNoReply(s string) string {
	if s == "" {
		return "no reply"
	}
	return s
}

func mode(m map[int]int) int {
	best, bestN := 0, 0
	for v, n := range m {
		if n > bestN || n == bestN && v > best {
			best, bestN = v, n
		}
	}
	return best
}

// checkProbes: step 1 proper: the gateway must answer.
func (d *diag) checkProbes() {
	for _, p := range d.rep.Probes {
		if p.Result.OK {
			continue
		}
		ns := d.t.NSName(p.Node)
		ev := []string{fmt.Sprintf("%d echo requests to %s: %s", p.Result.Sent, p.Gateway, orNoReply(p.Result.Error))}
		iface := ""
		if n := d.nss[ns]; n != nil {
			for _, nb := range n.Neighbours {
				if nb.IP == p.Gateway {
					ev = append(ev, fmt.Sprintf("ip -n %s neigh: %s %s %s", ns, nb.IP, orDash(nb.MAC), nb.State))
				}
			}
			for _, i := range n.Interfaces {
				for _, a := range i.Addresses {
					if a.Masked().Contains(p.Gateway) {
						iface = i.Name
					}
				}
			}
		}
		if len(d.holders(p.Gateway)) == 0 {
			ev = append(ev, fmt.Sprintf("no interface of the network holds %s", p.Gateway))
		}
		gwNode := ""
		for _, h := range d.holders(p.Gateway) {
			gwNode = d.nodeOf[h.ns.Name]
		}
		fix := "fix the errors found on this path (below); `kvmnet trace " + p.Node
		if gwNode != "" {
			fix += " " + gwNode + "` names the first hop that stops the traffic"
		} else {
			fix += " " + p.Gateway.String() + "`"
		}
		d.add(Finding{Severity: Error, Step: 1, Check: CheckGateway, Namespace: ns, Interface: iface,
			Summary: fmt.Sprintf("the gateway %s does not answer", p.Gateway), Evidence: ev, Fix: fix})
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// checkFDB: every VM's and endpoint's MAC is learned on its own bridge port,
// and the ports towards them forward.
func (d *diag) checkFDB() {
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		if n.isPort() || n.i.Kind == "bridge" || n.peer == nil || !n.peer.isPort() {
			continue
		}
		port := n.peer
		br := port.master
		b := br.ns.Bridge(br.i.Name)
		if b == nil {
			continue
		}
		if st := b.PortState(port.i.Name); st != "" && st != "forwarding" && !(st == "disabled" && !port.i.Carrier) {
			sev := Warning
			if !b.STP {
				sev = Error
			}
			d.add(Finding{Severity: sev, Step: 2, Check: CheckPortState, Namespace: port.ns.Name, Interface: port.i.Name,
				Summary:  fmt.Sprintf("bridge port %s is %s, not forwarding", port.i.Name, st),
				Evidence: []string{fmt.Sprintf("bridge -n %s link: %s state %s (stp %v)", port.ns.Name, port.i.Name, st, b.STP)},
				Fix:      "if STP blocks it, another path leads to the same segment: remove the redundant link"})
		}
		for _, e := range b.FDB {
			if e.MAC != n.i.MAC || !e.Master || !e.Learned || e.Port == port.i.Name {
				continue
			}
			ev := []string{
				fmt.Sprintf("bridge -n %s fdb: %s dev %s master %s (age %.0fs)", br.ns.Name, e.MAC, e.Port, br.i.Name, e.AgeSeconds),
				fmt.Sprintf("%s (MAC %s) is attached to port %s", n.key(), n.i.MAC, port.i.Name),
			}
			fix := fmt.Sprintf("find why frames from %s arrive on %s (a duplicate MAC or a loop, below); then bridge -n %s fdb del %s dev %s master", e.MAC, e.Port, br.ns.Name, e.MAC, e.Port)
			d.add(Finding{Severity: Error, Step: 2, Check: CheckFDBPort, Namespace: br.ns.Name, Interface: port.i.Name,
				Summary: fmt.Sprintf("%s's MAC %s is learned on port %s instead of %s", d.nodeOf[n.ns.Name], e.MAC, e.Port, port.i.Name), Evidence: ev, Fix: fix})
		}
	}
}

// checkRoutes: the declared routes exist, a VM or endpoint has a default
// route, and every gateway is inside a connected subnet.
func (d *diag) checkRoutes() {
	for _, tn := range d.t.Namespaces {
		name := d.t.NSName(tn.Name)
		ns := d.nss[name]
		want := d.desired.Namespaces[name]
		if ns == nil || want == nil || ns.Owner != d.t.ID() {
			continue
		}
		var connected []netip.Prefix
		down := map[netip.Prefix]string{} // subnets of interfaces that are down
		for _, i := range ns.Interfaces {
			for _, a := range i.Addresses {
				if i.AdminUp && i.Carrier {
					connected = append(connected, a.Masked())
				} else {
					down[a.Masked()] = i.Name
				}
			}
		}
		downFor := func(ip netip.Addr) string {
			for p, ifc := range down {
				if p.Contains(ip) {
					return ifc
				}
			}
			return ""
		}
		inSubnet := func(ip netip.Addr) bool {
			for _, p := range connected {
				if p.Contains(ip) {
					return true
				}
			}
			return false
		}
		hasDefault := map[bool]bool{}
		for _, r := range ns.Routes {
			if r.Dst.Bits() == 0 && (r.Type == "" || r.Type == "unicast") {
				hasDefault[r.Dst.Addr().Is6()] = true
			}
			if r.Via.IsValid() && !r.Via.IsLinkLocalUnicast() && !inSubnet(r.Via) && downFor(r.Via) == "" {
				d.add(Finding{Severity: Error, Step: 3, Check: CheckGatewaySubnet, Namespace: name, Interface: r.Dev,
					Summary:  fmt.Sprintf("route %s: gateway %s is not in a connected subnet", r, r.Via),
					Evidence: []string{fmt.Sprintf("connected subnets of %s: %s", name, prefixes(connected))},
					Fix:      fmt.Sprintf("%s route replace %s via <an address in %s>", ipn(name), routeDst(r.Dst), prefixes(connected))})
			}
		}
		for _, k := range model.SortedNames(want.Routes) {
			r := want.Routes[k]
			found := false
			for _, kr := range ns.Routes {
				if kr.Kvmnet && kr.Dst == r.Dst && kr.Metric == r.Metric {
					found = true
				}
			}
			if found {
				continue
			}
			ev := []string{fmt.Sprintf("%s route: no %s; the topology declares %s", ipn(name), routeDst(r.Dst), r)}
			if ifc := downFor(r.Via); r.Via.IsValid() && ifc != "" {
				ev = append(ev, fmt.Sprintf("the kernel removed it when %s lost its link (the link findings above); bringing %s up again does not restore it, kvmnet up does", ifc, ifc))
			} else if r.Via.IsValid() && !r.Via.IsLinkLocalUnicast() && !inSubnet(r.Via) {
				ev = append(ev, fmt.Sprintf("its gateway %s is not in a connected subnet (%s): the kernel refuses the route until an address of that subnet is back", r.Via, prefixes(connected)))
				d.add(Finding{Severity: Error, Step: 3, Check: CheckGatewaySubnet, Namespace: name, Interface: r.Dev,
					Summary: fmt.Sprintf("declared gateway %s is not in a connected subnet", r.Via), Evidence: ev,
					Fix: "restore the interface's address (kvmnet up)"})
			}
			check, what := CheckRouteMissing, fmt.Sprintf("route %s is missing", r)
			if r.Dst.Bits() == 0 && !hasDefault[r.Dst.Addr().Is6()] {
				check, what = CheckNoDefaultRoute, "no default route"
			}
			d.add(Finding{Severity: Error, Step: 3, Check: check, Namespace: name, Interface: r.Dev, Summary: what, Evidence: ev,
				Fix: fmt.Sprintf("%s route add %s (or kvmnet up)", ipn(name), r.String())})
		}
		// A namespace without addresses (one that only carries a VM's NIC to its
		// bridge; loopback and IPv6 link-local addresses do not count) routes
		// nothing: the guest does.
		global := false
		for _, p := range connected {
			global = global || !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsLoopback()
		}
		if (tn.Role == topology.RoleVM || tn.Role == topology.RoleEndpoint) && global && !hasDefault[false] && !hasDefault[true] && len(want.Routes) == 0 {
			d.add(Finding{Severity: Info, Step: 3, Check: CheckNoDefaultRoute, Namespace: name,
				Summary:  "no default route (none declared): only connected subnets are reachable",
				Evidence: []string{fmt.Sprintf("%s route has no default", ipn(name))},
				Fix:      "declare routes: [{to: default, via: GATEWAY}] for this namespace if it should reach beyond its segment"})
		}
	}
}

func routeDst(p netip.Prefix) string {
	if p.Bits() == 0 {
		return "default"
	}
	return p.String()
}

// checkForwarding: a namespace that is another's gateway and joins several
// subnets routes between them, so it needs IPv4 forwarding.
func (d *diag) checkForwarding() {
	// Who routes through whom: gateway namespace -> "client routes via ...".
	clientsOf := map[string][]string{}
	for other := range d.nss {
		for _, gw := range d.gateways(other) {
			for _, h := range d.holders(gw) {
				if h.ns.Name != other {
					clientsOf[h.ns.Name] = append(clientsOf[h.ns.Name], fmt.Sprintf("%s routes via %s (%s)", other, gw, h.key()))
				}
			}
		}
	}
	for _, name := range model.SortedNames(d.nss) {
		ns := d.nss[name]
		if ns.Owner != d.t.ID() {
			continue
		}
		subnets := map[netip.Prefix]bool{}
		for _, i := range ns.Interfaces {
			for _, a := range i.Addresses {
				if a.Addr().Is4() && !a.Addr().IsLoopback() {
					subnets[a.Masked()] = true
				}
			}
		}
		declared := false
		if w := d.desired.Namespaces[name]; w != nil {
			declared = w.Sysctls[model.SysctlIPv4Forward] == "1"
		}
		clients := clientsOf[name]
		sort.Strings(clients)
		if len(clients) > 5 {
			clients = append(clients[:5], fmt.Sprintf("... and %d more", len(clientsOf[name])-5))
		}
		needs := declared || len(clients) > 0 && len(subnets) > 1
		if !needs || ns.Sysctl(inspect.SysctlIPv4Forward) != "0" {
			continue
		}
		ev := []string{fmt.Sprintf("net.ipv4.ip_forward = 0 in %s", name)}
		if declared {
			ev = append(ev, "the topology sets net.ipv4.ip_forward = 1 here")
		}
		ev = append(ev, clients...)
		var subs []string
		for p := range subnets {
			subs = append(subs, p.String())
		}
		sort.Strings(subs)
		ev = append(ev, "it joins "+strings.Join(subs, ", "))
		if fw := ns.Netstat["Ip.InAddrErrors"]; fw > 0 {
			ev = append(ev, fmt.Sprintf("Ip.InAddrErrors = %d (packets for other hosts it would not forward)", fw))
		}
		fix := fmt.Sprintf("ip netns exec %s sysctl -w net.ipv4.ip_forward=1", name)
		if declared {
			fix += " (or kvmnet up --deep, which restores the declared value)"
		}
		d.add(Finding{Severity: Error, Step: 3, Check: CheckForwarding, Namespace: name,
			Summary: "IPv4 forwarding is off in a namespace that routes", Evidence: ev, Fix: fix})
	}
}

// checkRPFilter: the reverse-path filter dropped packets.
func (d *diag) checkRPFilter() {
	for _, name := range model.SortedNames(d.nss) {
		ns := d.nss[name]
		drops := ns.Netstat["TcpExt.IPReversePathFilter"]
		if drops == 0 {
			continue
		}
		ev := []string{fmt.Sprintf("TcpExt IPReversePathFilter = %d in %s (/proc/net/netstat): packets dropped because the route back to their source leaves by another interface", drops, name)}
		var on []string
		if v := ns.Sysctl(inspect.SysctlRPFilterAll); v != "" {
			on = append(on, "all="+v)
		}
		iface := ""
		for _, i := range ns.Interfaces {
			if v := ns.Sysctl(inspect.RPFilterKey(i.Name)); v != "" && v != "0" {
				on = append(on, i.Name+"="+v)
				if iface == "" && i.Name != "lo" {
					iface = i.Name
				}
			}
		}
		ev = append(ev, "rp_filter: "+strings.Join(on, " ")+" (the kernel uses the larger of all and the interface)")
		d.add(Finding{Severity: Warning, Step: 3, Check: CheckRPFilter, Namespace: name, Interface: iface,
			Summary: "the reverse-path filter drops packets", Evidence: ev,
			Fix: fmt.Sprintf("make the routes symmetric (the source's subnet routed back out of the interface it arrives on), or loosen the filter: ip netns exec %s sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2", name, orDash(iface))})
	}
}

// firewallCheck inspects one namespace's nftables tables. The checks are a
// list so that firewall features (security groups, expected drops) plug in.
type firewallCheck func(d *diag, ns *inspect.Namespace) []Finding

var firewallChecks = []firewallCheck{brNetfilterCheck, dropCountersCheck}

func (d *diag) checkFirewall() {
	for _, name := range model.SortedNames(d.nss) {
		ns := d.nss[name]
		if ns.Owner != d.t.ID() {
			continue
		}
		for _, c := range firewallChecks {
			for _, f := range c(d, ns) {
				d.add(f)
			}
		}
	}
}

// brNetfilterCheck: with br_netfilter, bridged IPv4 frames traverse the
// namespace's ip FORWARD hook; a drop policy there (Docker's) cuts the
// bridge's traffic.
func brNetfilterCheck(d *diag, ns *inspect.Namespace) []Finding {
	if len(ns.Bridges) == 0 || ns.Sysctl(inspect.SysctlBridgeNFIP) != "1" {
		return nil
	}
	var ev []string
	for _, t := range ns.Firewall {
		if t.Family != "ip" && t.Family != "inet" {
			continue
		}
		for _, c := range t.Chains {
			if c.Hook != "forward" {
				continue
			}
			if c.Policy == "drop" {
				ev = append(ev, fmt.Sprintf("table %s %s chain %s: hook forward priority %d policy drop", t.Family, t.Name, c.Name, c.Priority))
			}
			for _, r := range c.Rules {
				if r.Drops() && r.Packets > 0 {
					ev = append(ev, fmt.Sprintf("table %s %s chain %s rule %d: %s, %d packets", t.Family, t.Name, c.Name, r.Handle, r.Verdict, r.Packets))
				}
			}
		}
	}
	for _, c := range ns.Legacy {
		if c.Chain != "FORWARD" {
			continue
		}
		if c.Policy == "drop" {
			ev = append(ev, fmt.Sprintf("iptables-legacy filter FORWARD: policy DROP, %d packets", c.PolicyPackets))
		}
		if c.DropPackets > 0 {
			ev = append(ev, fmt.Sprintf("iptables-legacy filter FORWARD: rules dropped %d packets", c.DropPackets))
		}
	}
	if len(ev) == 0 {
		return nil
	}
	var brs []string
	for _, b := range ns.Bridges {
		brs = append(brs, b.Name)
	}
	ev = append([]string{fmt.Sprintf("net.bridge.bridge-nf-call-iptables = 1 in %s: frames bridged by %s pass the ip FORWARD hook (br_netfilter)", ns.Name, strings.Join(brs, ", "))}, ev...)
	return []Finding{{Severity: Error, Step: 4, Check: CheckHostInterference, Namespace: ns.Name, Interface: brs[0],
		Summary:  "br_netfilter sends bridged traffic through a FORWARD chain that drops it (as Docker installs)",
		Evidence: ev,
		Fix: fmt.Sprintf("ip netns exec %s sysctl -w net.bridge.bridge-nf-call-iptables=0 (bridged frames skip iptables), or accept bridged traffic: ip netns exec %s iptables -I FORWARD -m physdev --physdev-is-bridged -j ACCEPT",
			ns.Name, ns.Name)}}
}

// dropCountersCheck: nftables rules that dropped packets, and drop policies
// on the hooks the network's traffic crosses. kvmnet's own table holds NAT
// only today; its drops would be the declared firewall's (info).
func dropCountersCheck(d *diag, ns *inspect.Namespace) []Finding {
	var out []Finding
	bridged := len(ns.Bridges) > 0 && ns.Sysctl(inspect.SysctlBridgeNFIP) == "1"
	for _, c := range ns.Legacy {
		if c.Chain == "FORWARD" && bridged {
			continue // reported as host interference
		}
		if c.DropPackets > 0 || c.Policy == "drop" && c.PolicyPackets > 0 {
			out = append(out, Finding{Severity: Warning, Step: 4, Check: CheckFirewallDrop, Namespace: ns.Name,
				Summary: fmt.Sprintf("iptables-legacy filter %s dropped packets", c.Chain),
				Evidence: []string{fmt.Sprintf("iptables-legacy filter %s: policy %s (%d packets), %d rules, %d packets dropped by rules",
					c.Chain, strings.ToUpper(c.Policy), c.PolicyPackets, c.Rules, c.DropPackets)},
				Fix: fmt.Sprintf("ip netns exec %s iptables-legacy -L %s -v -n shows which; accept the network's traffic before them", ns.Name, c.Chain)})
		}
	}
	for _, t := range ns.Firewall {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if !r.Drops() || r.Packets == 0 {
					continue
				}
				if bridged && c.Hook == "forward" && (t.Family == "ip" || t.Family == "inet") {
					continue // reported as host interference
				}
				sev := Warning
				if t.Kvmnet {
					sev = Info
				}
				out = append(out, Finding{Severity: sev, Step: 4, Check: CheckFirewallDrop, Namespace: ns.Name,
					Summary: fmt.Sprintf("nftables rule %s %s/%s #%d dropped %d packets", t.Family, t.Name, c.Name, r.Handle, r.Packets),
					Evidence: []string{fmt.Sprintf("table %s %s chain %s (hook %s) rule %d %q: %s, counter %d packets %d bytes",
						t.Family, t.Name, c.Name, orDash(c.Hook), r.Handle, r.Comment, r.Verdict, r.Packets, r.Bytes)},
					Fix: fmt.Sprintf("if this traffic is wanted: ip netns exec %s nft delete rule %s %s %s handle %d (or allow it before the rule)", ns.Name, t.Family, t.Name, c.Name, r.Handle)})
			}
			if c.Policy == "drop" && (c.Hook == "forward" || c.Hook == "input") && !(bridged && c.Hook == "forward" && (t.Family == "ip" || t.Family == "inet")) {
				out = append(out, Finding{Severity: Info, Step: 4, Check: CheckFirewallDrop, Namespace: ns.Name,
					Summary:  fmt.Sprintf("chain %s %s/%s drops what no rule accepts (policy drop on hook %s)", t.Family, t.Name, c.Name, c.Hook),
					Evidence: []string{fmt.Sprintf("table %s %s chain %s: hook %s priority %d policy drop, %d rules", t.Family, t.Name, c.Name, c.Hook, c.Priority, len(c.Rules))},
					Fix:      "make sure a rule accepts the network's traffic (ct state established,related accept; the VMs' subnets)"})
			}
		}
	}
	return out
}

// checkLoops: bridges joined in a cycle without STP (static), and ports
// receiving broadcast or multicast at storm rates (from the two readings).
func (d *diag) checkLoops() {
	parent := map[*node]*node{}
	var find func(*node) *node
	find = func(n *node) *node {
		if parent[n] == nil || parent[n] == n {
			return n
		}
		r := find(parent[n])
		parent[n] = r
		return r
	}
	seen := map[string]bool{}
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		p := n.peer
		if p == nil || !n.isPort() || !p.isPort() || seen[p.key()] {
			continue
		}
		seen[n.key()] = true
		a, b := find(n.master), find(p.master)
		if a != b {
			parent[a] = b
			continue
		}
		// This link closes a cycle.
		stp := func(br *node) bool {
			if bb := br.ns.Bridge(br.i.Name); bb != nil {
				return bb.STP
			}
			return false
		}
		if stp(n.master) && stp(p.master) {
			continue
		}
		ev := []string{fmt.Sprintf("veth %s <-> %s joins bridge %s/%s to %s/%s, which are already connected", n.key(), p.key(),
			n.ns.Name, n.master.i.Name, p.ns.Name, p.master.i.Name)}
		for _, br := range []*node{n.master, p.master} {
			if !stp(br) {
				ev = append(ev, fmt.Sprintf("STP is off on %s/%s: nothing blocks the loop", br.ns.Name, br.i.Name))
			}
		}
		for _, x := range []*node{n, p} {
			if r := x.i.Rates; r != nil {
				ev = append(ev, fmt.Sprintf("%s receives %.0f broadcast/multicast packets/s", x.key(), r.Multicast))
			}
		}
		d.add(Finding{Severity: Error, Step: 5, Check: CheckLoop, Namespace: n.ns.Name, Interface: n.i.Name,
			Summary:  fmt.Sprintf("bridge loop through %s: every broadcast circulates forever", n.i.Name),
			Evidence: ev,
			Fix:      fmt.Sprintf("%s link del %s (break the loop), or enable STP on the bridges (stp: true, then kvmnet up)", ipn(n.ns.Name), n.i.Name)})
	}
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		if n.i.Kind == "bridge" && n.i.Rates != nil && n.i.Rates.RxPackets >= d.o.StormPPS && len(n.i.Addresses) == 0 {
			// A bridge without addresses receives (passes up to its own
			// stack) only what it floods: broadcast and multicast. veth
			// ports keep no multicast counter, the bridge device counts.
			ev := []string{fmt.Sprintf("%s passed %.0f frames/s up to its own stack while diagnose ran (threshold %.0f); with no address of its own, those are the broadcast and multicast frames it floods", n.key(), n.i.Rates.RxPackets, d.o.StormPPS)}
			for _, p := range n.ports {
				if p.i.Rates != nil && p.i.Rates.RxPackets >= d.o.StormPPS/4 {
					ev = append(ev, fmt.Sprintf("port %s receives %.0f packets/s", p.i.Name, p.i.Rates.RxPackets))
				}
			}
			d.add(Finding{Severity: Error, Step: 5, Check: CheckStorm, Namespace: n.ns.Name, Interface: n.i.Name,
				Summary:  fmt.Sprintf("broadcast storm on %s: %.0f flooded frames/s", n.i.Name, n.i.Rates.RxPackets),
				Evidence: ev,
				Fix:      "find the loop (bridge-loop findings, or two links between the same bridges) and break it; enable STP where redundant links are wanted"})
			continue
		}
		if !n.isPort() || n.i.Rates == nil || n.i.Rates.Multicast < d.o.StormPPS {
			continue
		}
		d.add(Finding{Severity: Error, Step: 5, Check: CheckStorm, Namespace: n.ns.Name, Interface: n.i.Name,
			Summary: fmt.Sprintf("broadcast storm: %s receives %.0f broadcast/multicast packets/s", n.i.Name, n.i.Rates.Multicast),
			Evidence: []string{
				fmt.Sprintf("rx multicast counter of %s rose at %.0f packets/s while diagnose ran (threshold %.0f)", n.key(), n.i.Rates.Multicast, d.o.StormPPS),
				"rx total " + strconv.FormatFloat(n.i.Rates.RxPackets, 'f', 0, 64) + " packets/s",
			},
			Fix: "find the loop (bridge-loop findings, or two links between the same bridges) and break it; enable STP where redundant links are wanted"})
	}
}
