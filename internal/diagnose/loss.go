package diagnose

import (
	"fmt"
	"strings"
)

// kvmnetQdisc reports whether a qdisc handle is one of kvmnet's QoS
// handles (internal/qos: 6b76: on egress, 6b77: under it or on the ifb).
func kvmnetQdisc(handle string) bool {
	return strings.HasPrefix(handle, "6b76:") || strings.HasPrefix(handle, "6b77:")
}

// checkLoss: step 1, once the gateway answers: a burst of echo requests
// must not go unanswered (the reference design's packet-loss detection).
// The qdiscs on the path that drop or impair say where: a netem qdisc
// with loss the topology declares makes the finding informational, one it
// does not declare (kvmnet's own, injected with `kvmnet qos`, or anyone's)
// gets the command that removes it.
func (d *diag) checkLoss() {
	for _, p := range d.rep.Probes {
		if !p.Result.OK || p.Loss == nil || p.Loss.Sent == 0 || p.Loss.Percent() < d.o.LossPercent {
			continue
		}
		ns := d.t.NSName(p.Node)
		loss := p.Loss.Percent()
		f := Finding{Severity: Warning, Step: 1, Check: CheckLoss, Namespace: ns,
			Summary: fmt.Sprintf("%.0f%% of the echo requests to the gateway %s got no reply", loss, p.Gateway),
			Evidence: []string{fmt.Sprintf("from %s: %d of %d echo requests to %s answered (%.0f%% loss), while the first probe passed",
				ns, p.Loss.Received, p.Loss.Sent, p.Gateway, loss)}}
		if loss >= 50 {
			f.Severity = Error
		}
		declared, undeclared := 0, 0
		var fixes []string
		for _, q := range p.Qdiscs {
			f.Evidence = append(f.Evidence, q.String())
			if f.Interface == "" {
				f.Namespace, f.Interface = q.Namespace, q.Interface
			}
			if q.LossPct > 0 && d.declaresLoss(q.Namespace, q.Interface) {
				declared++
				continue
			}
			undeclared++
			switch {
			case q.LossPct > 0 && kvmnetQdisc(q.Handle):
				fixes = append(fixes, fmt.Sprintf("kvmnet up (the topology declares no loss on %s/%s: an injected `kvmnet qos` impairment)", q.Namespace, q.Interface))
			case q.LossPct > 0 && q.Root:
				fixes = append(fixes, fmt.Sprintf("tc -n %s qdisc del dev %s root", q.Namespace, q.Interface))
			case q.LossPct > 0:
				fixes = append(fixes, fmt.Sprintf("tc -n %s qdisc del dev %s handle %s", q.Namespace, q.Interface, q.Handle))
			default:
				fixes = append(fixes, fmt.Sprintf("the %s qdisc on %s/%s drops: raise its limit or rate", q.Kind, q.Namespace, q.Interface))
			}
		}
		switch {
		case declared > 0 && undeclared == 0:
			f.Severity = Info
			f.Summary += " (the topology declares netem loss on the path)"
			f.Fix = "none needed: the loss is declared (qos.netem.loss in the topology)"
		case len(fixes) > 0:
			f.Fix = strings.Join(fixes, "; ")
		default:
			f.Fix = "no qdisc on the path drops: see the firewall drops (step 4) and the interfaces' drop counters (kvmnet status)"
		}
		d.add(f)
	}
}

// declaresLoss reports whether the topology gives interface iface of
// namespace ns a netem qdisc with loss.
func (d *diag) declaresLoss(ns, iface string) bool {
	w := d.desired.Namespaces[ns]
	if w == nil {
		return false
	}
	l := w.Links[iface]
	return l != nil && l.QoS != nil && l.QoS.Netem != nil && l.QoS.Netem.LossPct > 0
}
