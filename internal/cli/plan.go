package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/render"
	"github.com/kvmnet/kvmnet/lab"
)

func newPlan(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what `up` would change, as text, JSON or an equivalent iproute2 shell script",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, early, err := g.loadObserving()
			if err != nil {
				return err
			}
			steps, err := lab.Plan(cmd.Context(), t, append(g.opts(), lab.WithEarly(early))...)
			if err != nil {
				return err
			}
			switch g.output {
			case "json":
				return g.json(map[string]any{"network": t.ID(), "steps": steps})
			case "sh":
				return render.Shell(g.stdout, t.ID(), steps)
			}
			for _, s := range steps {
				fmt.Fprintln(g.stdout, s.String())
			}
			fmt.Fprintf(g.stdout, "plan %s: %d changes\n", t.ID(), len(steps))
			return nil
		},
	}
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "text", "text", "json", "sh")
	return cmd
}
