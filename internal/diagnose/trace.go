package diagnose

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/topology"
)

// Hop is one element of a traced path.
type Hop struct {
	// Where is namespace/interface (or a namespace).
	Where string `json:"where"`
	// What the hop does: "route", "veth", "bridge port", "bridge", "deliver".
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// TraceReport is the path from one node to another and where it stops.
type TraceReport struct {
	Network string     `json:"network"`
	From    string     `json:"from"`
	To      string     `json:"to"`
	Dst     netip.Addr `json:"dst"`
	Hops    []Hop      `json:"hops"`
	// OK is true when every hop passes and the probe is answered.
	OK bool `json:"ok"`
	// StoppedAt names the first hop where traffic stops ("" when OK).
	StoppedAt string `json:"stopped_at,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Probe is the ICMP echo from From to Dst.
	Probe PingResult `json:"probe"`
}

// Trace walks the path from node from to node to (or to an IP address):
// at each namespace the route the kernel would take, then the L2 path to
// the next hop through veths, bridge ports and bridges, checking each
// element (state, carrier, STP, MTU, FDB, br_netfilter, forwarding); then it
// pings the destination to confirm. It names the first hop that stops the
// traffic.
func Trace(ctx context.Context, t *topology.Topology, from, to string) (*TraceReport, error) {
	if t.Namespace(from) == nil {
		return nil, fmt.Errorf("node %q is not a namespace of network %s", from, t.ID())
	}
	d := &diag{t: t, desired: model.Desired(t), rep: &Report{}}
	names := model.SortedNames(d.desired.Namespaces)
	nss, err := inspect.Network(names, inspect.All)
	if err != nil {
		return nil, err
	}
	d.index(nss)
	tr := &TraceReport{Network: t.ID(), From: from, To: to, Hops: []Hop{}}
	if ip, err := netip.ParseAddr(to); err == nil {
		tr.Dst = ip
	} else if t.Namespace(to) == nil {
		return nil, fmt.Errorf("%q is neither a namespace of network %s nor an IP address", to, t.ID())
	} else if tr.Dst = d.addressOf(t.NSName(to)); !tr.Dst.IsValid() {
		return nil, fmt.Errorf("node %q has no address to trace to", to)
	}
	d.walk(tr)
	probe, err := Ping(t.NSName(from), tr.Dst, 56, false, 3, 250*time.Millisecond, time.Second)
	if err != nil {
		probe.Error = err.Error()
	}
	tr.Probe = probe
	if tr.StoppedAt == "" && !probe.OK {
		tr.StoppedAt = tr.Dst.String()
		tr.Reason = fmt.Sprintf("every hop looks right, but %s does not answer pings from %s (%s)", tr.Dst, from, orNoReply(probe.Error))
	}
	tr.OK = tr.StoppedAt == "" && probe.OK
	return tr, nil
}

// addressOf is the first address of a namespace's interfaces (IPv4 first).
func (d *diag) addressOf(ns string) netip.Addr {
	n := d.nss[ns]
	if n == nil {
		return netip.Addr{}
	}
	var v6 netip.Addr
	for _, i := range n.Interfaces {
		for _, a := range i.Addresses {
			if a.Addr().IsLoopback() {
				continue
			}
			if a.Addr().Is4() {
				return a.Addr()
			}
			if !v6.IsValid() {
				v6 = a.Addr()
			}
		}
	}
	return v6
}

func (tr *TraceReport) hop(where, what string, ok bool, detail string) bool {
	tr.Hops = append(tr.Hops, Hop{Where: where, What: what, OK: ok, Detail: detail})
	if !ok && tr.StoppedAt == "" {
		tr.StoppedAt, tr.Reason = where, detail
	}
	return ok
}

// lookup is the kernel's longest-prefix match over the main table.
func lookup(ns *inspect.Namespace, dst netip.Addr) *inspect.Route {
	var best *inspect.Route
	for i := range ns.Routes {
		r := &ns.Routes[i]
		if r.Dst.Addr().Is4() != dst.Is4() || !r.Dst.Contains(dst) {
			continue
		}
		if best == nil || r.Dst.Bits() > best.Dst.Bits() || r.Dst.Bits() == best.Dst.Bits() && r.Metric < best.Metric {
			best = r
		}
	}
	return best
}

func (d *diag) walk(tr *TraceReport) {
	cur := d.t.NSName(tr.From)
	seen := map[string]bool{}
	for step := 0; step < 16; step++ {
		ns := d.nss[cur]
		if ns == nil {
			tr.hop(cur, "namespace", false, "the namespace does not exist")
			return
		}
		if seen[cur] {
			tr.hop(cur, "route", false, "routing loop: the path comes back to "+cur)
			return
		}
		seen[cur] = true
		for _, i := range ns.Interfaces {
			for _, a := range i.Addresses {
				if a.Addr() == tr.Dst {
					ok, detail := true, fmt.Sprintf("%s holds %s", i.Name, tr.Dst)
					for _, t := range ns.Firewall {
						for _, c := range t.Chains {
							if c.Hook == "input" && c.Policy == "drop" && (t.Family == "inet" || t.Family == "ip" && tr.Dst.Is4() || t.Family == "ip6" && tr.Dst.Is6()) {
								detail += fmt.Sprintf("; table %s %s chain %s has policy drop on input (the reply depends on its rules)", t.Family, t.Name, c.Name)
							}
						}
					}
					tr.hop(cur+"/"+i.Name, "deliver", ok, detail)
					return
				}
			}
		}
		if step > 0 {
			if tr.Dst.Is4() && ns.Sysctl(inspect.SysctlIPv4Forward) == "0" {
				tr.hop(cur, "forward", false, "net.ipv4.ip_forward = 0: this namespace does not route")
				return
			}
			if drops := ns.Netstat["TcpExt.IPReversePathFilter"]; drops > 0 {
				tr.hop(cur, "rp_filter", true, fmt.Sprintf("warning: the reverse-path filter has dropped %d packets here", drops))
			}
		}
		r := lookup(ns, tr.Dst)
		if r == nil {
			tr.hop(cur, "route", false, fmt.Sprintf("no route to %s", tr.Dst))
			return
		}
		if r.Type != "" && r.Type != "unicast" {
			tr.hop(cur, "route", false, fmt.Sprintf("route %s discards the traffic", r))
			return
		}
		tr.hop(cur, "route", true, r.String())
		egress := d.ifaces[cur+"/"+r.Dev]
		if egress == nil {
			tr.hop(cur+"/"+r.Dev, "interface", false, "the route's interface does not exist")
			return
		}
		next := r.Via
		if !next.IsValid() {
			next = tr.Dst
		}
		holder := (*node)(nil)
		for _, h := range d.holders(next) {
			if h.seg == egress.seg {
				holder = h
			}
		}
		if holder == nil {
			tr.hop(egress.key(), "next hop", false, fmt.Sprintf("no interface on %s's L2 segment holds %s", egress.i.Name, next))
			return
		}
		if !d.l2(tr, egress, holder) {
			return
		}
		cur = holder.ns.Name
	}
}

// l2 walks from interface a to interface b on one segment, checking every
// element; it returns false at the first that stops frames.
func (d *diag) l2(tr *TraceReport, a, b *node) bool {
	prev := map[*node]*node{a: nil}
	queue := []*node{a}
	for len(queue) > 0 && prev[b] == nil && a != b {
		c := queue[0]
		queue = queue[1:]
		for _, x := range append([]*node{c.peer, c.master}, c.ports...) {
			if x == nil {
				continue
			}
			if _, ok := prev[x]; !ok {
				prev[x] = c
				queue = append(queue, x)
			}
		}
	}
	var path []*node
	for x := b; x != nil; x = prev[x] {
		path = append([]*node{x}, path...)
	}
	mtu := a.i.MTU
	for i, n := range path {
		what := "interface"
		switch {
		case n.i.Kind == "bridge":
			what = "bridge"
		case n.isPort():
			what = "bridge port"
		case n.i.Kind == "veth":
			what = "veth"
		}
		var problems []string
		if !n.i.AdminUp {
			problems = append(problems, "administratively down")
		} else if !n.i.Carrier && n.i.Kind != "bridge" {
			why := "no carrier (operstate " + n.i.OperState + ")"
			if n.peer != nil && !n.peer.i.AdminUp {
				why = "no carrier: its peer " + n.peer.key() + " is administratively down"
			}
			problems = append(problems, why)
		}
		if n.i.Kind != "bridge" && n.i.MTU < mtu {
			problems = append(problems, fmt.Sprintf("MTU %d below the sender's %d: larger frames are dropped here", n.i.MTU, mtu))
		}
		if n.isPort() {
			b := n.master.ns.Bridge(n.master.i.Name)
			if b != nil {
				if st := b.PortState(n.i.Name); st != "" && st != "forwarding" {
					problems = append(problems, "STP port state "+st)
				}
			}
		}
		if what == "bridge" {
			for _, f := range brNetfilterCheck(d, n.ns) {
				problems = append(problems, f.Summary+": "+strings.Join(f.Evidence, "; "))
			}
			// Where does the bridge send frames for the next hop's MAC?
			if b := n.ns.Bridge(n.i.Name); b != nil && i+1 < len(path) {
				out := path[i+1]
				for _, e := range b.FDB {
					if e.MAC == path[len(path)-1].i.MAC && e.Master && e.Learned && e.Port != out.i.Name {
						problems = append(problems, fmt.Sprintf("the FDB sends %s to port %s, not %s", e.MAC, e.Port, out.i.Name))
					}
				}
			}
		}
		detail := fmt.Sprintf("%s, mtu %d", map[bool]string{true: "up", false: "down"}[n.i.AdminUp && (n.i.Carrier || n.i.Kind == "bridge")], n.i.MTU)
		if len(problems) > 0 {
			detail = strings.Join(problems, "; ")
		}
		if !tr.hop(n.key(), what, len(problems) == 0, detail) {
			return false
		}
	}
	return true
}
