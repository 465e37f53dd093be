package kernelfeat_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// These tests need root and create scratch namespaces named kvmg-<hex>. On a
// kernel without the feature they skip with the feature's name; inside the
// guest-kernel lane (KVMNET_IN_GUEST=1) that is a failure instead.

const nsPrefix = "kvmg-"

// Addresses from TEST-NET-1 (RFC 5737), used only between the test's own
// namespaces.
const (
	addrA = "192.0.2.1/24"
	addrB = "192.0.2.2/24"
	ipB   = "192.0.2.2"
)

func handle(t *testing.T, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in %q: %v", ns.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// need fails t on err, or skips it (fails it in the guest) when err says the
// kernel lacks a feature.
func need(t *testing.T, what string, err error) {
	t.Helper()
	if msg, ok := kernelfeat.Missing(err); ok {
		testutil.KernelLacks(t, msg)
	}
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func link(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find link %q: %v", name, err)
	}
	return l
}

func up(t *testing.T, h *netlink.Handle, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := h.LinkSetUp(link(t, h, n)); err != nil {
			t.Fatalf("set %q up: %v", n, err)
		}
	}
}

func addAddr(t *testing.T, h *netlink.Handle, dev, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(link(t, h, dev), a); err != nil {
		t.Fatalf("add %s to %q: %v", cidr, dev, err)
	}
}

// vethPair makes kv0 in a and its peer kv1 in b (b may equal a).
func vethPair(t *testing.T, ha *netlink.Handle, b *netns.NS) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kv0"}, PeerName: "kv1", PeerNamespace: netlink.NsFd(b.Fd())}
	if err := ha.LinkAdd(v); err != nil {
		t.Fatalf("create veth kv0/kv1: %v", err)
	}
}

func addVLAN(h *netlink.Handle, parent netlink.Link, id int) error {
	v := &netlink.Vlan{
		LinkAttrs:    netlink.LinkAttrs{Name: parent.Attrs().Name + "." + strconv.Itoa(id), ParentIndex: parent.Attrs().Index},
		VlanId:       id,
		VlanProtocol: netlink.VLAN_PROTOCOL_8021Q,
	}
	return kernelfeat.Check(kernelfeat.VLAN, h.LinkAdd(v))
}

func contains(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, out)
		}
	}
}

func TestVLANSubinterface(t *testing.T) {
	testutil.RequireTool(t, "ip")
	ns := testutil.NewNSPrefix(t, nsPrefix)
	h := handle(t, ns)
	vethPair(t, h, ns)
	need(t, "create VLAN 100 on kv0", addVLAN(h, link(t, h, "kv0"), 100))

	v, ok := link(t, h, "kv0.100").(*netlink.Vlan)
	if !ok || v.VlanId != 100 || v.ParentIndex != link(t, h, "kv0").Attrs().Index {
		t.Fatalf("kv0.100 read back as %#v", link(t, h, "kv0.100"))
	}
	out := testutil.Run(t, "ip", "-n", ns.Name, "-d", "link", "show", "kv0.100")
	contains(t, "ip -d link show kv0.100", out, "kv0.100@kv0", "vlan protocol 802.1Q id 100")
}

func TestBridgeVLANFiltering(t *testing.T) {
	testutil.RequireTool(t, "ip")
	testutil.RequireTool(t, "bridge")
	ns := testutil.NewNSPrefix(t, nsPrefix)
	h := handle(t, ns)
	on := true
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "kbr0"}, VlanFiltering: &on}
	need(t, "create bridge kbr0 with vlan_filtering 1", kernelfeat.Check(kernelfeat.BridgeVLANFiltering, h.LinkAdd(br)))
	vethPair(t, h, ns)
	port := link(t, h, "kv1")
	if err := h.LinkSetMaster(port, link(t, h, "kbr0")); err != nil {
		t.Fatalf("enslave kv1 to kbr0: %v", err)
	}
	// VLAN 100 tagged on the port (master: the bridge's VLAN table).
	need(t, "add VLAN 100 to port kv1", kernelfeat.Check(kernelfeat.BridgeVLANFiltering, h.BridgeVlanAdd(port, 100, false, false, false, true)))
	up(t, h, "kbr0", "kv0", "kv1")

	got, ok := link(t, h, "kbr0").(*netlink.Bridge)
	if !ok || got.VlanFiltering == nil || !*got.VlanFiltering {
		t.Errorf("kbr0 read back without vlan_filtering: %#v", link(t, h, "kbr0"))
	}
	vlans, err := h.BridgeVlanList()
	if err != nil {
		t.Fatalf("list bridge VLANs: %v", err)
	}
	found := false
	for _, v := range vlans[int32(port.Attrs().Index)] {
		found = found || v.Vid == 100
	}
	if !found {
		t.Errorf("port kv1 VLANs = %v, want 100 among them", vlans[int32(port.Attrs().Index)])
	}
	out := testutil.Run(t, "ip", "-n", ns.Name, "-d", "link", "show", "kbr0")
	contains(t, "ip -d link show kbr0", out, "vlan_filtering 1")
	out = testutil.Run(t, "bridge", "-n", ns.Name, "vlan", "show", "dev", "kv1")
	if !regexp.MustCompile(`(?m)\b100\b`).MatchString(out) {
		t.Errorf("bridge vlan show dev kv1 lacks VLAN 100:\n%s", out)
	}
}

var rttRe = regexp.MustCompile(`rtt min/avg/max/mdev = ([0-9.]+)/`)

func TestNetemDelay(t *testing.T) {
	testutil.RequireTool(t, "tc")
	testutil.RequireTool(t, "ping")
	a := testutil.NewNSPrefix(t, nsPrefix)
	b := testutil.NewNSPrefix(t, nsPrefix)
	ha, hb := handle(t, a), handle(t, b)
	vethPair(t, ha, b)
	const delayMs = 100
	q := netlink.NewNetem(netlink.QdiscAttrs{
		LinkIndex: link(t, ha, "kv0").Attrs().Index,
		Handle:    netlink.MakeHandle(1, 0),
		Parent:    netlink.HANDLE_ROOT,
	}, netlink.NetemQdiscAttrs{Latency: delayMs * 1000})
	need(t, "add netem qdisc to kv0", kernelfeat.Check(kernelfeat.Netem, ha.QdiscAdd(q)))

	out := testutil.Run(t, "tc", "-n", a.Name, "qdisc", "show", "dev", "kv0")
	if !regexp.MustCompile(`qdisc netem 1: root .*delay 100(\.0)?ms`).MatchString(out) {
		t.Errorf("tc qdisc show dev kv0 lacks the netem delay:\n%s", out)
	}
	// The delay acts on traffic: every echo request leaves through netem,
	// so no round trip can be shorter than the delay.
	addAddr(t, ha, "kv0", addrA)
	addAddr(t, hb, "kv1", addrB)
	up(t, ha, "kv0")
	up(t, hb, "kv1")
	out = testutil.Run(t, "ip", "netns", "exec", a.Name, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", ipB)
	m := rttRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rtt line in ping output:\n%s", out)
	}
	if minRTT, _ := strconv.ParseFloat(m[1], 64); minRTT < delayMs*0.98 {
		t.Errorf("min RTT %.3f ms < netem delay %d ms:\n%s", minRTT, delayMs, out)
	}
}

func TestVLANTraffic(t *testing.T) {
	testutil.RequireTool(t, "ip")
	testutil.RequireTool(t, "ping")
	a := testutil.NewNSPrefix(t, nsPrefix)
	b := testutil.NewNSPrefix(t, nsPrefix)
	ha, hb := handle(t, a), handle(t, b)
	vethPair(t, ha, b)
	need(t, "create VLAN 100 on kv0", addVLAN(ha, link(t, ha, "kv0"), 100))
	need(t, "create VLAN 100 on kv1", addVLAN(hb, link(t, hb, "kv1"), 100))
	// Only the VLAN sub-interfaces have addresses: the ping can only cross
	// tagged.
	addAddr(t, ha, "kv0.100", addrA)
	addAddr(t, hb, "kv1.100", addrB)
	up(t, ha, "kv0", "kv0.100")
	up(t, hb, "kv1", "kv1.100")

	before := link(t, hb, "kv1.100").Attrs().Statistics.RxPackets
	out := testutil.Run(t, "ip", "netns", "exec", a.Name, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", ipB)
	contains(t, "ping over VLAN 100", out, "3 packets transmitted, 3 received")
	if got := link(t, hb, "kv1.100").Attrs().Statistics.RxPackets - before; got < 3 {
		t.Errorf("kv1.100 received %d packets during the ping, want >= 3", got)
	}

	t.Run("other VID does not reach", func(t *testing.T) {
		// Move B's address to VLAN 200: frames tagged 100 now find no
		// sub-interface, so the same ping must fail.
		if err := hb.LinkDel(link(t, hb, "kv1.100")); err != nil {
			t.Fatal(err)
		}
		need(t, "create VLAN 200 on kv1", addVLAN(hb, link(t, hb, "kv1"), 200))
		addAddr(t, hb, "kv1.200", addrB)
		up(t, hb, "kv1.200")
		out, err := testutil.Try("ip", "netns", "exec", a.Name, "ping", "-n", "-c", "1", "-W", "1", ipB)
		if err == nil {
			t.Fatalf("ping across mismatched VLANs succeeded:\n%s", out)
		}
	})
}
