package lab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

const dnsNet = `
name: dnsnet
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.1.1}]}
  - {name: vm2, role: vm, routes: [{to: default, via: 192.168.1.1}]}
  - {name: upstream, role: endpoint, routes: [{to: default, via: 192.168.1.1}]}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [192.168.1.100/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [192.168.1.101/24]}
      - {namespace: bridge, name: vm2, bridge: br0}
  - endpoints:
      - {namespace: upstream, name: eth0, addresses: [192.168.1.53/24]}
      - {namespace: bridge, name: upstream, bridge: br0}
dns:
  domain: lab
  servers:
    - {namespace: host, interface: eth0, forward: [192.168.1.53]}
  hosts:
    - {name: nas, addresses: [192.168.1.5]}
`

// lookup asks the name server at server from inside namespace ns with Go's
// own DNS client (an independent witness).
func lookup(t *testing.T, ns, server string) *net.Resolver {
	t.Helper()
	h, err := netns.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(h, func() (err error) {
			c, err = net.DialTimeout(network, net.JoinHostPort(server, "53"), 2*time.Second)
			return err
		})
		return c, err
	}}
}

// TestNetworkDNS: a network with a dns: section gets a name server in the
// host namespace (run by the supervisor): from a VM's namespace, the other
// namespaces, the declared host and their addresses resolve (busybox
// nslookup and Go's client agree), a missing name is NXDOMAIN, and other
// names are forwarded to the upstream resolver the topology names (here a
// test server in another namespace). status shows the server and its
// counters; a second up changes nothing; down stops it.
func TestNetworkDNS(t *testing.T) {
	topo := fixture(t, dnsNet)
	sdir := stateDir(t)
	t.Cleanup(func() { killAll(t, sdir) })
	ctx := context.Background()
	res, err := Up(ctx, topo, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	if res.VMs == nil || res.VMs.Supervisor != "started" {
		t.Fatalf("up did not start the supervisor for the name server: %+v", res.VMs)
	}
	upNS, err := netns.Open(topo.NSName("upstream"))
	if err != nil {
		t.Fatal(err)
	}
	defer upNS.Close()
	upSrv, err := dns.New(dns.Config{Domain: "example.test", Listen: []netip.Addr{netip.MustParseAddr("192.168.1.53")}},
		func() map[string][]netip.Addr {
			return map[string][]netip.Addr{"www": {netip.MustParseAddr("203.0.113.80")}}
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := upSrv.Start(upNS); err != nil {
		t.Fatal(err)
	}
	defer upSrv.Close()

	r := lookup(t, topo.NSName("vm1"), "192.168.1.1")
	for name, want := range map[string]string{
		"vm2.lab.": "192.168.1.101", "host.lab.": "192.168.1.1", "nas.lab.": "192.168.1.5", "www.example.test.": "203.0.113.80",
	} {
		if got, err := r.LookupHost(ctx, name); err != nil || !slices.Equal(got, []string{want}) {
			t.Errorf("%s: %v %v, want %s", name, got, err, want)
		}
	}
	if got, err := r.LookupAddr(ctx, "192.168.1.101"); err != nil || !slices.Equal(got, []string{"vm2.lab."}) {
		t.Errorf("PTR 192.168.1.101: %v %v", got, err)
	}
	var dnsErr *net.DNSError
	if _, err := r.LookupHost(ctx, "nope.lab."); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("nope.lab: %v, want not found", err)
	}
	// busybox's resolver, from vm2, says the same (where it is installed:
	// the guest-kernel lane has no busybox; Go's client above is the
	// witness there).
	if _, err := exec.LookPath("busybox"); err == nil {
		out := testutil.Run(t, "ip", "netns", "exec", topo.NSName("vm2"), "busybox", "nslookup", "vm1.lab", "192.168.1.1")
		if !strings.Contains(out, "192.168.1.100") {
			t.Errorf("busybox nslookup vm1.lab:\n%s", out)
		}
	}

	// The counters reach status with the supervisor's next heartbeat.
	var st *VMStatusReport
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if st, err = VMStatus(ctx, topo, vmOpts(t)...); err != nil {
			t.Fatal(err)
		}
		if len(st.DNS) != 1 || st.DNS[0].Stats.Queries > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(st.DNS) != 1 || !st.DNS[0].Listening || st.DNS[0].Domain != "lab" || st.DNS[0].Stats.Forwarded == 0 || st.DNS[0].Stats.NXDomain == 0 {
		t.Errorf("status of the name server: %+v", st.DNS)
	}
	again, err := Up(ctx, topo, vmOpts(t)...)
	if err != nil || again.Writes != 0 || again.VMs == nil || again.VMs.Supervisor != "running" {
		t.Fatalf("second up: %v, %+v", err, again)
	}
	if _, err := Down(ctx, topo, vmOpts(t)...); err != nil {
		t.Fatal(err)
	}
	if s := supervise.Read(filepath.Join(sdir, topo.ID())); s.State != supervise.StateNotRunning {
		t.Errorf("supervisor after down: %+v", s)
	}
}

// TestVMNamesInDNS: with a dns: section, a VM that gets its address by
// DHCP answers by its name with its lease (as libvirt's dnsmasq does), the
// DHCP server announces the network's name server and zone, and the names
// resolve from outside the segment (the routed external namespace).
func TestVMNamesInDNS(t *testing.T) {
	src := vmYAML(128, 128) + `dns:
  servers:
    - {namespace: host, interface: eth0}
`
	topo, _, netDir := vmFixture(t, src)
	ctx := context.Background()
	if _, err := Up(ctx, topo, vmOpts(t)...); err != nil {
		t.Fatalf("up: %v", err)
	}
	cfg, err := supervise.ReadConfig(netDir)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.DHCP[0].Config; !slices.Equal(d.DNS, []netip.Addr{netip.MustParseAddr("192.168.77.1")}) || d.Domain != "vmnet" {
		t.Errorf("the DHCP server announces DNS %v, domain %q; want the network's server 192.168.77.1 and vmnet", d.DNS, d.Domain)
	}
	st := vmStatus(t, topo)
	r := lookup(t, topo.NSName("world"), "192.168.77.1")
	for _, name := range []string{"vm1", "vm2"} {
		v := vmState(t, st, name)
		if len(v.Addresses) != 1 {
			t.Fatalf("%s has no lease: %+v", name, v)
		}
		want := v.Addresses[0].Addr.Addr().String()
		if got, err := r.LookupHost(ctx, name+".vmnet."); err != nil || !slices.Equal(got, []string{want}) {
			t.Errorf("%s.vmnet: %v %v, want its lease %s", name, got, err, want)
		}
		if got, err := r.LookupAddr(ctx, want); err != nil || !slices.Equal(got, []string{name + ".vmnet."}) {
			t.Errorf("PTR %s: %v %v, want %s.vmnet.", want, got, err, name)
		}
	}
	if got, err := r.LookupHost(ctx, "world.vmnet."); err != nil || !slices.Equal(got, []string{"10.77.0.2"}) {
		t.Errorf("world.vmnet: %v %v", got, err)
	}
	// `kvmnet dns names` lists the same zone: the guests from their leases.
	for _, name := range []string{"vm1", "vm2"} {
		want := vmState(t, st, name).Addresses[0].Addr.Addr()
		found := false
		for _, n := range st.Names {
			found = found || n.Name == name+".vmnet" && n.Source == supervise.SourceVMLease && slices.Equal(n.Addresses, []netip.Addr{want})
		}
		if !found {
			t.Errorf("the zone as status lists it lacks %s.vmnet -> %s (vm lease): %+v", name, want, st.Names)
		}
	}
}

// TestDiagnoseDNS: diagnose asks the network's name server, from each VM
// and endpoint namespace, for that namespace's own name. Healthy: nothing.
// With the supervisor stopped: dns-not-answering at the server, saying the
// supervisor does not run, fix kvmnet up. With the supervisor back but an
// nft rule dropping DNS in the server's namespace: dns-not-answering, the
// server serving, and the firewall drop.
func TestDiagnoseDNS(t *testing.T) {
	topo := fixture(t, dnsNet)
	sdir := stateDir(t)
	t.Cleanup(func() { killAll(t, sdir) })
	ctx := context.Background()
	if _, err := Up(ctx, topo, vmOpts(t)...); err != nil {
		t.Fatalf("up: %v", err)
	}
	run := func() *diagnose.Report {
		t.Helper()
		st, err := VMStatus(ctx, topo, vmOpts(t)...)
		if err != nil {
			t.Fatal(err)
		}
		return runDiagnose(t, topo, diagnose.Options{VMs: st.ForDiagnose()})
	}
	rep := run()
	if !rep.OK || len(rep.Findings) != 0 {
		t.Fatalf("healthy network with a name server:\n%s", describe(rep))
	}
	asked := 0
	for _, p := range rep.Probes {
		if p.DNS != nil && p.DNS.RCode == "Success" && len(p.DNS.Addrs) == 1 {
			asked++
		}
	}
	if asked != 3 { // vm1, vm2, upstream
		t.Fatalf("%d namespaces got their own name from the name server: %+v", asked, rep.Probes)
	}

	if err := supervise.Stop(filepath.Join(sdir, topo.ID()), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	rep = run()
	f := wantFinding(t, topo, rep, diagnose.CheckDNS, "host", "")
	evidenceHas(t, f, "the supervisor, which runs the name server, is not running")
	if f.Fix != "kvmnet up (starts the supervisor)" {
		t.Errorf("fix %q", f.Fix)
	}

	if _, err := Up(ctx, topo, vmOpts(t)...); err != nil {
		t.Fatalf("up: %v", err)
	}
	host := topo.NSName("host")
	testutil.Run(t, "ip", "netns", "exec", host, "nft", "add table ip nodns; add chain ip nodns in { type filter hook input priority 0; }; add rule ip nodns in udp dport 53 counter drop")
	rep = run()
	f = wantFinding(t, topo, rep, diagnose.CheckDNS, "host", "")
	evidenceHas(t, f, "the supervisor reports it serving")
	wantFinding(t, topo, rep, diagnose.CheckFirewallDrop, "host", "")
}
