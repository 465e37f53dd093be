package diagnose

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/topology"
)

// These tests run the checks on a kernel state built in memory: no root.

const ref = `
name: t
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 192.168.1.1}]}
  - {name: vm2, role: vm, routes: [{to: default, via: 192.168.1.1}]}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, mac: "02:00:00:00:00:01", addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, mac: "02:00:00:00:00:11", bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, mac: "02:00:00:00:00:02", addresses: [192.168.1.101/24]}
      - {namespace: bridge, name: vm1, mac: "02:00:00:00:00:12", bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, mac: "02:00:00:00:00:03", addresses: [192.168.1.102/24]}
      - {namespace: bridge, name: vm2, mac: "02:00:00:00:00:13", bridge: br0}
`

// kernelOf renders the desired state as the kernel would show it when
// everything is right.
func kernelOf(t *testing.T, topo *topology.Topology) []*inspect.Namespace {
	t.Helper()
	want := model.Desired(topo)
	var out []*inspect.Namespace
	idx := 1
	index := map[string]int{}
	for _, name := range model.SortedNames(want.Namespaces) {
		for _, ln := range model.SortedNames(want.Namespaces[name].Links) {
			idx++
			index[name+"/"+ln] = idx
		}
	}
	for _, name := range model.SortedNames(want.Namespaces) {
		w := want.Namespaces[name]
		ns := &inspect.Namespace{Name: name, Owner: topo.ID(), Sysctls: map[string]string{inspect.SysctlIPv4Forward: "0"}, Netstat: map[string]uint64{}, ReadAt: time.Now()}
		var br *inspect.Bridge
		for _, ln := range model.SortedNames(w.Links) {
			l := w.Links[ln]
			i := &inspect.Interface{Name: ln, Index: index[name+"/"+ln], Kind: string(l.Kind), Owner: topo.ID(),
				AdminUp: true, Carrier: true, OperState: "up", MTU: 1500, MAC: l.MAC, Master: l.Master, Addresses: l.Addrs}
			if l.Kind == model.KindVeth {
				i.Peer = l.Peer.String()
				i.PeerIndex = index[l.Peer.String()]
			}
			ns.Interfaces = append(ns.Interfaces, i)
			if l.Kind == model.KindBridge {
				br = &inspect.Bridge{Name: ln}
				ns.Bridges = append(ns.Bridges, br)
			}
		}
		for _, r := range w.Routes {
			ns.Routes = append(ns.Routes, inspect.Route{Dst: r.Dst, Via: r.Via, Dev: "eth0", Protocol: 211, Kvmnet: true, Type: "unicast"})
		}
		if br != nil {
			for _, i := range ns.Interfaces {
				if i.Master == br.Name {
					br.Ports = append(br.Ports, inspect.Port{Name: i.Name, State: "forwarding"})
				}
			}
		}
		out = append(out, ns)
	}
	// The bridge has learned each VM's MAC on its port.
	for _, ns := range out {
		if b := ns.Bridge("br0"); b != nil {
			for _, p := range []struct{ mac, port string }{{"02:00:00:00:00:01", "host"}, {"02:00:00:00:00:02", "vm1"}, {"02:00:00:00:00:03", "vm2"}} {
				b.FDB = append(b.FDB, inspect.FDBEntry{MAC: p.mac, Port: p.port, Master: true, Learned: true})
			}
		}
	}
	return out
}

func run(t *testing.T, mutate func(nss []*inspect.Namespace, find func(ns, iface string) *inspect.Interface)) (*topology.Topology, *Report) {
	t.Helper()
	topo, err := topology.Parse("t.yaml", []byte(ref))
	if err != nil {
		t.Fatal(err)
	}
	nss := kernelOf(t, topo)
	find := func(ns, iface string) *inspect.Interface {
		for _, n := range nss {
			if n.Name == ns {
				return n.Interface(iface)
			}
		}
		t.Fatalf("no %s/%s", ns, iface)
		return nil
	}
	if mutate != nil {
		mutate(nss, find)
	}
	d := &diag{t: topo, o: Options{StormPPS: 1000}, desired: model.Desired(topo), rep: &Report{Probes: []Probe{}}}
	d.index(nss)
	d.check()
	d.finish()
	return topo, d.rep
}

func has(rep *Report, check, loc string) bool {
	for _, f := range rep.Findings {
		if f.Check == check && f.Location() == loc {
			return true
		}
	}
	return false
}

func TestHealthyStateHasNoFindings(t *testing.T) {
	_, rep := run(t, nil)
	if len(rep.Findings) != 0 || !rep.OK {
		t.Fatalf("findings on a healthy state: %+v", rep.Findings)
	}
}

func TestChecksOnSyntheticFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func([]*inspect.Namespace, func(ns, iface string) *inspect.Interface)
		check  string
		at     string
	}{
		{"link down", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("vm1", "eth0").AdminUp = false
			f("bridge", "vm1").Carrier = false
		}, CheckLinkDown, "vm1/eth0"},
		{"no carrier names the peer", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("vm1", "eth0").AdminUp = false
			f("bridge", "vm1").Carrier = false
		}, CheckNoCarrier, "bridge/vm1"},
		{"duplicate MAC", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("vm2", "eth0").MAC = "02:00:00:00:00:02"
		}, CheckDuplicateMAC, "vm2/eth0"},
		{"duplicate IP", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			i := f("vm2", "eth0")
			i.Addresses = append(i.Addresses, netip.MustParsePrefix("192.168.1.101/24"))
		}, CheckDuplicateIP, "vm2/eth0"},
		{"MTU", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("bridge", "vm2").MTU = 1400
		}, CheckMTU, "bridge/vm2"},
		{"missing address", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("host", "eth0").Addresses = nil
		}, CheckAddressMissing, "host/eth0"},
		{"wrong FDB port", func(nss []*inspect.Namespace, _ func(string, string) *inspect.Interface) {
			for _, ns := range nss {
				if b := ns.Bridge("br0"); b != nil {
					b.FDB[1].Port = "vm2"
				}
			}
		}, CheckFDBPort, "bridge/vm1"},
		{"default route missing", func(nss []*inspect.Namespace, _ func(string, string) *inspect.Interface) {
			for _, ns := range nss {
				if ns.Name == "vm1" {
					ns.Routes = nil
				}
			}
		}, CheckNoDefaultRoute, "vm1"},
		{"rp_filter", func(nss []*inspect.Namespace, _ func(string, string) *inspect.Interface) {
			nss[0].Netstat["TcpExt.IPReversePathFilter"] = 7
			nss[0].Sysctls[inspect.SysctlRPFilterAll] = "1"
		}, CheckRPFilter, "bridge"},
		{"br_netfilter", func(nss []*inspect.Namespace, _ func(string, string) *inspect.Interface) {
			nss[0].Sysctls[inspect.SysctlBridgeNFIP] = "1"
			nss[0].Firewall = []inspect.Table{{Family: "ip", Name: "filter", Chains: []inspect.Chain{{Name: "FORWARD", Hook: "forward", Policy: "drop"}}}}
		}, CheckHostInterference, "bridge/br0"},
		{"storm", func(_ []*inspect.Namespace, f func(string, string) *inspect.Interface) {
			f("bridge", "br0").Rates = &inspect.Rates{RxPackets: 50000}
		}, CheckStorm, "bridge/br0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rep := run(t, tc.mutate)
			if !has(rep, tc.check, tc.at) || rep.OK {
				t.Fatalf("want %s at %s; got %+v", tc.check, tc.at, rep.Findings)
			}
		})
	}
}

func TestLoopNeedsACycleWithoutSTP(t *testing.T) {
	addLoop := func(nss []*inspect.Namespace, _ func(string, string) *inspect.Interface) {
		br := nss[0]
		br.Interfaces = append(br.Interfaces,
			&inspect.Interface{Name: "lpa", Index: 100, Kind: "veth", AdminUp: true, Carrier: true, MTU: 1500, Master: "br0", PeerIndex: 101, PeerNetNSID: -1},
			&inspect.Interface{Name: "lpb", Index: 101, Kind: "veth", AdminUp: true, Carrier: true, MTU: 1500, Master: "br0", PeerIndex: 100, PeerNetNSID: -1})
	}
	_, rep := run(t, addLoop)
	if !has(rep, CheckLoop, "bridge/lpa") {
		t.Fatalf("no loop found: %+v", rep.Findings)
	}
	_, rep = run(t, func(nss []*inspect.Namespace, f func(string, string) *inspect.Interface) {
		addLoop(nss, f)
		nss[0].Bridges[0].STP = true
	})
	for _, f := range rep.Findings {
		if f.Check == CheckLoop {
			t.Fatalf("loop reported although STP is on: %+v", f)
		}
	}
}

func TestNodeScopeDropsUnrelatedFindings(t *testing.T) {
	topo, err := topology.Parse("t.yaml", []byte(ref))
	if err != nil {
		t.Fatal(err)
	}
	nss := kernelOf(t, topo)
	for _, ns := range nss {
		if ns.Name == "vm2" {
			ns.Interfaces[0].AdminUp = false
		}
	}
	d := &diag{t: topo, o: Options{Node: "vm1"}, desired: model.Desired(topo), rep: &Report{}}
	d.index(nss)
	d.check()
	d.finish()
	for _, f := range d.rep.Findings {
		if f.Namespace == "vm2" {
			t.Fatalf("diagnose vm1 reported vm2's fault: %+v", f)
		}
	}
}

func TestICMPParsing(t *testing.T) {
	req := echo(false, 0x1234, 7, []byte("abcdef"))
	if checksum(req) != 0 {
		t.Fatalf("echo request checksum does not verify: %x", checksum(req))
	}
	// An echo reply as a raw IPv4 socket delivers it: IP header first.
	reply := append([]byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}, req...)
	reply[20] = 0
	if kind, id, seq, _ := parseICMP(false, reply); kind != "reply" || id != 0x1234 || seq != 7 {
		t.Fatalf("reply parsed as %s %x %d", kind, id, seq)
	}
	// Fragmentation needed, quoting our request.
	inner := append([]byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1}, req[:8]...)
	icmpErr := []byte{3, 4, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(icmpErr[6:], 1400)
	pkt := append(append([]byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 9, 10, 0, 0, 2}, icmpErr...), inner...)
	kind, id, seq, desc := parseICMP(false, pkt)
	if kind != "error" || id != 0x1234 || seq != 7 || !strings.Contains(desc, "fragmentation needed (next-hop MTU 1400)") {
		t.Fatalf("frag needed parsed as %s %x %d %q", kind, id, seq, desc)
	}
}

func TestLookupLongestPrefix(t *testing.T) {
	ns := &inspect.Namespace{Routes: []inspect.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("10.0.0.1"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("10.0.0.0/24"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("10.1.0.0/16"), Via: netip.MustParseAddr("10.0.0.2"), Dev: "eth0", Metric: 10},
		{Dst: netip.MustParsePrefix("10.1.0.0/16"), Via: netip.MustParseAddr("10.0.0.3"), Dev: "eth0", Metric: 5},
	}}
	for dst, via := range map[string]string{"10.0.0.7": "invalid IP", "10.1.2.3": "10.0.0.3", "8.8.8.8": "10.0.0.1"} {
		r := lookup(ns, netip.MustParseAddr(dst))
		if r == nil || r.Via.String() != via {
			t.Errorf("lookup %s: %+v, want via %s", dst, r, via)
		}
	}
	if lookup(ns, netip.MustParseAddr("2001:db8::1")) != nil {
		t.Error("an IPv4 table routed an IPv6 address")
	}
}

// TestLossFindings: a lossy burst to an answering gateway is a packet-loss
// finding at the qdisc that explains it, with the command that removes it;
// loss the topology declares is only information; loss below the threshold
// is none.
func TestLossFindings(t *testing.T) {
	topo, err := topology.Parse("t.yaml", []byte(ref))
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("192.168.1.1")
	netem := QdiscDrop{Namespace: "bridge", Interface: "vm1", Kind: "netem", Handle: "8001:", Root: true, LossPct: 40, Drops: 8}
	for _, tc := range []struct {
		name     string
		received int
		qdisc    *QdiscDrop
		declare  bool
		severity Severity // "" for no finding
		at, fix  string
	}{
		{"someone's netem", 12, &netem, false, Warning, "bridge/vm1", "tc -n bridge qdisc del dev vm1 root"},
		{"most lost", 8, &netem, false, Error, "bridge/vm1", "tc -n bridge qdisc del dev vm1 root"},
		{"kvmnet's netem", 12, &QdiscDrop{Namespace: "bridge", Interface: "vm1", Kind: "netem", Handle: "6b76:", Root: true, LossPct: 40, Drops: 8}, false, Warning, "bridge/vm1", "kvmnet up (the topology declares no loss on bridge/vm1"},
		{"declared netem", 12, &netem, true, Info, "bridge/vm1", "none needed"},
		{"a queue that overflows", 18, &QdiscDrop{Namespace: "vm1", Interface: "eth0", Kind: "tbf", Handle: "1:", Root: true, Drops: 2}, false, Warning, "vm1/eth0", "the tbf qdisc on vm1/eth0 drops"},
		{"no qdisc to blame", 17, nil, false, Warning, "vm1", "see the firewall drops"},
		{"one in twenty", 19, nil, false, Warning, "vm1", ""},
		{"none lost", 20, nil, false, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &diag{t: topo, o: Options{LossPercent: 5}, desired: model.Desired(topo), rep: &Report{}}
			d.index(kernelOf(t, topo))
			p := Probe{Node: "vm1", Gateway: gw, Result: PingResult{OK: true}, Loss: &LossResult{Sent: 20, Received: tc.received}}
			if tc.qdisc != nil {
				p.Qdiscs = []QdiscDrop{*tc.qdisc}
			}
			if tc.declare {
				d.desired.Namespaces["bridge"].Links["vm1"].QoS = &model.QoS{Netem: &model.Netem{LossPct: 40}}
			}
			d.rep.Probes = []Probe{p}
			d.checkLoss()
			if tc.severity == "" {
				if len(d.rep.Findings) != 0 {
					t.Fatalf("findings for no loss: %+v", d.rep.Findings)
				}
				return
			}
			if len(d.rep.Findings) != 1 {
				t.Fatalf("want one finding, got %+v", d.rep.Findings)
			}
			f := d.rep.Findings[0]
			if f.Check != CheckLoss || f.Severity != tc.severity || f.Location() != tc.at || !strings.Contains(f.Fix, tc.fix) {
				t.Fatalf("got %s %s at %s, fix %q; want %s at %s, fix with %q", f.Severity, f.Check, f.Location(), f.Fix, tc.severity, tc.at, tc.fix)
			}
			if !strings.Contains(f.Evidence[0], fmt.Sprintf("%d of 20 echo requests to 192.168.1.1 answered", tc.received)) {
				t.Errorf("evidence: %q", f.Evidence)
			}
		})
	}
}
