package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

func newQoS(g *globals) *cobra.Command {
	var rate, ceil, burst, delay, jitter, loss string
	cmd := &cobra.Command{
		Use:   "qos NAMESPACE/INTERFACE set|reset",
		Short: "Shape or impair a kvmnet interface at runtime, without editing the file (fault injection)",
		Long: `kvmnet qos vm1/eth0 set --rate 1mbit --delay 100ms --loss 5% shapes the interface's
egress now; status reports it as deliberate drift, and kvmnet qos vm1/eth0 reset (or
the next kvmnet up) restores what the file declares. Impairments need netem
(CONFIG_NET_SCH_NETEM).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			var q *model.QoS
			switch args[1] {
			case "reset":
			case "set":
				if q, err = qosFromFlags(rate, ceil, burst, delay, jitter, loss); err != nil {
					return err
				}
			default:
				return fmt.Errorf("want set or reset, not %q", args[1])
			}
			if err := lab.SetQoS(cmd.Context(), t, args[0], q, g.opts()...); err != nil {
				return err
			}
			if q == nil {
				fmt.Fprintf(g.stdout, "%s: declared shaping restored\n", args[0])
			} else {
				fmt.Fprintf(g.stdout, "%s: %s (deliberate; kvmnet qos %s reset or kvmnet up restores the declared state)\n", args[0], q, args[0])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&rate, "rate", "", "egress rate, e.g. 10mbit")
	f.StringVar(&ceil, "ceil", "", "ceiling to borrow up to (default: the rate)")
	f.StringVar(&burst, "burst", "", "burst, e.g. 32kb")
	f.StringVar(&delay, "delay", "", "netem delay, e.g. 50ms")
	f.StringVar(&jitter, "jitter", "", "netem jitter, e.g. 5ms")
	f.StringVar(&loss, "loss", "", "netem loss, e.g. 1%")
	cmd.PreRunE = requireRoot
	return cmd
}

// qosFromFlags reuses the topology's parsing and validation of a NIC's qos.
func qosFromFlags(rate, ceil, burst, delay, jitter, loss string) (*model.QoS, error) {
	if rate == "" && delay == "" && loss == "" {
		return nil, fmt.Errorf("give --rate, --delay or --loss")
	}
	q := &topology.QoS{}
	if rate != "" {
		q.Egress = &topology.Rate{Rate: rate, Ceil: ceil, Burst: burst}
	}
	if delay != "" || loss != "" {
		q.Netem = &topology.Netem{Delay: delay, Jitter: jitter, Loss: topology.Scalar(loss)}
	}
	return model.QoSFromSpec(q)
}
