package topology

import (
	"fmt"

	"github.com/goccy/go-yaml/ast"
)

// Firewall is a namespace's packet filter: a default policy per hook and
// ordered rules. It becomes kvmnet's own nftables table in the namespace.
type Firewall struct {
	// Default policies: "accept" (default) or "drop".
	Input   string         `yaml:"input,omitempty" json:"input,omitempty"`
	Forward string         `yaml:"forward,omitempty" json:"forward,omitempty"`
	Output  string         `yaml:"output,omitempty" json:"output,omitempty"`
	Rules   []FirewallRule `yaml:"rules,omitempty" json:"rules,omitempty"`
}

// FirewallRule matches packets on every field given and applies Action.
// Every rule counts the packets and bytes it matched.
type FirewallRule struct {
	// Hook is input (default), forward or output.
	Hook string `yaml:"hook,omitempty" json:"hook,omitempty"`
	// Action is accept, drop or reject.
	Action string `yaml:"action" json:"action"`
	// Proto is tcp, udp, icmp or icmpv6.
	Proto    string `yaml:"proto,omitempty" json:"proto,omitempty"`
	SAddr    List   `yaml:"saddr,omitempty" json:"saddr,omitempty"`
	DAddr    List   `yaml:"daddr,omitempty" json:"daddr,omitempty"`
	SAddrSet string `yaml:"saddr_set,omitempty" json:"saddr_set,omitempty"`
	DAddrSet string `yaml:"daddr_set,omitempty" json:"daddr_set,omitempty"`
	// SPort and DPort are ports or ranges ("8000-8080"); they need tcp or udp.
	SPort    List   `yaml:"sport,omitempty" json:"sport,omitempty"`
	DPort    List   `yaml:"dport,omitempty" json:"dport,omitempty"`
	DPortSet string `yaml:"dport_set,omitempty" json:"dport_set,omitempty"`
	// CTState is a list of new, established, related, invalid.
	CTState List   `yaml:"ct_state,omitempty" json:"ct_state,omitempty"`
	IIf     string `yaml:"iif,omitempty" json:"iif,omitempty"`
	OIf     string `yaml:"oif,omitempty" json:"oif,omitempty"`
	// ICMPType is a list of ICMP (or ICMPv6) type names, e.g. echo-request.
	ICMPType List `yaml:"icmp_type,omitempty" json:"icmp_type,omitempty"`
	// Log logs matching packets with this prefix.
	Log string `yaml:"log,omitempty" json:"log,omitempty"`
}

// Set is a named set of addresses or ports that rules refer to.
type Set struct {
	Name string `yaml:"name" json:"name"`
	// Type is ipv4_addr, ipv6_addr or inet_service (ports).
	Type     string `yaml:"type" json:"type"`
	Elements List   `yaml:"elements" json:"elements"`
}

// SecurityGroup is a cloud-style named set of rules attached to NICs:
// attached to an interface, it allows only the listed inbound traffic (plus
// replies), and, when it lists egress rules, only the listed outbound.
type SecurityGroup struct {
	Name    string   `yaml:"name" json:"name"`
	Ingress []SGRule `yaml:"ingress,omitempty" json:"ingress,omitempty"`
	Egress  []SGRule `yaml:"egress,omitempty" json:"egress,omitempty"`
}

// SGRule is "tcp 80 from 0.0.0.0/0": a protocol, ports and peers.
type SGRule struct {
	// Proto is tcp, udp, icmp, icmpv6 or all.
	Proto string `yaml:"proto" json:"proto"`
	Port  List   `yaml:"port,omitempty" json:"port,omitempty"`
	// From (ingress) or To (egress): prefixes; absent means anywhere.
	From List `yaml:"from,omitempty" json:"from,omitempty"`
	To   List `yaml:"to,omitempty" json:"to,omitempty"`
}

// Guard limits what a NIC may send into its bridge (libvirt's
// clean-traffic), enforced at the bridge port the NIC is linked to.
type Guard struct {
	// AntiSpoof drops frames whose source MAC or IP is not the NIC's own,
	// and ARP for addresses it does not hold.
	AntiSpoof bool `yaml:"anti_spoof,omitempty" json:"anti_spoof,omitempty"`
	// BroadcastLimit caps broadcast and multicast frames, per second.
	BroadcastLimit int `yaml:"broadcast_limit,omitempty" json:"broadcast_limit,omitempty"`
}

// QoS shapes a NIC's traffic.
type QoS struct {
	// Egress limits what the NIC sends.
	Egress *Rate `yaml:"egress,omitempty" json:"egress,omitempty"`
	// Ingress limits what the NIC receives (as the egress of the link's
	// other end).
	Ingress *Rate `yaml:"ingress,omitempty" json:"ingress,omitempty"`
	// Netem impairs what the NIC sends (needs CONFIG_NET_SCH_NETEM).
	Netem *Netem `yaml:"netem,omitempty" json:"netem,omitempty"`
}

// Rate is a bandwidth limit: "10mbit", "1gbit", "500kbit", "100000bit".
type Rate struct {
	Rate string `yaml:"rate" json:"rate"`
	// Ceil lets the class borrow up to this rate (default: Rate).
	Ceil string `yaml:"ceil,omitempty" json:"ceil,omitempty"`
	// Burst in bytes ("32kb", "1mb", "15000"); default: enough for 1 ms at Ceil.
	Burst string `yaml:"burst,omitempty" json:"burst,omitempty"`
}

// Netem is a set of impairments: durations like "50ms", percentages like
// "1%" or 1.
type Netem struct {
	Delay     string `yaml:"delay,omitempty" json:"delay,omitempty"`
	Jitter    string `yaml:"jitter,omitempty" json:"jitter,omitempty"`
	Loss      Scalar `yaml:"loss,omitempty" json:"loss,omitempty"`
	Duplicate Scalar `yaml:"duplicate,omitempty" json:"duplicate,omitempty"`
	Reorder   Scalar `yaml:"reorder,omitempty" json:"reorder,omitempty"`
	Corrupt   Scalar `yaml:"corrupt,omitempty" json:"corrupt,omitempty"`
}

// Expectation is a reachability the network must have (or must not have),
// checked by `kvmnet verify` with real probes.
type Expectation struct {
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// From is the namespace the probe runs in.
	From string `yaml:"from" json:"from"`
	// To is a namespace (its first address) or an address.
	To string `yaml:"to" json:"to"`
	// Proto is icmp (default), tcp, udp or arp.
	Proto string `yaml:"proto,omitempty" json:"proto,omitempty"`
	Port  int    `yaml:"port,omitempty" json:"port,omitempty"`
	// Expect is reachable (default) or blocked.
	Expect string `yaml:"expect,omitempty" json:"expect,omitempty"`
}

// Scalar is a YAML scalar of any kind (number or string) kept as text, so
// that `loss: 1` and `loss: "1%"` both read.
type Scalar string

// UnmarshalYAML accepts any scalar.
func (s *Scalar) UnmarshalYAML(n ast.Node) error {
	v, ok := scalarText(n)
	if !ok {
		return fmt.Errorf("want a single value, found %s", n.Type())
	}
	*s = Scalar(v)
	return nil
}

// List is one scalar or a list of scalars, kept as text: `port: 80`,
// `port: [80, "8000-8080"]`.
type List []string

// UnmarshalYAML accepts a scalar or a sequence of scalars.
func (l *List) UnmarshalYAML(n ast.Node) error {
	if v, ok := scalarText(n); ok {
		*l = List{v}
		return nil
	}
	seq, ok := n.(*ast.SequenceNode)
	if !ok {
		return fmt.Errorf("want a value or a list of values, found %s", n.Type())
	}
	out := make(List, 0, len(seq.Values))
	for _, item := range seq.Values {
		v, ok := scalarText(item)
		if !ok {
			return fmt.Errorf("want a list of values, found a %s in it", item.Type())
		}
		out = append(out, v)
	}
	*l = out
	return nil
}

func scalarText(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode:
		return n.GetToken().Value, true
	case *ast.NullNode:
		return "", true
	}
	return "", false
}
