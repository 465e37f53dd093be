package cli

import (
	"errors"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/state"
	"github.com/kvmnet/kvmnet/internal/supervise"
)

// newSupervise is the hidden command `up` runs in the background: the
// network's supervisor (DHCP servers, VM watch). See internal/supervise.
func newSupervise(g *globals) *cobra.Command {
	var network string
	cmd := &cobra.Command{
		Use:    "supervise",
		Short:  "Run a network's background supervisor: its DHCP servers and the watch on its VMs (up starts it, down stops it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if network == "" {
				return errors.New("supervise: --network is required")
			}
			base := g.stateDir
			if base == "" {
				base = state.DefaultDir
			}
			if code := supervise.Serve(filepath.Join(base, network), g.stderr); code != 0 {
				return &exitError{code: code, msg: "supervisor of network " + network + " failed (see its log above)"}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&network, "network", "", "the network ID (prefix+name) whose state directory holds the supervisor's configuration")
	cmd.PreRunE = requireRoot
	return cmd
}
