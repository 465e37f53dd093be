package nft

import (
	"net/netip"

	"github.com/kvmnet/kvmnet/internal/model"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

func ports(rs ...[2]uint16) []model.PortRange {
	out := make([]model.PortRange, len(rs))
	for i, r := range rs {
		out[i] = model.PortRange{From: r[0], To: r[1]}
	}
	return out
}

func p1(n uint16) [2]uint16 { return [2]uint16{n, n} }

// everything uses every kind of rule, set, masquerade and guard once: the
// golden Render, the oracle tests and the canonical form run on it.
func everything() Table {
	return Table{
		Masquerade: []model.Masquerade{{OutIface: "uplink0", Source: netip.MustParsePrefix("192.168.1.0/24")}},
		Firewall: &model.Firewall{
			Policy: map[string]string{"input": "drop", "forward": "drop", "output": "accept"},
			Sets: []model.Set{
				{Name: "admins", Type: "ipv4_addr", Elements: []string{"192.168.1.10", "10.0.0.0/8", "192.168.1.11", "172.16.0.1-172.16.0.9"}},
				{Name: "admins6", Type: "ipv6_addr", Elements: []string{"fd00::/64", "fd01::1"}},
				{Name: "web", Type: "inet_service", Elements: []string{"443", "80", "8000-8080"}},
				{Name: "empty", Type: "inet_service", Elements: nil},
			},
			Rules: []model.Rule{
				{Hook: "input", Action: "accept", CTState: []string{"established", "related"}, Origin: "replies"},
				{Hook: "input", Action: "drop", CTState: []string{"invalid"}, Origin: "invalid"},
				{Hook: "input", Action: "accept", IIf: "lo", Origin: "loopback"},
				{Hook: "input", Action: "accept", Proto: "tcp", DPorts: ports(p1(22)), Origin: "ssh"},
				{Hook: "input", Action: "accept", Proto: "tcp", DPorts: ports([2]uint16{8000, 8080}), Origin: "range"},
				{Hook: "input", Action: "accept", Proto: "udp", DPorts: ports(p1(53), p1(67), [2]uint16{5000, 5010}), Origin: "udp list"},
				{Hook: "input", Action: "accept", Proto: "tcp", SPorts: ports([2]uint16{1024, 65535}), DPorts: ports(p1(2222)), Origin: "sport"},
				{Hook: "input", Action: "accept", Proto: "tcp", DPortSet: "web", Origin: "web set"},
				{Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("192.168.1.0/24"), Origin: "lan"},
				{Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("10.16.0.0/12"), DAddr: pfx("10.1.2.3/32"), Origin: "odd prefix"},
				{Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("10.0.0.0/24", "10.0.1.0/24", "10.9.9.9/32"), Origin: "prefix list"},
				{Hook: "input", Action: "accept", SAddrSet: "admins", Proto: "tcp", DPorts: ports(p1(22)), Origin: "admins"},
				{Hook: "input", Action: "accept", SAddrSet: "admins6", Origin: "admins6"},
				{Hook: "input", Action: "accept", Family: "ip6", SAddr: pfx("fd00:1::/60"), Origin: "v6 prefix"},
				{Hook: "input", Action: "accept", Family: "ip", Proto: "icmp", ICMPTypes: []string{"echo-request"}, Origin: "ping"},
				{Hook: "input", Action: "accept", Proto: "icmpv6", ICMPTypes: []string{"nd-neighbor-solicit", "nd-neighbor-advert", "echo-request"}, Origin: "nd"},
				{Hook: "input", Action: "accept", Family: "ip", Proto: "icmp", ICMPTypes: []string{"echo-reply", "destination-unreachable"}, Origin: "icmp list"},
				{Hook: "input", Action: "reject", Proto: "tcp", DPorts: ports(p1(80)), Origin: "reject tcp"},
				{Hook: "input", Action: "reject", Proto: "udp", DPorts: ports(p1(161)), Origin: "reject udp"},
				{Hook: "input", Action: "drop", Log: "kvmnet drop: ", Origin: "log and drop"},
				{Hook: "forward", Action: "accept", IIf: "a0", OIf: "c0", Origin: "a to c"},
				{Hook: "forward", Action: "accept", CTState: []string{"established", "related"}, Origin: "fwd replies"},
				{Hook: "output", Action: "accept", Family: "ip", DAddr: pfx("192.168.1.0/24"), Origin: "out lan"},
				{Hook: "output", Action: "reject", Origin: "out reject"},
			},
		},
		Guards: []model.PortGuard{
			{Port: "vm1", MACs: []string{"02:00:00:00:00:01"}, IPs: []netip.Addr{netip.MustParseAddr("192.168.1.100"), netip.MustParseAddr("fd00::100")}, BroadcastPPS: 100},
			{Port: "vm2", MACs: []string{"02:00:00:00:00:02", "02:00:00:00:00:12"}, IPs: []netip.Addr{netip.MustParseAddr("192.168.1.101"), netip.MustParseAddr("192.168.1.102")}},
			{Port: "vm3", BroadcastPPS: 50},
		},
	}
}

// permissive and hardened are the reference design's two policies:
//
//	policy accept; ct state new,established accept; tcp dport {80,443} accept;
//	ip saddr 192.168.1.0/24 accept
//
//	input policy drop; ct state new accept (should be established,related);
//	tcp dport 22 accept; ip saddr 192.168.1.0/24 accept;
//	output: ip daddr 192.168.1.0/24 accept
func permissive() *model.Firewall {
	return &model.Firewall{
		Policy: map[string]string{"input": "accept", "forward": "accept", "output": "accept"},
		Rules: []model.Rule{
			{Hook: "input", Action: "accept", CTState: []string{"new", "established"}, Origin: "permissive 1"},
			{Hook: "input", Action: "accept", Proto: "tcp", DPorts: ports(p1(80), p1(443)), Origin: "permissive 2"},
			{Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("192.168.1.0/24"), Origin: "permissive 3"},
		},
	}
}

func hardened(ct ...string) *model.Firewall {
	if len(ct) == 0 {
		ct = []string{"new"} // as the design wrote it
	}
	return &model.Firewall{
		Policy: map[string]string{"input": "drop", "forward": "accept", "output": "accept"},
		Rules: []model.Rule{
			{Hook: "input", Action: "accept", CTState: ct, Origin: "hardened 1"},
			{Hook: "input", Action: "accept", Proto: "tcp", DPorts: ports(p1(22)), Origin: "hardened 2"},
			{Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("192.168.1.0/24"), Origin: "hardened 3"},
			{Hook: "output", Action: "accept", Family: "ip", DAddr: pfx("192.168.1.0/24"), Origin: "hardened 4"},
		},
	}
}
