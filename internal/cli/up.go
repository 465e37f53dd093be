package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/lab"
)

func newUp(g *globals) *cobra.Command {
	var moveNIC, deep bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the network, or bring it to the declared state (no-op when it is already there)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, early, err := g.loadObserving()
			if err != nil {
				return err
			}
			res, err := lab.Up(cmd.Context(), t, append(g.opts(), lab.WithMoveHostNIC(moveNIC), lab.WithDeep(deep), lab.WithEarly(early))...)
			return g.report("up", res, err)
		},
	}
	cmd.Flags().BoolVar(&deep, "deep", false, "read every sysctl back instead of trusting the record kvmnet keeps of those it applied")
	cmd.Flags().BoolVar(&moveNIC, "move-host-nic", false, "allow moving the real NIC named by uplink.device into the network (down moves it back)")
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "text", "text", "json")
	return cmd
}

func newDown(g *globals) *cobra.Command {
	var force bool
	var id string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove everything kvmnet made for the network, and nothing else",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := append(g.opts(), lab.WithForce(force))
			var res *lab.Result
			var err error
			if id != "" {
				res, err = lab.DownID(cmd.Context(), id, g.prefix, opts...)
			} else {
				t, lerr := g.load()
				if lerr != nil {
					return lerr
				}
				res, err = lab.Down(cmd.Context(), t, opts...)
			}
			return g.report("down", res, err)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "also delete namespaces that hold interfaces kvmnet did not create")
	cmd.Flags().StringVar(&id, "network", "", "remove the network with this ID (prefix+name) without reading a topology file")
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "text", "text", "json")
	return cmd
}

// report prints what up or down did (steps and a summary, or JSON) and
// passes err through.
func (g *globals) report(verb string, res *lab.Result, err error) error {
	if res == nil {
		return err
	}
	if g.output == "json" {
		return errors.Join(err, g.json(res))
	}
	for _, s := range res.Steps {
		fmt.Fprintln(g.stdout, s.String())
	}
	if err == nil {
		fmt.Fprintln(g.stdout, res.Summary(verb))
	}
	return err
}
