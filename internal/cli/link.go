package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/lab"
)

func newLink(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "link NAMESPACE/INTERFACE down|up",
		Short: "Take a kvmnet interface down or up at runtime, without editing the file (fault injection)",
		Long: `Take an interface of the network down (or back up) to try how the network and the
VMs cope. status reports it as deliberate drift; the next kvmnet up repairs it.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			var up bool
			switch args[1] {
			case "up":
				up = true
			case "down":
			default:
				return fmt.Errorf("want down or up, not %q", args[1])
			}
			if err := lab.SetLinkState(cmd.Context(), t, args[0], up, g.opts()...); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s is %s (deliberate; kvmnet up restores the declared state)\n", args[0], args[1])
			return nil
		},
	}
	cmd.PreRunE = requireRoot
	return cmd
}
