package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

func newServe(g *globals) *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve Prometheus metrics of the network (and a live topology page) over HTTP, on loopback by default",
		Long: `serve exposes, on --metrics ADDR (default 127.0.0.1:9477):
  /metrics    Prometheus metrics read from the kernel at each scrape: per-interface
              counters, state, carrier and MTU; bridge port STP states; FDB and
              neighbour table sizes; nftables rule counters; and, where the topology
              has them, the supervisor, each VM's state, the DHCP servers (serving,
              bound leases, offers, acks, naks, exhausted) and the name servers
              (serving, questions by outcome);
  /           an HTML page with the topology picture and live link state;
  /graph.svg  the picture alone.
Listening on anything but loopback exposes the network's layout: do it on purpose.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "kvmnet: serving %s metrics on http://%s/metrics\n", t.ID(), ln.Addr())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			var services func() (*lab.VMStatusReport, error)
			if hasServices(t) {
				services = func() (*lab.VMStatusReport, error) { return lab.VMStatus(ctx, t, g.opts()...) }
			}
			return serveHTTP(ctx, ln, t, services)
		},
	}
	cmd.Flags().StringVar(&addr, "metrics", "127.0.0.1:9477", "listen address for /metrics")
	cmd.PreRunE = requireRoot
	return cmd
}

// serveHTTP serves the metrics and the topology page on ln until ctx ends;
// services (nil: none) reads the VMs, DHCP and DNS servers at each scrape.
func serveHTTP(ctx context.Context, ln net.Listener, t *topology.Topology, services func() (*lab.VMStatusReport, error)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{t: t, services: services})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	page := func(w http.ResponseWriter, svgOnly bool) {
		nss, err := inspect.Network(allNames(t), inspect.Addresses)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		gr := buildGraph(t, nss)
		if svgOnly {
			w.Header().Set("Content-Type", "image/svg+xml")
			gr.svg(w)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		gr.html(w, 5)
	}
	mux.HandleFunc("/graph.svg", func(w http.ResponseWriter, _ *http.Request) { page(w, true) })
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) { page(w, false) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
			err = errors.Join(err, e)
		}
		return err
	}
}

// collector reads the network at each scrape (no background polling).
type collector struct {
	t        *topology.Topology
	services func() (*lab.VMStatusReport, error) // serve_services.go
}

var (
	ifLabels   = []string{"namespace", "interface"}
	mRxBytes   = prometheus.NewDesc("kvmnet_interface_receive_bytes_total", "Bytes received by the interface.", ifLabels, nil)
	mTxBytes   = prometheus.NewDesc("kvmnet_interface_transmit_bytes_total", "Bytes sent by the interface.", ifLabels, nil)
	mRxPkts    = prometheus.NewDesc("kvmnet_interface_receive_packets_total", "Packets received by the interface.", ifLabels, nil)
	mTxPkts    = prometheus.NewDesc("kvmnet_interface_transmit_packets_total", "Packets sent by the interface.", ifLabels, nil)
	mRxErrs    = prometheus.NewDesc("kvmnet_interface_receive_errors_total", "Receive errors of the interface.", ifLabels, nil)
	mTxErrs    = prometheus.NewDesc("kvmnet_interface_transmit_errors_total", "Transmit errors of the interface.", ifLabels, nil)
	mRxDrops   = prometheus.NewDesc("kvmnet_interface_receive_drops_total", "Received packets the interface dropped.", ifLabels, nil)
	mTxDrops   = prometheus.NewDesc("kvmnet_interface_transmit_drops_total", "Packets the interface dropped on transmit.", ifLabels, nil)
	mMulticast = prometheus.NewDesc("kvmnet_interface_receive_multicast_total", "Multicast and broadcast packets received (drivers that count them).", ifLabels, nil)
	mUp        = prometheus.NewDesc("kvmnet_interface_up", "1 when the interface is administratively up.", ifLabels, nil)
	mCarrier   = prometheus.NewDesc("kvmnet_interface_carrier", "1 when the interface has carrier.", ifLabels, nil)
	mMTU       = prometheus.NewDesc("kvmnet_interface_mtu_bytes", "The interface's MTU.", ifLabels, nil)
	mPortState = prometheus.NewDesc("kvmnet_bridge_port_state", "STP state of a bridge port: 0 disabled, 1 listening, 2 learning, 3 forwarding, 4 blocking.", []string{"namespace", "bridge", "port"}, nil)
	mFDB       = prometheus.NewDesc("kvmnet_bridge_fdb_entries", "Entries in the bridge's forwarding database, by kind (local, static, learned).", []string{"namespace", "bridge", "kind"}, nil)
	mNeigh     = prometheus.NewDesc("kvmnet_neighbour_entries", "Neighbour (ARP/NDP) entries by state.", []string{"namespace", "state"}, nil)
	mRulePkts  = prometheus.NewDesc("kvmnet_nftables_rule_packets_total", "Packets counted by an nftables rule.", []string{"namespace", "family", "table", "chain", "handle", "verdict"}, nil)
	mRuleBytes = prometheus.NewDesc("kvmnet_nftables_rule_bytes_total", "Bytes counted by an nftables rule.", []string{"namespace", "family", "table", "chain", "handle", "verdict"}, nil)
	mRPDrops   = prometheus.NewDesc("kvmnet_rp_filter_drops_total", "Packets dropped by reverse-path filtering (TcpExt IPReversePathFilter).", []string{"namespace"}, nil)
	mNSUp      = prometheus.NewDesc("kvmnet_namespace_present", "1 when the namespace exists and belongs to the network.", []string{"namespace"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mRxBytes, mTxBytes, mRxPkts, mTxPkts, mRxErrs, mTxErrs, mRxDrops, mTxDrops, mMulticast,
		mUp, mCarrier, mMTU, mPortState, mFDB, mNeigh, mRulePkts, mRuleBytes, mRPDrops, mNSUp} {
		ch <- d
	}
	for _, d := range serviceDescs {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.services != nil {
		if r, err := c.services(); err != nil {
			ch <- prometheus.NewInvalidMetric(mSupervisor, err)
		} else {
			collectServices(ch, r)
		}
	}
	names := allNames(c.t)
	nss, err := inspect.Network(names, inspect.Ports|inspect.FDB|inspect.Neighbours|inspect.Firewall|inspect.Kernel)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(mNSUp, err)
		return
	}
	present := map[string]bool{}
	for _, ns := range nss {
		if ns.Owner != c.t.ID() {
			continue
		}
		present[ns.Name] = true
		for _, i := range ns.Interfaces {
			if i.Name == "lo" {
				continue
			}
			l := []string{ns.Name, i.Name}
			s := i.Stats
			for _, m := range []struct {
				d *prometheus.Desc
				v uint64
			}{{mRxBytes, s.RxBytes}, {mTxBytes, s.TxBytes}, {mRxPkts, s.RxPackets}, {mTxPkts, s.TxPackets},
				{mRxErrs, s.RxErrors}, {mTxErrs, s.TxErrors}, {mRxDrops, s.RxDropped}, {mTxDrops, s.TxDropped}, {mMulticast, s.Multicast}} {
				ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v), l...)
			}
			ch <- prometheus.MustNewConstMetric(mUp, prometheus.GaugeValue, b2f(i.AdminUp), l...)
			ch <- prometheus.MustNewConstMetric(mCarrier, prometheus.GaugeValue, b2f(i.Carrier), l...)
			ch <- prometheus.MustNewConstMetric(mMTU, prometheus.GaugeValue, float64(i.MTU), l...)
		}
		for _, b := range ns.Bridges {
			for _, p := range b.Ports {
				for k, s := range inspect.PortStates {
					if s == p.State {
						ch <- prometheus.MustNewConstMetric(mPortState, prometheus.GaugeValue, float64(k), ns.Name, b.Name, p.Name)
					}
				}
			}
			kinds := map[string]int{"local": 0, "static": 0, "learned": 0}
			for _, e := range b.FDB {
				if e.Master {
					kinds[e.Kind()]++
				}
			}
			for k, n := range kinds {
				ch <- prometheus.MustNewConstMetric(mFDB, prometheus.GaugeValue, float64(n), ns.Name, b.Name, k)
			}
		}
		states := map[string]int{}
		for _, n := range ns.Neighbours {
			states[n.State]++
		}
		for s, n := range states {
			ch <- prometheus.MustNewConstMetric(mNeigh, prometheus.GaugeValue, float64(n), ns.Name, s)
		}
		for _, t := range ns.Firewall {
			for _, chn := range t.Chains {
				for _, r := range chn.Rules {
					if !r.Counter {
						continue
					}
					l := []string{ns.Name, t.Family, t.Name, chn.Name, strconv.FormatUint(r.Handle, 10), r.Verdict}
					ch <- prometheus.MustNewConstMetric(mRulePkts, prometheus.CounterValue, float64(r.Packets), l...)
					ch <- prometheus.MustNewConstMetric(mRuleBytes, prometheus.CounterValue, float64(r.Bytes), l...)
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(mRPDrops, prometheus.CounterValue, float64(ns.Netstat["TcpExt.IPReversePathFilter"]), ns.Name)
	}
	for _, n := range names {
		ch <- prometheus.MustNewConstMetric(mNSUp, prometheus.GaugeValue, b2f(present[n]), n)
	}
}
