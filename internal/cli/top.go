package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/inspect"
)

func newTop(g *globals) *cobra.Command {
	var interval time.Duration
	var count int
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show live per-interface rates and drops, refreshed (plain periodic lines when stdout is not a terminal)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			names, err := networkNamespaces(t)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			tty := isTerminal(g.stdout)
			prev, err := inspect.Network(names, inspect.Counters)
			if err != nil {
				return err
			}
			for n := 0; count == 0 || n < count; n++ {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				cur, err := inspect.Network(names, inspect.Counters)
				if err != nil {
					return err
				}
				inspect.SetRates(prev, cur)
				prev = cur
				printTop(g.stdout, t.ID(), cur, tty)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "refresh interval")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many refreshes (default: until interrupted)")
	cmd.PreRunE = requireRoot
	return cmd
}

// isTerminal reports whether w is a terminal (TCGETS succeeds on it).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

type topRow struct {
	ns, name string
	r        inspect.Rates
	s        inspect.Stats
}

func printTop(out io.Writer, network string, nss []*inspect.Namespace, tty bool) {
	var rows []topRow
	for _, ns := range nss {
		for _, i := range ns.Interfaces {
			if i.Name == "lo" || i.Rates == nil {
				continue
			}
			rows = append(rows, topRow{ns.Name, i.Name, *i.Rates, i.Stats})
		}
	}
	sort.SliceStable(rows, func(a, b int) bool {
		ra, rb := rows[a].r.RxBytes+rows[a].r.TxBytes, rows[b].r.RxBytes+rows[b].r.TxBytes
		if ra != rb {
			return ra > rb
		}
		return rows[a].ns+rows[a].name < rows[b].ns+rows[b].name
	})
	now := time.Now().Format("15:04:05")
	if tty {
		fmt.Fprint(out, "\x1b[H\x1b[2J") // home, clear: one refreshing screen
		fmt.Fprintf(out, "kvmnet top: %s  %s  (Ctrl-C to quit)\n\n", network, now)
	} else {
		fmt.Fprintf(out, "# %s %s\n", now, network)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "NAMESPACE\tINTERFACE\tRX bit/s\tTX bit/s\tRX pkt/s\tTX pkt/s\tDROP/s\tERR/s\tDROPS TOTAL\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n", r.ns, r.name, human(r.r.RxBytes*8), human(r.r.TxBytes*8),
			r.r.RxPackets, r.r.TxPackets, r.r.RxDropped+r.r.TxDropped, r.r.RxErrors+r.r.TxErrors, r.s.RxDropped+r.s.TxDropped)
	}
	w.Flush()
}

func human(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.1fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
