package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// segment is a server namespace and client namespaces, each joined to the
// server's bridge by a veth: srv has br0 with 10.99.0.1/24, client i has
// c<i> with MAC 52:54:00:99:00:<i>.
type segment struct {
	srv     *netns.NS
	clients []*netns.NS
}

func newSegment(t *testing.T, clients int) *segment {
	t.Helper()
	testutil.RequireTool(t, "ip")
	s := &segment{srv: testutil.NewNSPrefix(t, "kvmv-")}
	ipn := func(ns *netns.NS, args ...string) {
		t.Helper()
		testutil.Run(t, "ip", append([]string{"-n", ns.Name}, args...)...)
	}
	ipn(s.srv, "link", "add", "br0", "type", "bridge")
	ipn(s.srv, "addr", "add", "10.99.0.1/24", "dev", "br0")
	ipn(s.srv, "link", "set", "br0", "up")
	for i := 1; i <= clients; i++ {
		c := testutil.NewNSPrefix(t, "kvmv-")
		s.clients = append(s.clients, c)
		port := fmt.Sprintf("p%d", i)
		ipn(s.srv, "link", "add", port, "type", "veth", "peer", "name", fmt.Sprintf("c%d", i), "netns", c.Name)
		ipn(s.srv, "link", "set", port, "master", "br0", "up")
		ipn(c, "link", "set", fmt.Sprintf("c%d", i), "address", mac(i), "up")
		ipn(c, "link", "set", "lo", "up")
	}
	return s
}

func mac(i int) string { return fmt.Sprintf("52:54:00:99:00:%02x", i) }

func (s *segment) serve(t *testing.T, edit func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Interface: "br0",
		ServerIP:  netip.MustParseAddr("10.99.0.1"),
		Router:    netip.MustParseAddr("10.99.0.1"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.99.0.53")},
		Subnet:    netip.MustParsePrefix("10.99.0.0/24"),
		PoolStart: netip.MustParseAddr("10.99.0.100"),
		PoolEnd:   netip.MustParseAddr("10.99.0.149"),
		LeaseFile: filepath.Join(t.TempDir(), "leases.json"),
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(s.srv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// udhcpcScript applies the lease as busybox's example script does (with
// iproute2) and records the environment udhcpc passed.
const udhcpcScript = `#!/bin/sh
env > "$0.$1.env"
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$router" ] && ip route replace default via ${router%% *} dev "$interface"
	;;
deconfig)
	ip addr flush dev "$interface"
	;;
esac
exit 0
`

// udhcpc runs busybox udhcpc once in ns on iface; it returns the variables
// of the "bound" event, or an error when no lease was obtained.
func udhcpc(t *testing.T, ns *netns.NS, iface string, extra ...string) (map[string]string, error) {
	t.Helper()
	testutil.RequireTool(t, "busybox")
	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"netns", "exec", ns.Name, "busybox", "udhcpc", "-f", "-q", "-n", "-t", "4", "-T", "1", "-i", iface, "-s", script}, extra...)
	out, err := testutil.Try("ip", args...)
	if err != nil {
		return nil, fmt.Errorf("udhcpc: %v\n%s", err, out)
	}
	return readEnv(t, script+".bound.env"), nil
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = strings.Trim(v, "'")
		}
	}
	return env
}

func ping(t *testing.T, ns *netns.NS, to string) {
	t.Helper()
	out, err := testutil.Try("ip", "netns", "exec", ns.Name, "ping", "-c", "2", "-i", "0.2", "-W", "2", to)
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping %s from %s: %v\n%s", to, ns.Name, err, out)
	}
}

func findLease(t *testing.T, path, mac string) (Lease, bool) {
	t.Helper()
	ls, err := ReadLeases(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.MAC == mac {
			return l, true
		}
	}
	return Lease{}, false
}

// TestUdhcpc: busybox udhcpc gets a pool address with the router, DNS and
// mask options, applies it, and pings the server; a static lease's MAC gets
// its fixed address and host name; both leases are in the lease file.
func TestUdhcpc(t *testing.T) {
	seg := newSegment(t, 2)
	srv := seg.serve(t, func(c *Config) {
		c.Static = []StaticLease{{MAC: mac(2), IP: netip.MustParseAddr("10.99.0.20"), Hostname: "fixed"}}
	})
	env, err := udhcpc(t, seg.clients[0], "c1", "-x", "hostname:client-one")
	if err != nil {
		t.Fatal(err)
	}
	if env["ip"] != "10.99.0.100" || env["mask"] != "24" || env["router"] != "10.99.0.1" || env["dns"] != "10.99.0.53" || env["serverid"] != "10.99.0.1" {
		t.Fatalf("udhcpc bound with %v", env)
	}
	ping(t, seg.clients[0], "10.99.0.1")
	if l, ok := findLease(t, srv.Config().LeaseFile, mac(1)); !ok || l.IP.String() != "10.99.0.100" || l.Hostname != "client-one" {
		t.Fatalf("lease file: %+v %v", l, ok)
	}

	env, err = udhcpc(t, seg.clients[1], "c2")
	if err != nil {
		t.Fatal(err)
	}
	if env["ip"] != "10.99.0.20" || env["hostname"] != "fixed" {
		t.Fatalf("static client bound with %v", env)
	}
	ping(t, seg.clients[1], "10.99.0.1")
	ping(t, seg.clients[1], "10.99.0.100") // client to client across the bridge
	if l, ok := findLease(t, srv.Config().LeaseFile, mac(2)); !ok || !l.Static {
		t.Fatalf("static lease in file: %+v %v", l, ok)
	}
	if st := srv.Stats(); st.Acks != 2 || st.Offers < 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestExhaustedPool: a one-address pool serves the first client; the
// second gets no lease, and the server says why.
func TestExhaustedPool(t *testing.T) {
	seg := newSegment(t, 2)
	srv := seg.serve(t, func(c *Config) { c.PoolEnd = c.PoolStart })
	if _, err := udhcpc(t, seg.clients[0], "c1"); err != nil {
		t.Fatal(err)
	}
	_, err := udhcpc(t, seg.clients[1], "c2", "-t", "2")
	if err == nil {
		t.Fatal("second client got a lease from a full pool")
	}
	st := srv.Stats()
	want := `address pool exhausted: pool 10.99.0.100-10.99.0.100 on "br0" has 1 addresses, 1 in use; no address for 52:54:00:99:00:02`
	if st.Exhausted == 0 || st.LastError != want {
		t.Fatalf("stats %+v, want LastError %q", st, want)
	}
}

// TestDhclient: ISC dhclient gets a lease, then releases it (-r): the lease
// leaves the server's lease file.
func TestDhclient(t *testing.T) {
	testutil.RequireTool(t, "dhclient")
	seg := newSegment(t, 1)
	srv := seg.serve(t, nil)
	dir := t.TempDir()
	script := filepath.Join(dir, "dhclient.sh")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
env > "$0.$reason.env"
case "$reason" in
BOUND|RENEW|REBOOT) ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
RELEASE|STOP|EXPIRE) ip addr flush dev "$interface" ;;
esac
exit 0
`), 0o755); err != nil {
		t.Fatal(err)
	}
	pid, lf := filepath.Join(dir, "pid"), filepath.Join(dir, "dhclient.leases")
	base := []string{"netns", "exec", seg.clients[0].Name, "dhclient", "-4", "-sf", script, "-pf", pid, "-lf", lf}
	t.Cleanup(func() { _, _ = testutil.Try("ip", append(base, "-x", "c1")...) })
	out, err := testutil.Try("ip", append(base, "-1", "-v", "c1")...)
	if err != nil {
		t.Fatalf("dhclient: %v\n%s", err, out)
	}
	env := readEnv(t, script+".BOUND.env")
	if env["new_ip_address"] != "10.99.0.100" || env["new_routers"] != "10.99.0.1" || env["new_domain_name_servers"] != "10.99.0.53" || env["new_subnet_mask"] != "255.255.255.0" {
		t.Fatalf("dhclient bound with %v", env)
	}
	ping(t, seg.clients[0], "10.99.0.1")
	if _, ok := findLease(t, srv.Config().LeaseFile, mac(1)); !ok {
		t.Fatal("no lease in the file")
	}
	if out, err := testutil.Try("ip", append(base, "-r", "c1")...); err != nil {
		t.Fatalf("dhclient -r: %v\n%s", err, out)
	}
	waitFor(t, "the released lease to leave the file", func() bool {
		_, ok := findLease(t, srv.Config().LeaseFile, mac(1))
		return !ok
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestOwnClient: the client the built-in guest runs gets a lease, renews
// it and releases it; a second client with the same MAC but another client
// identifier is refused as a duplicate MAC.
func TestOwnClient(t *testing.T) {
	seg := newSegment(t, 1)
	srv := seg.serve(t, nil)
	hw, _ := net.ParseMAC(mac(1))
	cfg := ClientConfig{Interface: "c1", MAC: hw, ClientID: append([]byte{0}, "vm1"...), Hostname: "vm1", NS: seg.clients[0]}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Acquire(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr.String() != "10.99.0.100/24" || a.Router.String() != "10.99.0.1" || len(a.DNS) != 1 || a.LeaseTime != DefaultLeaseTime {
		t.Fatalf("acquired %+v", a)
	}
	testutil.Run(t, "ip", "-n", seg.clients[0].Name, "addr", "add", a.Addr.String(), "dev", "c1")
	ping(t, seg.clients[0], "10.99.0.1")
	if err := a.RenewLease(ctx); err != nil {
		t.Fatalf("renew: %v", err)
	}

	// Another VM that (wrongly) has the same MAC.
	dup := cfg
	dup.ClientID = append([]byte{0}, "vm2"...)
	short, cancel2 := context.WithTimeout(ctx, 2500*time.Millisecond)
	defer cancel2()
	if _, err := Acquire(short, dup); !errors.Is(err, ErrNoLease) {
		t.Fatalf("duplicate MAC client: %v", err)
	}
	if st := srv.Stats(); st.Conflicts == 0 || !strings.Contains(st.LastError, "duplicate MAC 52:54:00:99:00:01") {
		t.Fatalf("stats %+v", st)
	}

	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released lease to leave the file", func() bool {
		_, ok := findLease(t, srv.Config().LeaseFile, mac(1))
		return !ok
	})
}

// TestTwoServersOneNamespace: servers for two segments share a namespace
// (the gateway's), each bound to its own interface.
func TestTwoServersOneNamespace(t *testing.T) {
	seg := newSegment(t, 1)
	testutil.Run(t, "ip", "-n", seg.srv.Name, "link", "add", "br1", "type", "bridge")
	testutil.Run(t, "ip", "-n", seg.srv.Name, "addr", "add", "10.98.0.1/24", "dev", "br1")
	testutil.Run(t, "ip", "-n", seg.srv.Name, "link", "set", "br1", "up")
	seg.serve(t, nil)
	seg.serve(t, func(c *Config) {
		c.Interface = "br1"
		c.ServerIP, c.Router = netip.MustParseAddr("10.98.0.1"), netip.MustParseAddr("10.98.0.1")
		c.Subnet = netip.MustParsePrefix("10.98.0.0/24")
		c.PoolStart, c.PoolEnd = netip.MustParseAddr("10.98.0.10"), netip.MustParseAddr("10.98.0.20")
	})
	env, err := udhcpc(t, seg.clients[0], "c1")
	if err != nil {
		t.Fatal(err)
	}
	if env["ip"] != "10.99.0.100" {
		t.Fatalf("client on br0 got %v from the wrong server", env["ip"])
	}
}
