package topology

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// DNS is kvmnet's name service: the network's names (its namespaces, its
// VMs and extra hosts) in one zone, answered by servers that kvmnet's
// background supervisor runs in their namespaces.
type DNS struct {
	// Domain is the zone the network's names live in (default: the
	// network's name, lowercased, '_' replaced by '-'; see DNSDomain).
	Domain string `yaml:"domain,omitempty" json:"domain,omitempty"`
	// Servers answer for the zone, each on the addresses of one declared
	// interface.
	Servers []DNSServer `yaml:"servers,omitempty" json:"servers,omitempty"`
	// Hosts are extra names, besides the namespaces and VMs.
	Hosts []DNSHost `yaml:"hosts,omitempty" json:"hosts,omitempty"`
}

// DNSServer answers on every address of a declared interface, UDP and TCP
// port 53.
type DNSServer struct {
	Namespace string `yaml:"namespace" json:"namespace"`
	// Interface is the declared interface whose addresses the server
	// listens on (not a bridge port: a port holds no address).
	Interface string `yaml:"interface" json:"interface"`
	// Forward lists the upstream resolvers asked for names outside the
	// zone: an IP address (port 53) or IP:port ([IPv6]:port). Without
	// any, such queries are refused.
	Forward []string `yaml:"forward,omitempty" json:"forward,omitempty"`
}

// DNSHost is an extra name of the zone.
type DNSHost struct {
	// Name is relative to the zone: one or more labels (nas, files.nas).
	Name string `yaml:"name" json:"name"`
	// Addresses are plain IPv4 or IPv6 addresses, without prefix length.
	Addresses []string `yaml:"addresses" json:"addresses"`
}

// Limits of DNS names.
const (
	DNSPort        = 53
	maxDNSNameLen  = 253
	maxDNSLabelLen = 63
)

// DNSServers returns the declared DNS servers (none when there is no dns section).
func (t *Topology) DNSServers() []DNSServer {
	if t.DNS == nil {
		return nil
	}
	return t.DNS.Servers
}

// DNSDomain is the zone the network's names live in: dns.domain, or the
// network's name lowercased with '_' replaced by '-' (the network name
// "Lab_1" gives the zone "lab-1").
func (t *Topology) DNSDomain() string {
	if t.DNS != nil && t.DNS.Domain != "" {
		return t.DNS.Domain
	}
	return defaultDNSDomain(t.Name)
}

func defaultDNSDomain(network string) string {
	return strings.ReplaceAll(strings.ToLower(network), "_", "-")
}

// DNSNames returns the static names of the network, relative to the zone
// (DNSDomain) and lowercase, each with its addresses (sorted, without
// duplicates, without prefix length or loopback addresses):
//
//   - every namespace, by its name in the topology (not the prefixed kernel
//     name): the addresses declared on its interfaces (link ends, bridges,
//     VLAN sub-interfaces, the uplink and its peer). A namespace without
//     addresses is present with none: the name exists.
//   - every VM with a static NIC address, by the VM's name: those addresses,
//     merged with its namespace's when the namespace has the VM's name.
//   - every dns.hosts entry: its addresses.
//
// Names that cannot be DNS names (an empty label, a label longer than 63
// bytes, or longer than 253 bytes with the zone) are left out. The addresses
// VMs take by DHCP are not static: the supervisor adds them at run time.
func (t *Topology) DNSNames() map[string][]netip.Addr {
	domain := t.DNSDomain()
	out := map[string][]netip.Addr{}
	add := func(name string, addrs ...netip.Addr) {
		key := strings.ToLower(name)
		if !servableName(key, domain) {
			return
		}
		cur, ok := out[key]
		if !ok {
			cur = []netip.Addr{}
		}
		for _, a := range addrs {
			if a.IsValid() && !a.IsLoopback() {
				cur = append(cur, a)
			}
		}
		out[key] = cur
	}
	declared := map[string]bool{}
	for _, ns := range t.Namespaces {
		if ns.Name != "" {
			declared[ns.Name] = true
			add(ns.Name)
		}
	}
	t.eachAddress(func(ns, _, _, a string) {
		if !declared[ns] {
			return
		}
		if p, err := netip.ParsePrefix(a); err == nil {
			add(ns, p.Addr().WithZone(""))
		}
	})
	for _, vm := range t.VMs {
		var addrs []netip.Addr
		for _, n := range vm.NICs {
			for _, a := range n.Addresses {
				if p, err := netip.ParsePrefix(a); err == nil {
					addrs = append(addrs, p.Addr().WithZone(""))
				}
			}
		}
		if vm.Name != "" && len(addrs) > 0 {
			add(vm.Name, addrs...)
		}
	}
	if t.DNS != nil {
		for _, h := range t.DNS.Hosts {
			var addrs []netip.Addr
			for _, a := range h.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					addrs = append(addrs, ip.WithZone(""))
				}
			}
			if h.Name != "" {
				add(h.Name, addrs...)
			}
		}
	}
	for k, addrs := range out {
		out[k] = sortAddrs(addrs)
	}
	return out
}

// DNSServerAddrs returns the addresses of server s's interface, which it
// listens on, sorted (IPv4 first) and without prefix length.
func (t *Topology) DNSServerAddrs(s *DNSServer) []netip.Addr {
	var out []netip.Addr
	t.eachAddress(func(ns, iface, _, a string) {
		if ns != s.Namespace || iface != s.Interface {
			return
		}
		if p, err := netip.ParsePrefix(a); err == nil {
			out = append(out, p.Addr().WithZone(""))
		}
	})
	return sortAddrs(out)
}

// ParseForward parses an upstream resolver of dns.servers[].forward: an IP
// address, which means port 53 ("192.0.2.53", "2001:db8::54"), or an
// address and a port ("192.0.2.54:5353", "[2001:db8::53]:53").
func ParseForward(s string) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if a, err := netip.ParseAddr(s); err == nil {
		ap = netip.AddrPortFrom(a, DNSPort)
	} else if ap, err = netip.ParseAddrPort(s); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address or IP:port (want e.g. 192.0.2.53, 192.0.2.53:5353, 2001:db8::53 or [2001:db8::53]:5353)", s)
	} else if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port 0 is not a port a resolver listens on; give 1..65535, or leave the port out for 53", s)
	}
	switch a := ap.Addr(); {
	case a.Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("%q: an address with a zone (%%%s) is not supported; use a global address", s, a.Zone())
	case a.Is4In6():
		return netip.AddrPort{}, fmt.Errorf("%q: use the plain IPv4 address %s", s, a.Unmap())
	}
	return ap, nil
}

// sortAddrs sorts addresses (IPv4 first) and drops duplicates.
func sortAddrs(a []netip.Addr) []netip.Addr {
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Compact(a)
}

// servableName reports whether relative name (lowercase) can be a DNS name
// in domain: labels of 1..63 bytes, at most 253 bytes with the domain.
// Namespace names may hold '_', which DNS carries (host name rules do not
// allow it, so some resolvers refuse such names; Lint warns).
func servableName(name, domain string) bool {
	if name == "" || len(name)+1+len(domain) > maxDNSNameLen {
		return false
	}
	for l := range strings.SplitSeq(name, ".") {
		if l == "" || len(l) > maxDNSLabelLen {
			return false
		}
	}
	return true
}

// dnsNameProblem says why name is not a DNS name as dns.domain and
// dns.hosts[].name take them (lowercase labels of letters, digits and '-',
// not first or last, 1..63 bytes each, at most 253 bytes, no trailing
// dot), or "".
func dnsNameProblem(name string) string {
	switch {
	case name == "":
		return "the name is empty"
	case name == ".":
		return `"." is the root, not a name`
	case strings.HasSuffix(name, "."):
		return fmt.Sprintf("%q ends with a dot; write it without (%q)", name, strings.TrimRight(name, "."))
	case len(name) > maxDNSNameLen:
		return fmt.Sprintf("%q is %d bytes long; a DNS name is at most %d", name, len(name), maxDNSNameLen)
	case strings.ToLower(name) != name:
		return fmt.Sprintf("%q has capital letters; names are written in lowercase (%q)", name, strings.ToLower(name))
	}
	for l := range strings.SplitSeq(name, ".") {
		switch {
		case l == "":
			return fmt.Sprintf("%q has an empty label; a DNS name is labels joined by single dots (e.g. lab or lab.example)", name)
		case len(l) > maxDNSLabelLen:
			return fmt.Sprintf("label %q of %q is %d bytes long; a label is at most %d", l, name, len(l), maxDNSLabelLen)
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Sprintf("label %q of %q starts or ends with '-'", l, name)
		}
		for _, r := range l {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return fmt.Sprintf("label %q of %q has %q; a label is lowercase letters, digits and '-'", l, name, r)
			}
		}
	}
	return ""
}

// IsDNSLabel reports whether s is a single DNS label as the zone holds
// names: lowercase letters, digits and '-' (not first or last), 1..63
// bytes. The supervisor uses it for the host names DHCP clients send.
func IsDNSLabel(s string) bool { return !strings.Contains(s, ".") && dnsNameProblem(s) == "" }

// dns validates the dns section: the domain (given, or the default from
// the network's name), at least one server, each on a declared interface
// that holds an address (not a bridge port), once per interface, with
// upstream resolvers that parse; the hosts (valid, unique names that are
// not generated ones, plain unicast addresses); and that no two namespaces
// or VMs share a name.
func (v *validator) dns() {
	t := v.t
	d := t.DNS
	if d == nil {
		if t.src != nil && v.c.given("dns") {
			v.c.add("dns", "dns needs at least one server (servers: [{namespace: host, interface: eth0}]); names without a server answer nothing")
		}
		return
	}
	domain := t.DNSDomain()
	domainOK := true
	if d.Domain != "" {
		if p := dnsNameProblem(d.Domain); p != "" {
			v.c.add("dns.domain", "%s", p)
			domainOK = false
		}
	} else if p := dnsNameProblem(domain); p != "" {
		v.c.add("dns", "the default domain %q (from the network's name %q) is not a DNS name: %s; set dns.domain", domain, t.Name, p)
		domainOK = false
	}
	if len(d.Servers) == 0 {
		v.c.add("dns.servers", "dns needs at least one server (servers: [{namespace: host, interface: eth0}]); names without a server answer nothing")
	}
	v.dnsServers(d)
	gen := v.dnsGenerated()
	hosts := map[string]string{}
	for i, h := range d.Hosts {
		f := fmt.Sprintf("dns.hosts[%d]", i)
		switch p := dnsNameProblem(h.Name); {
		case h.Name == "":
			v.c.add(f+".name", "give the host a name (e.g. nas), relative to the zone %q", domain)
		case p != "":
			v.c.add(f+".name", "%s", p)
		case domainOK && len(h.Name)+1+len(domain) > maxDNSNameLen:
			v.c.add(f+".name", "%s.%s is %d bytes long; a DNS name is at most %d", h.Name, domain, len(h.Name)+1+len(domain), maxDNSNameLen)
		case hosts[h.Name] != "":
			v.c.add(f+".name", "host %q is already declared at %s; give all its addresses in one entry", h.Name, v.c.at(hosts[h.Name]))
		case gen[h.Name].field != "":
			g := gen[h.Name]
			v.c.add(f+".name", "%q is the name of %s (%s), which kvmnet names itself with its addresses; pick another name", h.Name, g.what, v.c.at(g.field))
		default:
			hosts[h.Name] = f + ".name"
		}
		if len(h.Addresses) == 0 {
			v.c.add(f+".addresses", "give the host at least one address (addresses: [192.168.1.5])")
		}
		seen := map[netip.Addr]string{}
		for k, a := range h.Addresses {
			af := fmt.Sprintf("%s.addresses[%d]", f, k)
			ip, err := netip.ParseAddr(a)
			switch {
			case err != nil:
				if p, perr := netip.ParsePrefix(a); perr == nil {
					v.c.add(af, "%s has a prefix length; a name maps to a plain address: write %s", a, p.Addr())
				} else {
					v.c.add(af, "%q is not an IP address (want e.g. 192.168.1.5 or fd00::5)", a)
				}
			case ip.Zone() != "" || ip.Is4In6():
				v.c.add(af, "%q: use a plain IPv4 or IPv6 address", a)
			case ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback():
				v.c.add(af, "%s is not a unicast host address", ip)
			case seen[ip] != "":
				v.c.add(af, "%s is listed twice", ip)
			default:
				seen[ip] = af
			}
		}
	}
}

// dnsServers checks each DNS server of d.
func (v *validator) dnsServers(d *DNS) {
	on := map[string]string{}
	for i := range d.Servers {
		s := &d.Servers[i]
		f := fmt.Sprintf("dns.servers[%d]", i)
		own := v.dnsServerIface(s, f)
		if own != nil {
			key := s.Namespace + "/" + s.Interface
			if prev, dup := on[key]; dup {
				v.c.add(f+".interface", "the DNS server at %s already answers on %q in namespace %q; declare it once", v.c.at(prev), s.Interface, s.Namespace)
			} else {
				on[key] = f + ".interface"
			}
		}
		seen := map[netip.AddrPort]string{}
		for k, fw := range s.Forward {
			ff := fmt.Sprintf("%s.forward[%d]", f, k)
			ap, err := ParseForward(fw)
			switch {
			case err != nil:
				v.c.add(ff, "%v", err)
			case ap.Addr().IsUnspecified():
				v.c.add(ff, "%s is the unspecified address; forward to a resolver's address", ap.Addr())
			case ap.Addr().IsMulticast():
				v.c.add(ff, "%s is a multicast address; forward to a resolver's unicast address", ap.Addr())
			case ap.Port() == DNSPort && slices.Contains(own, ap.Addr()):
				v.c.add(ff, "%s is this server's own address: it would forward every query to itself; give an upstream resolver", ap)
			case seen[ap] != "":
				v.c.add(ff, "%s is already listed at %s", ap, v.c.at(seen[ap]))
			default:
				seen[ap] = ff
			}
		}
	}
}

// dnsServerIface checks the namespace and interface of server s (at field
// f) and returns the interface's addresses, or nil when it is unusable.
func (v *validator) dnsServerIface(s *DNSServer, f string) []netip.Addr {
	t := v.t
	if !v.nsRef(s.Namespace, f+".namespace") {
		return nil
	}
	if s.Interface == "" {
		v.c.add(f+".interface", "name the interface the server answers on (e.g. eth0, the gateway's interface on the segment)")
		return nil
	}
	if declared, ok := v.ifaces[s.Namespace][s.Interface]; !ok || s.Interface == "lo" || declared == "" {
		v.c.add(f+".interface", "interface %q is not declared in namespace %q", s.Interface, s.Namespace)
		return nil
	}
	if br := t.masterOf(s.Namespace, s.Interface); br != "" {
		v.c.add(f+".interface", "%q is a port of bridge %q and holds no address; serve on the bridge, or on the gateway's interface", s.Interface, br)
		return nil
	}
	addrs := t.DNSServerAddrs(s)
	if len(addrs) == 0 {
		v.c.add(f+".interface", "%q in namespace %q has no address; the server answers on the interface's addresses: give it one, or serve on an interface that has one", s.Interface, s.Namespace)
		return nil
	}
	return addrs
}

// genName is a name kvmnet generates: a namespace's or a VM's.
type genName struct {
	what, field string
}

// dnsGenerated returns the names kvmnet generates (lowercase), reporting
// namespaces and VMs that would share one: names are case-insensitive, and
// a VM's name is its namespace's only when that namespace holds the VM.
func (v *validator) dnsGenerated() map[string]genName {
	t := v.t
	gen := map[string]genName{}
	nsField := map[string]string{}
	for i, ns := range t.Namespaces {
		if ns.Name == "" {
			continue
		}
		f := fmt.Sprintf("namespaces[%d].name", i)
		key := strings.ToLower(ns.Name)
		if g, ok := gen[key]; ok {
			if _, exact := nsField[ns.Name]; !exact { // exact duplicates are reported already
				v.c.add(f, "namespace %q and %s (%s) have the same DNS name %s.%s (names are case-insensitive); rename one", ns.Name, g.what, v.c.at(g.field), key, t.DNSDomain())
			}
			continue
		}
		nsField[ns.Name] = f
		gen[key] = genName{fmt.Sprintf("namespace %q", ns.Name), f}
	}
	for i, vm := range t.VMs {
		if vm.Name == "" {
			continue
		}
		f := fmt.Sprintf("vms[%d].name", i)
		key := strings.ToLower(vm.Name)
		g, ok := gen[key]
		switch {
		case !ok:
			gen[key] = genName{fmt.Sprintf("vm %q", vm.Name), f}
		case strings.HasPrefix(g.what, "vm "):
			if t.VM(vm.Name) == &t.VMs[i] { // exact duplicates are reported already
				v.c.add(f, "vm %q and %s (%s) have the same DNS name %s.%s (names are case-insensitive); rename one", vm.Name, g.what, v.c.at(g.field), key, t.DNSDomain())
			}
		case g.field != nsField[vm.NS()]:
			v.c.add(f, "vm %q and %s (%s) would both be named %s.%s, and that namespace is not the VM's (%q); rename one", vm.Name, g.what, v.c.at(g.field), key, t.DNSDomain(), vm.NS())
		}
	}
	return gen
}

// lintDNS warns, when the topology has dns, of namespaces that get no DNS
// name, or one that some resolvers refuse ('_'). VM names are always valid
// labels.
func (t *Topology) lintDNS(c *errs) {
	if t.DNS == nil {
		return
	}
	domain := t.DNSDomain()
	check := func(what, name, f string) {
		key := strings.ToLower(name)
		switch {
		case name == "":
		case !servableName(key, domain):
			c.add(f, "warning: %s gets no DNS name: %q is not a DNS name in %q (empty label, label over %d bytes or name over %d bytes); rename it to reach it by name", what, key, domain, maxDNSLabelLen, maxDNSNameLen)
		case strings.Contains(key, "_"):
			c.add(f, "warning: %s is named %s.%s, but '_' is not allowed in host names and some resolvers refuse the name; prefer '-'", what, key, domain)
		}
	}
	for i, ns := range t.Namespaces {
		check(fmt.Sprintf("namespace %q", ns.Name), ns.Name, fmt.Sprintf("namespaces[%d].name", i))
	}
}
