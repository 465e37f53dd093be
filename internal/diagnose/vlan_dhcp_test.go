package diagnose

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/internal/vm/bootcfg"
	"github.com/kvmnet/kvmnet/topology"
)

// runOn runs the checks on topology src with the kernel as the topology
// wants it, changed by mutate (interfaces) and mutateVL (the VLAN view).
func runOn(t *testing.T, src string, o Options, mutate func(nss []*inspect.Namespace), mutateVL func(vl map[string]*model.Namespace)) (*topology.Topology, *Report) {
	t.Helper()
	topo, err := topology.Parse("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	nss := kernelOf(t, topo)
	for _, ns := range nss {
		for k, v := range model.Desired(topo).Namespaces[ns.Name].Sysctls {
			ns.Sysctls[k] = v
		}
	}
	if mutate != nil {
		mutate(nss)
	}
	o.StormPPS = 1000
	d := &diag{t: topo, o: o, desired: model.Desired(topo), rep: &Report{Probes: []Probe{}}}
	if hasVLANFiltering(d.desired) {
		d.vl = model.Desired(topo).Namespaces // healthy: the kernel has what the topology declares
		if mutateVL != nil {
			mutateVL(d.vl)
		}
	}
	d.index(nss)
	d.check()
	d.finish()
	return topo, d.rep
}

func finding(t *testing.T, rep *Report, check, loc string) Finding {
	t.Helper()
	for _, f := range rep.Findings {
		if f.Check == check && f.Location() == loc {
			return f
		}
	}
	t.Fatalf("no %s at %s; findings: %+v", check, loc, rep.Findings)
	return Finding{}
}

func noFindings(t *testing.T, rep *Report) {
	t.Helper()
	if len(rep.Findings) != 0 || !rep.OK {
		t.Fatalf("findings on a healthy state: %+v", rep.Findings)
	}
}

const vlanRef = `
name: v
namespaces:
  - {name: host, role: host, sysctls: {net.ipv4.ip_forward: "1"}}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm, routes: [{to: default, via: 10.100.0.1}]}
  - {name: vm2, role: vm, routes: [{to: default, via: 10.200.0.1}]}
bridges:
  - {name: br0, namespace: bridge, vlan_filtering: true}
links:
  - endpoints:
      - {namespace: host, name: eth0, mac: "02:00:00:00:00:01"}
      - {namespace: bridge, name: host, mac: "02:00:00:00:00:11", bridge: br0, vlan: {trunk: [100, 200]}}
  - endpoints:
      - {namespace: vm1, name: eth0, mac: "02:00:00:00:00:02", addresses: [10.100.0.11/24]}
      - {namespace: bridge, name: vm1, mac: "02:00:00:00:00:12", bridge: br0, vlan: {access: 100}}
  - endpoints:
      - {namespace: vm2, name: eth0, mac: "02:00:00:00:00:03", addresses: [10.200.0.12/24]}
      - {namespace: bridge, name: vm2, mac: "02:00:00:00:00:13", bridge: br0, vlan: {access: 200}}
vlans:
  - {namespace: host, name: eth0.100, parent: eth0, id: 100, addresses: [10.100.0.1/24]}
  - {namespace: host, name: eth0.200, parent: eth0, id: 200, addresses: [10.200.0.1/24]}
`

func TestVLANChecks(t *testing.T) {
	_, rep := runOn(t, vlanRef, Options{}, nil, nil)
	noFindings(t, rep)

	// vm1's port moved to VLAN 200 by hand: drift, and vm1's gateway is in
	// VLAN 100.
	_, rep = runOn(t, vlanRef, Options{}, nil, func(vl map[string]*model.Namespace) {
		vl["bridge"].Links["vm1"].PortVLANs = []model.VLANEntry{{VID: 200, PVID: true, Untagged: true}}
	})
	f := finding(t, rep, CheckVLAN, "bridge/vm1")
	ev := strings.Join(f.Evidence, "\n")
	for _, want := range []string{"bridge -n bridge vlan show dev vm1: 200 PVID Egress Untagged", "the topology declares an access port of VLAN 100",
		"vm1/eth0 sends untagged frames: they join VLAN 200 on br0", "gateway 10.100.0.1 (host/eth0.100) is in VLAN 100 on br0 (port host)"} {
		if !strings.Contains(ev, want) {
			t.Errorf("evidence lacks %q:\n%s", want, ev)
		}
	}
	if f.Fix != "bridge -n bridge vlan add dev vm1 vid 100 pvid untagged && bridge -n bridge vlan del dev vm1 vid 200 (or kvmnet up)" {
		t.Errorf("fix: %s", f.Fix)
	}

	// The trunk lost VLAN 200: the host's eth0.200 frames are dropped.
	_, rep = runOn(t, vlanRef, Options{}, nil, func(vl map[string]*model.Namespace) {
		vl["bridge"].Links["host"].PortVLANs = []model.VLANEntry{{VID: 100}}
	})
	f = finding(t, rep, CheckVLAN, "bridge/host")
	if !strings.Contains(strings.Join(f.Evidence, "\n"), "host/eth0.200 (VLAN sub-interface, id 200) sends frames tagged 200: port host does not carry VLAN 200") ||
		!strings.Contains(f.Fix, "bridge -n bridge vlan add dev host vid 200") {
		t.Errorf("trunk finding: %+v", f)
	}

	// A sub-interface made by hand in vm1 sends tagged frames its access
	// port drops.
	_, rep = runOn(t, vlanRef, Options{}, func(nss []*inspect.Namespace) {
		for _, ns := range nss {
			if ns.Name == "vm1" {
				ns.Interfaces = append(ns.Interfaces, &inspect.Interface{Name: "eth0.300", Index: 300, Kind: "vlan", AdminUp: true, Carrier: true, MTU: 1500,
					MAC: "02:00:00:00:00:02", Addresses: []netip.Prefix{netip.MustParsePrefix("10.30.0.11/24")}})
			}
		}
	}, func(vl map[string]*model.Namespace) {
		vl["vm1"].Links["eth0.300"] = &model.Link{Name: "eth0.300", Kind: model.KindVLAN, Parent: "eth0", VID: 300, Up: true}
	})
	f = finding(t, rep, CheckVLAN, "vm1/eth0.300")
	if !strings.Contains(f.Summary, "sends frames tagged 300; port vm1 of br0 is an access port of VLAN 100") ||
		!strings.Contains(f.Fix, "ip -n vm1 link del eth0.300") || !strings.Contains(f.Fix, "bridge -n bridge vlan add dev vm1 vid 300") {
		t.Errorf("sub-interface finding: %+v", f)
	}

	// Untagged frames into a port without a PVID.
	_, rep = runOn(t, vlanRef, Options{}, nil, func(vl map[string]*model.Namespace) {
		vl["bridge"].Links["vm2"].PortVLANs = []model.VLANEntry{{VID: 200}}
	})
	f = finding(t, rep, CheckVLAN, "bridge/vm2")
	if !strings.Contains(strings.Join(f.Evidence, "\n"), "port vm2 has no PVID: it drops untagged frames") {
		t.Errorf("no-PVID finding: %+v", f)
	}
}

const dhcpRef = `
name: d
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, mac: "02:00:00:00:00:01", addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, mac: "02:00:00:00:00:11", bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, mac: "02:00:00:00:00:02"}
      - {namespace: bridge, name: vm1, mac: "02:00:00:00:00:12", bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, mac: "02:00:00:00:00:03"}
      - {namespace: bridge, name: vm2, mac: "02:00:00:00:00:13", bridge: br0}
dhcp:
  servers:
    - {namespace: host, interface: eth0, pool: {start: 192.168.1.100, end: 192.168.1.150}}
vms:
  - {name: vm1, nics: [{uplink: eth0, mac: "02:00:00:00:01:01", dhcp: true}]}
  - {name: vm2, nics: [{uplink: eth0, mac: "02:00:00:00:01:02", addresses: [192.168.1.50/24], gateway: 192.168.1.1}]}
`

func TestDHCPLeaseCheck(t *testing.T) {
	running := func(name, mac, addr string) VM {
		s := vm.Status{Name: name, State: vm.StateRunning, PID: 42, Started: time.Now()}
		if addr != "" {
			s.Addresses = []bootcfg.ReadyNIC{{MAC: mac, Iface: "eth0", Addr: netip.MustParsePrefix(addr)}}
		}
		return VM{Name: name, Status: s}
	}
	lease := dhcp.Lease{MAC: "02:00:00:00:01:01", IP: netip.MustParseAddr("192.168.1.100"), Hostname: "vm1", State: dhcp.StateBound, Expires: time.Now().Add(time.Hour)}
	vms := func(leases ...dhcp.Lease) *VMs {
		return &VMs{Supervisor: "running",
			VMs:  []VM{running("vm1", "02:00:00:00:01:01", "192.168.1.100/24"), running("vm2", "02:00:00:00:01:02", "192.168.1.50/24")},
			DHCP: []DHCPServer{{Namespace: "host", Interface: "eth0", Listening: true, Stats: &dhcp.Stats{Received: 4, Offers: 1, Acks: 1}, Leases: leases}}}
	}
	_, rep := runOn(t, dhcpRef, Options{VMs: vms(lease)}, nil, nil)
	noFindings(t, rep)

	// The lease is gone: vm1 (dhcp) is found, vm2 (static) is not.
	_, rep = runOn(t, dhcpRef, Options{VMs: vms()}, nil, nil)
	f := finding(t, rep, CheckDHCPLease, "vm1/eth0")
	ev := strings.Join(f.Evidence, "\n")
	for _, want := range []string{"the DHCP server host/eth0 has no bound lease for 02:00:00:00:01:01", "leases of host/eth0 (kvmnet dhcp leases): none",
		"the guest configured 192.168.1.100/24", "server counters: 4 received, 1 offers, 1 acks"} {
		if !strings.Contains(ev, want) {
			t.Errorf("evidence lacks %q:\n%s", want, ev)
		}
	}
	if f.Node != "vm1" || f.Step != 1 || !strings.Contains(f.Fix, "kvmnet vm restart vm1") || len(rep.Findings) != 1 {
		t.Errorf("finding %+v (of %d)", f, len(rep.Findings))
	}

	// A firewall in the server's namespace drops packets: the fix names the rule.
	_, rep = runOn(t, dhcpRef, Options{VMs: vms()}, func(nss []*inspect.Namespace) {
		for _, ns := range nss {
			if ns.Name == "host" {
				ns.Firewall = []inspect.Table{{Family: "inet", Name: "fw", Chains: []inspect.Chain{{Name: "input", Hook: "input",
					Rules: []inspect.Rule{{Handle: 3, Verdict: "drop", Counter: true, Packets: 5}}}}}}
			}
		}
	}, nil)
	f = finding(t, rep, CheckDHCPLease, "vm1/eth0")
	if !strings.Contains(strings.Join(f.Evidence, "\n"), "in host: table inet fw chain input (hook input) rule 3: drop, 5 packets dropped") ||
		!strings.Contains(f.Fix, "ip netns exec host nft delete rule inet fw input handle 3") {
		t.Errorf("firewall finding: %+v", f)
	}

	// The supervisor is dead: the fix is kvmnet up.
	dead := vms()
	dead.Supervisor, dead.DHCP[0].Listening, dead.DHCP[0].Stats = "dead", false, nil
	_, rep = runOn(t, dhcpRef, Options{VMs: dead}, nil, nil)
	if f = finding(t, rep, CheckDHCPLease, "vm1/eth0"); !strings.HasPrefix(f.Fix, "kvmnet up") {
		t.Errorf("supervisor dead: %+v", f)
	}

	// A stopped VM needs no lease.
	stopped := vms()
	stopped.VMs[0].Status.State = vm.StateStopped
	_, rep = runOn(t, dhcpRef, Options{VMs: stopped}, nil, nil)
	noFindings(t, rep)
}
