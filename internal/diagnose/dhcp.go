package diagnose

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/topology"
)

// CheckDHCPLease: a running VM's NIC declared dhcp holds no lease.
const CheckDHCPLease = "dhcp-no-lease"

// VMs is what kvmnet's VM side knows of a network: each VM's state and each
// DHCP server with its counters and leases. diagnose cannot read it itself
// (the VM bookkeeping lives in package lab, which imports diagnose's
// callers): `kvmnet diagnose` fills it from lab.VMStatus, the one reader of
// the VM state directories, the supervisor's health file and the lease
// files, which `kvmnet status` shows too.
type VMs struct {
	// Supervisor is the state of the network's supervisor, which runs the
	// DHCP servers: running, stale, dead or "not running"; SupervisorReason
	// says why when it is not running.
	Supervisor       string `json:"supervisor"`
	SupervisorReason string `json:"supervisor_reason,omitempty"`
	// SupervisorLog is the supervisor's log file.
	SupervisorLog string       `json:"supervisor_log,omitempty"`
	VMs           []VM         `json:"vms"`
	DHCP          []DHCPServer `json:"dhcp"`
	// DNS are the network's name servers, as the supervisor last reported
	// them (dns.go).
	DNS []supervise.DNSHealth `json:"dns,omitempty"`
}

// VM is one VM and what its machine reported.
type VM struct {
	Name   string    `json:"name"`
	Status vm.Status `json:"status"`
}

// DHCPServer is one of the network's DHCP servers: where it serves (kernel
// namespace name and interface), whether it serves, its counters (from the
// supervisor's last heartbeat; nil when the supervisor does not run) and
// its live leases (from its lease file).
type DHCPServer struct {
	Namespace string       `json:"namespace"`
	Interface string       `json:"interface"`
	Listening bool         `json:"listening"`
	Error     string       `json:"error,omitempty"`
	Stats     *dhcp.Stats  `json:"stats,omitempty"`
	LeaseFile string       `json:"lease_file,omitempty"`
	Leases    []dhcp.Lease `json:"leases"`
}

func normMAC(s string) string {
	if hw, err := net.ParseMAC(s); err == nil {
		return hw.String()
	}
	return strings.ToLower(s)
}

// serverFor returns the declared DHCP server on the L2 segment of VM v's
// NIC n and its state, or nil.
func (d *diag) serverFor(segs *topology.Segments, v *topology.VM, n topology.VMNIC) (*topology.DHCPServer, *DHCPServer) {
	seg := segs.Of(v.NS(), n.Uplink)
	for _, s := range d.t.DHCPServers() {
		if segs.Of(s.Namespace, s.Interface) != seg {
			continue
		}
		for i := range d.o.VMs.DHCP {
			x := &d.o.VMs.DHCP[i]
			if x.Namespace == d.t.NSName(s.Namespace) && x.Interface == s.Interface {
				return &s, x
			}
		}
		return &s, nil
	}
	return nil, nil
}

// checkDHCP (step 1): every running VM's NIC declared dhcp holds a bound
// lease in the DHCP server of its segment; without one the guest has no
// address, or keeps one the server may give to another client.
func (d *diag) checkDHCP() {
	if d.o.VMs == nil {
		return
	}
	status := map[string]*VM{}
	for i := range d.o.VMs.VMs {
		status[d.o.VMs.VMs[i].Name] = &d.o.VMs.VMs[i]
	}
	segs := d.t.Segments()
	for vi := range d.t.VMs {
		v := &d.t.VMs[vi]
		st := status[v.Name]
		if st == nil || st.Status.State != vm.StateRunning {
			continue // not running: no lease is expected
		}
		nsName := d.t.NSName(v.NS())
		for _, n := range v.NICs {
			if !n.DHCP {
				continue
			}
			mac := normMAC(n.MAC)
			decl, srv := d.serverFor(segs, v, n)
			if decl == nil {
				continue // validation refuses a dhcp NIC on a segment without a server
			}
			where := d.t.NSName(decl.Namespace) + "/" + decl.Interface
			var lease *dhcp.Lease
			if srv != nil {
				for i := range srv.Leases {
					if normMAC(srv.Leases[i].MAC) == mac {
						lease = &srv.Leases[i]
					}
				}
			}
			if lease != nil && lease.State == dhcp.StateBound {
				continue
			}
			d.add(d.leaseFinding(v, st, n, nsName, mac, where, srv, lease))
		}
	}
}

func (d *diag) leaseFinding(v *topology.VM, st *VM, n topology.VMNIC, nsName, mac, where string, srv *DHCPServer, lease *dhcp.Lease) Finding {
	since := ""
	if !st.Status.Started.IsZero() {
		since = fmt.Sprintf(", running since %s", st.Status.Started.Format(time.TimeOnly))
	}
	ev := []string{fmt.Sprintf("vm %s (pid %d%s) NIC %s on %s/%s is declared dhcp; the DHCP server %s has no bound lease for %s",
		v.Name, st.Status.PID, since, mac, nsName, n.Uplink, where, mac)}
	if lease != nil {
		ev = append(ev, fmt.Sprintf("the server offered %s to %s (until %s) but never saw its request: the offer was not taken up",
			lease.IP, mac, lease.Expires.Format(time.TimeOnly)))
	}
	if srv != nil {
		ev = append(ev, "leases of "+where+" (kvmnet dhcp leases): "+leaseTable(srv.Leases))
	}
	addr := ""
	for _, a := range st.Status.Addresses {
		if normMAC(a.MAC) == mac && a.Addr.IsValid() {
			addr = a.Addr.String()
		}
	}
	if addr != "" {
		ev = append(ev, fmt.Sprintf("the guest configured %s from a lease at boot and no longer holds one: its renewals did not reach the server, and the server may give %s to another client", addr, strings.Split(addr, "/")[0]))
	} else {
		ev = append(ev, fmt.Sprintf("the guest reported no address on %s this boot: its DHCP client got no answer (kvmnet vm logs %s)", mac, v.Name))
	}
	sup := d.o.VMs.Supervisor
	fix := fmt.Sprintf("kvmnet vm restart %s (the guest asks for a lease again at boot; kvmnet vm logs %s shows its DHCP client)", v.Name, v.Name)
	switch {
	case sup != "running":
		s := fmt.Sprintf("the supervisor, which runs the DHCP servers, is %s", sup)
		if d.o.VMs.SupervisorReason != "" {
			s += " (" + d.o.VMs.SupervisorReason + ")"
		}
		if d.o.VMs.SupervisorLog != "" {
			s += "; its log: " + d.o.VMs.SupervisorLog
		}
		ev = append(ev, s)
		fix = fmt.Sprintf("kvmnet up (starts the supervisor and its DHCP servers again), then kvmnet vm restart %s", v.Name)
	case srv == nil || !srv.Listening:
		e := "the DHCP server " + where + " does not serve"
		if srv != nil && srv.Error != "" {
			e += ": " + srv.Error
		}
		ev = append(ev, e)
		fix = fmt.Sprintf("fix the server's error (kvmnet status shows it), kvmnet up, then kvmnet vm restart %s", v.Name)
	}
	if srv != nil && srv.Stats != nil {
		s := srv.Stats
		c := fmt.Sprintf("server counters: %d received, %d offers, %d acks, %d naks, %d releases, %d declines, %d refused for an exhausted pool, %d duplicate-MAC refusals",
			s.Received, s.Offers, s.Acks, s.Naks, s.Releases, s.Declines, s.Exhausted, s.Conflicts)
		if s.LastError != "" {
			c += "; last error: " + s.LastError
		}
		ev = append(ev, c)
		if s.Exhausted > 0 {
			fix = "enlarge the pool of " + where + " in the topology (dhcp: servers: pool), kvmnet up, then kvmnet vm restart " + v.Name
		}
	}
	// Firewalls on the way that drop packets: in the server's namespace
	// (DHCP to udp port 67), the VM's namespace (its bridge forwards the
	// guest's frames) and the bridges between them.
	srvNS, _, _ := strings.Cut(where, "/")
	var drops []string
	for _, name := range []string{nsName, srvNS} {
		for _, e := range dropRules(d.nss[name]) {
			drops = append(drops, e.text)
			if fixDrop := e.fix(name); fixDrop != "" && sup == "running" && srv != nil && srv.Listening {
				fix = fixDrop + "; then kvmnet vm restart " + v.Name
			}
		}
	}
	if len(drops) > 0 {
		ev = append(ev, drops...)
	}
	return Finding{Severity: Error, Step: 1, Check: CheckDHCPLease, Namespace: nsName, Interface: n.Uplink,
		Summary:  fmt.Sprintf("vm %s holds no DHCP lease for its NIC %s (server %s)", v.Name, mac, where),
		Evidence: ev, Fix: fix}
}

func leaseTable(ls []dhcp.Lease) string {
	if len(ls) == 0 {
		return "none"
	}
	var out []string
	for _, l := range ls {
		s := fmt.Sprintf("%s %s", l.IP, l.MAC)
		if l.Hostname != "" {
			s += " " + l.Hostname
		}
		s += " " + l.State
		if l.Static {
			s += " (static)"
		}
		s += " until " + l.Expires.Format(time.TimeOnly)
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// dropRule is a firewall rule or chain in a namespace that dropped packets.
type dropRule struct {
	text string
	fix  func(ns string) string
}

// dropRules lists the nftables rules (and legacy iptables chains) of ns
// that dropped packets.
func dropRules(ns *inspect.Namespace) []dropRule {
	if ns == nil {
		return nil
	}
	var out []dropRule
	for _, t := range ns.Firewall {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if !r.Drops() || r.Packets == 0 {
					continue
				}
				out = append(out, dropRule{
					text: fmt.Sprintf("in %s: table %s %s chain %s (hook %s) rule %d: %s, %d packets dropped", ns.Name, t.Family, t.Name, c.Name, orDash(c.Hook), r.Handle, r.Verdict, r.Packets),
					fix: func(name string) string {
						return fmt.Sprintf("let DHCP through (udp ports 67 and 68): ip netns exec %s nft delete rule %s %s %s handle %d, or accept DHCP before it", name, t.Family, t.Name, c.Name, r.Handle)
					},
				})
			}
		}
	}
	for _, c := range ns.Legacy {
		if c.DropPackets > 0 || c.Policy == "drop" && c.PolicyPackets > 0 {
			out = append(out, dropRule{
				text: fmt.Sprintf("in %s: iptables-legacy filter %s dropped %d packets (policy %s, %d packets)", ns.Name, c.Chain, c.DropPackets, c.Policy, c.PolicyPackets),
				fix: func(name string) string {
					return fmt.Sprintf("let DHCP through: ip netns exec %s iptables-legacy -I %s -p udp --dport 67:68 -j ACCEPT", name, c.Chain)
				},
			})
		}
	}
	return out
}
