package nft

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// bigPolicy is a firewall of n rules of mixed kinds (ports, port lists,
// prefixes, sets, ct state, interfaces, ICMP, reject, log).
func bigPolicy(n int) Table {
	fw := &model.Firewall{
		Policy: map[string]string{"input": "drop", "forward": "drop", "output": "accept"},
		Sets: []model.Set{
			{Name: "admins", Type: "ipv4_addr", Elements: []string{"10.0.0.0/8", "192.168.7.7"}},
			{Name: "web", Type: "inet_service", Elements: []string{"80", "443", "8000-8080"}},
		},
	}
	for i := 0; len(fw.Rules) < n; i++ {
		hook := []string{"input", "forward", "output"}[i%3]
		var r model.Rule
		switch i % 8 {
		case 0:
			r = model.Rule{Proto: "tcp", DPorts: ports(p1(uint16(1000 + i)))}
		case 1:
			r = model.Rule{Proto: "udp", DPorts: ports(p1(uint16(1000+i)), [2]uint16{uint16(20000 + i), uint16(20010 + i)})}
		case 2:
			r = model.Rule{Family: "ip", SAddr: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}}
		case 3:
			r = model.Rule{SAddrSet: "admins", Proto: "tcp", DPortSet: "web"}
		case 4:
			r = model.Rule{CTState: []string{"established", "related"}, IIf: fmt.Sprintf("eth%d", i%16)}
		case 5:
			r = model.Rule{Family: "ip", Proto: "icmp", ICMPTypes: []string{"echo-request", "echo-reply"}}
		case 6:
			r = model.Rule{Proto: "tcp", DPorts: ports(p1(uint16(i))), Action: "reject"}
		case 7:
			r = model.Rule{Family: "ip6", DAddr: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("fd00:%x::/64", i))}, Log: "kvmnet: "}
		}
		r.Hook = hook
		if r.Action == "" {
			r.Action = []string{"accept", "drop"}[i%2]
		}
		r.Origin = fmt.Sprintf("rule %d", i)
		fw.Rules = append(fw.Rules, r)
	}
	return Table{Firewall: fw}
}

// BenchmarkApply1000Rules: writing a 1,000-rule policy in one batch
// (replacing the previous one each time), then reading it back.
//
//	go test -run '^$' -bench Apply1000 -benchtime 20x ./internal/nft/
func BenchmarkApply1000Rules(b *testing.B) {
	testutil.RequireRoot(b)
	ns := testutil.NewNSPrefix(b, "kvmf-")
	tb := bigPolicy(1000)
	want := Canonical(tb)
	b.Run("apply", func(b *testing.B) {
		for b.Loop() {
			if err := Apply(ns, tb); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("observe", func(b *testing.B) {
		for b.Loop() {
			got, err := Observe(ns)
			if err != nil {
				b.Fatal(err)
			}
			if got != want {
				b.Fatal("observed table differs from the canonical form")
			}
		}
	})
	b.Run("canonical", func(b *testing.B) {
		for b.Loop() {
			Canonical(tb)
		}
	})
}

// TestBigPolicy checks the benchmark's policy is written and read back
// whole, and that nft -f of its rendering builds the same.
func TestBigPolicy(t *testing.T) {
	testutil.RequireTool(t, "nft")
	tb := bigPolicy(1000)
	a, b := newNS(t), newNS(t)
	apply(t, a, tb)
	nftIn(t, b, "-f", writeFile(t, "big.nft", Render(tb)))
	if got, _ := Observe(b); got != Canonical(tb) {
		t.Fatal("nft -f Render of the 1,000-rule policy observes differently")
	}
	cs, err := Counters(a)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1000 {
		t.Fatalf("%d counters, want 1000", len(cs))
	}
}

// BenchmarkObserveSmall: reading back a typical namespace's table (the
// hardened reference policy and a masquerade rule), what `up` pays per
// namespace to find that nothing changed.
func BenchmarkObserveSmall(b *testing.B) {
	testutil.RequireRoot(b)
	ns := testutil.NewNSPrefix(b, "kvmf-")
	tb := Table{Firewall: hardened(), Masquerade: everything().Masquerade}
	if err := Apply(ns, tb); err != nil {
		b.Fatal(err)
	}
	want := Canonical(tb)
	for b.Loop() {
		if got, err := Observe(ns); err != nil || got != want {
			b.Fatal(err)
		}
	}
}
