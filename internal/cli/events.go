package cli

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/topology"
)

func newEvents(g *globals) *cobra.Command {
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Stream link, bridge FDB, neighbour, address and route changes in the network's namespaces as JSON lines",
		Long: `events subscribes to the kernel's link, neighbour (the bridge FDB included), address
and route notifications in every namespace of the network and prints one JSON object
per change until interrupted (or --duration): "type" is link, fdb, neigh, addr or
route, "action" new or del. Address events carry "address" (10.0.0.1/24) and
"family"; route events "dst" (a prefix or default), "via", "interface", "protocol",
"table", "metric", "scope" and "kind" when not unicast (the local table's routes are
left out, as ip route leaves them out). IPv4 routes the kernel flushes without a
notification (their interface went down or was deleted, or lost the address they went
through) are reported as route del events with a "reason". An FDB event whose MAC was last learned on another
port of the same bridge carries "moved_from": a MAC moving between ports (a migrated VM,
a duplicate MAC, or a loop when it flaps).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			return streamEvents(ctx, g, t)
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop after this long (default: until interrupted)")
	cmd.PreRunE = requireRoot
	return cmd
}

// networkNamespaces returns the kernel names of t's namespaces that exist
// and belong to it.
func networkNamespaces(t *topology.Topology) ([]string, error) {
	var names []string
	for _, ns := range t.Namespaces {
		names = append(names, t.NSName(ns.Name))
	}
	nss, err := inspect.Network(names, inspect.Counters)
	if err != nil {
		return nil, err
	}
	var ours []string
	for _, n := range nss {
		if n.Owner == t.ID() {
			ours = append(ours, n.Name)
		}
	}
	if len(ours) == 0 {
		return nil, errors.New("network " + t.ID() + " has no namespace (run kvmnet up)")
	}
	return ours, nil
}

func streamEvents(ctx context.Context, g *globals, t *topology.Topology) error {
	names, err := networkNamespaces(t)
	if err != nil {
		return err
	}
	ch := make(chan inspect.Event, 256)
	errc := make(chan error, 1)
	go func() { errc <- inspect.Watch(ctx, names, ch) }()
	enc := json.NewEncoder(g.stdout)
	for {
		select {
		case ev := <-ch:
			if err := enc.Encode(ev); err != nil {
				return err
			}
		case err := <-errc:
			for {
				select {
				case ev := <-ch:
					_ = enc.Encode(ev)
				default:
					return err
				}
			}
		}
	}
}
