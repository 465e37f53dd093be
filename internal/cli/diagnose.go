package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

// ExitFindings is the exit status of diagnose and trace when they found a
// problem (a network fault, as opposed to a failure to run: 1).
const ExitFindings = 3

func newDiagnose(g *globals) *cobra.Command {
	var noProbes bool
	cmd := &cobra.Command{
		Use:   "diagnose [NODE]",
		Short: "Run the troubleshooting flow (gateway ping, DHCP leases, MAC tables and VLANs, routes, firewall, loops) and name what is wrong, with evidence and a fix",
		Long: `diagnose runs the reference design's troubleshooting flow on the network, in order:
(1) ping the gateway from each VM and endpoint namespace, (2) check the bridges' MAC
tables and ports' VLANs, (3) the routes, (4) the firewall rules, (5) loops and broadcast
storms. It also looks for the common faults behind a failure: a link down, missing or
without carrier, a missing address, a running VM without its DHCP lease, duplicate MACs
and IPs (ARP probes), MTU mismatches (DF probes), a bridge port whose VLANs do not carry
what the endpoint behind it sends or differ from the topology, forwarding switched off,
reverse-path filter drops, and br_netfilter with a FORWARD chain that drops bridged
traffic. With NODE, only that namespace's probes and what its
traffic crosses. The exit status is 3 when anything is wrong.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			o := diagnose.Options{NoProbes: noProbes}
			if len(args) == 1 {
				o.Node = args[0]
			}
			if o.VMs, err = diagnoseVMs(cmd, g, t); err != nil {
				return err
			}
			rep, err := diagnose.Run(cmd.Context(), t, o)
			if err != nil {
				return err
			}
			if g.output == "json" {
				if err := g.json(rep); err != nil {
					return err
				}
			} else {
				printReport(g.stdout, rep)
			}
			if !rep.OK {
				return &exitError{code: ExitFindings, msg: fmt.Sprintf("diagnose: %d problems found in %s", rep.Problems(), rep.Network)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noProbes, "no-probes", false, "read the kernel only: send no ping, DF or ARP probe")
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}

func printReport(out io.Writer, rep *diagnose.Report) {
	for _, s := range rep.Steps {
		mark := "ok  "
		if !s.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "%s %d. %s: %s\n", mark, s.Step, s.Name, s.Detail)
	}
	if len(rep.Findings) == 0 {
		fmt.Fprintf(out, "\n%s: no problem found (%s)\n", rep.Network, rep.Duration.Round(1e6))
		return
	}
	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SEVERITY\tSTEP\tCHECK\tLOCATION\tSUMMARY")
	for _, f := range rep.Findings {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", f.Severity, f.Step, f.Check, f.Location(), f.Summary)
	}
	w.Flush()
	for i, f := range rep.Findings {
		fmt.Fprintf(out, "\n[%d] %s %s at %s: %s\n", i+1, f.Severity, f.Check, f.Location(), f.Summary)
		for _, e := range f.Evidence {
			fmt.Fprintf(out, "    evidence: %s\n", e)
		}
		fmt.Fprintf(out, "    fix:      %s\n", f.Fix)
	}
	fmt.Fprintf(out, "\n%s: %d problems (%s)\n", rep.Network, rep.Problems(), strings.TrimSpace(rep.Duration.Round(1e6).String()))
}

// diagnoseVMs reads the network's VMs, DHCP and DNS servers (leases,
// counters, the supervisor) through lab.VMStatus, the reader `kvmnet status`
// uses, for the DHCP lease and name server checks; nil when the topology
// has none of them.
func diagnoseVMs(cmd *cobra.Command, g *globals, t *topology.Topology) (*diagnose.VMs, error) {
	if !hasServices(t) {
		return nil, nil
	}
	r, err := lab.VMStatus(cmd.Context(), t, g.opts()...)
	if err != nil {
		return nil, err
	}
	return r.ForDiagnose(), nil
}
