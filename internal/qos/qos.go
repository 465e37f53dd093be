// Package qos shapes an interface's traffic with tc, over netlink: a rate
// limit (htb), impairments (netem), and ingress limits through an ifb.
//
// Mechanisms (docs/policy.md has the measurements):
//
//   - Egress of an interface: an htb root qdisc (handle 6b76:, "kv") with
//     a class 6b76:1 that caps the interface at the ceiling (rate = ceil =
//     Ceil) and, under it, the default class 6b76:10 with the rate,
//     borrowing up to the ceiling (a class right under the root cannot
//     borrow, so its ceil would be ignored). Both use the burst. htb counts
//     the bytes of GSO packets segment by segment, so a veth's 64 KB
//     super-packets are shaped exactly. With impairments, a netem qdisc
//     (handle 6b77:) is the default class's leaf; impairments without a rate
//     are a netem root qdisc (handle 6b76:).
//   - Ingress of a veth end: shape the egress of its peer (the caller's
//     choice; nothing here).
//   - Ingress of any other interface (a tap): ApplyIngress redirects
//     everything arriving on it (ingress qdisc, a u32 match-all filter at
//     preference 27510 with a mirred egress redirect) to an ifb in the same
//     namespace, and shapes the ifb's egress as above, as the CNI bandwidth
//     plugin does. This kernel has no police action, so ingress policing is
//     not an option.
//
// Ownership: the fixed handles 6b76:/6b77:, the filter preference 27510 and
// the ifb's name and alias mark what kvmnet installed. A root qdisc with any
// other handle (other than the kernel's default, handle 0:) belongs to
// someone else: Apply refuses to replace it (ErrForeign) and removal leaves
// it alone.
//
// Values round-trip through the kernel with its resolution: rates in bytes
// per second (multiples of 8 bit/s), bursts in 64 ns ticks of the rate,
// delays in microseconds, percentages to 1e-6 %. Normalize returns what
// Observe will report after Apply; compare Observe with Normalize(want).
package qos

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"

	"github.com/kvmnet/kvmnet/internal/model"
)

// Handles and marks.
const (
	RootMajor   = 0x6b76 // "kv": the root qdisc and its classes 6b76:1 and 6b76:10
	LeafMajor   = 0x6b77 // netem under the htb class
	FilterPref  = 0x6b76 // the ingress redirect filter's preference (27510)
	MirrorPref  = 0x6b6d // the port mirror filters' preference on clsact (27501)
	IfbPrefix   = "kvq"  // ifb names: kvq + 8 hex digits
	AliasPrefix = "kvmnet-ifb:ingress-of="
)

// ErrForeign says an interface has a qdisc (or an ifb name is taken by a
// link) that kvmnet did not install.
var ErrForeign = errors.New("not installed by kvmnet")

// IfbName is the ifb that shapes ifname's ingress.
func IfbName(ifname string) string {
	sum := sha256.Sum256([]byte(ifname))
	return IfbPrefix + hex.EncodeToString(sum[:4])
}

// IngressOf reads an ifb's alias: the interface whose ingress it shapes.
func IngressOf(alias string) (ifname string, ok bool) {
	if len(alias) <= len(AliasPrefix) || alias[:len(AliasPrefix)] != AliasPrefix {
		return "", false
	}
	rest := alias[len(AliasPrefix):]
	for i := range rest {
		if rest[i] == ' ' {
			return rest[:i], true
		}
	}
	return rest, true
}

// tickNS is the kernel's packet scheduler tick (PSCHED_SHIFT 6: 64 ns;
// /proc/net/psched's second field).
const tickNS = 64

// DefaultBurst is the burst for a rate without one: 1 ms at the ceiling,
// at least one large frame.
func DefaultBurst(ceilBits uint64) uint32 {
	return uint32(max(ceilBits/8/1000, 1600))
}

func burstTicks(burst uint32, rateBytes uint64) uint32 {
	if rateBytes == 0 {
		return 0
	}
	return uint32(math.Round(float64(burst) * 1e9 / tickNS / float64(rateBytes)))
}

func ticksBurst(ticks uint32, rateBytes uint64) uint32 {
	return uint32(math.Round(float64(ticks) * tickNS * float64(rateBytes) / 1e9))
}

func usTicks(us uint32) uint32 { return uint32(math.Round(float64(us) * 1000 / tickNS)) }

func ticksUS(t uint32) uint32 { return uint32(math.Round(float64(t) * tickNS / 1000)) }

func pctU32(p float64) uint32 {
	p = min(max(p, 0), 100)
	return uint32(math.Round(p / 100 * math.MaxUint32))
}

func u32Pct(v uint32) float64 {
	return math.Round(float64(v)/math.MaxUint32*100*1e6) / 1e6
}

// Normalize is what Observe reports once q is applied: rates rounded down
// to whole bytes per second, a missing ceiling (or one under the rate) set
// to the rate, a missing burst set to DefaultBurst, the burst at the
// kernel's resolution, percentages to 1e-6 %. A QoS with neither rate nor
// netem is nil.
func Normalize(q *model.QoS) *model.QoS {
	if q == nil {
		return nil
	}
	out := &model.QoS{Rate: q.Rate / 8 * 8, Ceil: q.Ceil / 8 * 8, Burst: q.Burst}
	if out.Rate == 0 {
		out.Rate = out.Ceil
	}
	if out.Ceil < out.Rate {
		out.Ceil = out.Rate
	}
	if out.Rate == 0 {
		out.Ceil, out.Burst = 0, 0
	} else {
		if out.Burst == 0 {
			out.Burst = DefaultBurst(out.Ceil)
		}
		out.Burst = ticksBurst(burstTicks(out.Burst, out.Rate/8), out.Rate/8)
	}
	if n := q.Netem; n != nil {
		out.Netem = &model.Netem{
			DelayUS:      ticksUS(usTicks(n.DelayUS)),
			JitterUS:     ticksUS(usTicks(n.JitterUS)),
			LossPct:      u32Pct(pctU32(n.LossPct)),
			DuplicatePct: u32Pct(pctU32(n.DuplicatePct)),
			ReorderPct:   u32Pct(pctU32(n.ReorderPct)),
			CorruptPct:   u32Pct(pctU32(n.CorruptPct)),
		}
		if out.Netem.DelayUS == 0 {
			out.Netem.JitterUS = 0 // netem ignores jitter without a delay
		}
	}
	if out.Rate == 0 && out.Netem == nil {
		return nil
	}
	return out
}

// Equal compares two QoS values after Normalize.
func Equal(a, b *model.QoS) bool {
	a, b = Normalize(a), Normalize(b)
	if a == nil || b == nil {
		return a == b
	}
	if a.Rate != b.Rate || a.Ceil != b.Ceil || a.Burst != b.Burst || (a.Netem == nil) != (b.Netem == nil) {
		return false
	}
	return a.Netem == nil || *a.Netem == *b.Netem
}
