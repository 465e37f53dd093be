package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/lab"
)

// statusView is the JSON shape of `kvmnet status -o json`.
type statusView struct {
	Network    string             `json:"network"`
	InSync     bool               `json:"in_sync"`
	Drift      []string           `json:"drift"`
	Namespaces []*model.Namespace `json:"namespaces"`
}

func newStatus(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the network as the kernel has it, and any drift from the topology",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			obs, err := lab.Observe(cmd.Context(), t)
			if err != nil {
				return err
			}
			v := statusView{Network: t.ID(), Drift: []string{}}
			steps, derr := lab.Plan(cmd.Context(), t, lab.WithDeep(true))
			if derr != nil {
				v.Drift = append(v.Drift, derr.Error())
			}
			for _, s := range steps {
				v.Drift = append(v.Drift, s.String())
			}
			v.InSync = len(v.Drift) == 0
			for _, name := range model.SortedNames(obs.Namespaces) {
				v.Namespaces = append(v.Namespaces, obs.Namespaces[name])
			}
			if g.output == "json" {
				return g.json(v)
			}
			printStatus(g, v, steps)
			return nil
		},
	}
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}

func printStatus(g *globals, v statusView, steps []plan.Step) {
	w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tINTERFACE\tKIND\tSTATE\tMAC\tMTU\tMASTER/PEER\tADDRESSES")
	for _, ns := range v.Namespaces {
		if ns.Owner != v.Network {
			fmt.Fprintf(w, "%s\t-\t-\tNOT OURS (owner %q)\t\t\t\t\n", ns.Name, ns.Owner)
			continue
		}
		for _, name := range model.SortedNames(ns.Links) {
			l := ns.Links[name]
			state := "down"
			if l.Up {
				state = "up"
			}
			if l.Owner == "" {
				state += " (not kvmnet's)"
			}
			rel := l.Master
			if l.Kind == model.KindVeth {
				if rel != "" {
					rel += " "
				}
				rel += "<-> " + l.Peer.String()
			}
			if l.Kind == model.KindBridge && l.Bridge != nil {
				rel = fmt.Sprintf("stp=%v ageing=%ds", l.Bridge.STP, l.Bridge.AgeingTime)
			}
			addrs := make([]string, len(l.Addrs))
			for i, a := range l.Addrs {
				addrs[i] = a.String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", ns.Name, l.Name, l.Kind, state, l.MAC, l.MTU, rel, strings.Join(addrs, ","))
		}
	}
	w.Flush()
	var routes []string
	for _, ns := range v.Namespaces {
		for _, k := range model.SortedNames(ns.Routes) {
			routes = append(routes, fmt.Sprintf("  %s: %s", ns.Name, ns.Routes[k]))
		}
	}
	if len(routes) > 0 {
		fmt.Fprintln(g.stdout, "\nROUTES (kvmnet's)")
		fmt.Fprintln(g.stdout, strings.Join(routes, "\n"))
	}
	if v.InSync {
		fmt.Fprintf(g.stdout, "\n%s: in sync with the topology\n", v.Network)
	} else {
		fmt.Fprintf(g.stdout, "\n%s: DRIFT, `kvmnet up` would:\n  %s\n", v.Network, strings.Join(v.Drift, "\n  "))
	}
	_ = steps
}
