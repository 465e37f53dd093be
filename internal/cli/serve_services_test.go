package cli

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/lab"
)

type servicesOnly struct{ r *lab.VMStatusReport }

func (s servicesOnly) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range serviceDescs {
		ch <- d
	}
}
func (s servicesOnly) Collect(ch chan<- prometheus.Metric) { collectServices(ch, s.r) }

// The supervisor's services as metrics: what status reads (the heartbeat's
// counters, the lease files) in Prometheus's exposition format.
func TestServiceMetrics(t *testing.T) {
	r := &lab.VMStatusReport{
		Supervisor: lab.SupervisorStatus{State: supervise.StateRunning},
		VMs:        []lab.VMState{{Status: vm.Status{Name: "vm1", State: vm.StateRunning}}, {Status: vm.Status{Name: "vm2", State: vm.StateCrashed}}},
		DHCP: []lab.DHCPStatus{{Namespace: "n-host", Interface: "eth0", Listening: true,
			Stats:  &dhcp.Stats{Offers: 3, Acks: 2, Naks: 1, Exhausted: 4},
			Leases: []dhcp.Lease{{State: dhcp.StateBound, IP: netip.MustParseAddr("10.0.0.100")}, {State: dhcp.StateOffered}}}},
		DNS: []supervise.DNSHealth{{Namespace: "n-host", Domain: "lab", Listening: true,
			Stats: dns.Stats{Queries: 9, Answered: 5, NoData: 1, NXDomain: 1, Forwarded: 2}}},
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(servicesOnly{r})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	want := map[string]float64{
		"kvmnet_supervisor_running{}":                                           1,
		"kvmnet_vm_running{vm=vm1}":                                             1,
		"kvmnet_vm_running{vm=vm2}":                                             0,
		"kvmnet_dhcp_serving{interface=eth0,namespace=n-host}":                  1,
		"kvmnet_dhcp_leases{interface=eth0,namespace=n-host}":                   1,
		"kvmnet_dhcp_offers_total{interface=eth0,namespace=n-host}":             3,
		"kvmnet_dhcp_acks_total{interface=eth0,namespace=n-host}":               2,
		"kvmnet_dhcp_naks_total{interface=eth0,namespace=n-host}":               1,
		"kvmnet_dhcp_exhausted_total{interface=eth0,namespace=n-host}":          4,
		"kvmnet_dns_serving{namespace=n-host,zone=lab}":                         1,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=answered,zone=lab}":  5,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=no_data,zone=lab}":   1,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=nxdomain,zone=lab}":  1,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=forwarded,zone=lab}": 2,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=refused,zone=lab}":   0,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=failed,zone=lab}":    0,
		"kvmnet_dns_queries_total{namespace=n-host,outcome=dropped,zone=lab}":   0,
	}
	if len(got) != len(want) {
		t.Errorf("%d metrics, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
