package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/netns"
)

func newExec(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec NODE -- CMD [ARGS...]",
		Short: "Run a command inside a node's namespace (like ip netns exec)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			node := args[0]
			if t.Namespace(node) == nil {
				return fmt.Errorf("node %q is not a namespace of network %s", node, t.ID())
			}
			return netns.Exec(t.NSName(node), args[1], args[1:])
		},
	}
	cmd.PreRunE = requireRoot
	return cmd
}
