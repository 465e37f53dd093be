package model

import (
	"testing"

	"github.com/kvmnet/kvmnet/topology"
)

func TestMarkRoundTrip(t *testing.T) {
	for _, l := range []*Link{
		nil,
		{Kind: KindBridge},
		{Kind: KindVeth, Peer: PeerRef{NS: "bridge", Name: "vm1"}},
		{Kind: KindDevice, Origin: "eth0"},
	} {
		m := Mark("net1", l)
		info, ok := ParseMark(m)
		if !ok || info.ID != "net1" {
			t.Fatalf("ParseMark(%q) = %+v, %v", m, info, ok)
		}
		if l != nil && (info.Peer != l.Peer || info.Origin != l.Origin) {
			t.Errorf("ParseMark(%q) lost peer/origin: %+v", m, info)
		}
	}
	for _, foreign := range []string{"", "my uplink", "kvmnet:", "kvmnetx:y"} {
		if _, ok := ParseMark(foreign); ok {
			t.Errorf("ParseMark(%q) claims ownership", foreign)
		}
	}
}

func TestDesiredReference(t *testing.T) {
	topo, err := topology.Default()
	if err != nil {
		t.Fatal(err)
	}
	s := Desired(topo)
	vm := s.Namespaces["vm1"].Links["eth0"]
	if vm.Peer != (PeerRef{NS: "bridge", Name: "vm1"}) || vm.MAC != "00:11:22:33:44:55" || vm.MTU != 1500 {
		t.Fatalf("vm1/eth0 = %+v", vm)
	}
	if port := s.Namespaces["bridge"].Links["vm1"]; port.Master != "br0" || port.Peer != (PeerRef{NS: "vm1", Name: "eth0"}) {
		t.Fatalf("bridge/vm1 = %+v", port)
	}
	// No IPv6 declared anywhere: IPv6 is off in every namespace.
	for name, ns := range s.Namespaces {
		if ns.Sysctls[SysctlIPv6DisableDefault] != "1" {
			t.Errorf("%s: IPv6 not disabled", name)
		}
	}
	if len(s.Namespaces["vm1"].Routes) != 2 {
		t.Errorf("vm1 routes = %v", s.Namespaces["vm1"].Routes)
	}
	if s.Namespaces["host"].Masquerade == nil || len(s.Namespaces["host"].Masquerade) != 0 {
		t.Errorf("host should want an empty kvmnet table (isolated), got %v", s.Namespaces["host"].Masquerade)
	}
}

func TestMasqueradeRoundTrip(t *testing.T) {
	m, err := ParseMasquerade("oif=uplink0 saddr=192.168.1.0/24")
	if err != nil || m.String() != "oif=uplink0 saddr=192.168.1.0/24" {
		t.Fatalf("%v %v", m, err)
	}
	if _, err := ParseMasquerade("oif=x"); err == nil {
		t.Fatal("incomplete masquerade parsed")
	}
}

func TestNSMarkCarriesSysctlHash(t *testing.T) {
	h := SysctlHash(map[string]string{"net.ipv4.ip_forward": "1"})
	if len(h) != 12 || h == SysctlHash(map[string]string{"net.ipv4.ip_forward": "0"}) {
		t.Fatalf("hash %q does not tell values apart", h)
	}
	info, ok := ParseMark(NSMark("n", Marks{AspectSysctl: h, AspectNFT: "abc"}))
	if !ok || info.ID != "n" || info.Marks[AspectSysctl] != h || info.Marks[AspectNFT] != "abc" {
		t.Fatalf("%+v %v", info, ok)
	}
}

// DevConfAgrees: a device whose forwarding or disable_ipv6 contradicts the
// desired sysctls means they were changed by hand; a device the dump said
// nothing of (-1), or a sysctl not desired, proves nothing.
func TestDevConfAgrees(t *testing.T) {
	want := map[string]string{SysctlIPv4Forward: "1", SysctlIPv6Forward: "0", SysctlIPv6DisableAll: "1", SysctlIPv6DisableDefault: "1"}
	ok := DevConf{IPv4Forwarding: 1, IPv6Forwarding: 0, IPv6Disabled: 1}
	for _, tc := range []struct {
		name string
		want map[string]string
		dev  DevConf
		ok   bool
	}{
		{"as written", want, ok, true},
		{"unknown", want, DevConf{-1, -1, -1}, true},
		{"ip_forward off", want, DevConf{0, 0, 1}, false},
		{"IPv6 forwarding on", want, DevConf{1, 1, 1}, false},
		{"IPv6 back on", want, DevConf{1, 0, 0}, false},
		{"IPv6 not switched off by kvmnet", map[string]string{SysctlIPv4Forward: "1"}, DevConf{1, 1, 0}, true},
		{"no sysctls", nil, DevConf{0, 1, 0}, true},
	} {
		conf := map[string]DevConf{"lo": ok, "eth0": tc.dev}
		if got := DevConfAgrees(tc.want, conf); got != tc.ok {
			t.Errorf("%s: DevConfAgrees = %v, want %v", tc.name, got, tc.ok)
		}
	}
}
