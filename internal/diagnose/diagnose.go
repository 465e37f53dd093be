// Package diagnose automates the reference design's troubleshooting flow on
// a kvmnet network: (1) ping the gateway from every VM and endpoint, (2) the
// bridges' MAC tables, (3) routes, (4) firewall rules, (5) loops and
// broadcast storms; and it names the common faults behind a failure, each
// with its location, the evidence and a concrete fix: a link down, missing
// or without carrier, a missing address, duplicate MACs and IPs, MTU
// mismatches along a path, VLAN mismatches between a bridge port and what
// the endpoint behind it sends or needs, a VM without its DHCP lease,
// forwarding switched off, reverse-path filter drops, and host interference
// (br_netfilter sending bridged frames through an iptables FORWARD chain
// that drops them).
//
// It reads the kernel through internal/inspect (VLANs through the reader
// status uses, link.Conn.Observe), takes the VMs and DHCP leases from its
// caller (Options.VMs), and probes with ICMP and ARP
// from inside the namespaces; it never changes anything.
package diagnose

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/topology"
)

// Severity says how bad a finding is.
type Severity string

// Severities. Errors break traffic; warnings may; info is context.
const (
	Error   Severity = "error"
	Warning Severity = "warning"
	Info    Severity = "info"
)

// The checks a finding can come from.
const (
	CheckNamespaceMissing = "namespace-missing"
	CheckInterfaceMissing = "interface-missing"
	CheckPeerMissing      = "peer-missing"
	CheckLinkDown         = "link-down"
	CheckNoCarrier        = "no-carrier"
	CheckAddressMissing   = "address-missing"
	CheckGateway          = "gateway-unreachable"
	CheckLoss             = "packet-loss"
	CheckDNS              = "dns-not-answering"
	CheckDuplicateIP      = "duplicate-ip"
	CheckMTU              = "mtu-mismatch"
	CheckDuplicateMAC     = "duplicate-mac"
	CheckFDBPort          = "fdb-wrong-port"
	CheckPortState        = "port-not-forwarding"
	CheckNoDefaultRoute   = "no-default-route"
	CheckGatewaySubnet    = "gateway-not-connected"
	CheckRouteMissing     = "route-missing"
	CheckForwarding       = "forwarding-disabled"
	CheckRPFilter         = "rp-filter-drops"
	CheckFirewallDrop     = "firewall-drops"
	CheckHostInterference = "host-interference"
	CheckLoop             = "bridge-loop"
	CheckStorm            = "broadcast-storm"
)

// The steps of the flow, in order.
var Steps = []string{
	1: "ping the gateway",
	2: "bridge MAC tables and VLANs",
	3: "routes",
	4: "firewall",
	5: "loops and broadcast storms",
}

// Finding is one thing wrong, where it is, why we think so, and what to do.
type Finding struct {
	Severity Severity `json:"severity"`
	// Step is the step of the flow the finding belongs to (1..5).
	Step  int    `json:"step"`
	Check string `json:"check"`
	// Namespace is the kernel name; Node the topology's name for it.
	Namespace string   `json:"namespace,omitempty"`
	Node      string   `json:"node,omitempty"`
	Interface string   `json:"interface,omitempty"`
	Summary   string   `json:"summary"`
	Evidence  []string `json:"evidence"`
	Fix       string   `json:"fix"`
}

// Location is namespace/interface (or the namespace alone).
func (f Finding) Location() string {
	if f.Interface == "" {
		return f.Namespace
	}
	return f.Namespace + "/" + f.Interface
}

// StepResult summarises one step of the flow.
type StepResult struct {
	Step   int    `json:"step"`
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Probe is one gateway probe of step 1.
type Probe struct {
	Node    string     `json:"node"`
	Gateway netip.Addr `json:"gateway"`
	Result  PingResult `json:"result"`
	// Large is the DF probe at the path MTU (nil when not sent).
	Large *PingResult `json:"large,omitempty"`
	// Loss is the burst of echo requests sent once the gateway answered
	// (nil when not sent); Qdiscs, read when some went unanswered, are
	// the qdiscs on the path that drop or impair.
	Loss   *LossResult `json:"loss,omitempty"`
	Qdiscs []QdiscDrop `json:"qdiscs,omitempty"`
	// DNS is the question to the network\'s name server (nil: none).
	DNS *DNSProbe `json:"dns,omitempty"`
}

// QdiscDrop is a qdisc on a probe's path that drops packets, or a netem
// qdisc that loses them on purpose.
type QdiscDrop struct {
	Namespace string  `json:"namespace"`
	Interface string  `json:"interface"`
	Kind      string  `json:"kind"`
	Handle    string  `json:"handle"`
	Root      bool    `json:"root"`
	LossPct   float64 `json:"loss_pct,omitempty"`
	Drops     uint64  `json:"drops"`
}

// Report is the result of a diagnosis.
type Report struct {
	Network  string        `json:"network"`
	Node     string        `json:"node,omitempty"`
	OK       bool          `json:"ok"`
	Steps    []StepResult  `json:"steps"`
	Probes   []Probe       `json:"probes"`
	Findings []Finding     `json:"findings"`
	Duration time.Duration `json:"duration_ns"`
}

// Problems counts the findings that are errors or warnings.
func (r *Report) Problems() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity != Info {
			n++
		}
	}
	return n
}

// Options tune a run.
type Options struct {
	// Node restricts probes and findings to one namespace (topology name)
	// and what its traffic crosses.
	Node string
	// NoProbes skips the active probes (ping, DF, ARP): only the kernel
	// state is read.
	NoProbes bool
	// Parallel bounds concurrent probes (default 64).
	Parallel int
	// PingTimeout bounds each gateway probe (default 2s: an ARP request
	// lost while a new port's carrier settles is retried after 1s).
	PingTimeout time.Duration
	// LossProbes is how many echo requests measure the loss to each
	// gateway (default 20, 2 ms apart); LossPercent the share unanswered
	// from which diagnose reports it (default 5, one in 20).
	LossProbes  int
	LossPercent float64
	// StormPPS is the received broadcast/multicast rate on a bridge port
	// above which diagnose reports a storm (default 1000 packets/s).
	StormPPS float64
	// VMs is the state of the network's VMs and DHCP servers, as
	// lab.VMStatus reports it (kvmnet diagnose fills it in); nil skips the
	// DHCP lease check.
	VMs *VMs
}

// Run diagnoses network t.
func Run(ctx context.Context, t *topology.Topology, o Options) (*Report, error) {
	start := time.Now()
	if o.Parallel <= 0 {
		o.Parallel = 64
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 2 * time.Second
	}
	if o.LossProbes <= 0 {
		o.LossProbes = 20
	}
	if o.LossPercent <= 0 {
		o.LossPercent = 5
	}
	if o.StormPPS <= 0 {
		o.StormPPS = 1000
	}
	if o.Node != "" && t.Namespace(o.Node) == nil {
		return nil, fmt.Errorf("node %q is not a namespace of network %s", o.Node, t.ID())
	}
	d := &diag{t: t, o: o, desired: model.Desired(t), rep: &Report{Network: t.ID(), Node: o.Node, Probes: []Probe{}, Findings: []Finding{}}}
	names := model.SortedNames(d.desired.Namespaces)
	before, err := inspect.Network(names, inspect.All)
	if err != nil {
		return nil, err
	}
	d.index(before)
	if !o.NoProbes {
		d.probe(ctx)
	}
	// Read again: the probes made the bridges learn every sender, and the
	// counters' difference gives rates (storms).
	after, err := inspect.Network(names, inspect.All)
	if err != nil {
		return nil, err
	}
	inspect.SetRates(before, after)
	d.index(after)
	if hasVLANFiltering(d.desired) {
		if d.vl, err = readVLANs(names); err != nil {
			return nil, err
		}
	}
	d.check()
	d.finish()
	d.rep.Duration = time.Since(start)
	return d.rep, nil
}

// diag is one run: the topology, what the kernel has, and the findings.
type diag struct {
	t       *topology.Topology
	o       Options
	desired *model.State
	rep     *Report

	nss    map[string]*inspect.Namespace // by kernel name
	ifaces map[string]*node              // by "ns/if" (kernel names)
	segs   [][]*node                     // L2 segments
	// nodeOf maps kernel namespace names back to topology names.
	nodeOf map[string]string
	// byAddr indexes the interfaces by the addresses they hold; gws caches
	// each namespace's gateways.
	byAddr map[netip.Addr][]*node
	gws    map[string][]netip.Addr
	// vl is the kernel's VLAN view of each namespace (bridges'
	// vlan_filtering, ports' membership, sub-interfaces), read only when
	// the topology has a VLAN-filtering bridge.
	vl map[string]*model.Namespace

	mu       sync.Mutex
	arp      map[string][]string // "ns/if ip" -> conflicting MACs
	probeErr []string
}

// node is an interface in the network graph.
type node struct {
	ns   *inspect.Namespace
	i    *inspect.Interface
	want *model.Link // nil when the topology does not declare it
	peer *node       // veth peer
	// master is the bridge of a port; ports are a bridge's ports.
	master *node
	ports  []*node
	seg    int
}

func (n *node) key() string { return n.ns.Name + "/" + n.i.Name }

func (d *diag) index(nss []*inspect.Namespace) {
	d.nss = map[string]*inspect.Namespace{}
	d.ifaces = map[string]*node{}
	d.nodeOf = map[string]string{}
	d.byAddr = map[netip.Addr][]*node{}
	d.gws = map[string][]netip.Addr{}
	for _, ns := range d.t.Namespaces {
		d.nodeOf[d.t.NSName(ns.Name)] = ns.Name
	}
	for _, ns := range nss {
		d.nss[ns.Name] = ns
		for _, i := range ns.Interfaces {
			if i.Name == "lo" {
				continue
			}
			n := &node{ns: ns, i: i, seg: -1}
			if w := d.desired.Namespaces[ns.Name]; w != nil {
				n.want = w.Links[i.Name]
			}
			d.ifaces[n.key()] = n
		}
	}
	for _, n := range d.ifaces {
		if n.i.Master != "" {
			if m := d.ifaces[n.ns.Name+"/"+n.i.Master]; m != nil {
				n.master = m
				m.ports = append(m.ports, n)
			}
		}
		peer := n.i.Peer
		if peer == "" && n.want != nil && n.want.Kind == model.KindVeth {
			peer = n.want.Peer.String()
		}
		if peer == "" && n.i.Kind == "veth" && n.i.PeerNetNSID < 0 {
			// An unmarked veth whose peer is in the same namespace.
			for _, x := range n.ns.Interfaces {
				if x.Index == n.i.PeerIndex {
					peer = n.ns.Name + "/" + x.Name
				}
			}
		}
		if p := d.ifaces[peer]; p != nil && n.i.Kind == "veth" && p.i.Kind == "veth" {
			// Trust the mark only if the kernel agrees: the peer's peer
			// index is this interface's index.
			if p.i.PeerIndex == 0 || p.i.PeerIndex == n.i.Index {
				n.peer = p
			}
		}
	}
	for _, n := range d.ifaces {
		slices.SortFunc(n.ports, func(a, b *node) int { return strings.Compare(a.i.Name, b.i.Name) })
	}
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		for _, a := range n.i.Addresses {
			d.byAddr[a.Addr()] = append(d.byAddr[a.Addr()], n)
		}
	}
	// Segments: connected components over veth pairs and bridge membership.
	d.segs = nil
	for _, k := range model.SortedNames(d.ifaces) {
		n := d.ifaces[k]
		if n.seg >= 0 {
			continue
		}
		id := len(d.segs)
		var seg []*node
		stack := []*node{n}
		n.seg = id
		for len(stack) > 0 {
			c := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			seg = append(seg, c)
			next := append([]*node{c.peer, c.master}, c.ports...)
			for _, x := range next {
				if x != nil && x.seg < 0 {
					x.seg = id
					stack = append(stack, x)
				}
			}
		}
		sort.Slice(seg, func(a, b int) bool { return seg[a].key() < seg[b].key() })
		d.segs = append(d.segs, seg)
	}
}

// isPort reports whether n is a bridge port (it has no L3 presence).
func (n *node) isPort() bool { return n.master != nil }

// holders returns the interfaces holding ip, in the whole network.
func (d *diag) holders(ip netip.Addr) []*node { return d.byAddr[ip] }

func (d *diag) add(f Finding) {
	if f.Node == "" {
		f.Node = d.nodeOf[f.Namespace]
	}
	if f.Evidence == nil {
		f.Evidence = []string{}
	}
	d.rep.Findings = append(d.rep.Findings, f)
}

// gateways returns the gateways a namespace routes through: the default
// route's first, then the other routes' (declared, else what the kernel has).
func (d *diag) gateways(nsName string) []netip.Addr {
	if g, ok := d.gws[nsName]; ok {
		return g
	}
	g := d.findGateways(nsName)
	d.gws[nsName] = g
	return g
}

func (d *diag) findGateways(nsName string) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	addGw := func(dst netip.Prefix, via netip.Addr) {
		if !via.IsValid() || seen[via] {
			return
		}
		seen[via] = true
		if dst.Bits() == 0 {
			out = append([]netip.Addr{via}, out...)
		} else {
			out = append(out, via)
		}
	}
	if w := d.desired.Namespaces[nsName]; w != nil {
		for _, k := range model.SortedNames(w.Routes) {
			addGw(w.Routes[k].Dst, w.Routes[k].Via)
		}
	}
	if ns := d.nss[nsName]; ns != nil && len(out) == 0 {
		for _, r := range ns.Routes {
			addGw(r.Dst, r.Via)
		}
	}
	return out
}

// probeTargets lists the namespaces whose gateway step 1 pings.
func (d *diag) probeTargets() []string {
	var out []string
	for _, ns := range d.t.Namespaces {
		if ns.Role != topology.RoleVM && ns.Role != topology.RoleEndpoint {
			continue
		}
		if d.o.Node != "" && ns.Name != d.o.Node {
			continue
		}
		out = append(out, ns.Name)
	}
	return out
}

// egressMTU is the MTU of the interface in ns that holds an address in the
// subnet of gw (the interface a probe to gw leaves by), or 0.
func (d *diag) egressMTU(nsName string, gw netip.Addr) int {
	ns := d.nss[nsName]
	if ns == nil {
		return 0
	}
	for _, i := range ns.Interfaces {
		for _, a := range i.Addresses {
			if a.Masked().Contains(gw) {
				return i.MTU
			}
		}
	}
	return 0
}

func (d *diag) probe(ctx context.Context) {
	sem := make(chan struct{}, d.o.Parallel)
	var wg sync.WaitGroup
	d.arp = map[string][]string{}
	targets := d.probeTargets()
	probes := make([]Probe, len(targets))
	for i, name := range targets {
		kname := d.t.NSName(name)
		probes[i] = Probe{Node: name}
		if d.nss[kname] == nil {
			continue
		}
		gws := d.gateways(kname)
		if len(gws) == 0 {
			continue
		}
		gw := gws[0]
		probes[i].Gateway = gw
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				return
			}
			r, err := Ping(kname, gw, 56, false, 8, d.o.PingTimeout/8, d.o.PingTimeout)
			if err != nil {
				r.Error = err.Error()
			}
			probes[i].Result = r
			if !r.OK {
				return
			}
			if mtu := d.egressMTU(kname, gw); mtu > 0 {
				hdr := 28
				if gw.Is6() {
					hdr = 48
				}
				big, err := Ping(kname, gw, mtu-hdr, true, 3, d.o.PingTimeout/8, d.o.PingTimeout/2)
				if err != nil {
					big.Error = err.Error()
				}
				probes[i].Large = &big
			}
			if srv, at := d.nameServerFor(kname); srv != nil {
				probes[i].DNS = d.askDNS(kname, name, srv, at)
			}
			loss, err := PingLoss(kname, gw, d.o.LossProbes, 2*time.Millisecond, d.o.PingTimeout/2)
			if err == nil {
				probes[i].Loss = &loss
				if loss.Received < loss.Sent {
					probes[i].Qdiscs = d.pathQdiscs(kname, gw)
				}
			}
		}()
	}
	// ARP probes: is any IPv4 address of a VM or endpoint claimed by a
	// second MAC? They mostly wait for answers, so more run at once.
	arpSem := make(chan struct{}, 4*d.o.Parallel)
	for _, name := range targets {
		kname := d.t.NSName(name)
		ns := d.nss[kname]
		if ns == nil {
			continue
		}
		for _, i := range ns.Interfaces {
			if !i.AdminUp || !i.Carrier {
				continue
			}
			for _, a := range i.Addresses {
				if !a.Addr().Is4() || a.Addr().IsLoopback() {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					arpSem <- struct{}{}
					defer func() { <-arpSem }()
					macs, err := ARPProbe(kname, i.Name, a.Addr(), 200*time.Millisecond)
					d.mu.Lock()
					defer d.mu.Unlock()
					if err != nil {
						d.probeErr = append(d.probeErr, err.Error())
					}
					if len(macs) > 0 {
						d.arp[kname+"/"+i.Name+" "+a.Addr().String()] = macs
					}
				}()
			}
		}
	}
	wg.Wait()
	for _, p := range probes {
		if p.Gateway.IsValid() {
			d.rep.Probes = append(d.rep.Probes, p)
		}
	}
}

// relevant reports whether a finding concerns the node being diagnosed:
// its namespace, the elements on its L2 path to its gateways (its veths,
// their bridge ports and bridges, the gateways' ports and interfaces), the
// gateways' namespaces, bridge-wide faults of the bridges on that path, and
// duplicates that involve it.
func (d *diag) relevant(f Finding) bool {
	if d.o.Node == "" {
		return true
	}
	own := d.t.NSName(d.o.Node)
	if f.Namespace == own || f.Namespace == "" {
		return true
	}
	if f.Check == CheckDuplicateMAC || f.Check == CheckDuplicateIP {
		return strings.Contains(strings.Join(f.Evidence, " "), own+"/")
	}
	onPath := map[string]bool{}
	bridgeNS := map[string]bool{}
	mark := func(n *node) {
		for ; n != nil; n = n.master {
			onPath[n.key()] = true
			if n.master != nil {
				bridgeNS[n.ns.Name] = true
			}
		}
	}
	gwNS := map[string]bool{}
	for _, gw := range d.gateways(own) {
		for _, h := range d.holders(gw) {
			gwNS[h.ns.Name] = true
			mark(h)
			mark(h.peer)
			// A gateway on a VLAN sub-interface: its frames leave by the parent.
			if l := d.vlanLink(h); l != nil && l.Kind == model.KindVLAN {
				if p := d.ifaces[h.ns.Name+"/"+l.Parent]; p != nil {
					mark(p)
					mark(p.peer)
				}
			}
		}
	}
	for _, n := range d.ifaces {
		if n.ns.Name == own {
			mark(n)
			mark(n.peer)
		}
	}
	if gwNS[f.Namespace] || onPath[f.Location()] {
		return true
	}
	switch f.Check {
	case CheckLoop, CheckStorm, CheckHostInterference, CheckFirewallDrop:
		return bridgeNS[f.Namespace]
	}
	return false
}

// causes points each unanswered gateway probe at the errors found on that
// node's path: the likely causes.
func (d *diag) causes() {
	saved := d.o.Node
	defer func() { d.o.Node = saved }()
	for i := range d.rep.Findings {
		f := &d.rep.Findings[i]
		if f.Check != CheckGateway {
			continue
		}
		d.o.Node = f.Node
		var causes []string
		for _, e := range d.rep.Findings {
			if e.Check != CheckGateway && e.Severity == Error && d.relevant(e) {
				causes = append(causes, e.Check+" at "+e.Location())
			}
		}
		if len(causes) > 0 {
			f.Evidence = append(f.Evidence, "likely cause: "+strings.Join(causes, "; "))
		}
	}
}

func (d *diag) finish() {
	d.causes()
	var kept []Finding
	seen := map[string]bool{}
	for _, f := range d.rep.Findings {
		k := f.Check + "|" + f.Location() + "|" + f.Summary
		if seen[k] || !d.relevant(f) {
			continue
		}
		seen[k] = true
		kept = append(kept, f)
	}
	sevOrder := map[Severity]int{Error: 0, Warning: 1, Info: 2}
	sort.SliceStable(kept, func(a, b int) bool {
		if kept[a].Step != kept[b].Step {
			return kept[a].Step < kept[b].Step
		}
		return sevOrder[kept[a].Severity] < sevOrder[kept[b].Severity]
	})
	if kept == nil {
		kept = []Finding{}
	}
	d.rep.Findings = kept
	d.rep.Steps = nil
	for s := 1; s < len(Steps); s++ {
		sr := StepResult{Step: s, Name: Steps[s], OK: true}
		var checks []string
		for _, f := range kept {
			if f.Step == s && f.Severity != Info {
				sr.OK = false
				checks = append(checks, f.Check+" at "+f.Location())
			}
		}
		switch {
		case !sr.OK:
			sr.Detail = strings.Join(checks, "; ")
		case s == 1:
			ok := 0
			for _, p := range d.rep.Probes {
				if p.Result.OK {
					ok++
				}
			}
			if d.o.NoProbes {
				sr.Detail = "probes skipped"
			} else {
				sr.Detail = fmt.Sprintf("%d of %d gateways answered", ok, len(d.rep.Probes))
			}
		default:
			sr.Detail = "no problem found"
		}
		d.rep.Steps = append(d.rep.Steps, sr)
	}
	d.rep.OK = d.rep.Problems() == 0
}
