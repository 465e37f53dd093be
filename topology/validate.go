package topology

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Limits enforced by validation.
const (
	MaxIfNameLen = 15 // IFNAMSIZ - 1
	MaxNSNameLen = 64
	MaxNameLen   = 32
	MaxPrefixLen = 16
	MinMTU       = 68
	MaxMTU       = 65535
	MaxAgeing    = 1000000
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
	v.macs()
	v.addresses()
	v.routes()
	return c.err()
}

type validator struct {
	t *Topology
	c *errs
	// ifaces[ns][name] = field of the declaration, for duplicate detection.
	ifaces map[string]map[string]string
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
			v.c.add(f+".name", "%q (with prefix) is %d bytes long; at most %d", full, len(full), MaxNSNameLen)
		case !nsRe.MatchString(ns.Name):
			v.c.add(f+".name", "%q: use letters, digits, '.', '-' and '_' only (no '/', ':' or spaces)", ns.Name)
		case seen[ns.Name] != "":
			v.c.add(f+".name", "namespace %q is already declared at %s", ns.Name, seen[ns.Name])
		default:
			seen[ns.Name] = f
			v.ifaces[ns.Name] = map[string]string{"lo": "(the loopback device)"}
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
				v.c.add(kf, "sysctl %q is not a per-namespace net.* key", k)
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
		v.c.add(f, "interface %q is already declared in namespace %q at %s", name, ns, prev)
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
		v.c.add(f, "name the namespace")
		return false
	}
	if v.t.Namespace(ns) == nil {
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
		if v.nsRef(b.Namespace, f+".namespace") {
			v.iface(b.Namespace, b.Name, f+".name")
		} else if msg := CheckIfName(b.Name); msg != "" {
			v.c.add(f+".name", "%s", msg)
		}
		v.mtu(b.MTU, f+".mtu")
		if b.AgeingTime != nil && (*b.AgeingTime < 0 || *b.AgeingTime > MaxAgeing) {
			v.c.add(f+".ageing_time", "ageing time %d s is out of range 0..%d", *b.AgeingTime, MaxAgeing)
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
		if v.t.Bridge(e.Namespace, e.Bridge) == nil {
			v.c.add(f+".bridge", "bridge %q is not declared in namespace %q", e.Bridge, e.Namespace)
		}
		if len(e.Addresses) > 0 {
			v.c.add(f+".addresses", "%q is a port of bridge %q and cannot hold addresses; put them on the bridge", e.Name, e.Bridge)
		}
	}
}

func (v *validator) links() {
	for i, l := range v.t.Links {
		f := fmt.Sprintf("links[%d]", i)
		if len(l.Endpoints) != 2 {
			v.c.add(f+".endpoints", "a link is a veth pair and has exactly 2 endpoints, found %d", len(l.Endpoints))
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
		if u.Device != "" || u.Peer != nil || len(u.Addresses) > 0 || u.Bridge != "" {
			v.c.add(f+".mode", "an isolated network has no uplink; remove device, peer, bridge and addresses or pick another mode")
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
	if u.Device != "" {
		if msg := CheckIfName(u.Device); msg != "" {
			v.c.add(f+".device", "%s", msg)
		}
	}
	v.iface(u.Namespace, u.Name, f+".name")
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
		} else if v.t.Bridge(u.Namespace, u.Bridge) == nil {
			v.c.add(f+".bridge", "bridge %q is not declared in namespace %q", u.Bridge, u.Namespace)
		}
		if len(u.Addresses) > 0 {
			v.c.add(f+".addresses", "in mode bridge the uplink is a bridge port and cannot hold addresses; put them on bridge %q", u.Bridge)
		}
	case ModeRouted, ModeNAT:
		if u.Bridge != "" {
			v.c.add(f+".bridge", "only mode bridge puts the uplink in a bridge")
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
			v.c.add(f, "MAC %s is already used at %s; two interfaces with one MAC cause ARP conflicts", hw, prev)
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
			v.c.add(f, "%q is not an address in CIDR form (want e.g. 192.168.1.100/24 or 2001:db8::1/64)", a)
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

	seg := v.t.Segments()
	seenIP := map[netip.Addr]addrDecl{}
	for i, d := range decls {
		if prev, ok := seenIP[d.prefix.Addr()]; ok {
			v.c.add(d.field, "address %s is already assigned at %s", d.prefix.Addr(), prev.field)
			continue
		}
		seenIP[d.prefix.Addr()] = d
		for _, o := range decls[:i] {
			if o.prefix.Addr() == d.prefix.Addr() {
				continue
			}
			sd, so := seg.Of(d.ns, d.iface), seg.Of(o.ns, o.iface)
			if sd != so && d.prefix.Overlaps(o.prefix) {
				v.c.add(d.field, "subnet %s overlaps %s of %s/%s (at %s), which is on a different L2 segment",
					d.prefix.Masked(), o.prefix.Masked(), o.ns, o.iface, o.field)
				break
			}
		}
	}
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (v *validator) routes() {
	// Connected subnets per namespace, and interfaces per namespace.
	connected := map[string][]netip.Prefix{}
	own := map[string]map[netip.Addr]bool{}
	v.t.eachAddress(func(ns, _, _, a string) {
		if p, err := netip.ParsePrefix(a); err == nil {
			connected[ns] = append(connected[ns], p.Masked())
			if own[ns] == nil {
				own[ns] = map[netip.Addr]bool{}
			}
			own[ns][p.Addr()] = true
		}
	})
	for i, ns := range v.t.Namespaces {
		seen := map[string]string{}
		for j, r := range ns.Routes {
			f := fmt.Sprintf("namespaces[%d].routes[%d]", i, j)
			var dst netip.Prefix
			if r.To == "default" {
				dst = netip.Prefix{}
			} else {
				p, err := netip.ParsePrefix(r.To)
				if err != nil {
					v.c.add(f+".to", "%q is neither \"default\" nor a prefix in CIDR form", r.To)
					continue
				}
				if p != p.Masked() {
					v.c.add(f+".to", "%s has host bits set; did you mean %s?", p, p.Masked())
					continue
				}
				dst = p
			}
			if r.Metric < 0 {
				v.c.add(f+".metric", "metric %d is negative", r.Metric)
			}
			if r.Via == "" && r.Dev == "" {
				v.c.add(f, "a route needs a gateway (via) or an interface (dev)")
			}
			if r.Dev != "" {
				if _, ok := v.ifaces[ns.Name][r.Dev]; !ok || r.Dev == "lo" {
					v.c.add(f+".dev", "interface %q is not declared in namespace %q", r.Dev, ns.Name)
				}
			}
			if r.Via != "" {
				gw, err := netip.ParseAddr(r.Via)
				switch {
				case err != nil:
					v.c.add(f+".via", "%q is not an IP address", r.Via)
				case dst.IsValid() && dst.Addr().Is4() != gw.Is4():
					v.c.add(f+".via", "gateway %s and destination %s are different address families", gw, dst)
				case own[ns.Name][gw]:
					v.c.add(f+".via", "gateway %s is this namespace's own address", gw)
				case !inAny(gw, connected[ns.Name]):
					v.c.add(f+".via", "gateway %s is outside every subnet of namespace %q%s", gw, ns.Name, subnetsHint(connected[ns.Name]))
				}
			}
			fam := "4"
			if dst.IsValid() && dst.Addr().Is6() {
				fam = "6"
			} else if !dst.IsValid() {
				if gw, err := netip.ParseAddr(r.Via); err == nil && gw.Is6() {
					fam = "6"
				}
			}
			key := fmt.Sprintf("%s/%s/%d", fam, r.To, r.Metric)
			if prev, ok := seen[key]; ok {
				v.c.add(f+".to", "route to %s (metric %d) is already declared at %s", r.To, r.Metric, prev)
			} else {
				seen[key] = f
			}
		}
	}
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
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
