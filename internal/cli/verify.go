package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/lab"
)

func newVerify(g *globals) *cobra.Command {
	var junit string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Probe the topology's expect section with real traffic (ICMP, TCP, UDP, ARP) and print the matrix",
		Long: `Runs every expectation of the topology's expect section as a real probe from inside
its namespace, prints the matrix, optionally writes JUnit XML, and exits non-zero on any
mismatch (a reachable flow that should be blocked, or the other way round).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			if len(t.Expect) == 0 {
				return fmt.Errorf("the topology has no expect section: nothing to verify")
			}
			results, err := lab.Verify(cmd.Context(), t, g.opts()...)
			if err != nil {
				return err
			}
			if g.output == "json" {
				if err := g.json(results); err != nil {
					return err
				}
			} else {
				fmt.Fprint(g.stdout, probe.Matrix(results))
			}
			if junit != "" {
				b, err := probe.JUnit(results)
				if err != nil {
					return err
				}
				if err := os.WriteFile(junit, b, 0o644); err != nil {
					return err
				}
			}
			total, failed := probe.Summary(results)
			if failed > 0 {
				return &exitError{code: ExitFindings, msg: fmt.Sprintf("%d of %d expectations not met", failed, total)}
			}
			fmt.Fprintf(g.stdout, "%d of %d expectations met\n", total, total)
			return nil
		},
	}
	cmd.Flags().StringVar(&junit, "junit", "", "also write the results as JUnit XML to this file")
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}
