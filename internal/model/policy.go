package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Firewall is the filtering kvmnet owns in one namespace: base chains for
// the input, forward and output hooks with their default policies, the
// ordered rules, and the named sets they use. It lives in kvmnet's nftables
// table (family inet) of that namespace, next to nothing else: other tables
// are never touched.
type Firewall struct {
	// Policy per hook ("input", "forward", "output"): "accept" or "drop".
	// A hook absent from the map gets no base chain.
	Policy map[string]string `json:"policy"`
	Rules  []Rule            `json:"rules"`
	Sets   []Set             `json:"sets,omitempty"`
}

// Rule is one firewall rule. Empty fields match anything; all given fields
// must match. Every rule counts its packets and bytes.
type Rule struct {
	Hook   string `json:"hook"`   // input | forward | output
	Action string `json:"action"` // accept | drop | reject
	// Proto is tcp, udp, icmp or icmpv6 ("" any).
	Proto string `json:"proto,omitempty"`
	// Family restricts the rule to "ip" or "ip6" ("" both); set when the rule
	// has addresses of one family.
	Family    string         `json:"family,omitempty"`
	SAddr     []netip.Prefix `json:"saddr,omitempty"`
	DAddr     []netip.Prefix `json:"daddr,omitempty"`
	SAddrSet  string         `json:"saddr_set,omitempty"` // a Set of addresses
	DAddrSet  string         `json:"daddr_set,omitempty"`
	SPorts    []PortRange    `json:"sports,omitempty"` // needs Proto tcp or udp
	DPorts    []PortRange    `json:"dports,omitempty"`
	DPortSet  string         `json:"dport_set,omitempty"` // a Set of ports
	CTState   []string       `json:"ct_state,omitempty"`  // new, established, related, invalid
	IIf       string         `json:"iif,omitempty"`       // input interface name
	OIf       string         `json:"oif,omitempty"`       // output interface name
	ICMPTypes []string       `json:"icmp_types,omitempty"`
	// Mark, when set, matches the packet mark (MarkNot: any other mark).
	// Frames a VM sends are marked at its tap (PortGuard.Mark), so rules
	// on its bridged traffic can tell the direction.
	Mark    uint32 `json:"mark,omitempty"`
	MarkNot bool   `json:"mark_not,omitempty"`
	// Log, when set, logs matching packets with this prefix.
	Log string `json:"log,omitempty"`
	// Origin says where the rule comes from, for people: "namespaces[2] rule 3",
	// "security group web ingress 0".
	Origin string `json:"origin"`
}

// PortRange is a port or an inclusive range of ports.
type PortRange struct {
	From, To uint16
}

func (p PortRange) String() string {
	if p.From == p.To {
		return fmt.Sprint(p.From)
	}
	return fmt.Sprintf("%d-%d", p.From, p.To)
}

// Set is a named set of addresses (Type "ipv4_addr" or "ipv6_addr", with
// prefixes) or of ports (Type "inet_service").
type Set struct {
	Name     string   `json:"name"`
	Type     string   `json:"type"`
	Elements []string `json:"elements"`
}

// String renders a rule canonically (nft-like); the fingerprint hashes it.
func (r Rule) String() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...); b.WriteByte(' ') }
	w("%s:", r.Hook)
	if r.Family != "" {
		w("family %s", r.Family)
	}
	if r.IIf != "" {
		w("iif %s", r.IIf)
	}
	if r.OIf != "" {
		w("oif %s", r.OIf)
	}
	if r.Mark != 0 {
		op := ""
		if r.MarkNot {
			op = "!= "
		}
		w("mark %s%#x", op, r.Mark)
	}
	if len(r.CTState) > 0 {
		w("ct state %s", strings.Join(r.CTState, ","))
	}
	if len(r.SAddr) > 0 {
		w("saddr %s", joinPrefixes(r.SAddr))
	}
	if r.SAddrSet != "" {
		w("saddr @%s", r.SAddrSet)
	}
	if len(r.DAddr) > 0 {
		w("daddr %s", joinPrefixes(r.DAddr))
	}
	if r.DAddrSet != "" {
		w("daddr @%s", r.DAddrSet)
	}
	if r.Proto != "" {
		w("proto %s", r.Proto)
	}
	if len(r.SPorts) > 0 {
		w("sport %s", joinPorts(r.SPorts))
	}
	if len(r.DPorts) > 0 {
		w("dport %s", joinPorts(r.DPorts))
	}
	if r.DPortSet != "" {
		w("dport @%s", r.DPortSet)
	}
	if len(r.ICMPTypes) > 0 {
		w("icmp type %s", strings.Join(r.ICMPTypes, ","))
	}
	if r.Log != "" {
		w("log %q", r.Log)
	}
	b.WriteString(r.Action)
	return b.String()
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func joinPorts(ps []PortRange) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Fingerprint is a short hash of the canonical form of anything kvmnet
// writes to nftables; each rule's comment carries its fingerprint, so that
// observing a table back is reading comments.
func Fingerprint(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(sum[:6])
}

// PortGuard is what a bridge port may send (libvirt's clean-traffic): only
// its own MACs and IPs, ARP only for its own IPs, and at most BroadcastPPS
// broadcast and multicast frames a second (0: unlimited). It is enforced in
// the bridge's namespace, in kvmnet's nftables table of family bridge.
type PortGuard struct {
	Port         string       `json:"port"`
	MACs         []string     `json:"macs,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
	BroadcastPPS int          `json:"broadcast_pps,omitempty"`
	// Mark, when set, marks every frame entering through the port (after
	// the checks above), for firewall rules that match Rule.Mark.
	Mark uint32 `json:"mark,omitempty"`
}

// VMMark marks the frames a VM sends, at its tap.
const VMMark = 0x6b76

func (g PortGuard) String() string {
	ips := make([]string, len(g.IPs))
	for i, ip := range g.IPs {
		ips[i] = ip.String()
	}
	return fmt.Sprintf("port %s macs %s ips %s bcast %d mark %#x", g.Port, strings.Join(g.MACs, ","), strings.Join(ips, ","), g.BroadcastPPS, g.Mark)
}

// QoS shapes one interface's egress. Rates are bits per second; 0 is unset.
// The ingress of a veth end is shaped as the egress of its peer.
type QoS struct {
	Rate  uint64 `json:"rate,omitempty"`
	Ceil  uint64 `json:"ceil,omitempty"`
	Burst uint32 `json:"burst,omitempty"` // bytes
	// Netem impairments, applied below the rate limit.
	Netem *Netem `json:"netem,omitempty"`
}

// Netem is a set of impairments (sch_netem).
type Netem struct {
	DelayUS      uint32  `json:"delay_us,omitempty"`
	JitterUS     uint32  `json:"jitter_us,omitempty"`
	LossPct      float64 `json:"loss_pct,omitempty"`
	DuplicatePct float64 `json:"duplicate_pct,omitempty"`
	ReorderPct   float64 `json:"reorder_pct,omitempty"`
	CorruptPct   float64 `json:"corrupt_pct,omitempty"`
}

func (q *QoS) String() string {
	if q == nil {
		return "none"
	}
	s := fmt.Sprintf("rate %d ceil %d burst %d", q.Rate, q.Ceil, q.Burst)
	if n := q.Netem; n != nil {
		s += fmt.Sprintf(" netem delay %dus jitter %dus loss %g%% dup %g%% reorder %g%% corrupt %g%%",
			n.DelayUS, n.JitterUS, n.LossPct, n.DuplicatePct, n.ReorderPct, n.CorruptPct)
	}
	return s
}

func parseDurationUS(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return uint32(d.Microseconds()), nil
}

// NFTHash is the mark hash of a canonical nftables form ("" for none).
func NFTHash(canonical string) string {
	if canonical == "" {
		return ""
	}
	return Fingerprint(canonical)
}

// QoSHash is the mark hash of the QoS of a namespace's links ("" for none).
func QoSHash(ns *Namespace) string {
	return linkHash(ns, func(l *Link) fmt.Stringer {
		if l.QoS == nil {
			return nil
		}
		return l.QoS
	})
}

// linkHash is the mark hash of one per-link aspect of a namespace: of
// aspect(l) for every link that has it (non-nil); "" when none has.
func linkHash(ns *Namespace, aspect func(l *Link) fmt.Stringer) string {
	if ns == nil {
		return ""
	}
	var b strings.Builder
	for _, name := range SortedNames(ns.Links) {
		if a := aspect(ns.Links[name]); a != nil {
			fmt.Fprintf(&b, "%s %s\n", name, a)
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return Fingerprint(b.String())
}
