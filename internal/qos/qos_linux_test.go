package qos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

const mbit = 1_000_000

func tc(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	return testutil.Run(t, "ip", append([]string{"netns", "exec", ns.Name, "tc"}, args...)...)
}

// TestRateLimitCapsTCP: 10 Mbit/s on a's egress caps a TCP stream from a
// to b between 7 and 11 Mbit/s; removing it restores full speed.
func TestRateLimitCapsTCP(t *testing.T) {
	a, b := pair(t)
	f := stream(t, a, b, "7100")
	free, _ := measure(t, f, 300*time.Millisecond, 700*time.Millisecond, nil, "")
	t.Logf("unshaped: %.0f Mbit/s", free/mbit)
	q := &model.QoS{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: DefaultBurst(10 * mbit)}
	if err := Apply(a, "eth0", q); err != nil {
		t.Fatal(err)
	}
	good, shaped := measure(t, f, time.Second, 2*time.Second, a, "eth0")
	t.Logf("10 Mbit/s limit: goodput %.2f Mbit/s, htb class %.2f Mbit/s", good/mbit, shaped/mbit)
	if good < 7*mbit || good > 11*mbit {
		t.Errorf("goodput %.2f Mbit/s under a 10 Mbit/s limit, want 7..11", good/mbit)
	}
	if out := tc(t, a, "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "qdisc htb 6b76: root") {
		t.Errorf("tc qdisc show:\n%s", out)
	}
	if out := tc(t, a, "class", "show", "dev", "eth0"); !strings.Contains(out, "class htb 6b76:1 root rate 10Mbit ceil 10Mbit") ||
		!strings.Contains(out, "class htb 6b76:10 parent 6b76:1 prio 0 rate 10Mbit ceil 10Mbit") {
		t.Errorf("tc class show:\n%s", out)
	}
	// A lower rate with the same ceiling: one stream borrows up to the
	// ceiling (the class is under the 6b76:1 cap, not under the root).
	if err := Apply(a, "eth0", &model.QoS{Rate: 2 * mbit, Ceil: 10 * mbit}); err != nil {
		t.Fatal(err)
	}
	if good, _ := measure(t, f, time.Second, 2*time.Second, a, "eth0"); good < 7*mbit || good > 11*mbit {
		t.Errorf("rate 2, ceil 10 Mbit/s: goodput %.2f Mbit/s, want 7..11 (the ceiling)", good/mbit)
	}
	if err := Apply(a, "eth0", nil); err != nil {
		t.Fatal(err)
	}
	// A new stream: the old one sat behind the shaper's queue (its RTT
	// and so its retransmission timeout grew to about a second) and may
	// still be recovering from the queue dropped with the qdisc.
	f.stop()
	after, _ := measure(t, stream(t, a, b, "7110"), 300*time.Millisecond, time.Second, nil, "")
	t.Logf("limit removed: %.0f Mbit/s", after/mbit)
	if after < 100*mbit {
		t.Errorf("after removing the limit: %.1f Mbit/s, want full speed (unshaped was %.0f)", after/mbit, free/mbit)
	}
	if got, err := Observe(a, "eth0"); err != nil || got != nil {
		t.Errorf("Observe after removal: %v, %v", got, err)
	}
	if out := tc(t, a, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "6b76") {
		t.Errorf("kvmnet's qdisc is still there:\n%s", out)
	}
}

// TestIngressIfb: a 10 Mbit/s ingress limit on b's eth0 (redirected to an
// ifb) caps the stream a sends to b; removing it removes the filter, the
// ifb and the ingress qdisc and restores full speed.
func TestIngressIfb(t *testing.T) {
	a, b := pair(t)
	f := stream(t, a, b, "7101")
	q := &model.QoS{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: DefaultBurst(10 * mbit)}
	if err := ApplyIngress(b, "eth0", q); err != nil {
		t.Fatal(err)
	}
	ifb := IfbName("eth0")
	good, shaped := measure(t, f, time.Second, 2*time.Second, b, ifb)
	t.Logf("10 Mbit/s ingress limit: goodput %.2f Mbit/s, htb class on %s %.2f Mbit/s", good/mbit, ifb, shaped/mbit)
	if good < 7*mbit || good > 11*mbit {
		t.Errorf("goodput %.2f Mbit/s under a 10 Mbit/s ingress limit, want 7..11", good/mbit)
	}
	if got, err := ObserveIngress(b, "eth0"); err != nil || !cmp.Equal(got, Normalize(q)) {
		t.Errorf("ObserveIngress: %v %v, want %v", got, err, Normalize(q))
	}
	filters := tc(t, b, "filter", "show", "dev", "eth0", "ingress")
	if !strings.Contains(filters, "pref 27510 u32") || !strings.Contains(filters, "Egress Redirect to device "+ifb) {
		t.Errorf("tc filter show ingress:\n%s", filters)
	}
	if alias := testutil.Run(t, "ip", "-n", b.Name, "-o", "link", "show", ifb); !strings.Contains(alias, "alias kvmnet-ifb:ingress-of=eth0 qdisc=kvmnet") {
		t.Errorf("ifb mark: %s", alias)
	}
	// Applying the same again changes nothing.
	events := tcEvents(t, b)
	if err := ApplyIngress(b, "eth0", q); err != nil {
		t.Fatal(err)
	}
	if n := events(); n != 0 {
		t.Errorf("re-applying the same ingress limit made %d tc changes", n)
	}
	if err := ApplyIngress(b, "eth0", nil); err != nil {
		t.Fatal(err)
	}
	f.stop()
	free, _ := measure(t, stream(t, a, b, "7111"), 300*time.Millisecond, time.Second, nil, "")
	if free < 100*mbit {
		t.Errorf("after removing the ingress limit: %.1f Mbit/s", free/mbit)
	}
	if out := testutil.Run(t, "ip", "-n", b.Name, "link", "show"); strings.Contains(out, ifb) {
		t.Errorf("ifb %s still there:\n%s", ifb, out)
	}
	if out := tc(t, b, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "ingress") {
		t.Errorf("ingress qdisc still there:\n%s", out)
	}
	if got, err := ObserveIngress(b, "eth0"); err != nil || got != nil {
		t.Errorf("ObserveIngress after removal: %v, %v", got, err)
	}
	// Removing twice is fine.
	if err := ApplyIngress(b, "eth0", nil); err != nil {
		t.Fatal(err)
	}
}

// TestIngressKeepsForeignQdisc: an ingress qdisc someone else added (with
// their own filter) stays when kvmnet's ingress shaping goes.
func TestIngressKeepsForeignQdisc(t *testing.T) {
	_, b := pair(t)
	tc(t, b, "qdisc", "add", "dev", "eth0", "handle", "ffff:", "ingress")
	tc(t, b, "filter", "add", "dev", "eth0", "parent", "ffff:", "pref", "10", "protocol", "ip", "u32", "match", "ip", "dport", "9", "0xffff", "classid", "1:1")
	q := &model.QoS{Rate: 50 * mbit}
	if err := ApplyIngress(b, "eth0", q); err != nil {
		t.Fatal(err)
	}
	if err := ApplyIngress(b, "eth0", nil); err != nil {
		t.Fatal(err)
	}
	out := tc(t, b, "filter", "show", "dev", "eth0", "ingress")
	if !strings.Contains(out, "pref 10 u32") || strings.Contains(out, "pref 27510") {
		t.Errorf("ingress filters after removal:\n%s", out)
	}
}

// TestObserveRoundTrip: what Apply installs reads back as Normalize(q);
// applying it again writes nothing (the class keeps its counters); a new
// rate is changed in place; a foreign root qdisc is refused and left alone.
func TestObserveRoundTrip(t *testing.T) {
	a, b := pair(t)
	for _, q := range []*model.QoS{
		{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: 1600},
		{Rate: 100 * mbit, Ceil: 200 * mbit, Burst: 25000},
		{Rate: 1000 * mbit, Ceil: 1000 * mbit, Burst: DefaultBurst(1000 * mbit)},
		{Rate: 40 * 1000 * mbit, Burst: 1 << 20}, // 40 Gbit/s: 64-bit rate attributes
		{Rate: 999_999, Ceil: 0, Burst: 0},
		{Ceil: 5 * mbit},
	} {
		if err := Apply(a, "eth0", q); err != nil {
			t.Fatalf("apply %v: %v", q, err)
		}
		got, err := Observe(a, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(got, Normalize(q)) {
			t.Errorf("Observe after Apply(%v) = %v, want Normalize = %v", q, got, Normalize(q))
		}
	}
	// No write when unchanged: the kernel announces no tc change.
	events := tcEvents(t, a)
	if err := Apply(a, "eth0", &model.QoS{Ceil: 5 * mbit}); err != nil {
		t.Fatal(err)
	}
	if n := events(); n != 0 {
		t.Errorf("re-applying the same QoS made %d tc changes", n)
	}
	// In place: a new rate changes the default class (only), and the
	// class keeps its counters (it is not recreated).
	if err := Apply(a, "eth0", &model.QoS{Rate: 3 * mbit, Ceil: 5 * mbit}); err != nil {
		t.Fatal(err)
	}
	if n := events(); n != 1 {
		t.Errorf("a rate change made %d tc changes, want 1 (the default class)", n)
	}
	echoServer(t, b, "7102")
	c := dial(t, a, "10.7.0.2:7102")
	c.Write([]byte("x\n"))
	c.Close()
	before := classBytes(t, a, "eth0")
	if before == 0 {
		t.Fatal("the class counted nothing")
	}
	if err := Apply(a, "eth0", &model.QoS{Rate: 7 * mbit}); err != nil {
		t.Fatal(err)
	}
	if n := events(); n != 2 {
		t.Errorf("a new ceiling made %d tc changes, want 2 (both classes)", n)
	}
	if after := classBytes(t, a, "eth0"); after < before {
		t.Errorf("a rate change recreated the class (%d -> %d bytes)", before, after)
	}
	if err := Apply(a, "eth0", nil); err != nil {
		t.Fatal(err)
	}

	tc(t, b, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1")
	err := Apply(b, "eth0", &model.QoS{Rate: 10 * mbit})
	if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "htb qdisc with handle 1:") {
		t.Errorf("over a foreign root qdisc: %v", err)
	}
	if err := Apply(b, "eth0", nil); err != nil {
		t.Errorf("removal with a foreign root qdisc: %v", err)
	}
	if got, _ := Observe(b, "eth0"); got != nil {
		t.Errorf("Observe of a foreign qdisc: %v", got)
	}
	if out := tc(t, b, "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "qdisc htb 1: root") {
		t.Errorf("the foreign qdisc is gone:\n%s", out)
	}
	if err := Apply(b, "nope0", &model.QoS{Rate: mbit}); err == nil || !strings.Contains(err.Error(), `interface "nope0"`) {
		t.Errorf("missing interface: %v", err)
	}
}

// netemOrSkip applies q (with netem) and turns a kernel without sch_netem
// into a skip that names it (a failure in the guest-kernel lane), after
// checking the error and that nothing was left behind.
func netemOrSkip(t *testing.T, ns *netns.NS, q *model.QoS) {
	t.Helper()
	err := Apply(ns, "eth0", q)
	if msg, ok := kernelfeat.Missing(err); ok {
		if !strings.Contains(msg, "CONFIG_NET_SCH_NETEM") || !errors.Is(err, kernelfeat.ErrMissing) {
			t.Errorf("missing netem reported as %q", msg)
		}
		if got, oerr := Observe(ns, "eth0"); oerr != nil || got != nil {
			t.Errorf("a failed netem Apply left %v (%v)", got, oerr)
		}
		testutil.KernelLacks(t, msg)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestNetem runs in the guest-kernel lane (this host lacks sch_netem): a
// 50 ms delay shows in the round trip time within ±20%, 100% loss blocks,
// netem under a rate limit reads back, and removal restores the link.
func TestNetem(t *testing.T) {
	a, _ := pair(t)
	delay := &model.QoS{Netem: &model.Netem{DelayUS: 50_000}}
	netemOrSkip(t, a, delay)
	if got, _ := Observe(a, "eth0"); !cmp.Equal(got, Normalize(delay)) {
		t.Errorf("Observe: %v, want %v", got, Normalize(delay))
	}
	var rtts []time.Duration
	for range 5 {
		r := probe.One(context.Background(), probe.Probe{FromNS: a.Name, Proto: "icmp", To: "10.7.0.2", Timeout: 2 * time.Second})
		if !r.Reachable {
			t.Fatalf("ping under 50 ms delay: %s", r.Detail)
		}
		rtts = append(rtts, r.Elapsed)
	}
	slices.Sort(rtts)
	med := rtts[len(rtts)/2]
	t.Logf("50 ms netem delay: round trips %v (median %v)", rtts, med)
	if med < 40*time.Millisecond || med > 60*time.Millisecond {
		t.Errorf("median round trip %v, want 50 ms ±20%%", med)
	}
	loss := &model.QoS{Netem: &model.Netem{LossPct: 100}}
	netemOrSkip(t, a, loss)
	if r := probe.One(context.Background(), probe.Probe{FromNS: a.Name, Proto: "icmp", To: "10.7.0.2", Expect: probe.Blocked, Timeout: 500 * time.Millisecond}); !r.OK {
		t.Errorf("ping through 100%% loss: %s", r.Detail)
	}
	both := &model.QoS{Rate: 20 * mbit, Netem: &model.Netem{DelayUS: 10_000, JitterUS: 1_000, LossPct: 0.1, DuplicatePct: 0.5, ReorderPct: 1, CorruptPct: 0.01}}
	netemOrSkip(t, a, both)
	if got, _ := Observe(a, "eth0"); !cmp.Equal(got, Normalize(both)) {
		t.Errorf("Observe: %v, want %v", got, Normalize(both))
	}
	if out := tc(t, a, "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "qdisc netem 6b77: parent 6b76:10") {
		t.Errorf("tc qdisc show:\n%s", out)
	}
	// Dropping the impairments keeps the rate limit.
	if err := Apply(a, "eth0", &model.QoS{Rate: 20 * mbit}); err != nil {
		t.Fatal(err)
	}
	if out := tc(t, a, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "netem") || !strings.Contains(out, "htb 6b76:") {
		t.Errorf("tc qdisc show:\n%s", out)
	}
	if err := Apply(a, "eth0", nil); err != nil {
		t.Fatal(err)
	}
	if r := probe.One(context.Background(), probe.Probe{FromNS: a.Name, Proto: "icmp", To: "10.7.0.2"}); !r.Reachable || r.Elapsed > 20*time.Millisecond {
		t.Errorf("after removal: %v %s in %v", r.Reachable, r.Detail, r.Elapsed)
	}
}

func TestNormalize(t *testing.T) {
	for _, c := range []struct{ in, want *model.QoS }{
		{nil, nil},
		{&model.QoS{}, nil},
		{&model.QoS{Burst: 5}, nil},
		{&model.QoS{Rate: 10 * mbit}, &model.QoS{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: 1600}},
		{&model.QoS{Rate: 1000 * mbit}, &model.QoS{Rate: 1000 * mbit, Ceil: 1000 * mbit, Burst: 125000}},
		{&model.QoS{Rate: 10*mbit + 7, Ceil: 5}, &model.QoS{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: 1600}},
		{&model.QoS{Ceil: 8 * mbit}, &model.QoS{Rate: 8 * mbit, Ceil: 8 * mbit, Burst: 1600}},
		{&model.QoS{Netem: &model.Netem{DelayUS: 1, JitterUS: 3, LossPct: 0.1, CorruptPct: 200}},
			&model.QoS{Netem: &model.Netem{DelayUS: 1, JitterUS: 3, LossPct: 0.1, CorruptPct: 100}}},
		{&model.QoS{Netem: &model.Netem{JitterUS: 3}}, &model.QoS{Netem: &model.Netem{}}},
	} {
		if got := Normalize(c.in); !cmp.Equal(got, c.want) {
			t.Errorf("Normalize(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	// Below 125 Mbit/s (fewer bytes than ticks per second) every burst is
	// kept exactly; above, it is rounded to the tick's worth of bytes; and
	// Normalize is idempotent.
	for _, rate := range []uint64{1 * mbit, 10 * mbit, 100 * mbit, 1000 * mbit, 10000 * mbit} {
		for burst := uint32(1500); burst < 300000; burst += 997 {
			n := Normalize(&model.QoS{Rate: rate, Burst: burst})
			if rate <= 100*mbit && n.Burst != burst {
				t.Fatalf("rate %d burst %d -> %d", rate, burst, n.Burst)
			}
			if d := int64(n.Burst) - int64(burst); d < -int64(rate/8/15625000)-1 || d > int64(rate/8/15625000)+1 {
				t.Fatalf("rate %d burst %d -> %d", rate, burst, n.Burst)
			}
			if again := Normalize(n); !cmp.Equal(again, n) {
				t.Fatalf("Normalize not idempotent: %v -> %v", n, again)
			}
		}
	}
	for _, p := range []float64{0.1, 0.01, 1, 33.333333, 99.999999, 0.000001, 50} {
		if got := u32Pct(pctU32(p)); got != p {
			t.Errorf("percentage %v -> %v", p, got)
		}
	}
	for us := uint32(0); us < 100000; us += 7 {
		if got := ticksUS(usTicks(us)); got != us {
			t.Fatalf("%d us -> %d", us, got)
		}
	}
	if !Equal(&model.QoS{Rate: 10 * mbit}, &model.QoS{Rate: 10 * mbit, Ceil: 10 * mbit, Burst: 1600}) || Equal(&model.QoS{Rate: 10 * mbit}, nil) {
		t.Error("Equal")
	}
	if IfbName("eth0") != IfbName("eth0") || len(IfbName("a-very-long-name")) > 15 || IfbName("eth0") == IfbName("eth1") {
		t.Error("IfbName")
	}
	if of, ok := IngressOf("kvmnet-ifb:ingress-of=tap0 qdisc=kvmnet"); !ok || of != "tap0" {
		t.Errorf("IngressOf: %q %v", of, ok)
	}
	_ = fmt.Sprint
}
