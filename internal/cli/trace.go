package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/diagnose"
)

func newTrace(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace FROM TO",
		Short: "Walk the L2/L3 path from one node to another (or to an IP) and name the first hop where traffic stops",
		Long: `trace follows the route FROM's kernel would take to TO (a node, meaning its first
address, or an IP address), then the L2 path to each next hop through veths, bridge
ports and bridges, checking every element (state, carrier, STP, MTU, FDB,
br_netfilter, forwarding), and finally pings TO from FROM. The exit status is 3
when the traffic stops.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			tr, err := diagnose.Trace(cmd.Context(), t, args[0], args[1])
			if err != nil {
				return err
			}
			if g.output == "json" {
				if err := g.json(tr); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "trace %s -> %s (%s)\n", tr.From, tr.To, tr.Dst)
				for i, h := range tr.Hops {
					mark := "ok  "
					if !h.OK {
						mark = "STOP"
					}
					fmt.Fprintf(g.stdout, "%2d %s %-12s %s: %s\n", i+1, mark, h.What, h.Where, h.Detail)
				}
				if tr.Probe.OK {
					fmt.Fprintf(g.stdout, "ping %s from %s: answered in %s\n", tr.Dst, tr.From, tr.Probe.RTT.Round(1000))
				} else {
					fmt.Fprintf(g.stdout, "ping %s from %s: %s\n", tr.Dst, tr.From, orNoReply(tr.Probe.Error))
				}
				if tr.OK {
					fmt.Fprintln(g.stdout, "the path is clear")
				} else {
					fmt.Fprintf(g.stdout, "traffic stops at %s: %s\n", tr.StoppedAt, tr.Reason)
				}
			}
			if !tr.OK {
				return &exitError{code: ExitFindings, msg: fmt.Sprintf("trace: traffic from %s to %s stops at %s", tr.From, tr.To, tr.StoppedAt)}
			}
			return nil
		},
	}
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}

func orNoReply(s string) string {
	if s == "" {
		return "no reply"
	}
	return s
}
