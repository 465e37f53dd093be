// Package inspect reads what the kernel has in a network's namespaces beyond
// what kvmnet manages: per-interface state and counters, bridge ports with
// their STP state, the forwarding database (FDB), neighbour (ARP/NDP) tables,
// every route of the main table, nftables rules with their counters, and the
// sysctls and protocol counters diagnosis needs (forwarding, rp_filter,
// br_netfilter, reverse-path drops).
//
// It is read-only. Sockets are opened inside one netns.Do per namespace and
// the netlink dumps then run from the calling thread; this package never
// switches a thread itself.
package inspect

import (
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// What selects the parts of a namespace to read. Links (with counters) are
// always read.
type What uint

// The parts of a namespace.
const (
	Addresses What = 1 << iota
	FDB
	Neighbours
	Routes
	Firewall
	Kernel  // sysctls and protocol counters (/proc/net/netstat)
	Ports   // bridge ports' STP state
	Mirrors // kvmnet's port mirrors and what they copied

	// All reads everything.
	All = Addresses | FDB | Neighbours | Routes | Firewall | Kernel | Ports | Mirrors
	// Counters reads links and their counters only (top, metrics rates).
	Counters What = 0
)

// Namespace is what the kernel has in one namespace.
type Namespace struct {
	Name string `json:"name"`
	// Owner is the network ID in the namespace's mark ("" when not kvmnet's).
	Owner      string       `json:"owner"`
	Interfaces []*Interface `json:"interfaces"`
	Bridges    []*Bridge    `json:"bridges,omitempty"`
	Neighbours []Neighbour  `json:"neighbours,omitempty"`
	Routes     []Route      `json:"routes,omitempty"`
	Firewall   []Table      `json:"firewall,omitempty"`
	// Mirrors are kvmnet's port mirrors here (tc mirred copies).
	Mirrors []Mirror `json:"mirrors,omitempty"`
	// Legacy is the legacy (x_tables) iptables filter table, when one
	// exists in the namespace.
	Legacy []LegacyChain `json:"iptables_legacy,omitempty"`
	// Sysctls holds the keys diagnosis reads (forwarding, rp_filter,
	// br_netfilter); a key the kernel lacks is absent.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Netstat holds the namespace's protocol counters (/proc/net/netstat and
	// /proc/net/snmp), keyed "TcpExt.IPReversePathFilter", "Ip.ForwDatagrams".
	Netstat map[string]uint64 `json:"-"`
	// ReadAt is when the counters were read.
	ReadAt time.Time `json:"read_at"`
}

// Interface is one network interface.
type Interface struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Kind is the link kind the kernel reports (veth, bridge, ...; "" for a
	// real device).
	Kind  string `json:"kind"`
	Alias string `json:"alias,omitempty"`
	// Owner is the network ID in the interface's kvmnet mark ("" when
	// kvmnet did not make it); Peer is the veth's other end the mark names
	// (namespace/interface).
	Owner string `json:"owner,omitempty"`
	Peer  string `json:"peer,omitempty"`
	// AdminUp is IFF_UP; OperState the RFC 2863 state; Carrier IFF_LOWER_UP.
	AdminUp   bool   `json:"admin_up"`
	OperState string `json:"oper_state"`
	Carrier   bool   `json:"carrier"`
	MTU       int    `json:"mtu"`
	MAC       string `json:"mac"`
	// Master is the bridge this interface is a port of.
	Master string `json:"master,omitempty"`
	// PeerIndex is a veth's peer ifindex; PeerNetNSID the peer's namespace
	// id as seen from here (-1 when the peer is in this namespace).
	PeerIndex   int            `json:"peer_index,omitempty"`
	PeerNetNSID int            `json:"peer_netnsid,omitempty"`
	Addresses   []netip.Prefix `json:"addresses"`
	Stats       Stats          `json:"stats"`
	// Rates is set when the counters were sampled twice (per second).
	Rates *Rates `json:"rates,omitempty"`
}

// Stats are an interface's counters (struct rtnl_link_stats64).
type Stats struct {
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
	// Multicast counts received multicast and broadcast packets.
	Multicast uint64 `json:"rx_multicast"`
}

// Rates are counter deltas per second between two readings.
type Rates struct {
	RxBytes   float64 `json:"rx_bytes_per_s"`
	TxBytes   float64 `json:"tx_bytes_per_s"`
	RxPackets float64 `json:"rx_packets_per_s"`
	TxPackets float64 `json:"tx_packets_per_s"`
	RxDropped float64 `json:"rx_dropped_per_s"`
	TxDropped float64 `json:"tx_dropped_per_s"`
	RxErrors  float64 `json:"rx_errors_per_s"`
	TxErrors  float64 `json:"tx_errors_per_s"`
	Multicast float64 `json:"rx_multicast_per_s"`
}

// Bridge is a bridge device with its ports and forwarding database.
type Bridge struct {
	Name  string     `json:"name"`
	STP   bool       `json:"stp"`
	Ports []Port     `json:"ports"`
	FDB   []FDBEntry `json:"fdb"`
}

// Port is a bridge port and its STP state.
type Port struct {
	Name string `json:"name"`
	// State is disabled, listening, learning, forwarding or blocking.
	State string `json:"state"`
	Cost  uint32 `json:"cost,omitempty"`
}

// FDBEntry is one entry of a bridge's forwarding database (what `bridge fdb
// show` prints).
type FDBEntry struct {
	MAC string `json:"mac"`
	// Port is the device the entry points at (the bridge itself for the
	// bridge's own addresses).
	Port string `json:"port"`
	VLAN int    `json:"vlan,omitempty"`
	// Master is true for entries of the bridge's table ("master br0"); the
	// others are the port devices' own address lists ("self").
	Master bool `json:"master"`
	// Local entries are the bridge's and its ports' own MACs (permanent);
	// Static ones were added by hand; the rest were learned.
	Local   bool `json:"local"`
	Static  bool `json:"static"`
	Learned bool `json:"learned"`
	// AgeSeconds is the time since the entry was last refreshed by traffic.
	AgeSeconds float64 `json:"age_s"`
}

// Kind names the entry's origin: local, static or learned.
func (e FDBEntry) Kind() string {
	switch {
	case e.Local:
		return "local"
	case e.Static:
		return "static"
	}
	return "learned"
}

// Neighbour is an ARP or NDP entry.
type Neighbour struct {
	IP        netip.Addr `json:"ip"`
	MAC       string     `json:"mac,omitempty"`
	Interface string     `json:"interface"`
	// State is the NUD state (reachable, stale, delay, probe, failed,
	// incomplete, permanent, noarp, ...).
	State  string `json:"state"`
	Router bool   `json:"router,omitempty"`
}

// Route is a route of the main table.
type Route struct {
	Dst      netip.Prefix `json:"dst"`
	Via      netip.Addr   `json:"via,omitzero"`
	Dev      string       `json:"dev,omitempty"`
	Src      netip.Addr   `json:"src,omitzero"`
	Metric   int          `json:"metric"`
	Protocol int          `json:"protocol"`
	Scope    string       `json:"scope,omitempty"`
	Type     string       `json:"type,omitempty"`
	// Kvmnet marks routes kvmnet installed (proto 211).
	Kvmnet bool `json:"kvmnet"`
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Dst.Bits() == 0 {
		s = "default"
	}
	if r.Type != "" && r.Type != "unicast" {
		s = r.Type + " " + s
	}
	if r.Via.IsValid() {
		s += " via " + r.Via.String()
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	s += " proto " + protoName(r.Protocol)
	if r.Scope != "" && r.Scope != "global" {
		s += " scope " + r.Scope
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

func protoName(p int) string {
	switch p {
	case 2:
		return "kernel"
	case 3:
		return "boot"
	case 4:
		return "static"
	case 211:
		return "kvmnet"
	}
	return fmt.Sprint(p)
}

// Table is an nftables table with its chains.
type Table struct {
	Family string  `json:"family"`
	Name   string  `json:"name"`
	Kvmnet bool    `json:"kvmnet"`
	Chains []Chain `json:"chains"`
}

// Chain is an nftables chain; base chains have a hook and a policy.
type Chain struct {
	Name     string `json:"name"`
	Type     string `json:"type,omitempty"`
	Hook     string `json:"hook,omitempty"`
	Priority int    `json:"priority,omitempty"`
	Policy   string `json:"policy,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is one nftables rule: its final verdict, comment and counter.
type Rule struct {
	Handle  uint64 `json:"handle"`
	Comment string `json:"comment,omitempty"`
	// Verdict is the rule's terminal action: accept, drop, reject,
	// masquerade, jump NAME, ... ("" when it only counts or marks).
	Verdict string `json:"verdict,omitempty"`
	// Counter is false when the rule has no counter expression.
	Counter bool   `json:"counter"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Interface returns the interface called name, or nil.
func (n *Namespace) Interface(name string) *Interface {
	for _, i := range n.Interfaces {
		if i.Name == name {
			return i
		}
	}
	return nil
}

// Bridge returns the bridge called name, or nil.
func (n *Namespace) Bridge(name string) *Bridge {
	for _, b := range n.Bridges {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// Sysctl returns the value of key, or "" when it was not read.
func (n *Namespace) Sysctl(key string) string { return n.Sysctls[key] }

// PortState returns the STP state of port on bridge br ("" if unknown).
func (b *Bridge) PortState(port string) string {
	for _, p := range b.Ports {
		if p.Name == port {
			return p.State
		}
	}
	return ""
}

// SetRates fills the Rates of every interface of now from the counters of
// the same interface (same name and ifindex) in before.
func SetRates(before, now []*Namespace) {
	old := map[string]*Interface{}
	at := map[string]time.Time{}
	for _, ns := range before {
		for _, i := range ns.Interfaces {
			old[ns.Name+"/"+i.Name] = i
		}
		at[ns.Name] = ns.ReadAt
	}
	for _, ns := range now {
		dt := ns.ReadAt.Sub(at[ns.Name]).Seconds()
		if dt <= 0 {
			continue
		}
		for _, i := range ns.Interfaces {
			o := old[ns.Name+"/"+i.Name]
			if o == nil || o.Index != i.Index {
				continue
			}
			d := func(a, b uint64) float64 {
				if a < b {
					return 0
				}
				return float64(a-b) / dt
			}
			i.Rates = &Rates{
				RxBytes: d(i.Stats.RxBytes, o.Stats.RxBytes), TxBytes: d(i.Stats.TxBytes, o.Stats.TxBytes),
				RxPackets: d(i.Stats.RxPackets, o.Stats.RxPackets), TxPackets: d(i.Stats.TxPackets, o.Stats.TxPackets),
				RxDropped: d(i.Stats.RxDropped, o.Stats.RxDropped), TxDropped: d(i.Stats.TxDropped, o.Stats.TxDropped),
				RxErrors: d(i.Stats.RxErrors, o.Stats.RxErrors), TxErrors: d(i.Stats.TxErrors, o.Stats.TxErrors),
				Multicast: d(i.Stats.Multicast, o.Stats.Multicast),
			}
		}
	}
}

func sortNamespace(n *Namespace) {
	sort.Slice(n.Interfaces, func(a, b int) bool { return n.Interfaces[a].Name < n.Interfaces[b].Name })
	sort.Slice(n.Bridges, func(a, b int) bool { return n.Bridges[a].Name < n.Bridges[b].Name })
	for _, b := range n.Bridges {
		sort.Slice(b.Ports, func(x, y int) bool { return b.Ports[x].Name < b.Ports[y].Name })
		sort.Slice(b.FDB, func(x, y int) bool {
			if b.FDB[x].Port != b.FDB[y].Port {
				return b.FDB[x].Port < b.FDB[y].Port
			}
			if b.FDB[x].MAC != b.FDB[y].MAC {
				return b.FDB[x].MAC < b.FDB[y].MAC
			}
			return b.FDB[x].VLAN < b.FDB[y].VLAN
		})
	}
	sort.Slice(n.Neighbours, func(a, b int) bool {
		if n.Neighbours[a].Interface != n.Neighbours[b].Interface {
			return n.Neighbours[a].Interface < n.Neighbours[b].Interface
		}
		return n.Neighbours[a].IP.Less(n.Neighbours[b].IP)
	})
}

// Mirror is one mirrored direction of a port: what crosses Port that way is
// copied out of To.
type Mirror struct {
	Port      string `json:"port"`
	Direction string `json:"direction"` // ingress or egress
	// To is the destination ("" when it no longer exists); ToUp says
	// whether it is up with carrier, so the copies leave.
	To      string `json:"to"`
	ToUp    bool   `json:"to_up"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}
