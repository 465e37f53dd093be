package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/render"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// fixture loads a topology from YAML under a unique prefix; the prefix's
// namespaces are deleted when the test ends, whatever happened.
func fixture(t *testing.T, src string) *topology.Topology {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip")
	prefix := testutil.UniquePrefix(t)
	topo, err := topology.Parse("test.yaml", []byte(src), topology.WithPrefix(prefix))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return topo
}

func testOpts(t *testing.T, more ...Option) []Option {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("KVMNET_TEST_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return append([]Option{WithLogger(log), WithStateDir(stateDir(t))}, more...)
}

var stateDirs sync.Map // test name -> its state directory

// stateDir is one state directory per test, as on a host where every kvmnet
// command uses /var/lib/kvmnet.
func stateDir(t *testing.T) string {
	if d, ok := stateDirs.Load(t.Name()); ok {
		return d.(string)
	}
	d := t.TempDir()
	stateDirs.Store(t.Name(), d)
	t.Cleanup(func() { stateDirs.Delete(t.Name()) })
	return d
}

func up(t *testing.T, topo *topology.Topology, more ...Option) *Result {
	t.Helper()
	res, err := Up(context.Background(), topo, testOpts(t, more...)...)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	return res
}

// inNS runs a witness command inside namespace ns of topo.
func inNS(t *testing.T, topo *topology.Topology, ns string, args ...string) string {
	t.Helper()
	return testutil.Run(t, "ip", append([]string{"netns", "exec", topo.NSName(ns)}, args...)...)
}

func ping(t *testing.T, topo *topology.Topology, from, to string) {
	t.Helper()
	out, err := testutil.Try("ip", "netns", "exec", topo.NSName(from), "ping", "-c", "2", "-i", "0.2", "-W", "2", to)
	if err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from, err, out)
	}
	if !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping %s from %s lost packets:\n%s", to, from, out)
	}
}

func noPing(t *testing.T, topo *topology.Topology, from, to string) {
	t.Helper()
	out, err := testutil.Try("ip", "netns", "exec", topo.NSName(from), "ping", "-c", "1", "-W", "1", to)
	if err == nil {
		t.Fatalf("ping %s from %s succeeded, want no reply:\n%s", to, from, out)
	}
}

// listen opens a TCP listener on addr inside ns (the socket stays in that
// namespace), closed when the test ends.
func listen(t *testing.T, topo *topology.Topology, ns, addr string) net.Listener {
	t.Helper()
	h, err := netns.Open(topo.NSName(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var ln net.Listener
	if err := netns.Do(h, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from ns to addr.
func dial(t *testing.T, topo *topology.Topology, ns, addr string) net.Conn {
	t.Helper()
	h, err := netns.Open(topo.NSName(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var c net.Conn
	if err := netns.Do(h, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("TCP connect %s from %s: %v", addr, ns, err)
	}
	return c
}

// tcpEcho listens on addr inside ns and echoes one line per connection.
func tcpEcho(t *testing.T, topo *topology.Topology, ns, addr string) {
	t.Helper()
	ln := listen(t, topo, ns, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// tcpRoundTrip connects from ns to addr and checks the echo.
func tcpRoundTrip(t *testing.T, topo *topology.Topology, ns, addr string) {
	t.Helper()
	c := dial(t, topo, ns, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := "kvmnet " + ns + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("TCP echo from %s via %s: got %q, %v", addr, ns, buf, err)
	}
}

// neighMAC returns the MAC that ns has learned for ip (ARP), or "".
func neighMAC(t *testing.T, topo *topology.Topology, ns, ip string) string {
	t.Helper()
	out := testutil.Run(t, "ip", "-n", topo.NSName(ns), "neigh", "show", ip)
	m := regexp.MustCompile(`lladdr ([0-9a-f:]{17})`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

func prefixedNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// syslogSocket points kvmnet's system log lines (internal/state) at a
// socket of the test's own; the returned function reads what arrived.
func syslogSocket(t *testing.T) func() []string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "log")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	t.Setenv("KVMNET_SYSLOG", sock)
	return func() []string {
		var out []string
		buf := make([]byte, 4096)
		for {
			l.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := l.Read(buf)
			if err != nil {
				return out
			}
			out = append(out, string(buf[:n]))
		}
	}
}

func rootLinks(t *testing.T) string {
	t.Helper()
	out := testutil.Run(t, "ip", "-o", "link", "show")
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

func TestReferenceDesign(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	linksBefore := rootLinks(t)

	res := up(t, topo)
	if len(res.Steps) == 0 || res.Writes == 0 {
		t.Fatalf("first up made no changes: %+v", res)
	}

	// Traffic: vm1 reaches the gateway on the host, across br0.
	ping(t, topo, "vm1", "192.168.1.1")
	// ARP: the host learned vm1's declared MAC, vm1 learned the host's.
	if got := neighMAC(t, topo, "host", "192.168.1.100"); got != "00:11:22:33:44:55" {
		t.Errorf("host's ARP entry for vm1 = %q, want 00:11:22:33:44:55", got)
	}
	if got := neighMAC(t, topo, "vm1", "192.168.1.1"); got != "aa:bb:cc:dd:ee:ff" {
		t.Errorf("vm1's ARP entry for the gateway = %q, want aa:bb:cc:dd:ee:ff", got)
	}
	// TCP across the bridge.
	tcpEcho(t, topo, "host", "192.168.1.1:7001")
	tcpRoundTrip(t, topo, "vm1", "192.168.1.1:7001")

	// iproute2 as an independent witness.
	br := topo.NSName("bridge")
	links := testutil.Run(t, "ip", "-n", br, "-o", "link", "show")
	for _, want := range []string{"br0:", "host@", "vm1@", "master br0"} {
		if !strings.Contains(links, want) {
			t.Errorf("ip -n %s link lacks %q:\n%s", br, want, links)
		}
	}
	fdb := testutil.Run(t, "bridge", "-n", br, "fdb", "show", "br", "br0")
	if !regexp.MustCompile(`00:11:22:33:44:55 dev vm1 master br0`).MatchString(fdb) {
		t.Errorf("bridge fdb has not learned vm1's MAC on port vm1:\n%s", fdb)
	}
	routes := inNS(t, topo, "vm1", "ip", "route")
	for _, want := range []string{"default via 192.168.1.1 dev eth0 proto 211", "10.0.0.0/24 via 192.168.1.1 dev eth0 proto 211"} {
		if !strings.Contains(routes, want) {
			t.Errorf("vm1 routes lack %q:\n%s", want, routes)
		}
	}
	// IPv6 is off where no IPv6 is declared (no DAD/RS/MLD chatter).
	if v := strings.TrimSpace(inNS(t, topo, "bridge", "cat", "/proc/sys/net/ipv6/conf/vm1/disable_ipv6")); v != "1" {
		t.Errorf("bridge port vm1 disable_ipv6 = %q, want 1", v)
	}

	// Re-running up on the unchanged network writes nothing.
	again := up(t, topo)
	if again.Writes != 0 || len(again.Steps) != 0 {
		t.Fatalf("second up: %d steps, %d writes; want 0, 0: %v", len(again.Steps), again.Writes, again.Steps)
	}

	// down removes everything, twice is fine, and the root namespace is as before.
	if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
		t.Fatalf("down: %v", err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("namespaces left after down: %v", left)
	}
	res2, err := Down(context.Background(), topo, testOpts(t)...)
	if err != nil || len(res2.Steps) != 0 {
		t.Fatalf("second down: %v, %d steps", err, len(res2.Steps))
	}
	if after := rootLinks(t); after != linksBefore {
		t.Fatalf("root namespace links changed:\nbefore %s\nafter  %s", linksBefore, after)
	}
}

const larger = `
name: larger
namespaces:
  - name: host
    role: host
    sysctls: {net.ipv4.ip_forward: "1"}
  - name: bridge
    role: bridge
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.10.1}]}
  - {name: vm2, role: vm, routes: [{to: default, via: 192.168.10.1}]}
  - {name: vm3, role: vm, routes: [{to: default, via: 192.168.20.1}]}
  - {name: vm4, role: endpoint, routes: [{to: default, via: 192.168.20.1}]}
  - name: external
    role: external
    routes:
      - {to: 192.168.10.0/24, via: 203.0.113.1}
      - {to: 192.168.20.0/24, via: 203.0.113.1}
bridges:
  - {name: br0, namespace: bridge}
  - {name: br1, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.10.1/24]}
      - {namespace: bridge, name: host0, bridge: br0}
  - endpoints:
      - {namespace: host, name: eth1, addresses: [192.168.20.1/24]}
      - {namespace: bridge, name: host1, bridge: br1}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [192.168.10.11/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [192.168.10.12/24]}
      - {namespace: bridge, name: vm2, bridge: br0}
  - endpoints:
      - {namespace: vm3, name: eth0, addresses: [192.168.20.13/24]}
      - {namespace: bridge, name: vm3, bridge: br1}
  - endpoints:
      - {namespace: vm4, name: eth0, addresses: [192.168.20.14/24]}
      - {namespace: bridge, name: vm4, bridge: br1}
uplink:
  mode: routed
  addresses: [203.0.113.1/24]
  peer: {namespace: external, name: eth0, addresses: [203.0.113.254/24]}
`

func TestLargerRoutedTopology(t *testing.T) {
	topo := fixture(t, larger)
	up(t, topo)
	// Same segment (L2 through br0 and br1), across segments (routed by the
	// host), and out of the uplink to the external namespace.
	ping(t, topo, "vm1", "192.168.10.12")
	ping(t, topo, "vm3", "192.168.20.14")
	ping(t, topo, "vm1", "192.168.20.13")
	ping(t, topo, "vm4", "203.0.113.254")
	ping(t, topo, "external", "192.168.10.11")
	tcpEcho(t, topo, "vm2", "192.168.10.12:7002")
	tcpRoundTrip(t, topo, "external", "192.168.10.12:7002")
	tcpRoundTrip(t, topo, "vm4", "192.168.10.12:7002")
	// Segments are separate broadcast domains: vm1 never learns vm3's MAC by
	// ARP; its neighbour for the routed path is the gateway.
	if got := neighMAC(t, topo, "vm1", "192.168.20.13"); got != "" {
		t.Errorf("vm1 has an ARP entry for vm3 on another segment: %s", got)
	}
	if got := strings.TrimSpace(inNS(t, topo, "host", "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("host ip_forward = %s", got)
	}
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d times: %v", again.Writes, again.Steps)
	}
	if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
		t.Fatal(err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("left after down: %v", left)
	}
}

const bridged = `
name: bridged
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.1.1}]}
  - {name: external, role: external}
bridges:
  - {name: br0, namespace: bridge}
  - {name: brup, namespace: host, addresses: [192.168.1.1/24]}
links:
  - endpoints:
      - {namespace: host, name: eth0, bridge: brup}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, mac: "00:11:22:33:44:55", addresses: [192.168.1.100/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
uplink:
  mode: bridge
  bridge: brup
  peer: {namespace: external, name: eth0, addresses: [192.168.1.50/24]}
`

func TestBridgedUplink(t *testing.T) {
	topo := fixture(t, bridged)
	up(t, topo)
	// The VM appears at L2 on the external segment: the external host ARPs
	// for it directly and learns its own MAC.
	ping(t, topo, "external", "192.168.1.100")
	if got := neighMAC(t, topo, "external", "192.168.1.100"); got != "00:11:22:33:44:55" {
		t.Fatalf("external's ARP entry for vm1 = %q, want the VM's MAC", got)
	}
	ping(t, topo, "vm1", "192.168.1.1")
	tcpEcho(t, topo, "vm1", "192.168.1.100:7003")
	tcpRoundTrip(t, topo, "external", "192.168.1.100:7003")
}

func TestInPlaceEdits(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	up(t, topo)
	idx := func(ns, name string) string {
		out := testutil.Run(t, "ip", "-n", topo.NSName(ns), "-o", "link", "show", name)
		return strings.SplitN(out, ":", 2)[0]
	}
	before := map[string]string{"vm1/eth0": idx("vm1", "eth0"), "bridge/br0": idx("bridge", "br0"), "host/eth0": idx("host", "eth0")}

	// Edit: vm1's address, MAC and MTU of its link, the static route, STP.
	topo.Links[1].Endpoints[0].Addresses = []string{"192.168.1.101/24"}
	topo.Links[1].Endpoints[0].MAC = "00:11:22:33:44:66"
	topo.Links[0].MTU = 9000 // jumbo frames end to end on the segment
	topo.Links[1].MTU = 9000
	topo.Namespaces[2].Routes[1].To = "10.0.1.0/24"
	topo.Bridges[0].STP = true
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	res := up(t, topo)
	for _, s := range res.Steps {
		if s.Op == plan.OpCreateLink || s.Op == plan.OpDeleteLink || s.Op == plan.OpCreateNS || s.Op == plan.OpDeleteNS {
			t.Errorf("in-place edit recreated something: %s", s)
		}
	}
	for k, v := range before {
		ns, name, _ := strings.Cut(k, "/")
		if got := idx(ns, name); got != v {
			t.Errorf("%s was recreated (ifindex %s -> %s)", k, v, got)
		}
	}
	addr := inNS(t, topo, "vm1", "ip", "-o", "addr", "show", "eth0")
	if !strings.Contains(addr, "192.168.1.101/24") || strings.Contains(addr, "192.168.1.100/") {
		t.Errorf("vm1 address not updated:\n%s", addr)
	}
	link := inNS(t, topo, "vm1", "ip", "-o", "link", "show", "eth0")
	if !strings.Contains(link, "mtu 9000") || !strings.Contains(link, "00:11:22:33:44:66") {
		t.Errorf("vm1 eth0 not updated:\n%s", link)
	}
	if !strings.Contains(testutil.Run(t, "ip", "-n", topo.NSName("bridge"), "-o", "link", "show", "vm1"), "mtu 9000") {
		t.Errorf("bridge-side MTU not updated")
	}
	routes := inNS(t, topo, "vm1", "ip", "route")
	if !strings.Contains(routes, "10.0.1.0/24 via 192.168.1.1") || strings.Contains(routes, "10.0.0.0/24") {
		t.Errorf("route not replaced:\n%s", routes)
	}
	if !strings.Contains(testutil.Run(t, "ip", "-n", topo.NSName("bridge"), "-d", "link", "show", "br0"), "stp_state 1") {
		t.Errorf("STP not switched on")
	}
	ping(t, topo, "vm1", "192.168.1.1")
	// Jumbo frames end to end: an 8972-byte payload with DF set crosses the
	// bridge unfragmented (9000 on every hop).
	if out, err := testutil.Try("ip", "netns", "exec", topo.NSName("vm1"), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "8972", "192.168.1.1"); err != nil {
		t.Fatalf("jumbo ping: %v\n%s", err, out)
	}

	// Removing an object deletes it and nothing else.
	topo.Namespaces[2].Routes = topo.Namespaces[2].Routes[:1]
	res = up(t, topo)
	if len(res.Steps) != 1 || res.Steps[0].Op != plan.OpDelRoute {
		t.Fatalf("removing a route: steps %v", res.Steps)
	}
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("re-up after edits wrote %d: %v", again.Writes, again.Steps)
	}
}

func TestAddAndRemoveNamespace(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	up(t, topo)
	// Add vm2 on br0.
	topo.Namespaces = append(topo.Namespaces, topology.Namespace{Name: "vm2", Role: topology.RoleVM})
	topo.Links = append(topo.Links, topology.Link{MTU: 1500, Endpoints: []topology.Endpoint{
		{Namespace: "vm2", Name: "eth0", MAC: "02:00:00:00:00:02", Addresses: []string{"192.168.1.102/24"}},
		{Namespace: "bridge", Name: "vm2", MAC: "02:00:00:00:00:12", Bridge: "br0"},
	}})
	if err := topo.Normalize(); err != nil {
		t.Fatal(err)
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	up(t, topo)
	ping(t, topo, "vm2", "192.168.1.100")
	// Remove it again: the namespace and its bridge port go, nothing else.
	topo.Namespaces = topo.Namespaces[:3]
	topo.Links = topo.Links[:2]
	res := up(t, topo)
	if len(res.Steps) != 2 {
		t.Errorf("removing vm2: want 2 steps (port, namespace), got %v", res.Steps)
	}
	if netns.Exists(topo.NSName("vm2")) {
		t.Fatal("vm2 still exists")
	}
	if out, _ := testutil.Try("ip", "-n", topo.NSName("bridge"), "link", "show", "vm2"); !strings.Contains(out, "does not exist") {
		t.Fatalf("bridge port vm2 still exists: %s", out)
	}
	ping(t, topo, "vm1", "192.168.1.1")
}

func TestForeignObjectsUntouched(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	// A namespace with a name the topology wants, made by someone else.
	foreign := topo.NSName("vm1")
	testutil.Run(t, "ip", "netns", "add", foreign)
	testutil.Run(t, "ip", "-n", foreign, "link", "add", "keepme", "type", "veth", "peer", "name", "keepme2")
	_, err := Up(context.Background(), topo, testOpts(t)...)
	var ce *plan.ConflictError
	if !errors.As(err, &ce) || ce.NS != foreign {
		t.Fatalf("up over a foreign namespace: got %v, want a conflict on %s", err, foreign)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 1 || left[0] != foreign {
		t.Fatalf("up built something despite the conflict: %v", left)
	}
	if !strings.Contains(testutil.Run(t, "ip", "-n", foreign, "link"), "keepme") {
		t.Fatal("foreign link was touched")
	}
	// down of the network must not delete the foreign namespace either.
	if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
		t.Fatal(err)
	}
	if !netns.Exists(foreign) {
		t.Fatal("down deleted a namespace kvmnet did not create")
	}
	testutil.Run(t, "ip", "netns", "del", foreign)

	// A foreign link inside a kvmnet namespace is left alone by up, and down
	// refuses to destroy it without --force.
	up(t, topo)
	testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "link", "add", "mine0", "type", "veth", "peer", "name", "mine1")
	if res := up(t, topo); res.Writes != 0 {
		t.Fatalf("up touched the network because of a foreign link: %v", res.Steps)
	}
	_, err = Down(context.Background(), topo, testOpts(t)...)
	var fe *ForeignError
	if !errors.As(err, &fe) || fe.NS != topo.NSName("vm1") {
		t.Fatalf("down with a foreign link inside: got %v, want ForeignError", err)
	}
	if !netns.Exists(topo.NSName("vm1")) {
		t.Fatal("down deleted the namespace despite refusing")
	}
	if _, err := Down(context.Background(), topo, testOpts(t, WithForce(true))...); err != nil {
		t.Fatalf("down --force: %v", err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("left after down --force: %v", left)
	}
}

func TestRollbackOnInjectedFailure(t *testing.T) {
	topo := fixture(t, larger)
	steps, err := Plan(context.Background(), topo)
	if err != nil {
		t.Fatal(err)
	}
	// Fail at several depths of the plan: each time nothing may remain.
	for _, at := range []int{1, len(steps) / 2, len(steps) - 1} {
		t.Run(fmt.Sprintf("step%d", at), func(t *testing.T) {
			n := 0
			boom := errors.New("injected failure")
			logged := syslogSocket(t)
			_, err := Up(context.Background(), topo, testOpts(t, withBeforeStep(func(s plan.Step) error {
				n++
				if n == at+1 {
					return boom
				}
				return nil
			}))...)
			if !errors.Is(err, boom) {
				t.Fatalf("up: got %v, want the injected failure", err)
			}
			if !strings.Contains(err.Error(), "rolled back") {
				t.Errorf("error does not say it rolled back: %v", err)
			}
			if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
				t.Fatalf("rollback left namespaces: %v", left)
			}
			// The system log has the failed step and the command's summary.
			lines := strings.Join(logged(), "\n")
			for _, want := range []string{"]: up " + topo.ID() + ": step failed: ", ": injected failure", "]: up " + topo.ID() + ": ", " steps journaled, 1 failed ("} {
				if !strings.Contains(lines, want) {
					t.Errorf("system log lacks %q:\n%s", want, lines)
				}
			}
		})
	}
	// Rollback of an in-place edit restores the previous state exactly.
	up(t, topo)
	edited := *topo
	edited.Links = append([]topology.Link(nil), topo.Links...)
	for _, i := range []int{0, 2, 3} { // the br0 segment, end to end
		edited.Links[i].MTU = 9000
	}
	n := 0
	_, err = Up(context.Background(), &edited, testOpts(t, withBeforeStep(func(s plan.Step) error {
		n++
		if s.Op == plan.OpSetLink && n > 1 {
			return errors.New("injected")
		}
		return nil
	}))...)
	if err == nil {
		t.Fatal("edit with injected failure succeeded")
	}
	if !strings.Contains(err.Error(), "rolled back") {
		t.Errorf("error does not say it rolled back: %v", err)
	}
	rest, err := Plan(context.Background(), topo)
	if err != nil || len(rest) != 0 {
		t.Fatalf("after the rolled-back edit the network differs from the original: %v %v", err, rest)
	}
}

func TestShellExportIsEquivalent(t *testing.T) {
	testutil.RequireTool(t, "nft")
	for name, src := range map[string]string{"routed": larger, "nat": natted, "bridged": bridged, "mirror": mirrorNet} {
		t.Run(name, func(t *testing.T) {
			topo := fixture(t, src)
			steps, err := Plan(context.Background(), topo)
			if err != nil {
				t.Fatal(err)
			}
			script := filepath.Join(t.TempDir(), "plan.sh")
			f, err := os.Create(script)
			if err != nil {
				t.Fatal(err)
			}
			if err := render.Shell(f, topo.ID(), steps); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if out, err := exec.Command("sh", script).CombinedOutput(); err != nil {
				t.Fatalf("plan -o sh script failed: %v\n%s", err, out)
			}
			// What iproute2, tc and nft built from the script is exactly what
			// kvmnet wants, read back from the kernel (deep: no mark trusted).
			rest, err := Plan(context.Background(), topo, WithDeep(true))
			if err != nil {
				t.Fatal(err)
			}
			if len(rest) != 0 {
				t.Fatalf("after running the exported script, kvmnet still plans %d changes: %v", len(rest), rest)
			}
			if topo.Uplink != nil {
				ping(t, topo, "vm1", topo.Uplink.Peer.Addresses[0][:strings.Index(topo.Uplink.Peer.Addresses[0], "/")])
			} else {
				ping(t, topo, "vm1", "192.168.7.1")
			}
			if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
				t.Fatalf("down of the script-built network: %v", err)
			}
		})
	}
}

const natted = `
name: natted
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.1.1}]}
  - {name: external, role: external}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [192.168.1.100/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
uplink:
  mode: nat
  addresses: [203.0.113.1/24]
  peer: {namespace: external, name: eth0, addresses: [203.0.113.254/24]}
`

func TestNATUplink(t *testing.T) {
	testutil.RequireTool(t, "nft")
	topo := fixture(t, natted)
	up(t, topo)
	// The external namespace has no route back to 192.168.1.0/24: only
	// masquerading makes the VM's traffic come back.
	ping(t, topo, "vm1", "203.0.113.254")
	ln := listen(t, topo, "external", "203.0.113.254:7004")
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		peer <- c.RemoteAddr().String()
		c.Close()
	}()
	dial(t, topo, "vm1", "203.0.113.254:7004").Close()
	select {
	case from := <-peer:
		if !strings.HasPrefix(from, "203.0.113.1:") {
			t.Fatalf("external saw the connection from %s, want the uplink address 203.0.113.1 (masquerade)", from)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection reached the external namespace")
	}
	// nft as a witness: the ruleset is readable, counts the traffic, and
	// parses again with nft -f.
	rules := inNS(t, topo, "host", "nft", "list", "ruleset")
	if !strings.Contains(rules, `oifname "uplink0" ip saddr 192.168.1.0/24 counter packets`) || !strings.Contains(rules, "masquerade") {
		t.Fatalf("nft list ruleset in host:\n%s", rules)
	}
	if strings.Contains(rules, "counter packets 0 ") {
		t.Errorf("masquerade rule counted no packets:\n%s", rules)
	}
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	os.WriteFile(file, []byte(rules), 0o644)
	inNS(t, topo, "host", "nft", "-c", "-f", file)
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}
	// Switching the mode to routed removes the table (and only it).
	topo.Uplink.Mode = topology.ModeRouted
	res := up(t, topo)
	if len(res.Steps) != 2 || res.Steps[0].Op != plan.OpFirewall || res.Steps[1].Op != plan.OpMark {
		t.Fatalf("nat -> routed: want the table removed and the mark updated, got %v", res.Steps)
	}
	if rules := inNS(t, topo, "host", "nft", "list", "ruleset"); strings.Contains(rules, "kvmnet") {
		t.Fatalf("table kvmnet still there:\n%s", rules)
	}
}

func TestMoveHostNIC(t *testing.T) {
	topo := fixture(t, `
name: realnic
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.1.1}]}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [192.168.1.100/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
uplink:
  mode: nat
  addresses: [203.0.113.1/24]
  device: DEVICE
`)
	// The "physical NIC": a veth end in the root namespace whose other end
	// is in a scratch namespace that plays the external switch. Both are this
	// test's own; the root end gets a unique name.
	ext := testutil.NewNS(t)
	nic := "kvt" + strings.TrimSuffix(strings.TrimPrefix(topo.Prefix, "kt"), "-") + "n"
	topo.Uplink.Device, topo.Uplink.Name = nic, "uplink0"
	testutil.Run(t, "ip", "link", "add", nic, "type", "veth", "peer", "name", "eth0", "netns", ext.Name)
	t.Cleanup(func() { testutil.Try("ip", "link", "del", nic) })
	testutil.Run(t, "ip", "-n", ext.Name, "addr", "add", "203.0.113.254/24", "dev", "eth0")
	testutil.Run(t, "ip", "-n", ext.Name, "link", "set", "eth0", "up")
	// The NIC's own configuration in the root namespace, which down must
	// restore: an address and a route through it (documentation prefixes,
	// reachable only through this test's own veth).
	testutil.Run(t, "ip", "addr", "add", "198.51.100.7/24", "dev", nic)
	testutil.Run(t, "ip", "link", "set", nic, "up")
	testutil.Run(t, "ip", "route", "add", "198.18.77.0/24", "via", "198.51.100.1", "dev", nic)
	mac := strings.Fields(strings.SplitN(testutil.Run(t, "ip", "-o", "link", "show", nic), "link/ether ", 2)[1])[0]

	// Without the opt-in nothing is built.
	_, err := Up(context.Background(), topo, testOpts(t)...)
	if err == nil || !strings.Contains(err.Error(), "--move-host-nic") {
		t.Fatalf("up without opt-in: %v", err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("up without opt-in built %v", left)
	}

	up(t, topo, WithMoveHostNIC(true))
	if out, _ := testutil.Try("ip", "link", "show", nic); !strings.Contains(out, "does not exist") {
		t.Fatalf("%s is still in the root namespace", nic)
	}
	moved := testutil.Run(t, "ip", "-n", topo.NSName("host"), "-o", "link", "show", "uplink0")
	if !strings.Contains(moved, mac) {
		t.Fatalf("uplink0 in host is not the moved NIC (%s):\n%s", mac, moved)
	}
	ping(t, topo, "vm1", "203.0.113.254") // NAT out through the real NIC
	if again := up(t, topo, WithMoveHostNIC(true)); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}

	// down returns it under its own name, and it still reaches its switch.
	if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
		t.Fatalf("down: %v", err)
	}
	back := testutil.Run(t, "ip", "-o", "link", "show", nic)
	if !strings.Contains(back, mac) || !strings.Contains(back, "state UP") && !strings.Contains(back, ",UP") {
		t.Fatalf("%s did not come back up in the root namespace:\n%s", nic, back)
	}
	if strings.Contains(back, "kvmnet:") {
		t.Fatalf("%s still carries a kvmnet mark:\n%s", nic, back)
	}
	if a := testutil.Run(t, "ip", "-o", "addr", "show", "dev", nic); !strings.Contains(a, "198.51.100.7/24") {
		t.Fatalf("%s came back without its address:\n%s", nic, a)
	}
	if r := testutil.Run(t, "ip", "route", "show", "dev", nic); !strings.Contains(r, "198.18.77.0/24 via 198.51.100.1") {
		t.Fatalf("%s came back without its route:\n%s", nic, r)
	}
}

func TestIPv6(t *testing.T) {
	topo := fixture(t, sixGateway) // lab/diagnose_integration_test.go
	up(t, topo)
	out, err := testutil.Try("ip", "netns", "exec", topo.NSName("vm1"), "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "2001:db8:1::1")
	if err != nil {
		t.Fatalf("ping -6: %v\n%s", err, out)
	}
	if !strings.Contains(inNS(t, topo, "vm1", "ip", "-6", "route"), "default via 2001:db8:1::1 dev eth0 proto 211") {
		t.Fatal("IPv6 default route missing")
	}
	// IPv6 stays off where none is declared (the bridge namespace).
	if v := strings.TrimSpace(inNS(t, topo, "bridge", "cat", "/proc/sys/net/ipv6/conf/vm1/disable_ipv6")); v != "1" {
		t.Errorf("bridge port has IPv6 on (%s)", v)
	}
	tcpEcho(t, topo, "host", "[2001:db8:1::1]:7006")
	tcpRoundTrip(t, topo, "vm1", "[2001:db8:1::1]:7006")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}
}

// TestIPv6OffDrift: IPv6 switched back on by hand where kvmnet switched it
// off, and an IPv6 address added, are found by a plain up (not only with
// --deep): the per-device disable_ipv6 the link dump carries contradicts
// the namespace mark, so up reads the sysctls and the IPv6 state and puts
// both back.
func TestIPv6OffDrift(t *testing.T) {
	topo := fixture(t, mirrorNet) // lab/mirror_integration_test.go: no IPv6 anywhere
	up(t, topo)
	for _, k := range []string{"all", "default", "eth0"} {
		inNS(t, topo, "vm1", "sysctl", "-qw", "net.ipv6.conf."+k+".disable_ipv6=0")
	}
	inNS(t, topo, "vm1", "ip", "addr", "add", "fd00:bad::5/64", "dev", "eth0", "nodad")
	res := up(t, topo)
	var gone, sysctl bool
	for _, s := range res.Steps {
		gone = gone || (s.Op == plan.OpDelAddr && s.Addr.String() == "fd00:bad::5/64")
		sysctl = sysctl || s.Op == plan.OpSysctl
	}
	if !gone || !sysctl {
		t.Fatalf("up did not remove the hand-made IPv6 address and reset the sysctls: %v", res.Steps)
	}
	if out := inNS(t, topo, "vm1", "ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"); strings.TrimSpace(out) != "" {
		t.Fatalf("IPv6 address left:\n%s", out)
	}
	if v := strings.TrimSpace(inNS(t, topo, "vm1", "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6")); v != "1" {
		t.Errorf("IPv6 still on in vm1 (all.disable_ipv6=%s)", v)
	}
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("up after the repair wrote %d: %v", again.Writes, again.Steps)
	}
}

// TestForwardingDrift: ip_forward switched off by hand in the namespace
// that routes is put back by a plain up (each device's forwarding, in the
// link dump, contradicts the mark), and traffic through it flows again.
func TestForwardingDrift(t *testing.T) {
	topo := fixture(t, larger)
	up(t, topo)
	var router string
	for name, ns := range desiredState(topo).Namespaces {
		if ns.Sysctls[model.SysctlIPv4Forward] == "1" {
			router = name
		}
	}
	if router == "" {
		t.Fatal("the topology has no namespace that forwards")
	}
	testutil.Run(t, "ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	res := up(t, topo)
	fixed := false
	for _, s := range res.Steps {
		switch {
		case s.Op == plan.OpSysctl && s.NS == router && s.Key == model.SysctlIPv4Forward && s.Value == "1":
			fixed = true
		case s.Op == plan.OpMark && s.NS == router: // the mark recorded again
		default:
			t.Errorf("unexpected step %s", s)
		}
	}
	if !fixed {
		t.Fatalf("up after ip_forward=0 in %s: steps %v", router, res.Steps)
	}
	if v := strings.TrimSpace(testutil.Run(t, "ip", "netns", "exec", router, "cat", "/proc/sys/net/ipv4/ip_forward")); v != "1" {
		t.Fatalf("ip_forward in %s is %s after up", router, v)
	}
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("up after the repair wrote %d: %v", again.Writes, again.Steps)
	}
}

// dialErr connects from ns to addr with a short timeout and returns the error.
func dialErr(topo *topology.Topology, ns, addr string) (net.Conn, error) {
	h, err := netns.Open(topo.NSName(ns))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var c net.Conn
	err = netns.Do(h, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	})
	return c, err
}
