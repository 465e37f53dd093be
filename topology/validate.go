package topology

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Limits enforced by validation.
const (
	MinVLAN      = 1
	MaxVLAN      = 4094
	MaxIfNameLen = 15 // IFNAMSIZ - 1
	MaxNSNameLen = 64
	MaxNameLen   = 32
	MaxPrefixLen = 16
	MinMTU       = 68
	MaxMTU       = 65535
	MaxAgeing    = 1000000
	MaxMetric    = 1<<32 - 1
)

var (
	idRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	prefixRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	nsRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	sysctlRe = regexp.MustCompile(`^net\.[A-Za-z0-9_.-]+$`)
)

// Validate checks the (normalized) topology and returns every problem found as
// an ErrorList in file order, or nil. It does not touch the kernel.
func (t *Topology) Validate() error {
	c := &errs{t: t}
	v := &validator{t: t, c: c, ifaces: map[string]map[string]string{}}
	v.network()
	v.namespaces()
	v.bridges()
	v.links()
	v.uplink()
	v.vlans()
	v.portVLANs()
	v.macs()
	v.addresses()
	v.routes()
	v.segmentMTUs()
	v.loops()
	v.policy()
	v.vms()     // VMs and DHCP: topology/vm.go
	v.dns()     // names: topology/dns.go
	v.mirrors() // port mirrors: topology/mirror.go
	return c.err()
}

type validator struct {
	t *Topology
	c *errs
	// ifaces[ns][name] = field of the declaration, for duplicate detection.
	ifaces map[string]map[string]string
	seg    *Segments // the topology's segments, computed once (segments)
}

// segments returns the topology's L2 segments, computed on first use:
// several checks need them, and validation changes no link or port.
func (v *validator) segments() *Segments {
	if v.seg == nil {
		v.seg = v.t.Segments()
	}
	return v.seg
}

func (v *validator) network() {
	t := v.t
	switch {
	case t.Name == "":
		v.c.add("name", "the network needs a name")
	case len(t.Name) > MaxNameLen:
		v.c.add("name", "%q is %d bytes long; at most %d", t.Name, len(t.Name), MaxNameLen)
	case !idRe.MatchString(t.Name):
		v.c.add("name", "%q: use letters, digits, '-' and '_' only, starting with a letter or digit", t.Name)
	}
	if t.Prefix != "" {
		switch {
		case len(t.Prefix) > MaxPrefixLen:
			v.c.add("prefix", "%q is %d bytes long; at most %d", t.Prefix, len(t.Prefix), MaxPrefixLen)
		case !prefixRe.MatchString(t.Prefix):
			v.c.add("prefix", "%q: use letters, digits, '.', '-' and '_' only", t.Prefix)
		}
	}
	if len(t.Namespaces) == 0 {
		v.c.add("namespaces", "declare at least one namespace")
	}
}

func (v *validator) namespaces() {
	seen := map[string]string{}
	for i, ns := range v.t.Namespaces {
		f := fmt.Sprintf("namespaces[%d]", i)
		full := v.t.NSName(ns.Name)
		switch {
		case ns.Name == "":
			v.c.add(f+".name", "the namespace needs a name")
		case len(full) > MaxNSNameLen:
			if v.t.Prefix != "" {
				v.c.add(f+".name", "namespace name %q (with the prefix) is %d bytes long; at most %d", full, len(full), MaxNSNameLen)
			} else {
				v.c.add(f+".name", "namespace name %q is %d bytes long; at most %d", full, len(full), MaxNSNameLen)
			}
		case !nsRe.MatchString(ns.Name):
			v.c.add(f+".name", "%q: use letters, digits, '.', '-' and '_' only (no '/', ':' or spaces)", ns.Name)
		case seen[ns.Name] != "":
			v.c.add(f+".name", "namespace %q is already declared at %s", ns.Name, v.c.at(seen[ns.Name]))
		default:
			seen[ns.Name] = f + ".name"
			v.ifaces[ns.Name] = map[string]string{"lo": ""}
		}
		if !slices.Contains(Roles, ns.Role) {
			v.c.add(f+".role", "unknown role %q; want one of %s", ns.Role, joinQuoted(Roles))
		}
		keys := make([]string, 0, len(ns.Sysctls))
		for k := range ns.Sysctls {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			kf := f + ".sysctls." + Key(k)
			switch {
			case !sysctlRe.MatchString(k) || strings.Contains(k, ".."):
				v.c.add(kf, "sysctl %q is not a per-namespace key; only net.* sysctls (e.g. net.ipv4.ip_forward) can be set in a namespace", k)
			case strings.TrimSpace(ns.Sysctls[k]) == "":
				v.c.add(kf, "sysctl %q needs a value", k)
			}
		}
	}
}

// iface declares interface name in namespace ns at field f.
func (v *validator) iface(ns, name, f string) {
	if msg := CheckIfName(name); msg != "" {
		v.c.add(f, "%s", msg)
		return
	}
	m := v.ifaces[ns]
	if m == nil {
		return // the namespace itself is reported
	}
	if prev, ok := m[name]; ok {
		if prev == "" {
			v.c.add(f, "%q is the loopback device every namespace has; pick another name", name)
		} else {
			v.c.add(f, "interface %q is already declared in namespace %q at %s", name, ns, v.c.at(prev))
		}
		return
	}
	m[name] = f
}

// CheckIfName returns why name cannot be a Linux interface name, or "".
func CheckIfName(name string) string {
	switch {
	case name == "":
		return "the interface needs a name"
	case len(name) > MaxIfNameLen:
		return fmt.Sprintf("interface name %q is %d bytes long; Linux allows at most %d", name, len(name), MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not a valid interface name", name)
	case strings.ContainsAny(name, "/: \t\n\r\x00"):
		return fmt.Sprintf("interface name %q contains '/', ':' or white space", name)
	}
	for _, r := range name {
		if r < 0x21 || r > 0x7e {
			return fmt.Sprintf("interface name %q contains a non-printable or non-ASCII character", name)
		}
	}
	return ""
}

func (v *validator) nsRef(ns, f string) bool {
	if ns == "" {
		v.c.add(f, "say which namespace this is in (namespace: NAME)")
		return false
	}
	if _, ok := v.ifaces[ns]; !ok && v.t.Namespace(ns) == nil {
		v.c.add(f, "namespace %q is not declared", ns)
		return false
	}
	return true
}

func (v *validator) mtu(mtu int, f string) {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		v.c.add(f, "MTU %d is out of range %d..%d", mtu, MinMTU, MaxMTU)
	}
}

func (v *validator) bridges() {
	for i, b := range v.t.Bridges {
		f := fmt.Sprintf("bridges[%d]", i)
		switch {
		case b.Name == "":
			v.c.add(f+".name", "the bridge needs a name")
			v.nsRef(b.Namespace, f+".namespace")
		case v.nsRef(b.Namespace, f+".namespace"):
			v.iface(b.Namespace, b.Name, f+".name")
		default:
			if msg := CheckIfName(b.Name); msg != "" {
				v.c.add(f+".name", "%s", msg)
			}
		}
		v.mtu(b.MTU, f+".mtu")
		if b.AgeingTime != nil && (*b.AgeingTime < 0 || *b.AgeingTime > MaxAgeing) {
			v.c.add(f+".ageing_time", "ageing time %d s is out of range 0..%d", *b.AgeingTime, MaxAgeing)
		}
		if b.DefaultPVID != 0 {
			switch {
			case !b.VLANFiltering:
				v.c.add(f+".default_pvid", "default_pvid needs vlan_filtering: true on the bridge")
			case b.DefaultPVID < MinVLAN || b.DefaultPVID > MaxVLAN:
				v.c.add(f+".default_pvid", "VLAN ID %d is out of range %d..%d", b.DefaultPVID, MinVLAN, MaxVLAN)
			}
		}
	}
}

func (v *validator) endpoint(e Endpoint, f string) {
	if !v.nsRef(e.Namespace, f+".namespace") {
		if msg := CheckIfName(e.Name); msg != "" {
			v.c.add(f+".name", "%s", msg)
		}
		return
	}
	v.iface(e.Namespace, e.Name, f+".name")
	if e.Bridge != "" {
		v.bridgeRef(e.Namespace, e.Bridge, f+".bridge")
		if len(e.Addresses) > 0 {
			v.c.add(f+".addresses", "%q is a port of bridge %q and cannot hold addresses; put them on the bridge", e.Name, e.Bridge)
		}
	}
}

// bridgeRef checks that bridge name is declared in namespace ns, where an
// interface of ns can be its port.
func (v *validator) bridgeRef(ns, name, f string) {
	if v.t.Bridge(ns, name) != nil {
		return
	}
	for _, b := range v.t.Bridges {
		if b.Name == name {
			v.c.add(f, "bridge %q is in namespace %q, not %q; a bridge can only enslave interfaces of its own namespace, so join it with a link (veth pair) whose other end is in %q",
				name, b.Namespace, ns, b.Namespace)
			return
		}
	}
	v.c.add(f, "bridge %q is not declared (add it under bridges, in namespace %q)", name, ns)
}

func (v *validator) links() {
	for i, l := range v.t.Links {
		f := fmt.Sprintf("links[%d]", i)
		if len(l.Endpoints) != 2 {
			hint := ""
			if len(l.Endpoints) > 2 {
				hint = "; to join more namespaces, link each of them to a bridge"
			}
			v.c.add(f+".endpoints", "a link is a veth pair and has exactly 2 endpoints, found %d%s", len(l.Endpoints), hint)
			v.mtu(l.MTU, f+".mtu")
			continue
		}
		for j, e := range l.Endpoints {
			v.endpoint(e, fmt.Sprintf("%s.endpoints[%d]", f, j))
		}
		if a, b := l.Endpoints[0], l.Endpoints[1]; a.Namespace != "" && a.Namespace == b.Namespace {
			v.c.add(f+".endpoints[1].namespace", "both ends of the link are in namespace %q; a link joins two namespaces", a.Namespace)
		}
		v.mtu(l.MTU, f+".mtu")
	}
}

func (v *validator) uplink() {
	u := v.t.Uplink
	if u == nil {
		return
	}
	f := "uplink"
	if !slices.Contains(Modes, u.Mode) {
		v.c.add(f+".mode", "unknown forward mode %q; want one of %s", u.Mode, joinQuoted(Modes))
		return
	}
	if u.Mode == ModeIsolated {
		mode := "mode isolated"
		if !v.c.given(f + ".mode") {
			mode = "without a mode, the uplink is isolated and"
		}
		for _, x := range []struct {
			key string
			set bool
		}{
			{"name", u.Name != ""},
			{"mac", u.MAC != ""},
			{"addresses", len(u.Addresses) > 0},
			{"bridge", u.Bridge != ""},
			{"device", u.Device != ""},
			{"peer", u.Peer != nil},
		} {
			if x.set {
				v.c.add(f+"."+x.key, "%s builds no uplink NIC, so %s has no effect; remove it or set mode to routed, nat or bridge", mode, x.key)
			}
		}
		return
	}
	if u.Namespace == "" {
		v.c.add(f+".namespace", "name the namespace that holds the uplink (there is no single namespace with role host)")
		return
	}
	if !v.nsRef(u.Namespace, f+".namespace") {
		return
	}
	switch {
	case u.Device == "" && u.Peer == nil:
		v.c.add(f, "the %s uplink needs a device (a real NIC) or a peer (a veth to another namespace)", u.Mode)
	case u.Device != "" && u.Peer != nil:
		v.c.add(f+".device", "give either device or peer, not both")
	}
	badDevice := false
	if u.Device != "" {
		if msg := CheckIfName(u.Device); msg != "" {
			v.c.add(f+".device", "%s", msg)
			badDevice = true
		}
	}
	if !badDevice || u.Name != u.Device {
		v.iface(u.Namespace, u.Name, f+".name")
	}
	if u.Peer != nil {
		v.endpoint(*u.Peer, f+".peer")
		if u.Peer.Namespace == u.Namespace {
			v.c.add(f+".peer.namespace", "the uplink's peer must be in another namespace than %q", u.Namespace)
		}
	}
	switch u.Mode {
	case ModeBridge:
		if u.Bridge == "" {
			v.c.add(f+".bridge", "mode bridge needs the bridge in namespace %q that the uplink joins", u.Namespace)
		} else {
			v.bridgeRef(u.Namespace, u.Bridge, f+".bridge")
		}
		if len(u.Addresses) > 0 {
			v.c.add(f+".addresses", "in mode bridge the uplink is a bridge port and cannot hold addresses; put them on bridge %q", u.Bridge)
		}
	case ModeRouted, ModeNAT:
		if u.Bridge != "" {
			v.c.add(f+".bridge", "only mode bridge puts the uplink in a bridge; mode %s routes through it", u.Mode)
		}
		if len(u.Addresses) == 0 {
			v.c.add(f+".addresses", "mode %s needs an address on the uplink to route through", u.Mode)
		}
	}
}

// macs checks syntax, unicast-ness and uniqueness of every MAC.
func (v *validator) macs() {
	seen := map[string]string{}
	v.eachMACField(func(f, mac string) {
		hw, err := net.ParseMAC(mac)
		switch {
		case err != nil || len(hw) != 6:
			v.c.add(f, "%q is not a 48-bit MAC address (want e.g. 00:11:22:33:44:55)", mac)
			return
		case hw[0]&1 == 1:
			v.c.add(f, "%s is a multicast MAC; an interface needs a unicast MAC (first octet even)", hw)
			return
		case hw.String() == "00:00:00:00:00:00":
			v.c.add(f, "the all-zero MAC is not a valid interface address")
			return
		}
		if prev, ok := seen[hw.String()]; ok {
			v.c.add(f, "MAC %s is already used at %s; two interfaces with one MAC cause ARP conflicts", hw, v.c.at(prev))
			return
		}
		seen[hw.String()] = f
	})
}

func (v *validator) eachMACField(fn func(f, mac string)) {
	t := v.t
	for i, b := range t.Bridges {
		if b.MAC != "" {
			fn(fmt.Sprintf("bridges[%d].mac", i), b.MAC)
		}
	}
	for i, l := range t.Links {
		for j, e := range l.Endpoints {
			if e.MAC != "" {
				fn(fmt.Sprintf("links[%d].endpoints[%d].mac", i, j), e.MAC)
			}
		}
	}
	for i, vl := range t.VLANs {
		if vl.MAC != "" {
			fn(fmt.Sprintf("vlans[%d].mac", i), vl.MAC)
		}
	}
	if u := t.Uplink; u != nil {
		if u.MAC != "" {
			fn("uplink.mac", u.MAC)
		}
		if u.Peer != nil && u.Peer.MAC != "" {
			fn("uplink.peer.mac", u.Peer.MAC)
		}
	}
}

// addrDecl is one declared interface address.
type addrDecl struct {
	ns, iface, field string
	prefix           netip.Prefix
}

// eachAddress visits every declared address with its field path.
func (t *Topology) eachAddress(fn func(ns, iface, field, addr string)) {
	for i, b := range t.Bridges {
		for k, a := range b.Addresses {
			fn(b.Namespace, b.Name, fmt.Sprintf("bridges[%d].addresses[%d]", i, k), a)
		}
	}
	for i, l := range t.Links {
		for j, e := range l.Endpoints {
			for k, a := range e.Addresses {
				fn(e.Namespace, e.Name, fmt.Sprintf("links[%d].endpoints[%d].addresses[%d]", i, j, k), a)
			}
		}
	}
	for i, vl := range t.VLANs {
		for k, a := range vl.Addresses {
			fn(vl.Namespace, vl.Name, fmt.Sprintf("vlans[%d].addresses[%d]", i, k), a)
		}
	}
	if u := t.Uplink; u != nil {
		for k, a := range u.Addresses {
			fn(u.Namespace, u.Name, fmt.Sprintf("uplink.addresses[%d]", k), a)
		}
		if u.Peer != nil {
			for k, a := range u.Peer.Addresses {
				fn(u.Peer.Namespace, u.Peer.Name, fmt.Sprintf("uplink.peer.addresses[%d]", k), a)
			}
		}
	}
}

// addresses checks each address's syntax, then duplicates and subnets that
// overlap across different L2 segments.
func (v *validator) addresses() {
	var decls []addrDecl
	v.t.eachAddress(func(ns, iface, f, a string) {
		p, err := netip.ParsePrefix(a)
		switch {
		case err != nil:
			v.c.add(f, "%s", cidrProblem(a))
			return
		case p.Addr().Is4In6() || p.Addr().Zone() != "":
			v.c.add(f, "%q: use a plain IPv4 or IPv6 address", a)
			return
		case p.Addr().IsLinkLocalUnicast() && p.Addr().Is6():
			v.c.add(f, "%s is IPv6 link-local; the kernel assigns those itself", p)
			return
		case p.Addr().IsMulticast() || p.Addr().IsUnspecified() || p.Addr().IsLoopback():
			v.c.add(f, "%s is not a unicast host address", p.Addr())
			return
		}
		if p.Addr().Is6() && p.Bits() < 127 && p.Addr() == p.Masked().Addr() {
			v.c.add(f, "%s is the subnet-router anycast address of %s; pick a host address", p.Addr(), p.Masked())
			return
		}
		if p.Addr().Is4() && p.Bits() < 31 {
			if p.Addr() == p.Masked().Addr() {
				v.c.add(f, "%s is the network address of %s; pick a host address", p.Addr(), p.Masked())
				return
			}
			if p.Addr() == broadcast(p) {
				v.c.add(f, "%s is the broadcast address of %s; pick a host address", p.Addr(), p.Masked())
				return
			}
		}
		decls = append(decls, addrDecl{ns: ns, iface: iface, field: f, prefix: p})
	})

	seg := v.segments()
	seenIP := map[netip.Addr]addrDecl{}
	// One entry per distinct (subnet, segment) pair: comparing each address
	// with these, not with every earlier address, keeps this linear in the
	// number of addresses (1000 endpoints on one subnet are one entry).
	type subnetOn struct {
		subnet netip.Prefix
		seg    string
		first  addrDecl
	}
	var subnets []subnetOn
	known := map[[2]string]bool{}
	for _, d := range decls {
		if prev, ok := seenIP[d.prefix.Addr()]; ok {
			v.c.add(d.field, "address %s is already assigned to %q in namespace %q at %s; duplicate addresses cause ARP conflicts",
				d.prefix.Addr(), prev.iface, prev.ns, v.c.at(prev.field))
			continue
		}
		seenIP[d.prefix.Addr()] = d
		sd := seg.Of(d.ns, d.iface)
		key := [2]string{d.prefix.Masked().String(), sd}
		if known[key] {
			continue
		}
		clash := false
		for _, o := range subnets {
			if o.seg != sd && d.prefix.Overlaps(o.subnet) {
				v.c.add(d.field, "subnet %s overlaps %s of %q in namespace %q (%s), which is on a different L2 segment; give each segment its own subnet",
					d.prefix.Masked(), o.subnet, o.first.iface, o.first.ns, v.c.at(o.first.field))
				clash = true
				break
			}
		}
		if !clash {
			known[key] = true
			subnets = append(subnets, subnetOn{subnet: d.prefix.Masked(), seg: sd, first: d})
		}
	}
}

// cidrProblem says why a is not an address in CIDR form.
func cidrProblem(a string) string {
	addr, bits, found := strings.Cut(a, "/")
	ip, err := netip.ParseAddr(addr)
	switch {
	case a == "":
		return "the address is empty (want e.g. 192.168.1.100/24 or 2001:db8::1/64)"
	case err != nil:
		return fmt.Sprintf("%q is not an IP address in CIDR form (want e.g. 192.168.1.100/24 or 2001:db8::1/64)", a)
	case !found:
		return fmt.Sprintf("%s has no prefix length; write it in CIDR form, e.g. %s/%d", a, ip, map[bool]int{true: 24, false: 64}[ip.Is4()])
	}
	if n, err := strconv.Atoi(bits); err == nil && n > ip.BitLen() && ip.BitLen() > 0 {
		return fmt.Sprintf("prefix length /%d is too long for an IPv%d address (at most /%d)", n, map[bool]int{true: 4, false: 6}[ip.Is4()], ip.BitLen())
	}
	return fmt.Sprintf("%q is not an address in CIDR form (want e.g. 192.168.1.100/24 or 2001:db8::1/64)", a)
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ifRef names an interface in a namespace.
type ifRef struct{ ns, name string }

// ifAddr is an address of one interface, for route checks.
type ifAddr struct {
	iface  string
	prefix netip.Prefix
}

func (v *validator) routes() {
	// Addresses per namespace, and every address of the topology.
	addrs := map[string][]ifAddr{}
	assigned := map[netip.Addr][]ifRef{} // address -> the interfaces holding it
	v.t.eachAddress(func(ns, iface, _, a string) {
		if p, err := netip.ParsePrefix(a); err == nil {
			addrs[ns] = append(addrs[ns], ifAddr{iface, p})
			assigned[p.Addr()] = append(assigned[p.Addr()], ifRef{ns, iface})
		}
	})
	// Bridge ports per namespace: routes must use the bridge, not its port.
	ports := map[string]map[string]string{}
	v.eachEndpoint(func(e Endpoint, _ string) {
		if e.Bridge != "" {
			if ports[e.Namespace] == nil {
				ports[e.Namespace] = map[string]string{}
			}
			ports[e.Namespace][e.Name] = e.Bridge
		}
	})
	seg := v.segments()
	// A segment that a real NIC joins reaches hosts kvmnet does not know.
	external := map[string]bool{}
	if u := v.t.Uplink; u != nil && u.Mode != ModeIsolated && u.Device != "" {
		external[seg.Of(u.Namespace, u.Name)] = true
	}
	for i, ns := range v.t.Namespaces {
		seen := map[string]string{}
		for j, r := range ns.Routes {
			f := fmt.Sprintf("namespaces[%d].routes[%d]", i, j)
			dst, ok := v.routeDst(r.To, f+".to")
			if !ok {
				continue
			}
			if r.Metric < 0 || r.Metric > MaxMetric {
				v.c.add(f+".metric", "metric %d is out of range 0..%d", r.Metric, MaxMetric)
			}
			if r.Via == "" && r.Dev == "" {
				v.c.add(f, "a route needs a gateway (via) or an interface (dev)")
			}
			devOK := false
			if r.Dev != "" {
				switch _, declared := v.ifaces[ns.Name][r.Dev]; {
				case !declared || r.Dev == "lo":
					v.c.add(f+".dev", "interface %q is not declared in namespace %q", r.Dev, ns.Name)
				case ports[ns.Name][r.Dev] != "":
					v.c.add(f+".dev", "%q is a port of bridge %q; route through the bridge (dev: %s)", r.Dev, ports[ns.Name][r.Dev], ports[ns.Name][r.Dev])
				default:
					devOK = true
				}
			}
			if r.Via != "" {
				v.routeVia(r, dst, ns.Name, f+".via", devOK, addrs[ns.Name], assigned, seg, external)
			}
			// One destination per family and metric: "default" is 0.0.0.0/0 or ::/0.
			if !dst.IsValid() {
				dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				if gw, err := netip.ParseAddr(r.Via); err == nil && gw.Is6() {
					dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
			}
			key := fmt.Sprintf("%s/%d", dst, r.Metric)
			if prev, ok := seen[key]; ok {
				what := "a route to " + dst.String()
				if dst.Bits() == 0 {
					what = "an IPv4 default route"
					if dst.Addr().Is6() {
						what = "an IPv6 default route"
					}
				}
				v.c.add(f+".to", "%s with metric %d is already declared at %s", what, r.Metric, v.c.at(prev))
			} else {
				seen[key] = f + ".to"
			}
		}
	}
}

// routeDst parses a route destination: a prefix, or "default" (the invalid
// prefix).
func (v *validator) routeDst(to, f string) (netip.Prefix, bool) {
	switch to {
	case "default":
		return netip.Prefix{}, true
	case "":
		v.c.add(f, "the route needs a destination (to): a prefix in CIDR form, or \"default\"")
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(to)
	if err != nil {
		v.c.add(f, "%q is neither \"default\" nor a prefix in CIDR form (e.g. 10.0.0.0/24)", to)
		return p, false
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		v.c.add(f, "%q: use a plain IPv4 or IPv6 prefix", to)
		return p, false
	}
	if p != p.Masked() {
		v.c.add(f, "%s has host bits set; did you mean %s?", p, p.Masked())
		return p, false
	}
	return p, true
}

// routeVia checks the gateway of route r in namespace ns: an address of the
// destination's family, on a subnet of the namespace (of dev, when given),
// that is not the namespace's own and that something on that segment holds.
func (v *validator) routeVia(r Route, dst netip.Prefix, ns, f string, devOK bool, own []ifAddr,
	assigned map[netip.Addr][]ifRef, seg *Segments, external map[string]bool,
) {
	gw, err := netip.ParseAddr(r.Via)
	switch {
	case err != nil || gw.Zone() != "":
		v.c.add(f, "%q is not an IP address", r.Via)
		return
	case gw.Is4In6():
		v.c.add(f, "%s: use a plain IPv4 or IPv6 address", gw)
		return
	case dst.IsValid() && dst.Addr().Is4() != gw.Is4():
		v.c.add(f, "gateway %s and destination %s are different address families", gw, dst)
		return
	case !gw.IsGlobalUnicast() && !gw.IsLinkLocalUnicast() && !gw.IsPrivate():
		v.c.add(f, "gateway %s is not a unicast address", gw)
		return
	case gw.Is6() && gw.IsLinkLocalUnicast():
		// fe80::/10 addresses are the kernel's; a router's is fine with dev.
		if r.Dev == "" {
			v.c.add(f, "gateway %s is IPv6 link-local; name the interface it is reached through (dev)", gw)
		}
		return
	}
	var on []ifAddr // the namespace's subnets that hold the gateway
	for _, a := range own {
		if a.prefix.Addr() == gw {
			v.c.add(f, "gateway %s is this namespace's own address (on %q); a gateway is a neighbour's address", gw, a.iface)
			return
		}
		if a.prefix.Contains(gw) && (r.Dev == "" || a.iface == r.Dev) {
			on = append(on, a)
		}
	}
	if len(on) == 0 {
		if r.Dev != "" && devOK {
			var subnets []netip.Prefix
			for _, a := range own {
				if a.iface == r.Dev {
					subnets = append(subnets, a.prefix.Masked())
				}
			}
			v.c.add(f, "gateway %s is outside every subnet of interface %q%s", gw, r.Dev, subnetsHint(subnets))
			return
		}
		if r.Dev == "" {
			subnets := make([]netip.Prefix, len(own))
			for i, a := range own {
				subnets[i] = a.prefix.Masked()
			}
			v.c.add(f, "gateway %s is outside every subnet of namespace %q%s", gw, ns, subnetsHint(subnets))
		}
		return
	}
	for _, a := range on {
		if p := a.prefix; p.Addr().Is4() && p.Bits() < 31 && (gw == p.Masked().Addr() || gw == broadcast(p)) {
			v.c.add(f, "gateway %s is the network or broadcast address of %s", gw, p.Masked())
			return
		}
	}
	// Someone on the segment must hold the gateway address, unless the
	// segment reaches outside through a real NIC.
	for _, a := range on {
		id := seg.Of(ns, a.iface)
		if external[id] {
			return
		}
		for _, h := range assigned[gw] {
			if seg.Of(h.ns, h.name) == id {
				return
			}
		}
	}
	v.c.add(f, "gateway %s is not assigned to any interface on the L2 segment of %q, so nothing would answer for it; assign it (usually to the host) or fix the address", gw, on[0].iface)
}

// eachEndpoint visits every link end and the uplink's peer with its field path.
func (v *validator) eachEndpoint(fn func(e Endpoint, f string)) {
	for i, l := range v.t.Links {
		for j, e := range l.Endpoints {
			fn(e, fmt.Sprintf("links[%d].endpoints[%d]", i, j))
		}
	}
	if u := v.t.Uplink; u != nil && u.Mode != ModeIsolated && u.Peer != nil {
		fn(*u.Peer, "uplink.peer")
	}
}

// segmentMTUs checks that every link on one L2 segment has the same MTU, and
// that a bridge's own MTU does not exceed its ports'. A bridge forwards a
// frame only if it fits the egress port, and sends no ICMP when it drops one,
// so a mismatch is a silent black hole for large packets.
func (v *validator) segmentMTUs() {
	seg := v.segments()
	type first struct {
		mtu   int
		field string
	}
	firsts := map[string]first{}
	valid := func(m int) bool { return m >= MinMTU && m <= MaxMTU }
	for i, l := range v.t.Links {
		if len(l.Endpoints) != 2 || !valid(l.MTU) {
			continue
		}
		f := fmt.Sprintf("links[%d]", i)
		id := seg.Of(l.Endpoints[0].Namespace, l.Endpoints[0].Name)
		prev, ok := firsts[id]
		if !ok {
			firsts[id] = first{l.MTU, f}
			continue
		}
		if prev.mtu != l.MTU {
			v.c.add(f+".mtu", "MTU %d%s differs from MTU %d%s of the link at %s on the same L2 segment; frames larger than %d bytes would be dropped silently, so give every link of a segment one MTU",
				l.MTU, v.defaulted(f+".mtu"), prev.mtu, v.defaulted(prev.field+".mtu"), v.c.at(prev.field), min(l.MTU, prev.mtu))
		}
	}
	// The uplink's veth (peer) always has the default MTU: the format has no
	// uplink MTU yet.
	if u := v.t.Uplink; u != nil && u.Mode != ModeIsolated && u.Peer != nil {
		if prev, ok := firsts[seg.Of(u.Namespace, u.Name)]; ok && prev.mtu != DefaultMTU {
			v.c.add("uplink.peer", "the uplink's veth has MTU %d (the uplink's MTU cannot be set), but the link at %s on the same L2 segment has MTU %d; frames larger than %d bytes would be dropped silently",
				DefaultMTU, v.c.at(prev.field), prev.mtu, min(DefaultMTU, prev.mtu))
		}
	}
	for i, b := range v.t.Bridges {
		if !valid(b.MTU) {
			continue
		}
		f := fmt.Sprintf("bridges[%d]", i)
		if prev, ok := firsts[seg.Of(b.Namespace, b.Name)]; ok && b.MTU > prev.mtu {
			v.c.add(f+".mtu", "bridge MTU %d is larger than the MTU %d%s of its ports (the link at %s); frames the bridge sends would be dropped at its ports, so raise the links' mtu too",
				b.MTU, prev.mtu, v.defaulted(prev.field+".mtu"), v.c.at(prev.field))
		}
	}
}

// defaulted says " (the default)" for an MTU field the file does not give.
func (v *validator) defaulted(field string) string {
	if v.c.given(field) {
		return ""
	}
	return " (the default)"
}

// loops reports links that close a loop between bridges, which floods the
// segment with copies of every broadcast unless STP blocks a port.
func (v *validator) loops() {
	s := newUnionFind()
	edge := func(a, b Endpoint, f string) {
		if a.Bridge == "" || b.Bridge == "" {
			return
		}
		ba, bb := v.t.Bridge(a.Namespace, a.Bridge), v.t.Bridge(b.Namespace, b.Bridge)
		if ba == nil || bb == nil {
			return
		}
		ka, kb := ifKey(a.Namespace, a.Bridge), ifKey(b.Namespace, b.Bridge)
		if s.find(ka) != s.find(kb) {
			s.union(ka, kb)
			return
		}
		if !ba.STP || !bb.STP {
			v.c.add(f, "this link closes a loop between bridge %q in %q and bridge %q in %q, which are already connected: without STP every broadcast circulates forever (a broadcast storm); remove the link or set stp: true on both bridges",
				a.Bridge, a.Namespace, b.Bridge, b.Namespace)
		}
	}
	for i, l := range v.t.Links {
		if len(l.Endpoints) == 2 {
			edge(l.Endpoints[0], l.Endpoints[1], fmt.Sprintf("links[%d]", i))
		}
	}
	if u := v.t.Uplink; u != nil && u.Mode == ModeBridge && u.Peer != nil {
		edge(Endpoint{Namespace: u.Namespace, Name: u.Name, Bridge: u.Bridge}, *u.Peer, "uplink.peer")
	}
}

func subnetsHint(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return " (it has no addresses)"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return " (" + strings.Join(s, ", ") + ")"
}

func joinQuoted[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(s, ", ")
}

func sortErrors(l ErrorList) {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].Line != l[j].Line {
			return l[i].Line < l[j].Line
		}
		return l[i].Column < l[j].Column
	})
}

// vlans checks the 802.1Q sub-interfaces: a declared parent in the same
// namespace, a valid and unique ID per parent, an MTU that fits the parent's
// (the tag travels beyond the MTU, so the sub-interface cannot exceed it),
// and bridge membership without addresses.
func (v *validator) vlans() {
	seen := map[string]string{}
	for i, vl := range v.t.VLANs {
		f := fmt.Sprintf("vlans[%d]", i)
		if !v.nsRef(vl.Namespace, f+".namespace") {
			continue
		}
		if vl.ID < MinVLAN || vl.ID > MaxVLAN {
			v.c.add(f+".id", "VLAN ID %d is out of range %d..%d", vl.ID, MinVLAN, MaxVLAN)
		}
		parentMTU := 0
		switch {
		case vl.Parent == "":
			v.c.add(f+".parent", "name the interface that carries this VLAN (e.g. eth0)")
		case vl.Parent == "lo" || v.ifaces[vl.Namespace][vl.Parent] == "":
			v.c.add(f+".parent", "interface %q is not declared in namespace %q (declare it as a link end, a bridge or the uplink first)", vl.Parent, vl.Namespace)
		default:
			parentMTU = v.declaredMTU(vl.Namespace, vl.Parent)
			key := vl.Namespace + "/" + vl.Parent + "/" + fmt.Sprint(vl.ID)
			if prev, ok := seen[key]; ok {
				v.c.add(f+".id", "VLAN %d on %q is already declared at %s", vl.ID, vl.Parent, v.c.at(prev))
			} else {
				seen[key] = f
			}
		}
		v.iface(vl.Namespace, vl.Name, f+".name")
		v.mtu(vl.MTU, f+".mtu")
		if vl.MTU != 0 && parentMTU != 0 && vl.MTU > parentMTU {
			v.c.add(f+".mtu", "MTU %d is larger than the MTU %d of its parent %q; the 802.1Q tag travels on top of the parent's MTU, so a VLAN interface can be at most as large", vl.MTU, parentMTU, vl.Parent)
		}
		if vl.Bridge != "" {
			v.bridgeRef(vl.Namespace, vl.Bridge, f+".bridge")
			if len(vl.Addresses) > 0 {
				v.c.add(f+".addresses", "%q is a port of bridge %q and cannot hold addresses; put them on the bridge", vl.Name, vl.Bridge)
			}
		}
	}
}

// declaredMTU is the MTU the topology gives interface name in ns (0 when
// the kernel decides, as for a bridge without mtu or a moved NIC).
func (v *validator) declaredMTU(ns, name string) int {
	for _, l := range v.t.Links {
		for _, e := range l.Endpoints {
			if e.Namespace == ns && e.Name == name {
				return l.MTU
			}
		}
	}
	if b := v.t.Bridge(ns, name); b != nil {
		return b.MTU
	}
	if u := v.t.Uplink; u != nil && u.Peer != nil && ((u.Namespace == ns && u.Name == name) || (u.Peer.Namespace == ns && u.Peer.Name == name)) {
		return DefaultMTU
	}
	for _, vl := range v.t.VLANs {
		if vl.Namespace == ns && vl.Name == name {
			return vl.MTU
		}
	}
	return 0
}

// portVLANs checks each port's VLAN membership (access, or trunk with an
// optional native VLAN) on a VLAN-filtering bridge, and that the VLANs of
// access ports on the uplink's bridge are carried by the uplink's trunk.
func (v *validator) portVLANs() {
	check := func(ns, bridge string, pv *PortVLAN, f string) {
		if pv == nil {
			return
		}
		if bridge == "" {
			v.c.add(f, "VLAN membership is for bridge ports; set bridge too (or use a VLAN sub-interface under vlans)")
			return
		}
		if b := v.t.Bridge(ns, bridge); b != nil && !b.VLANFiltering {
			v.c.add(f, "bridge %q does not filter VLANs: set vlan_filtering: true on it, or build one bridge per VLAN fed by VLAN sub-interfaces (see docs/topology.md)", bridge)
			return
		}
		inRange := func(id int, ff string) bool {
			if id < MinVLAN || id > MaxVLAN {
				v.c.add(ff, "VLAN ID %d is out of range %d..%d", id, MinVLAN, MaxVLAN)
				return false
			}
			return true
		}
		switch {
		case pv.Access != 0 && (len(pv.Trunk) > 0 || pv.Native != 0):
			v.c.add(f+".access", "a port is either access (one untagged VLAN) or trunk (tagged VLANs, optional native), not both")
		case pv.Access != 0:
			inRange(pv.Access, f+".access")
		case len(pv.Trunk) == 0 && pv.Native == 0:
			v.c.add(f, "give access: VLAN, or trunk: [VLANs] (and optionally native: VLAN)")
		default:
			seen := map[int]bool{}
			for k, id := range pv.Trunk {
				ff := fmt.Sprintf("%s.trunk[%d]", f, k)
				if !inRange(id, ff) {
					continue
				}
				if seen[id] {
					v.c.add(ff, "VLAN %d is listed twice", id)
				}
				seen[id] = true
			}
			if pv.Native != 0 && inRange(pv.Native, f+".native") && seen[pv.Native] {
				v.c.add(f+".native", "VLAN %d is both native (untagged) and in the trunk (tagged) on this port; a port carries a VLAN one way", pv.Native)
			}
		}
	}
	var trunk map[int]bool
	u := v.t.Uplink
	if u != nil && u.Mode == ModeBridge && u.VLAN != nil && u.VLAN.Access == 0 {
		trunk = map[int]bool{u.VLAN.Native: true}
		for _, id := range u.VLAN.Trunk {
			trunk[id] = true
		}
	}
	v.eachEndpoint(func(e Endpoint, f string) {
		check(e.Namespace, e.Bridge, e.VLAN, f+".vlan")
		if trunk != nil && e.VLAN != nil && e.VLAN.Access != 0 && e.Namespace == u.Namespace && e.Bridge == u.Bridge && !trunk[e.VLAN.Access] {
			v.c.add(f+".vlan.access", "VLAN %d is not carried by the uplink's trunk on bridge %q, so this port cannot reach the outside; add it to uplink.vlan.trunk", e.VLAN.Access, u.Bridge)
		}
	})
	if u != nil && u.VLAN != nil {
		if u.Mode != ModeBridge {
			v.c.add("uplink.vlan", "VLAN membership needs mode bridge (the uplink is then a port of uplink.bridge)")
		} else {
			check(u.Namespace, u.Bridge, u.VLAN, "uplink.vlan")
		}
	}
}
