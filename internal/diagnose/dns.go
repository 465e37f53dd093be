package diagnose

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kvmnet/kvmnet/internal/supervise"
)

// DNSProbe is a question a VM's or endpoint's namespace asked the network's
// name server: its own name.
type DNSProbe struct {
	Server netip.AddrPort `json:"server"`
	Name   string         `json:"name"`
	RCode  string         `json:"rcode,omitempty"`
	Addrs  []netip.Addr   `json:"addrs,omitempty"`
	Error  string         `json:"error,omitempty"`
	// Want are the addresses the topology gives the name.
	Want []netip.Addr `json:"want"`
	// Of is the name server asked.
	Of *supervise.DNSHealth `json:"-"`
}

// nameServerFor picks the name server namespace kname (a probe target)
// would use and the address to ask: one on a subnet of its own, else the
// first IPv4 address of the first server (reached through its gateway).
func (d *diag) nameServerFor(kname string) (*supervise.DNSHealth, netip.Addr) {
	if d.o.VMs == nil || len(d.o.VMs.DNS) == 0 {
		return nil, netip.Addr{}
	}
	if ns := d.nss[kname]; ns != nil {
		for i := range d.o.VMs.DNS {
			s := &d.o.VMs.DNS[i]
			for _, a := range s.Addresses {
				for _, in := range ns.Interfaces {
					for _, p := range in.Addresses {
						if p.Masked().Contains(a) {
							return s, a
						}
					}
				}
			}
		}
	}
	s := &d.o.VMs.DNS[0]
	for _, a := range s.Addresses {
		if a.Is4() {
			return s, a
		}
	}
	return nil, netip.Addr{}
}

// checkDNS: step 1, once the gateway answers: the network's name server
// must answer the probing namespace's own name with the topology's
// addresses. No answer is an error at the server (with the supervisor's
// state and the server's, and the fix that applies); a wrong answer is a
// warning.
func (d *diag) checkDNS() {
	for _, p := range d.rep.Probes {
		q := p.DNS
		if q == nil || q.Of == nil {
			continue
		}
		ns := d.t.NSName(p.Node)
		server := q.Of
		ev := []string{fmt.Sprintf("from %s: %s A? to %s: %s", ns, q.Name, q.Server, dnsOutcome(q))}
		if q.Error != "" {
			f := Finding{Severity: Error, Step: 1, Check: CheckDNS, Namespace: server.Namespace,
				Summary: fmt.Sprintf("the network's name server (%s, zone %s) does not answer", q.Server.Addr(), server.Domain), Evidence: ev}
			vms := d.o.VMs
			switch {
			case vms.Supervisor != "running":
				f.Evidence = append(f.Evidence, fmt.Sprintf("the supervisor, which runs the name server, is %s%s", vms.Supervisor, reasonSuffix(vms.SupervisorReason)))
				f.Fix = "kvmnet up (starts the supervisor)"
			case !server.Listening:
				f.Evidence = append(f.Evidence, fmt.Sprintf("the supervisor reports the name server not serving: %s", orDash(server.Error)))
				f.Fix = "see " + vms.SupervisorLog + "; kvmnet up restarts it"
			default:
				f.Evidence = append(f.Evidence, "the supervisor reports it serving")
				f.Fix = "the question or the answer is lost on the way: see the firewall drops (step 4) for udp port 53"
			}
			d.add(f)
			continue
		}
		got := slices.Clone(q.Addrs)
		slices.SortFunc(got, func(a, b netip.Addr) int { return a.Compare(b) })
		if q.RCode != "Success" || !slices.Equal(got, q.Want) {
			d.add(Finding{Severity: Warning, Step: 1, Check: CheckDNS, Namespace: server.Namespace,
				Summary:  fmt.Sprintf("the network's name server answers %s wrongly", q.Name),
				Evidence: append(ev, fmt.Sprintf("the topology gives %s %s", q.Name, addrList(q.Want))),
				Fix:      "kvmnet up (restarts the supervisor with the topology's names)"})
		}
	}
}

func dnsOutcome(q *DNSProbe) string {
	if q.Error != "" {
		return q.Error
	}
	if q.RCode != "Success" {
		return q.RCode
	}
	return addrList(q.Addrs)
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}
