package cli

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/lab"
)

// The services the supervisor runs (VMs, DHCP, DNS), as `kvmnet status`
// reads them: from the supervisor's heartbeat (counters lag it by up to a
// second, and start again from zero when it restarts) and the lease files.
var (
	mSupervisor  = prometheus.NewDesc("kvmnet_supervisor_running", "1 when the network's supervisor (DHCP, DNS, VM watch) runs.", nil, nil)
	mVMRunning   = prometheus.NewDesc("kvmnet_vm_running", "1 when the VM runs.", []string{"vm"}, nil)
	dhcpLabels   = []string{"namespace", "interface"}
	mDHCPServing = prometheus.NewDesc("kvmnet_dhcp_serving", "1 when the DHCP server serves.", dhcpLabels, nil)
	mDHCPLeases  = prometheus.NewDesc("kvmnet_dhcp_leases", "Bound leases of the DHCP server.", dhcpLabels, nil)
	mDHCPOffers  = prometheus.NewDesc("kvmnet_dhcp_offers_total", "Offers the DHCP server sent.", dhcpLabels, nil)
	mDHCPAcks    = prometheus.NewDesc("kvmnet_dhcp_acks_total", "Acknowledgements the DHCP server sent.", dhcpLabels, nil)
	mDHCPNaks    = prometheus.NewDesc("kvmnet_dhcp_naks_total", "Refusals (NAK) the DHCP server sent.", dhcpLabels, nil)
	mDHCPFull    = prometheus.NewDesc("kvmnet_dhcp_exhausted_total", "Requests the DHCP server refused for lack of addresses.", dhcpLabels, nil)
	dnsLabels    = []string{"namespace", "zone"}
	mDNSServing  = prometheus.NewDesc("kvmnet_dns_serving", "1 when the name server serves.", dnsLabels, nil)
	mDNSQueries  = prometheus.NewDesc("kvmnet_dns_queries_total", "Questions the name server handled, by outcome (answered, no_data, nxdomain, forwarded, refused, failed; dropped: questions and TCP connections over its bounds).", append(dnsLabels, "outcome"), nil)
	serviceDescs = []*prometheus.Desc{mSupervisor, mVMRunning, mDHCPServing, mDHCPLeases, mDHCPOffers, mDHCPAcks, mDHCPNaks, mDHCPFull, mDNSServing, mDNSQueries}
)

// collectServices sends the metrics of the services in r.
func collectServices(ch chan<- prometheus.Metric, r *lab.VMStatusReport) {
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v int, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge(mSupervisor, b2f(r.Supervisor.State == supervise.StateRunning))
	for _, v := range r.VMs {
		gauge(mVMRunning, b2f(v.State == vm.StateRunning), v.Name)
	}
	for _, d := range r.DHCP {
		l := []string{d.Namespace, d.Interface}
		gauge(mDHCPServing, b2f(d.Listening), l...)
		bound := 0
		for _, x := range d.Leases {
			if x.State == dhcp.StateBound {
				bound++
			}
		}
		gauge(mDHCPLeases, float64(bound), l...)
		if s := d.Stats; s != nil {
			counter(mDHCPOffers, s.Offers, l...)
			counter(mDHCPAcks, s.Acks, l...)
			counter(mDHCPNaks, s.Naks, l...)
			counter(mDHCPFull, s.Exhausted, l...)
		}
	}
	for _, d := range r.DNS {
		l := []string{d.Namespace, d.Domain}
		gauge(mDNSServing, b2f(d.Listening), l...)
		s := d.Stats
		for outcome, v := range map[string]uint64{"answered": s.Answered, "no_data": s.NoData, "nxdomain": s.NXDomain,
			"forwarded": s.Forwarded, "refused": s.Refused, "failed": s.Failed, "dropped": s.Dropped} {
			ch <- prometheus.MustNewConstMetric(mDNSQueries, prometheus.CounterValue, float64(v), append(l, outcome)...)
		}
	}
}
