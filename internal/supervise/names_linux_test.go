package supervise

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/kvmnet/kvmnet/internal/dhcp"
)

// The zone a name server answers from: the topology's names, a VM by the
// lease of its NIC's MAC, other DHCP clients by the host name they sent,
// and never a client's name over one the topology or a VM gives.
func TestZoneNames(t *testing.T) {
	srv, err := dhcp.New(dhcp.Config{Interface: "eth0", ServerIP: netip.MustParseAddr("10.9.0.1"), Subnet: netip.MustParsePrefix("10.9.0.0/24"),
		PoolStart: netip.MustParseAddr("10.9.0.100"), PoolEnd: netip.MustParseAddr("10.9.0.110")})
	if err != nil {
		t.Fatal(err)
	}
	lease := func(mac, hostname string) netip.Addr {
		l, err := srv.Allocate(mac, "", hostname)
		if err != nil {
			t.Fatal(err)
		}
		return l.IP
	}
	vm1 := lease("52:54:00:00:00:01", "whatever-the-guest-says")
	laptop := lease("52:54:00:00:00:02", "Laptop")
	lease("52:54:00:00:00:03", "host")     // the topology's name: not taken over
	lease("52:54:00:00:00:04", "bad_name") // not a DNS label
	lease("52:54:00:00:00:05", "")         // no host name
	d := &server{srv: srv}
	n := &nameServer{dhcp: []*server{d}, cfg: DNSServer{
		Names: map[string][]netip.Addr{"host": {netip.MustParseAddr("10.9.0.1")}, "vm1": {}},
		VMs:   map[string]string{"52:54:00:00:00:01": "vm1"},
	}}
	got := n.names()
	want := map[string][]netip.Addr{
		"host":   {netip.MustParseAddr("10.9.0.1")},
		"vm1":    {vm1},
		"laptop": {laptop},
	}
	if len(got) != len(want) {
		t.Fatalf("names %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
	_, source := Zone(n.cfg.Names, n.cfg.VMs, srv.Leases())
	for k, v := range map[string]string{"host": SourceTopology, "vm1": SourceVMLease, "laptop": SourceClient} {
		if source[k] != v {
			t.Errorf("source of %s: %q, want %q", k, source[k], v)
		}
	}
	if len(n.cfg.Names["vm1"]) != 0 {
		t.Errorf("the static names were changed: %v", n.cfg.Names)
	}
}
