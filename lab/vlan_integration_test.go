package lab

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// upOrLacks runs up on a topology that needs kernel features this host may
// lack. On such a kernel, up must refuse before building anything, naming
// the feature: the test checks that nothing was built, then skips (it runs
// for real in the guest-kernel lane, where a missing feature fails it).
func upOrLacks(t *testing.T, topo *topology.Topology, want kernelfeat.Feature) *Result {
	t.Helper()
	res, err := Up(context.Background(), topo, testOpts(t)...)
	if err == nil {
		return res
	}
	var me *kernelfeat.MissingError
	if !errors.As(err, &me) {
		t.Fatalf("up: %v", err)
	}
	if me.Feature != want {
		t.Errorf("up names %s, want %s", me.Feature, want)
	}
	if !strings.Contains(err.Error(), "kernel lacks "+want.String()) || !strings.Contains(err.Error(), "nothing was built") {
		t.Errorf("error does not say what is missing and that nothing was built: %v", err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("up refused but built %v", left)
	}
	testutil.KernelLacks(t, me.Error())
	return nil
}

const vlanAccess = `
name: vaccess
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - {name: vm3, role: vm}
bridges:
  - {name: br0, namespace: bridge, vlan_filtering: true}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [10.100.0.1/24]}
      - {namespace: bridge, name: host, bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [10.100.0.11/24]}
      - {namespace: bridge, name: vm1, bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [10.100.0.12/24]}
      - {namespace: bridge, name: vm2, bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm3, name: eth0, addresses: [10.200.0.13/24]}
      - {namespace: bridge, name: vm3, bridge: br0, vlan: {access: 200}}
`

func TestVLANAccessPorts(t *testing.T) {
	topo := fixture(t, vlanAccess)
	if upOrLacks(t, topo, kernelfeat.BridgeVLANFiltering) == nil {
		return
	}
	ping(t, topo, "vm1", "10.100.0.12")
	ping(t, topo, "vm2", "10.100.0.1")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}
	// vm3 is in VLAN 200: give it an address in VLAN 100's subnet by hand;
	// it must still be unreachable, because its port carries only VLAN 200.
	testutil.Run(t, "ip", "-n", topo.NSName("vm3"), "addr", "add", "10.100.0.99/24", "dev", "eth0")
	noPing(t, topo, "vm1", "10.100.0.99")
	vlans := testutil.Run(t, "bridge", "-n", topo.NSName("bridge"), "vlan", "show")
	for _, port := range []string{"vm1", "vm2", "host"} {
		if !strings.Contains(vlanOf(vlans, port), "100 PVID Egress Untagged") {
			t.Errorf("bridge vlan show: port %s is not an access port of VLAN 100:\n%s", port, vlans)
		}
	}
	if got := vlanOf(vlans, "vm3"); !strings.Contains(got, "200 PVID Egress Untagged") || strings.Contains(got, " 1 PVID") {
		t.Errorf("bridge vlan show: vm3 = %q, want only VLAN 200:\n%s", got, vlans)
	}
	// What status shows per port (port_vlans) is the kernel's table.
	obs, err := Observe(context.Background(), topo)
	if err != nil {
		t.Fatal(err)
	}
	if got := obs.Namespaces[topo.NSName("bridge")].Links["vm3"].PortVLANs; len(got) != 1 || got[0] != (model.VLANEntry{VID: 200, PVID: true, Untagged: true}) {
		t.Errorf("observed membership of vm3 = %v, want [200 pvid untagged]", got)
	}
	// Moving vm3 into VLAN 100 (its port's membership and its address) is an
	// in-place change: no link is recreated, and vm3 becomes reachable. (The
	// hand-added address is drift on a kvmnet link: up removes it.)
	topo.Links[3].Endpoints[1].VLAN = &topology.PortVLAN{Access: 100}
	topo.Links[3].Endpoints[0].Addresses = []string{"10.100.0.13/24"}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	res := up(t, topo)
	moved := false
	for _, s := range res.Steps {
		moved = moved || (s.Op == plan.OpPortVLANs && s.Link.Name == "vm3")
		if s.Op == plan.OpCreateLink || s.Op == plan.OpDeleteLink {
			t.Errorf("moving a port to another VLAN recreated a link: %s", s)
		}
	}
	if !moved {
		t.Fatalf("no port VLAN change in %v", res.Steps)
	}
	ping(t, topo, "vm1", "10.100.0.13")
}

// vlanOf returns the lines of `bridge vlan show` output for port.
func vlanOf(out, port string) string {
	var b strings.Builder
	in := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
			in = false
		case !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t"):
			in = f[0] == port
			if in && len(f) > 1 {
				b.WriteString(strings.Join(f[1:], " ") + "\n")
			}
		case in:
			b.WriteString(strings.Join(f, " ") + "\n")
		}
	}
	return b.String()
}

const vlanTrunk = `
name: vtrunk
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - {name: vm3, role: vm}
  - {name: external, role: external}
bridges:
  - {name: br0, namespace: bridge, vlan_filtering: true}
  - {name: brup, namespace: host, vlan_filtering: true}
links:
  # host and bridge are two switches joined by a trunk
  - endpoints:
      - {namespace: host, name: trunk0, bridge: brup, vlan: {trunk: [100, 200], native: 30}}
      - {namespace: bridge, name: host, bridge: br0, vlan: {trunk: [100, 200], native: 30}}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [10.1.100.1/24]}
      - {namespace: bridge, name: vm1, bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [10.1.200.1/24]}
      - {namespace: bridge, name: vm2, bridge: br0, vlan: {access: 200}}
  - endpoints:
      - {namespace: vm3, name: eth0, addresses: [10.1.30.1/24]}
      - {namespace: bridge, name: vm3, bridge: br0, vlan: {access: 30}}
vlans:
  # the external switch's hosts: one per VLAN, tagged on its port
  - {namespace: external, name: eth0.100, parent: eth0, id: 100, addresses: [10.1.100.254/24]}
  - {namespace: external, name: eth0.200, parent: eth0, id: 200, addresses: [10.1.200.254/24]}
uplink:
  mode: bridge
  bridge: brup
  vlan: {trunk: [100, 200], native: 30}
  peer: {namespace: external, name: eth0, addresses: [10.1.30.254/24]}
`

func TestVLANTrunkUplink(t *testing.T) {
	topo := fixture(t, vlanTrunk)
	if upOrLacks(t, topo, kernelfeat.BridgeVLANFiltering) == nil {
		return
	}
	// Each VM reaches the external host of its own VLAN, across two bridges
	// and two trunks; the native VLAN carries untagged frames.
	ping(t, topo, "vm1", "10.1.100.254")
	ping(t, topo, "vm2", "10.1.200.254")
	ping(t, topo, "vm3", "10.1.30.254")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}
	tcpEcho(t, topo, "vm1", "10.1.100.1:7100")
	tcpRoundTrip(t, topo, "external", "10.1.100.1:7100")
	// The external VLAN 100 host cannot reach a VLAN 200 VM, even at an
	// address in its own subnet.
	testutil.Run(t, "ip", "-n", topo.NSName("vm2"), "addr", "add", "10.1.100.77/24", "dev", "eth0")
	noPing(t, topo, "external", "10.1.100.77")
	trunk := vlanOf(testutil.Run(t, "bridge", "-n", topo.NSName("host"), "vlan", "show"), "uplink0")
	for _, want := range []string{"30 PVID Egress Untagged", "100", "200"} {
		if !strings.Contains(trunk, want) {
			t.Errorf("uplink trunk membership lacks %q:\n%s", want, trunk)
		}
	}
	if strings.Contains(trunk, "100 PVID") || strings.Contains(trunk, "100 Egress Untagged") {
		t.Errorf("VLAN 100 should be tagged on the trunk:\n%s", trunk)
	}
}

const perVLANBridges = `
name: vperbr
namespaces:
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - {name: external, role: external}
bridges:
  - {name: br100, namespace: bridge}
  - {name: br200, namespace: bridge}
links:
  - endpoints:
      - {namespace: bridge, name: trunk0}
      - {namespace: external, name: eth0}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [10.2.100.1/24]}
      - {namespace: bridge, name: vm1, bridge: br100}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [10.2.200.1/24]}
      - {namespace: bridge, name: vm2, bridge: br200}
vlans:
  - {namespace: bridge, name: trunk0.100, parent: trunk0, id: 100, bridge: br100}
  - {namespace: bridge, name: trunk0.200, parent: trunk0, id: 200, bridge: br200}
  - {namespace: external, name: eth0.100, parent: eth0, id: 100, addresses: [10.2.100.254/24]}
  - {namespace: external, name: eth0.200, parent: eth0, id: 200, addresses: [10.2.200.254/24]}
`

func TestPerVLANBridges(t *testing.T) {
	topo := fixture(t, perVLANBridges)
	if upOrLacks(t, topo, kernelfeat.VLAN) == nil {
		return
	}
	ping(t, topo, "vm1", "10.2.100.254")
	ping(t, topo, "vm2", "10.2.200.254")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("second up wrote %d: %v", again.Writes, again.Steps)
	}
	testutil.Run(t, "ip", "-n", topo.NSName("vm2"), "addr", "add", "10.2.100.77/24", "dev", "eth0")
	noPing(t, topo, "external", "10.2.100.77")
	d := testutil.Run(t, "ip", "-n", topo.NSName("bridge"), "-d", "link", "show", "trunk0.100")
	if !strings.Contains(d, "vlan protocol 802.1Q id 100") || !strings.Contains(d, "master br100") {
		t.Errorf("trunk0.100 is not VLAN 100 in br100:\n%s", d)
	}
	if _, err := Down(context.Background(), topo, testOpts(t)...); err != nil {
		t.Fatal(err)
	}
	if left := prefixedNamespaces(t, topo.Prefix); len(left) != 0 {
		t.Fatalf("left after down: %v", left)
	}
}

// dgxVLAN: a router on a stick. The host routes between VLANs 100 and 200
// through VLAN sub-interfaces on a trunk port of br0; vm1 and vm2 sit on
// access ports of the two VLANs.
const dgxVLAN = `
name: dgxvlan
namespaces:
  - {name: host, role: host, sysctls: {net.ipv4.ip_forward: "1"}}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 10.100.0.1}]}
  - {name: vm2, role: vm, routes: [{to: default, via: 10.200.0.1}]}
bridges:
  - {name: br0, namespace: bridge, vlan_filtering: true}
links:
  - endpoints:
      - {namespace: host, name: eth0}
      - {namespace: bridge, name: host, bridge: br0, vlan: {trunk: [100, 200]}}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [10.100.0.11/24]}
      - {namespace: bridge, name: vm1, bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [10.200.0.12/24]}
      - {namespace: bridge, name: vm2, bridge: br0, vlan: {access: 200}}
vlans:
  - {namespace: host, name: eth0.100, parent: eth0, id: 100, addresses: [10.100.0.1/24]}
  - {namespace: host, name: eth0.200, parent: eth0, id: 200, addresses: [10.200.0.1/24]}
`

// bridgeVLANCmd matches the `bridge vlan` commands of a finding's fix.
var bridgeVLANCmd = regexp.MustCompile(`bridge -n \S+ vlan (?:add|del) dev \S+ vid \d+(?: pvid)?(?: untagged)?`)

// applyVLANFix runs the `bridge vlan` commands of fix, in order.
func applyVLANFix(t *testing.T, fix string) {
	t.Helper()
	cmds := bridgeVLANCmd.FindAllString(fix, -1)
	if len(cmds) == 0 {
		t.Fatalf("no bridge vlan command in the fix: %s", fix)
	}
	for _, c := range cmds {
		f := strings.Fields(c)
		testutil.Run(t, f[0], f[1:]...)
	}
}

// cleanDiagnose asserts that diagnose finds nothing and every gateway probe
// passes.
func cleanDiagnose(t *testing.T, topo *topology.Topology, when string) {
	t.Helper()
	rep := runDiagnose(t, topo, diagnose.Options{})
	if !rep.OK || len(rep.Findings) != 0 {
		t.Fatalf("%s: diagnose found:\n%s", when, describe(rep))
	}
	if len(rep.Probes) != 2 {
		t.Fatalf("%s: %d gateway probes, want 2", when, len(rep.Probes))
	}
	for _, p := range rep.Probes {
		if !p.Result.OK || p.Large == nil || !p.Large.OK {
			t.Fatalf("%s: probe from %s to %s failed: %+v %+v", when, p.Node, p.Gateway, p.Result, p.Large)
		}
	}
}

// TestDiagnoseVLANMismatch: diagnose names a bridge port whose VLANs do not
// carry what the endpoint behind it sends or needs, with the kernel's
// membership and the gateway's VLAN as evidence, at the port (or at a
// sub-interface made by hand); the `bridge vlan` commands of its fix repair
// the traffic. Faults are injected with `bridge vlan` and `ip link`, as a
// user would; it runs in the guest-kernel lane (vlan_filtering, 802.1Q).
func TestDiagnoseVLANMismatch(t *testing.T) {
	topo := fixture(t, dgxVLAN)
	if upOrLacks(t, topo, kernelfeat.BridgeVLANFiltering) == nil {
		return
	}
	br, host, vm1 := topo.NSName("bridge"), topo.NSName("host"), topo.NSName("vm1")
	ping(t, topo, "vm1", "10.100.0.1")
	ping(t, topo, "vm2", "10.200.0.1")
	ping(t, topo, "vm1", "10.200.0.12") // routed between the VLANs by the host
	cleanDiagnose(t, topo, "healthy VLAN network")

	// 1. vm1's port moved to VLAN 200 by hand: the kernel disagrees with the
	// topology, and vm1's frames no longer meet its gateway's.
	testutil.Run(t, "bridge", "-n", br, "vlan", "add", "dev", "vm1", "vid", "200", "pvid", "untagged")
	testutil.Run(t, "bridge", "-n", br, "vlan", "del", "dev", "vm1", "vid", "100")
	noPing(t, topo, "vm1", "10.100.0.1")
	rep := runDiagnose(t, topo, diagnose.Options{})
	t.Logf("vm1's port in VLAN 200:\n%s", describe(rep))
	f := wantFinding(t, topo, rep, diagnose.CheckVLAN, "bridge", "vm1")
	evidenceHas(t, f, "bridge -n "+br+" vlan show dev vm1: 200 PVID Egress Untagged")
	evidenceHas(t, f, "the topology declares an access port of VLAN 100")
	evidenceHas(t, f, vm1+"/eth0 sends untagged frames: they join VLAN 200 on br0")
	evidenceHas(t, f, "gateway 10.100.0.1 ("+host+"/eth0.100) is in VLAN 100 on br0 (port host)")
	if got := vlanOf(testutil.Run(t, "bridge", "-n", br, "vlan", "show"), "vm1"); !strings.Contains(got, "200 PVID Egress Untagged") {
		t.Fatalf("witness: bridge vlan show has vm1 = %q", got)
	}
	g := wantFinding(t, topo, rep, diagnose.CheckGateway, "vm1", "")
	evidenceHas(t, g, "vlan-mismatch at "+br+"/vm1")
	failedStep(t, rep, 2)
	for _, x := range rep.Findings {
		if x.Check == diagnose.CheckVLAN && x.Location() != br+"/vm1" {
			t.Errorf("a VLAN finding elsewhere: %s at %s", x.Summary, x.Location())
		}
	}
	applyVLANFix(t, f.Fix)
	ping(t, topo, "vm1", "10.100.0.1")
	cleanDiagnose(t, topo, "after the fix of vm1's port")

	// 2. The trunk to the host loses VLAN 200: the host's eth0.200 sends
	// tagged frames the port drops; vm2 loses its gateway.
	testutil.Run(t, "bridge", "-n", br, "vlan", "del", "dev", "host", "vid", "200")
	noPing(t, topo, "vm2", "10.200.0.1")
	rep = runDiagnose(t, topo, diagnose.Options{})
	t.Logf("the trunk without VLAN 200:\n%s", describe(rep))
	f = wantFinding(t, topo, rep, diagnose.CheckVLAN, "bridge", "host")
	evidenceHas(t, f, host+"/eth0.200 (VLAN sub-interface, id 200) sends frames tagged 200: port host does not carry VLAN 200")
	evidenceHas(t, f, "vlan show dev host: 100\n")
	if !strings.Contains(f.Summary, "port host of br0 is a trunk of VLANs 100; the topology declares a trunk of VLANs 100, 200") {
		t.Errorf("summary: %s", f.Summary)
	}
	g = wantFinding(t, topo, rep, diagnose.CheckGateway, "vm2", "")
	evidenceHas(t, g, "vlan-mismatch at "+br+"/host")
	applyVLANFix(t, f.Fix)
	ping(t, topo, "vm2", "10.200.0.1")
	cleanDiagnose(t, topo, "after the fix of the trunk")

	// 3. Sub-interfaces for a VLAN 300 made by hand on both sides: their
	// tagged frames meet an access port and a trunk without VLAN 300.
	for _, s := range []struct{ node, addr string }{{"vm1", "10.30.0.11/24"}, {"host", "10.30.0.1/24"}} {
		ns := topo.NSName(s.node)
		testutil.Run(t, "ip", "-n", ns, "link", "add", "link", "eth0", "name", "eth0.300", "type", "vlan", "id", "300")
		testutil.Run(t, "ip", "-n", ns, "addr", "add", s.addr, "dev", "eth0.300")
		testutil.Run(t, "ip", "-n", ns, "link", "set", "eth0.300", "up")
	}
	noPing(t, topo, "vm1", "10.30.0.1")
	rep = runDiagnose(t, topo, diagnose.Options{})
	t.Logf("sub-interfaces for VLAN 300 made by hand:\n%s", describe(rep))
	fv := wantFinding(t, topo, rep, diagnose.CheckVLAN, "vm1", "eth0.300")
	evidenceHas(t, fv, "port vm1 does not carry VLAN 300")
	evidenceHas(t, fv, "the topology declares no eth0.300 in vm1")
	if !strings.Contains(fv.Summary, "port vm1 of br0 is an access port of VLAN 100") || !strings.Contains(fv.Fix, "ip -n "+vm1+" link del eth0.300") {
		t.Errorf("finding at vm1/eth0.300: %s; fix: %s", fv.Summary, fv.Fix)
	}
	fh := wantFinding(t, topo, rep, diagnose.CheckVLAN, "host", "eth0.300")
	if !strings.Contains(fh.Summary, "port host of br0 is a trunk of VLANs 100, 200") {
		t.Errorf("finding at host/eth0.300: %s", fh.Summary)
	}
	// Carrying VLAN 300 on both ports, as the fixes offer, makes it work...
	applyVLANFix(t, fv.Fix)
	applyVLANFix(t, fh.Fix)
	ping(t, topo, "vm1", "10.30.0.1")
	// ... and is itself drift from the topology, which diagnose names.
	rep = runDiagnose(t, topo, diagnose.Options{})
	d := wantFinding(t, topo, rep, diagnose.CheckVLAN, "bridge", "vm1")
	if !strings.Contains(d.Fix, "bridge -n "+br+" vlan del dev vm1 vid 300") {
		t.Errorf("drift fix: %s", d.Fix)
	}
	wantFinding(t, topo, rep, diagnose.CheckVLAN, "bridge", "host")
}
