package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/topology"
)

func newInit(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "init [FILE]",
		Short: "Write the reference design to FILE (default kvmnet.yaml) to start from",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "kvmnet.yaml"
			if len(args) == 1 {
				path = args[0]
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			f, err := os.OpenFile(path, flags, 0o644)
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s already exists (use --force to overwrite)", path)
			}
			if err != nil {
				return err
			}
			if _, err := f.Write(topology.DefaultYAML()); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "wrote the reference design to %s; edit it, then: kvmnet up -f %s\n", path, path)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite FILE")
	return cmd
}

func newValidate(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the topology file without touching the kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: valid (network %s: %d namespaces, %d bridges, %d links)\n",
				orDefault(g.file), t.ID(), len(t.Namespaces), len(t.Bridges), len(t.Links))
			return nil
		},
	}
}

func orDefault(f string) string {
	if f == "" {
		return topology.DefaultFile
	}
	return f
}
