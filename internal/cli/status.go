package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

// statusView is the JSON shape of `kvmnet status -o json`.
type statusView struct {
	Network string   `json:"network"`
	InSync  bool     `json:"in_sync"`
	Drift   []string `json:"drift"`
	// Interval is the sampling interval of the rates (0: no rates).
	Interval   string      `json:"interval,omitempty"`
	Namespaces []*nsStatus `json:"namespaces"`
	// Faults are deliberate drift injected with `kvmnet link` since the last up.
	Faults []lab.Fault `json:"faults,omitempty"`
	// VMs: the VMs, DHCP leases and the supervisor's health (vm.go).
	VMs *lab.VMStatusReport `json:"vms,omitempty"`
}

// nsStatus is one namespace: what the kernel has in it (inspect), or only
// its owner when it is not this network's.
type nsStatus struct {
	*inspect.Namespace
	// Foreign is set for a namespace with a wanted name that another owner
	// (or no kvmnet network) holds; nothing else is shown for it.
	Foreign bool `json:"foreign,omitempty"`
	// PortVLANs is the VLAN membership of each port of a VLAN-filtering
	// bridge (as `bridge vlan show` lists it).
	PortVLANs map[string][]model.VLANEntry `json:"port_vlans,omitempty"`
}

func newStatus(g *globals) *cobra.Command {
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the network as the kernel has it: interfaces, counters, bridge ports and FDB, neighbours, routes, firewall counters, and any drift from the topology",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			v, err := buildStatus(cmd, t, interval, g.opts()...)
			if err != nil {
				return err
			}
			if v.VMs, err = vmStatusFor(cmd, g, t); err != nil { // VMs, DHCP, supervisor (vm.go)
				return err
			}
			if g.output == "json" {
				return g.json(v)
			}
			printStatus(g.stdout, v)
			printVMStatus(g.stdout, v.VMs) // vm.go
			return nil
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 0, "sample the counters twice this far apart and show rates (e.g. 1s)")
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}

func buildStatus(cmd *cobra.Command, t *topology.Topology, interval time.Duration, opts ...lab.Option) (*statusView, error) {
	obs, err := lab.Observe(cmd.Context(), t)
	if err != nil {
		return nil, err
	}
	v := &statusView{Network: t.ID(), Drift: []string{}, Namespaces: []*nsStatus{}}
	steps, derr := lab.Plan(cmd.Context(), t, lab.WithDeep(true))
	if derr != nil {
		v.Drift = append(v.Drift, derr.Error())
	}
	for _, s := range steps {
		v.Drift = append(v.Drift, s.String())
	}
	v.InSync = len(v.Drift) == 0
	if v.Faults, err = lab.Faults(t, opts...); err != nil {
		return nil, err
	}
	var ours []string
	for _, name := range model.SortedNames(obs.Namespaces) {
		if obs.Namespaces[name].Owner == t.ID() {
			ours = append(ours, name)
		}
	}
	ins, err := inspect.Network(ours, inspect.All)
	if err != nil {
		return nil, err
	}
	if interval > 0 {
		select {
		case <-time.After(interval):
		case <-cmd.Context().Done():
			return nil, cmd.Context().Err()
		}
		again, err := inspect.Network(ours, inspect.Counters)
		if err != nil {
			return nil, err
		}
		inspect.SetRates(ins, again)
		// Show the second reading's counters with the rates.
		for i, ns := range ins {
			for _, ifc := range ns.Interfaces {
				if a := findIface(again, ns.Name, ifc.Name); a != nil && a.Index == ifc.Index {
					ifc.Stats, ifc.Rates = a.Stats, a.Rates
				}
			}
			ins[i].ReadAt = again[i].ReadAt
		}
		v.Interval = interval.String()
	}
	byName := map[string]*inspect.Namespace{}
	for _, ns := range ins {
		byName[ns.Name] = ns
	}
	for _, name := range model.SortedNames(obs.Namespaces) {
		if n := byName[name]; n != nil {
			st := &nsStatus{Namespace: n}
			for ln, l := range obs.Namespaces[name].Links {
				if l.PortVLANs != nil {
					if st.PortVLANs == nil {
						st.PortVLANs = map[string][]model.VLANEntry{}
					}
					st.PortVLANs[ln] = l.PortVLANs
				}
			}
			v.Namespaces = append(v.Namespaces, st)
		} else {
			v.Namespaces = append(v.Namespaces, &nsStatus{Namespace: &inspect.Namespace{Name: name, Owner: obs.Namespaces[name].Owner}, Foreign: true})
		}
	}
	return v, nil
}

func findIface(nss []*inspect.Namespace, ns, name string) *inspect.Interface {
	for _, n := range nss {
		if n.Name == ns {
			return n.Interface(name)
		}
	}
	return nil
}

func onOff(b bool, on, off string) string {
	if b {
		return on
	}
	return off
}

func printStatus(out io.Writer, v *statusView) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tINTERFACE\tKIND\tADMIN\tOPER\tCARRIER\tMTU\tMAC\tMASTER/PEER\tADDRESSES")
	for _, ns := range v.Namespaces {
		if ns.Foreign {
			fmt.Fprintf(w, "%s\t-\t-\tNOT OURS (owner %q)\t\t\t\t\t\t\n", ns.Name, ns.Owner)
			continue
		}
		for _, i := range ns.Interfaces {
			if i.Name == "lo" {
				continue
			}
			kind := i.Kind
			if kind == "" {
				kind = "device"
			}
			if i.Owner == "" {
				kind += " (not kvmnet's)"
			}
			rel := i.Master
			if i.Peer != "" {
				if rel != "" {
					rel += " "
				}
				rel += "<-> " + i.Peer
			}
			if b := ns.Bridge(i.Name); b != nil {
				rel = "stp=" + onOff(b.STP, "on", "off")
			}
			addrs := make([]string, len(i.Addresses))
			for k, a := range i.Addresses {
				addrs[k] = a.String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", ns.Name, i.Name, kind,
				onOff(i.AdminUp, "up", "down"), i.OperState, onOff(i.Carrier, "yes", "no"), i.MTU, i.MAC, rel, strings.Join(addrs, ","))
		}
	}
	w.Flush()

	fmt.Fprintln(out, "\nCOUNTERS")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	head := "NAMESPACE\tINTERFACE\tRX BYTES\tRX PKTS\tRX ERR\tRX DROP\tTX BYTES\tTX PKTS\tTX ERR\tTX DROP\t"
	if v.Interval != "" {
		head += "RX B/s\tTX B/s\tRX PKT/s\tTX PKT/s\tDROP/s\t"
	}
	fmt.Fprintln(w, head)
	for _, ns := range v.Namespaces {
		if ns.Foreign {
			continue
		}
		for _, i := range ns.Interfaces {
			if i.Name == "lo" {
				continue
			}
			s := i.Stats
			line := fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t", ns.Name, i.Name,
				s.RxBytes, s.RxPackets, s.RxErrors, s.RxDropped, s.TxBytes, s.TxPackets, s.TxErrors, s.TxDropped)
			if r := i.Rates; r != nil {
				line += fmt.Sprintf("%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t", r.RxBytes, r.TxBytes, r.RxPackets, r.TxPackets, r.RxDropped+r.TxDropped)
			} else if v.Interval != "" {
				line += "-\t-\t-\t-\t-\t"
			}
			fmt.Fprintln(w, line)
		}
	}
	w.Flush()

	for _, ns := range v.Namespaces {
		for _, b := range ns.Bridges {
			fmt.Fprintf(out, "\nBRIDGE %s/%s (stp %s)\n", ns.Name, b.Name, onOff(b.STP, "on", "off"))
			w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "  PORT\tSTP STATE\tVLANS")
			for _, p := range b.Ports {
				vlans := "-"
				if es, ok := ns.PortVLANs[p.Name]; ok {
					parts := make([]string, len(es))
					for i, e := range es {
						parts[i] = e.String()
					}
					vlans = strings.Join(parts, ", ")
				}
				fmt.Fprintf(w, "  %s\t%s\t%s\n", p.Name, p.State, vlans)
			}
			w.Flush()
			w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "  FDB MAC\tPORT\tVLAN\tKIND\tAGE")
			for _, e := range b.FDB {
				if !e.Master {
					continue // the ports' own address lists: see -o json
				}
				vlan := "-"
				if e.VLAN != 0 {
					vlan = fmt.Sprint(e.VLAN)
				}
				age := "-"
				if e.Learned {
					age = fmt.Sprintf("%.0fs", e.AgeSeconds)
				}
				fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", e.MAC, e.Port, vlan, e.Kind(), age)
			}
			w.Flush()
		}
	}

	fmt.Fprintln(out, "\nNEIGHBOURS")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  NAMESPACE\tIP\tMAC\tINTERFACE\tSTATE")
	for _, ns := range v.Namespaces {
		for _, n := range ns.Neighbours {
			mac := n.MAC
			if mac == "" {
				mac = "-"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", ns.Name, n.IP, mac, n.Interface, n.State)
		}
	}
	w.Flush()

	fmt.Fprintln(out, "\nROUTES (main table; * = kvmnet's, proto 211)")
	for _, ns := range v.Namespaces {
		for _, r := range ns.Routes {
			fmt.Fprintf(out, "  %s %s: %s\n", onOff(r.Kvmnet, "*", " "), ns.Name, r)
		}
	}

	var mirrors []string
	for _, ns := range v.Namespaces {
		for _, m := range ns.Mirrors {
			to := m.To
			switch {
			case to == "":
				to = "(destination gone: `kvmnet up` rebuilds it)"
			case !m.ToUp:
				to += " (DOWN: the copies are lost)"
			}
			mirrors = append(mirrors, fmt.Sprintf("  %s: %s %s -> %s: %d packets, %d bytes copied", ns.Name, m.Port, m.Direction, to, m.Packets, m.Bytes))
		}
	}
	if len(mirrors) > 0 {
		fmt.Fprintln(out, "\nPORT MIRRORS (tc mirred)")
		fmt.Fprintln(out, strings.Join(mirrors, "\n"))
	}

	var fw []string
	for _, ns := range v.Namespaces {
		for _, t := range ns.Firewall {
			for _, c := range t.Chains {
				if c.Hook != "" {
					fw = append(fw, fmt.Sprintf("  %s: %s %s chain %s (hook %s, policy %s)%s", ns.Name, t.Family, t.Name, c.Name, c.Hook, c.Policy, onOff(t.Kvmnet, " [kvmnet]", "")))
				}
				for _, r := range c.Rules {
					counter := "no counter"
					if r.Counter {
						counter = fmt.Sprintf("%d packets, %d bytes", r.Packets, r.Bytes)
					}
					fw = append(fw, fmt.Sprintf("      %s %s: %s (%s)", c.Name, orDash(r.Verdict), orDash(r.Comment), counter))
				}
			}
		}
	}
	for _, ns := range v.Namespaces {
		for _, c := range ns.Legacy {
			fw = append(fw, fmt.Sprintf("  %s: iptables-legacy %s %s: policy %s (%d packets), %d rules, %d packets dropped by rules",
				ns.Name, c.Table, c.Chain, strings.ToUpper(c.Policy), c.PolicyPackets, c.Rules, c.DropPackets))
		}
	}
	if len(fw) > 0 {
		fmt.Fprintln(out, "\nFIREWALL (nftables, iptables-legacy)")
		fmt.Fprintln(out, strings.Join(fw, "\n"))
	}
	for _, f := range v.Faults {
		fmt.Fprintf(out, "\nDELIBERATE: %s %s set %s at %s (kvmnet link); kvmnet up restores it", f.Kind, f.Target, f.Detail, f.Time.Format(time.RFC3339))
	}
	if len(v.Faults) > 0 {
		fmt.Fprintln(out)
	}
	if v.InSync {
		fmt.Fprintf(out, "\n%s: in sync with the topology\n", v.Network)
	} else {
		fmt.Fprintf(out, "\n%s: DRIFT, `kvmnet up` would:\n  %s\n", v.Network, strings.Join(v.Drift, "\n  "))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
