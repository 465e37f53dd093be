package diagnose

import (
	"fmt"

	"github.com/kvmnet/kvmnet/topology"
)

// CheckMirror: a declared port mirror does not copy what it should (its
// filter is missing or points elsewhere), or its copies are lost (the
// destination is gone, down or without carrier): the IDS sees nothing.
const CheckMirror = "mirror-broken"

// checkMirrors compares each declared mirror with the kernel's mirrors
// (internal/inspect reads kvmnet's tc mirred filters). Part of step 2: a
// mirror is a function of the switch's ports.
func (d *diag) checkMirrors() {
	for _, m := range d.t.Mirrors {
		nsName := d.t.NSName(m.Namespace)
		ns := d.nss[nsName]
		if ns == nil || ns.Owner != d.t.ID() {
			continue // checkPresence reports the namespace
		}
		var dirs []string
		in, eg := m.Copies()
		if in {
			dirs = append(dirs, topology.MirrorIngress)
		}
		if eg {
			dirs = append(dirs, topology.MirrorEgress)
		}
		dest := ns.Interface(m.To)
		for _, p := range m.Ports {
			if ns.Interface(p) == nil {
				continue // checkPresence reports the port
			}
			for _, dir := range dirs {
				show := fmt.Sprintf("tc -n %s filter show dev %s %s", nsName, p, dir)
				f := Finding{Severity: Warning, Step: 2, Check: CheckMirror, Namespace: nsName, Node: m.Namespace, Interface: p}
				found := false
				for _, k := range ns.Mirrors {
					if k.Port != p || k.Direction != dir {
						continue
					}
					found = true
					switch {
					case k.To == "":
						f.Summary = fmt.Sprintf("mirror %s: the copies of %s's %s go to an interface that no longer exists", m.Name, p, dir)
						f.Evidence = []string{show + ": mirred to a deleted device", fmt.Sprintf("%d packets copied so far", k.Packets)}
						f.Fix = "kvmnet up --deep (rebuilds the mirror to " + m.To + ")"
					case k.To != m.To:
						f.Summary = fmt.Sprintf("mirror %s: %s's %s is copied to %s, not to %s", m.Name, p, dir, k.To, m.To)
						f.Evidence = []string{show + ": mirred to " + k.To, fmt.Sprintf("the topology says to: %s", m.To)}
						f.Fix = "kvmnet up --deep"
					case !k.ToUp:
						state := "down"
						if dest != nil && dest.AdminUp {
							state = "up without carrier (its peer is down or gone)"
						}
						f.Summary = fmt.Sprintf("mirror %s: %s is %s, so the copies of %s's %s are lost", m.Name, m.To, state, p, dir)
						f.Evidence = []string{show + ": mirred to " + k.To, fmt.Sprintf("%s link show %s: %s", ipn(nsName), m.To, state)}
						f.Fix = fmt.Sprintf("%s link set %s up (and its peer), or kvmnet up", ipn(nsName), m.To)
					default:
						continue
					}
					d.add(f)
				}
				if !found {
					f.Summary = fmt.Sprintf("mirror %s: %s's %s is not copied to %s", m.Name, p, dir, m.To)
					f.Evidence = []string{show + ": no kvmnet mirror filter (preference 27501)"}
					f.Fix = "kvmnet up --deep (puts the filter back)"
					d.add(f)
				}
			}
		}
	}
}
