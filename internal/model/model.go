// Package model is the network state kvmnet compares: the desired state built
// from a topology and the observed state read from the kernel use the same
// types, so that plan.Diff is a pure function of two values.
package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Kind is the kind of a link.
type Kind string

// Link kinds kvmnet manages.
const (
	KindBridge Kind = "bridge"
	KindVeth   Kind = "veth"
	KindDevice Kind = "device" // a real NIC moved in from the root namespace
	KindVLAN   Kind = "vlan"   // an 802.1Q sub-interface of Parent
	KindOther  Kind = "other"
)

// State is a whole network: its namespaces by kernel name.
type State struct {
	// Network is the network ID (prefix+name) that owns everything in it.
	Network    string
	Namespaces map[string]*Namespace
}

// Namespace is one network namespace and what kvmnet manages in it.
type Namespace struct {
	Name string
	// Owner is the network ID in the namespace's ownership mark ("" when the
	// namespace exists but kvmnet did not create it). Desired state sets it.
	Owner string
	// Sysctls holds the desired keys; observation reads the same keys.
	Sysctls map[string]string
	Links   map[string]*Link
	Routes  map[string]*Route
	// Marks are the aspect hashes recorded in the namespace's mark: what
	// kvmnet applied last (observed; see MarkInfo).
	Marks Marks
	// Firewall is the namespace's filter (nil: none).
	Firewall *Firewall
	// Guards are the bridge-port guards enforced in this namespace.
	Guards []PortGuard
	// NFT is the canonical form of kvmnet's nftables tables in the namespace
	// (internal/nft.Canonical): computed from Masquerade, Firewall and Guards
	// for the desired state, read back (or trusted from the mark) when
	// observed. "" means no table.
	NFT string
	// Masquerade is the NAT of kvmnet's nftables table, sorted; nil when
	// the namespace has no kvmnet table.
	Masquerade []Masquerade
	// DevConf is what the link dump says of every interface's (lo's
	// included) forwarding and disable_ipv6 (observed only; the diff does
	// not look at it): the per-device copies of the sysctls kvmnet writes,
	// which the kernel sets on every device when the "all" value changes.
	DevConf map[string]DevConf
}

// DevConf is one interface's per-device IPv4/IPv6 settings, as the link
// dump carries them (IFLA_AF_SPEC); -1 when the dump did not say.
type DevConf struct {
	IPv4Forwarding, IPv6Forwarding, IPv6Disabled int8
}

// DevConfAgrees reports whether the per-device settings observed agree with
// the desired sysctls: every device forwards IPv4 (IPv6) exactly when
// net.ipv4.ip_forward (net.ipv6.conf.all.forwarding) says so, and has IPv6
// disabled where all.disable_ipv6 is 1. Writing one of those sysctls by
// hand changes every device, so a disagreement means the sysctls changed
// since kvmnet wrote them, whatever the namespace mark records.
func DevConfAgrees(want map[string]string, conf map[string]DevConf) bool {
	flag := func(key string) int8 {
		switch want[key] {
		case "1":
			return 1
		case "0":
			return 0
		}
		return -1
	}
	fwd4, fwd6 := flag(SysctlIPv4Forward), flag(SysctlIPv6Forward)
	off6 := want[SysctlIPv6DisableAll] == "1"
	for _, c := range conf {
		switch {
		case fwd4 >= 0 && c.IPv4Forwarding >= 0 && c.IPv4Forwarding != fwd4,
			fwd6 >= 0 && c.IPv6Forwarding >= 0 && c.IPv6Forwarding != fwd6,
			off6 && c.IPv6Disabled == 0:
			return false
		}
	}
	return true
}

// Link is one network interface.
type Link struct {
	Name  string
	Kind  Kind
	Owner string // network ID from the ownership mark; "" = not kvmnet's
	MAC   string
	MTU   int
	// Master is the bridge (in the same namespace) this link is a port of.
	Master string
	Up     bool
	Addrs  []netip.Prefix // sorted, without kernel-made IPv6 link-local
	Peer   PeerRef        // veth only: the other end
	Bridge *BridgeOpts    // bridge only
	// Origin is the root-namespace name of a moved real NIC (KindDevice).
	Origin string
	// Parent and VID: a VLAN sub-interface's parent (same namespace) and ID.
	Parent string
	VID    int
	// PortVLANs is the membership of a port of a VLAN-filtering bridge,
	// sorted by VID; nil when the link is not such a port.
	PortVLANs []VLANEntry
	// QoS is the shaping of the link's egress (nil: none).
	QoS *QoS
	// Mirror copies the link's traffic to another interface (nil: none).
	Mirror *Mirror
	// Index is the kernel ifindex (observed only; ignored by Diff).
	Index int
}

// PeerRef names the other end of a veth: its namespace and interface.
type PeerRef struct {
	NS   string
	Name string
}

func (p PeerRef) String() string { return p.NS + "/" + p.Name }

// BridgeOpts are the bridge settings kvmnet manages.
type BridgeOpts struct {
	STP           bool
	AgeingTime    int // seconds
	VLANFiltering bool
	// DefaultPVID is managed when VLANFiltering is on (0: not managed).
	DefaultPVID int
}

// VLANEntry is one VLAN of a bridge port: PVID marks the VLAN that
// untagged ingress frames join, Untagged that egress frames leave untagged.
type VLANEntry struct {
	VID      int  `json:"vid"`
	PVID     bool `json:"pvid,omitempty"`
	Untagged bool `json:"untagged,omitempty"`
}

func (e VLANEntry) String() string {
	s := fmt.Sprint(e.VID)
	if e.PVID {
		s += " pvid"
	}
	if e.Untagged {
		s += " untagged"
	}
	return s
}

// PortVLANEntries turns a membership (PVID, untagged and tagged VLANs) into
// sorted entries.
func PortVLANEntries(pvid int, untagged, tagged []int) []VLANEntry {
	m := map[int]*VLANEntry{}
	get := func(v int) *VLANEntry {
		if m[v] == nil {
			m[v] = &VLANEntry{VID: v}
		}
		return m[v]
	}
	for _, v := range untagged {
		get(v).Untagged = true
	}
	for _, v := range tagged {
		get(v)
	}
	if pvid != 0 {
		get(pvid).PVID = true
	}
	out := make([]VLANEntry, 0, len(m))
	for _, e := range m {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b VLANEntry) int { return a.VID - b.VID })
	return out
}

// Route is a static route in a namespace's main table.
type Route struct {
	Dst    netip.Prefix // always valid: 0.0.0.0/0 or ::/0 for default
	Via    netip.Addr   // zero when the route is on-link (Dev only)
	Dev    string
	Metric int
}

// Key identifies a route within a namespace: destination and metric.
func (r *Route) Key() string { return fmt.Sprintf("%s metric %d", r.Dst, r.Metric) }

func (r *Route) String() string {
	var b strings.Builder
	if r.Dst.Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.Via.IsValid() {
		b.WriteString(" via " + r.Via.String())
	}
	if r.Dev != "" {
		b.WriteString(" dev " + r.Dev)
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	return b.String()
}

// Equal reports whether two routes are the same route.
func (r *Route) Equal(o *Route) bool {
	return r.Dst == o.Dst && r.Via == o.Via && r.Dev == o.Dev && r.Metric == o.Metric
}

// SortedNames returns the keys of a map in order.
func SortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Ownership marks. A kvmnet-made link carries an ifalias of the form
// "kvmnet:<network>[ peer=<ns>/<ifname>][ origin=<name>]"; a kvmnet-made
// namespace carries "kvmnet:<network>" on its loopback device, so ownership
// lives in the kernel and survives a lost state directory.
const MarkPrefix = "kvmnet:"

// Mark renders the ownership alias of l for network id.
func Mark(id string, l *Link) string {
	s := MarkPrefix + id
	if l != nil && l.Kind == KindVeth {
		s += " peer=" + l.Peer.String()
	}
	if l != nil && l.Origin != "" {
		s += " origin=" + l.Origin
	}
	return s
}

// The aspects of a namespace whose applied state is recorded, as a hash, in
// the namespace's mark, so that observation can trust them instead of
// reading them back (see SysctlHash for why that matters).
const (
	AspectSysctl = "sysctl" // the sysctls kvmnet wrote
	AspectNFT    = "nft"    // kvmnet's nftables tables
	AspectQoS    = "qos"    // kvmnet's qdiscs
	AspectMirror = "mirror" // kvmnet's port mirrors (clsact filters)
)

// Aspects lists them in mark order.
var Aspects = []string{AspectSysctl, AspectNFT, AspectQoS, AspectMirror}

// Marks maps an aspect to the hash of what was applied ("" or absent: nothing).
type Marks map[string]string

// NSMark renders the ownership mark of a namespace (the alias of its lo)
// with the given aspect hashes.
func NSMark(id string, marks Marks) string {
	s := MarkPrefix + id
	for _, a := range Aspects {
		if v := marks[a]; v != "" {
			s += " " + a + "=" + v
		}
	}
	return s
}

// MarkInfo is what an ownership mark says.
type MarkInfo struct {
	ID     string  // the owning network
	Peer   PeerRef // veth: the other end
	Origin string  // moved NIC: its root-namespace name
	Marks  Marks   // namespace: aspect hashes
}

// ParseMark reads an alias; ok is false when it is not a kvmnet mark.
func ParseMark(alias string) (m MarkInfo, ok bool) {
	if !strings.HasPrefix(alias, MarkPrefix) {
		return m, false
	}
	fields := strings.Fields(strings.TrimPrefix(alias, MarkPrefix))
	if len(fields) == 0 {
		return m, false
	}
	m.ID = fields[0]
	m.Marks = Marks{}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "peer":
			if ns, name, found := strings.Cut(v, "/"); found {
				m.Peer = PeerRef{NS: ns, Name: name}
			}
		case "origin":
			m.Origin = v
		default:
			if slices.Contains(Aspects, k) {
				m.Marks[k] = v
			}
		}
	}
	return m, true
}

// SysctlHash is a short stable digest of a sysctl map. A namespace's mark
// carries the hash of the sysctls kvmnet applied there, so that `up` need not
// read them back: reading /proc/sys in each of 1000 namespaces costs the
// kernel time quadratic in the number of namespaces (their sysctl dentries
// share hash chains). `status` and `up --deep` read them anyway.
func SysctlHash(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	h := sha256.New()
	for _, k := range SortedNames(m) {
		fmt.Fprintf(h, "%s=%s\n", k, m[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// Masquerade is one source-NAT rule: traffic from Source leaving through
// OutIface gets the address of OutIface.
type Masquerade struct {
	OutIface string       `json:"out_iface"`
	Source   netip.Prefix `json:"source"`
}

func (m Masquerade) String() string { return fmt.Sprintf("oif=%s saddr=%s", m.OutIface, m.Source) }

// ParseMasquerade parses the String form.
func ParseMasquerade(s string) (Masquerade, error) {
	var m Masquerade
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "oif":
			m.OutIface = v
		case "saddr":
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return m, err
			}
			m.Source = p
		}
	}
	if m.OutIface == "" || !m.Source.IsValid() {
		return m, fmt.Errorf("bad masquerade %q", s)
	}
	return m, nil
}

// CompareMasquerade orders masquerade rules canonically.
func CompareMasquerade(a, b Masquerade) int {
	return strings.Compare(a.String(), b.String())
}
