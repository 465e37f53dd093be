package inspect

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSetRates(t *testing.T) {
	t0 := time.Unix(100, 0)
	before := []*Namespace{{Name: "a", ReadAt: t0, Interfaces: []*Interface{
		{Name: "eth0", Index: 2, Stats: Stats{RxBytes: 1000, TxPackets: 10, RxDropped: 1}},
		{Name: "gone", Index: 3},
	}}}
	now := []*Namespace{{Name: "a", ReadAt: t0.Add(2 * time.Second), Interfaces: []*Interface{
		{Name: "eth0", Index: 2, Stats: Stats{RxBytes: 3000, TxPackets: 30, RxDropped: 5}},
		{Name: "gone", Index: 9}, // recreated: another ifindex, no rate
	}}}
	SetRates(before, now)
	r := now[0].Interfaces[0].Rates
	if r == nil || r.RxBytes != 1000 || r.TxPackets != 10 || r.RxDropped != 2 {
		t.Fatalf("rates %+v", r)
	}
	if now[0].Interfaces[1].Rates != nil {
		t.Fatal("a recreated interface got a rate from its predecessor")
	}
}

func TestNames(t *testing.T) {
	if got := NUDState(unix.NUD_REACHABLE); got != "reachable" {
		t.Errorf("NUDState = %s", got)
	}
	if got := NUDState(unix.NUD_STALE | unix.NUD_PERMANENT); got != "stale,permanent" {
		t.Errorf("NUDState = %s", got)
	}
	if HookName("ip", unix.NF_INET_FORWARD) != "forward" || HookName("netdev", unix.NF_NETDEV_INGRESS) != "ingress" {
		t.Error("hook names")
	}
	r := Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("192.168.1.1"), Dev: "eth0", Protocol: 211, Type: "unicast"}
	if r.String() != "default via 192.168.1.1 dev eth0 proto kvmnet" {
		t.Errorf("route %q", r.String())
	}
	if (FDBEntry{Static: true}).Kind() != "static" || (FDBEntry{Local: true}).Kind() != "local" || (FDBEntry{Learned: true}).Kind() != "learned" {
		t.Error("FDB kinds")
	}
	if !(Rule{Verdict: "drop"}).Drops() || (Rule{Verdict: "accept"}).Drops() {
		t.Error("Drops")
	}
}
