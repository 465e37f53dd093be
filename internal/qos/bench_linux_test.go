package qos

import (
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// BenchmarkRateAccuracy measures how close a rate limit holds a TCP stream
// between two namespaces to the configured rate, at 10, 100 and 1000
// Mbit/s, for htb (what Apply installs) and, for comparison, tbf with the
// same rate and burst. Reported per run:
//
//   - shaped-Mbit/s: the L2 bytes the root qdisc let through (its own
//     counter; GSO segments counted with their headers), per second;
//
//   - err-%: shaped-Mbit/s against the configured rate;
//
//   - goodput-Mbit/s: TCP payload the receiver read, per second (at most
//     1448/1514 = 95.6% of the shaped rate with 1500-byte frames).
//
//     go test -run '^$' -bench RateAccuracy -benchtime 1x ./internal/qos/
func BenchmarkRateAccuracy(b *testing.B) {
	testutil.RequireRoot(b)
	for _, kind := range []string{"htb", "tbf"} {
		for _, rate := range []uint64{10 * mbit, 100 * mbit, 1000 * mbit} {
			b.Run(fmt.Sprintf("%s/%dMbit", kind, rate/mbit), func(b *testing.B) {
				for b.Loop() {
					shaped, good := accuracy(b, kind, rate, 4*time.Second)
					b.ReportMetric(shaped/mbit, "shaped-Mbit/s")
					b.ReportMetric((shaped-float64(rate))/float64(rate)*100, "err-%")
					b.ReportMetric(good/mbit, "goodput-Mbit/s")
				}
			})
		}
	}
}

func accuracy(b *testing.B, kind string, rate uint64, window time.Duration) (shaped, goodput float64) {
	a, c := pair(b)
	q := &model.QoS{Rate: rate, Ceil: rate, Burst: DefaultBurst(rate)}
	switch kind {
	case "htb":
		if err := Apply(a, "eth0", q); err != nil {
			b.Fatal(err)
		}
	case "tbf":
		h, err := handle(a)
		if err != nil {
			b.Fatal(err)
		}
		l, err := h.LinkByName("eth0")
		if err != nil {
			b.Fatal(err)
		}
		tbf := &netlink.Tbf{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: rootHandle, Parent: netlink.HANDLE_ROOT},
			Rate:       rate / 8, Buffer: burstTicks(q.Burst, rate/8),
			Limit: uint32(rate/8/10) + q.Burst, // 100 ms of queue
		}
		if err := h.QdiscAdd(tbf); err != nil {
			b.Fatal(err)
		}
		h.Close()
	}
	f := stream(b, a, c, "7200")
	defer f.stop()
	time.Sleep(time.Second)
	c0, q0, t0 := f.rx.Load(), rootBytes(b, a), time.Now()
	time.Sleep(window)
	c1, q1, t1 := f.rx.Load(), rootBytes(b, a), time.Now()
	secs := t1.Sub(t0).Seconds()
	return float64(q1-q0) * 8 / secs, float64(c1-c0) * 8 / secs
}

func rootBytes(b *testing.B, ns *netns.NS) uint64 {
	for _, q := range qdiscs(b, ns, "eth0") {
		if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Statistics != nil && q.Attrs().Statistics.Basic != nil {
			return q.Attrs().Statistics.Basic.Bytes
		}
	}
	b.Fatal("no root qdisc statistics")
	return 0
}
