package topology

import (
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// dnsBase has every kind of interface that holds addresses (link ends, a
// VLAN sub-interface, the uplink and its peer), VMs with a static and a
// DHCP address, a VM namespace with addresses of its own, and a namespace
// with capitals.
const dnsBase = `name: My_Lab
prefix: p-
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - {name: Mgmt, role: endpoint}
  - {name: world, role: external}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [10.9.0.1/24, "fd00:9::1/64"]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0}
      - {namespace: bridge, name: vm2, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth1, addresses: [10.8.0.2/24]}
      - {namespace: Mgmt, name: eth0, addresses: [10.8.0.1/24]}
vlans:
  - {namespace: host, name: eth0.100, parent: eth0, id: 100, addresses: [10.100.0.1/24]}
uplink:
  mode: nat
  addresses: [203.0.113.2/24]
  peer: {namespace: world, name: eth0, addresses: [203.0.113.1/24]}
dhcp:
  servers:
    - namespace: host
      interface: eth0
      pool: {start: 10.9.0.100, end: 10.9.0.199}
vms:
  - name: vm1
    nics: [{uplink: eth0, addresses: [10.9.0.20/24], gateway: 10.9.0.1}]
  - name: db
    namespace: vm2
    nics: [{uplink: eth0, dhcp: true}]
`

func addrs(ss ...string) []netip.Addr {
	out := []netip.Addr{}
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestDNSParse(t *testing.T) {
	topo, err := Parse("dns.yaml", []byte(dnsBase+`dns:
  servers:
    - namespace: host
      interface: eth0
      forward: [192.0.2.53, "192.0.2.54:5353", "[2001:db8::53]:53", "2001:db8::54"]
    - namespace: Mgmt
      interface: eth0
  hosts:
    - name: nas
      addresses: [10.9.0.5, "fd00:9::5"]
    - name: files.nas
      addresses: [10.9.0.5]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo.DNSDomain(); got != "my-lab" {
		t.Errorf("DNSDomain = %q, want my-lab (the network's name, not the prefixed ID)", got)
	}
	want := map[string][]netip.Addr{
		"host":      addrs("10.9.0.1", "10.100.0.1", "203.0.113.2", "fd00:9::1"),
		"bridge":    addrs(),
		"vm1":       addrs("10.8.0.2", "10.9.0.20"), // the namespace's and the VM's static one
		"vm2":       addrs(),                        // db's namespace; db takes its address by DHCP
		"mgmt":      addrs("10.8.0.1"),
		"world":     addrs("203.0.113.1"),
		"nas":       addrs("10.9.0.5", "fd00:9::5"),
		"files.nas": addrs("10.9.0.5"),
	}
	if got := topo.DNSNames(); !reflect.DeepEqual(got, want) {
		t.Errorf("DNSNames =\n%v\nwant\n%v", got, want)
	}
	if got, want := topo.DNSServerAddrs(&topo.DNS.Servers[0]), addrs("10.9.0.1", "fd00:9::1"); !reflect.DeepEqual(got, want) {
		t.Errorf("DNSServerAddrs(host/eth0) = %v, want %v", got, want)
	}
	if got, want := topo.DNSServerAddrs(&topo.DNS.Servers[1]), addrs("10.8.0.1"); !reflect.DeepEqual(got, want) {
		t.Errorf("DNSServerAddrs(Mgmt/eth0) = %v, want %v", got, want)
	}
	if n := len(topo.DNSServers()); n != 2 {
		t.Errorf("DNSServers: %d", n)
	}
	var fw []netip.AddrPort
	for _, f := range topo.DNS.Servers[0].Forward {
		ap, err := ParseForward(f)
		if err != nil {
			t.Fatal(err)
		}
		fw = append(fw, ap)
	}
	wantFw := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("192.0.2.54:5353"),
		netip.MustParseAddrPort("[2001:db8::53]:53"), netip.MustParseAddrPort("[2001:db8::54]:53"),
	}
	if !reflect.DeepEqual(fw, wantFw) {
		t.Errorf("forward = %v, want %v", fw, wantFw)
	}
	if w := topo.Lint(); len(w) != 0 {
		t.Errorf("Lint: %v", w)
	}
	// A second Normalize + Validate is a no-op.
	if err := topo.Normalize(); err != nil {
		t.Fatal(err)
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestDNSDomain(t *testing.T) {
	for _, c := range []struct{ name, domain, want string }{
		{"lab", "", "lab"},
		{"My_Lab", "", "my-lab"},
		{"Lab-1", "", "lab-1"},
		{"lab", "example.org", "example.org"},
	} {
		topo := &Topology{Name: c.name}
		if c.domain != "" {
			topo.DNS = &DNS{Domain: c.domain}
		}
		if got := topo.DNSDomain(); got != c.want {
			t.Errorf("DNSDomain(name %q, domain %q) = %q, want %q", c.name, c.domain, got, c.want)
		}
	}
	// Without a dns section there are no servers, but the names are known.
	topo, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	if topo.DNSServers() != nil || topo.DNSDomain() != "reference" {
		t.Errorf("default: servers %v, domain %q", topo.DNSServers(), topo.DNSDomain())
	}
	want := map[string][]netip.Addr{"host": addrs("192.168.1.1"), "bridge": addrs(), "vm1": addrs("192.168.1.100")}
	if got := topo.DNSNames(); !reflect.DeepEqual(got, want) {
		t.Errorf("default DNSNames = %v, want %v", got, want)
	}
}

// TestDNSNamesUnvalidated: DNSNames on a topology built in code leaves out
// loopback addresses, names that cannot be DNS names and duplicates.
func TestDNSNamesUnvalidated(t *testing.T) {
	topo := &Topology{
		Name:       "x",
		Namespaces: []Namespace{{Name: "a"}, {Name: "b..c"}, {Name: "A"}},
		Links: []Link{{Endpoints: []Endpoint{
			{Namespace: "a", Name: "eth0", Addresses: []string{"127.0.0.2/8", "10.0.0.2/24", "10.0.0.1/24"}},
			{Namespace: "b..c", Name: "eth0", Addresses: []string{"10.0.0.3/24"}},
		}}},
		Bridges: []Bridge{{Name: "br0", Namespace: "A", Addresses: []string{"10.0.0.1/24", "::1/128", "bad"}}},
		VMs:     []VM{{Name: "a", NICs: []VMNIC{{Addresses: []string{"10.0.0.2/24"}}}}},
		DNS:     &DNS{Hosts: []DNSHost{{Name: "h", Addresses: []string{"::1", "fd00::1", "x"}}}},
	}
	want := map[string][]netip.Addr{"a": addrs("10.0.0.1", "10.0.0.2"), "h": addrs("fd00::1")}
	if got := topo.DNSNames(); !reflect.DeepEqual(got, want) {
		t.Errorf("DNSNames = %v, want %v", got, want)
	}
}

func TestParseForward(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "192.0.2.53", want: "192.0.2.53:53"},
		{in: "192.0.2.54:5353", want: "192.0.2.54:5353"},
		{in: "[2001:db8::53]:53", want: "[2001:db8::53]:53"},
		{in: "[2001:db8::53]:5353", want: "[2001:db8::53]:5353"},
		{in: "2001:db8::54", want: "[2001:db8::54]:53"},
		{in: "127.0.0.1:5353", want: "127.0.0.1:5353"},
		{in: "", err: "is not an IP address or IP:port"},
		{in: "dns.google", err: "is not an IP address or IP:port"},
		{in: "192.0.2.53:", err: "is not an IP address or IP:port"},
		{in: "192.0.2.53:dns", err: "is not an IP address or IP:port"},
		{in: "192.0.2.53:65536", err: "is not an IP address or IP:port"},
		{in: "192.0.2.53:0", err: "port 0"},
		{in: "[2001:db8::53]", err: "is not an IP address or IP:port"},
		{in: "2001:db8::53]:53", err: "is not an IP address or IP:port"},
		{in: "192.0.2.53/24", err: "is not an IP address or IP:port"},
		{in: " 192.0.2.53", err: "is not an IP address or IP:port"},
		{in: "fe80::1%eth0", err: "zone"},
		{in: "[fe80::1%eth0]:53", err: "zone"},
		{in: "::ffff:192.0.2.53", err: "use the plain IPv4 address 192.0.2.53"},
	} {
		got, err := ParseForward(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseForward(%q) = %v, %v; want an error with %q", c.in, got, err, c.err)
		case c.err == "" && (err != nil || got.String() != c.want):
			t.Errorf("ParseForward(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
}

// TestDNSNameRule checks the DNS name rule of dns.domain and
// dns.hosts[].name, and that the schema's pattern agrees with it.
func TestDNSNameRule(t *testing.T) {
	s := loadSchema(t)
	d := s.def("dnsName")
	re := regexp.MustCompile(d["pattern"].(string))
	maxLen := int(d["maxLength"].(float64))
	long := strings.Repeat("a", 63)
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"lab", true}, {"lab.example", true}, {"a", true}, {"0", true}, {"a-b.c-d", true}, {"x1.y2.z3", true},
		{long, true}, {long + "a", false}, {long + "." + long + "." + long + "." + strings.Repeat("a", 61), true},
		{long + "." + long + "." + long + "." + strings.Repeat("a", 62), false},
		{"", false}, {".", false}, {"lab.", false}, {".lab", false}, {"a..b", false}, {"Lab", false},
		{"-lab", false}, {"lab-", false}, {"a.-b", false}, {"a_b", false}, {"a b", false}, {"é", false}, {"a/b", false},
	} {
		got := dnsNameProblem(c.name) == ""
		if got != c.ok {
			t.Errorf("dnsNameProblem(%q) = %q, want ok %v", c.name, dnsNameProblem(c.name), c.ok)
		}
		if schemaOK := re.MatchString(c.name) && len(c.name) <= maxLen; schemaOK != c.ok {
			t.Errorf("%q: schema accepts %v, validation %v", c.name, schemaOK, c.ok)
		}
	}
}

// TestDNSErrors checks single problems by their message (the catalogue in
// testdata/invalid/dns-*.yaml has the exact, positioned texts).
func TestDNSErrors(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, c := range []struct{ name, dns, want string }{
		{"no-servers", "dns: {domain: lab}", "dns needs at least one server"},
		{"empty-servers", "dns: {servers: []}", "dns.servers: dns needs at least one server"},
		{"null", "dns:", "dns: dns needs at least one server"},
		{"vm-nic-end", "dns: {servers: [{namespace: vm1, interface: eth0}]}", `"eth0" in namespace "vm1" has no address`},
		{"ipv6-only", `dns: {servers: [{namespace: host, interface: eth0, forward: ["[fd00:9::1]:53", "fd00:9::1", "[fd00:9::1]:5353"]}]}`,
			"dns.servers[0].forward[1]: [fd00:9::1]:53 is this server's own address"},
		{"long-name", "dns: {domain: " + long + "." + long + "." + long + ", servers: [{namespace: host, interface: eth0}], hosts: [{name: " + long + ", addresses: [10.9.0.5]}]}",
			"is 255 bytes long; a DNS name is at most 253"},
		{"host-is-vm", "dns: {servers: [{namespace: host, interface: eth0}], hosts: [{name: db, addresses: [10.9.0.5]}]}", `"db" is the name of vm "db"`},
		{"host-is-namespace-case", "dns: {servers: [{namespace: host, interface: eth0}], hosts: [{name: mgmt, addresses: [10.9.0.5]}]}", `"mgmt" is the name of namespace "Mgmt"`},
		{"no-addresses", "dns: {servers: [{namespace: host, interface: eth0}], hosts: [{name: nas, addresses: []}]}", "dns.hosts[0].addresses: give the host at least one address"},
		{"no-name", "dns: {servers: [{namespace: host, interface: eth0}], hosts: [{addresses: [10.9.0.5]}]}", `dns.hosts[0].name: give the host a name (e.g. nas), relative to the zone "my-lab"`},
		{"label-too-long", "dns: {domain: " + long + "a, servers: [{namespace: host, interface: eth0}]}", "bytes long; a label is at most 63"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("dns.yaml", []byte(dnsBase+c.dns+"\n"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant an error with %q", err, c.want)
			} else {
				checkPositioned(t, err)
			}
		})
	}
}

// TestDNSServerVLANPort: a VLAN sub-interface that is a bridge port holds
// no address either.
func TestDNSServerVLANPort(t *testing.T) {
	src := strings.Replace(dnsBase, "  - {name: br0, namespace: bridge}\n", "  - {name: br0, namespace: bridge}\n  - {name: br1, namespace: bridge}\n", 1)
	src = strings.Replace(src, "vlans:\n", "vlans:\n  - {namespace: bridge, name: vm2.100, parent: vm2, id: 100, bridge: br1}\n", 1)
	_, err := Parse("dns.yaml", []byte(src+"dns: {servers: [{namespace: bridge, interface: vm2.100}]}\n"))
	if err == nil || !strings.Contains(err.Error(), `dns.servers[0].interface: "vm2.100" is a port of bridge "br1" and holds no address`) {
		t.Errorf("got %v", err)
	}
}

// TestDNSNameCollisions: VMs whose names differ in case only, a VM named
// like another namespace, and the VM's own namespace with another case,
// which is no collision.
func TestDNSNameCollisions(t *testing.T) {
	base := strings.Replace(dnsBase, "  - name: db\n    namespace: vm2\n", "  - name: VM1\n    namespace: vm2\n", 1)
	_, err := Parse("dns.yaml", []byte(base+"dns: {servers: [{namespace: host, interface: eth0}]}\n"))
	if err == nil || !strings.Contains(err.Error(), `vms[1].name: vm "VM1" and namespace "vm1" (line 6) would both be named vm1.my-lab, and that namespace is not the VM's ("vm2")`) {
		t.Errorf("got %v", err)
	}
	// Without dns the names do not matter.
	if _, err := Parse("dns.yaml", []byte(base)); err != nil {
		t.Errorf("without dns: %v", err)
	}
	base = strings.Replace(dnsBase, "  - name: vm1\n    nics:", "  - name: web\n    namespace: vm1\n    nics:", 1)
	base = strings.Replace(base, "  - name: db\n", "  - name: WEB\n", 1)
	_, err = Parse("dns.yaml", []byte(base+"dns: {servers: [{namespace: host, interface: eth0}]}\n"))
	if err == nil || !strings.Contains(err.Error(), `vms[1].name: vm "WEB" and vm "web" (line `) {
		t.Errorf("got %v", err)
	}
	// A VM called Mgmt... in namespace Mgmt is the namespace's name, merged.
	own := strings.Replace(dnsBase, "  - name: db\n    namespace: vm2\n    nics: [{uplink: eth0, dhcp: true}]\n",
		"  - name: MGMT\n    namespace: Mgmt\n    nics: [{uplink: eth2, addresses: [10.9.0.30/24]}]\n", 1)
	own = strings.Replace(own, "links:\n", "links:\n  - endpoints:\n      - {namespace: Mgmt, name: eth2}\n      - {namespace: bridge, name: mgmt, bridge: br0}\n", 1)
	topo, err := Parse("dns.yaml", []byte(own+"dns: {servers: [{namespace: host, interface: eth0}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := topo.DNSNames()["mgmt"], addrs("10.8.0.1", "10.9.0.30"); !reflect.DeepEqual(got, want) {
		t.Errorf("mgmt = %v, want %v", got, want)
	}
}

func TestDNSLint(t *testing.T) {
	src := strings.Replace(dnsBase, "{name: Mgmt, role: endpoint}", "{name: mgmt_1, role: endpoint}", 1)
	src = strings.ReplaceAll(src, "namespace: Mgmt", "namespace: mgmt_1")
	topo, err := Parse("dns.yaml", []byte(src+"dns: {servers: [{namespace: host, interface: eth0}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	w := topo.Lint()
	if len(w) != 1 || !strings.Contains(w[0].Error(), `namespaces[4].name: warning: namespace "mgmt_1" is named mgmt_1.my-lab, but '_' is not allowed in host names`) {
		t.Errorf("Lint = %v", w)
	}
	// A name that cannot be a DNS name.
	bad := strings.Replace(src, "  - {name: world, role: external}\n", "  - {name: world, role: external}\n  - {name: a..b}\n", 1)
	topo, err = Parse("dns.yaml", []byte(bad+"dns: {servers: [{namespace: host, interface: eth0}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	w = topo.Lint()
	if len(w) != 2 || !strings.Contains(w[1].Error(), `namespaces[6].name: warning: namespace "a..b" gets no DNS name`) {
		t.Errorf("Lint = %v", w)
	}
	if _, ok := topo.DNSNames()["a..b"]; ok {
		t.Errorf("a..b has a name")
	}
	// Without dns, no warning.
	topo, err = Parse("dns.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if w := topo.Lint(); len(w) != 0 {
		t.Errorf("Lint without dns = %v", w)
	}
}

// TestDNSExample: examples/dns.yaml gives the names its comment lists.
func TestDNSExample(t *testing.T) {
	topo, err := Load(filepath.Join(examplesDir, "dns.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]netip.Addr{
		"host":      addrs("192.168.1.1", "fd00:1::1"),
		"bridge":    addrs(),
		"vm1":       addrs("192.168.1.100", "fd00:1::100"),
		"nas":       addrs("192.168.1.5", "fd00:1::5"),
		"files.nas": addrs("192.168.1.5"),
	}
	if got := topo.DNSNames(); !reflect.DeepEqual(got, want) || topo.DNSDomain() != "lab" {
		t.Errorf("DNSNames = %v (domain %q), want %v in lab", got, topo.DNSDomain(), want)
	}
	if got, want := topo.DNSServerAddrs(&topo.DNS.Servers[0]), addrs("192.168.1.1", "fd00:1::1"); !reflect.DeepEqual(got, want) {
		t.Errorf("DNSServerAddrs = %v, want %v", got, want)
	}
}
