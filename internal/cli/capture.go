package cli

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/diagnose"
)

func newCapture(g *globals) *cobra.Command {
	var file string
	var count, snaplen int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "capture NODE/INTERFACE -w FILE",
		Short: "Write the frames crossing an interface (e.g. bridge/vm1, a bridge port) to a pcap file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			node, iface, ok := strings.Cut(args[0], "/")
			if !ok || t.Namespace(node) == nil {
				return fmt.Errorf("%q: want NODE/INTERFACE with NODE a namespace of network %s", args[0], t.ID())
			}
			if file == "" {
				return fmt.Errorf("capture needs -w FILE")
			}
			f, err := os.Create(file)
			if err != nil {
				return err
			}
			bw := bufio.NewWriter(f)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			st, err := diagnose.Capture(ctx, t.NSName(node), iface, bw, count, snaplen)
			if ferr := bw.Flush(); err == nil {
				err = ferr
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			fmt.Fprintf(g.stderr, "kvmnet: %d packets (%d bytes) captured on %s to %s\n", st.Packets, st.Bytes, args[0], file)
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "write", "w", "", "pcap file to write")
	cmd.Flags().IntVarP(&count, "count", "c", 0, "stop after this many packets")
	cmd.Flags().IntVarP(&snaplen, "snaplen", "s", 65535, "bytes kept of each packet")
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop after this long (default: until interrupted or -c)")
	cmd.PreRunE = requireRoot
	return cmd
}
