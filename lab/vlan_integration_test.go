package lab

import (
	"context"
	"errors"
	"strings"
	"testing"

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
