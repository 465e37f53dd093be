package diagnose

import (
	"fmt"
	"math"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// pathQdiscs reads the qdiscs of the interfaces a probe from namespace ns to
// gw crosses (its egress interface and that veth's bridge port, the
// gateway's interface and its port) and describes each one that drops or
// impairs: a netem qdisc with loss, or any qdisc whose drop counter is not
// zero. It runs only after a lossy probe, to say where the loss comes from.
func (d *diag) pathQdiscs(ns string, gw netip.Addr) []QdiscDrop {
	var path []*node
	seen := map[*node]bool{}
	add := func(n *node) {
		if n != nil && !seen[n] {
			seen[n] = true
			path = append(path, n)
		}
	}
	if n := d.nss[ns]; n != nil {
		for _, i := range n.Interfaces {
			for _, a := range i.Addresses {
				if a.Masked().Contains(gw) {
					e := d.ifaces[ns+"/"+i.Name]
					add(e)
					if e != nil {
						add(e.peer)
					}
				}
			}
		}
	}
	for _, h := range d.holders(gw) {
		add(h)
		add(h.peer)
	}
	var out []QdiscDrop
	for _, n := range path {
		out = append(out, qdiscDrops(n.ns.Name, n.i.Name)...)
	}
	return out
}

// qdiscDrops lists the qdiscs of iface in namespace nsName that drop.
func qdiscDrops(nsName, iface string) []QdiscDrop {
	ns, err := netns.Open(nsName)
	if err != nil {
		return nil
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil
	}
	defer h.Close()
	l, err := h.LinkByName(iface)
	if err != nil {
		return nil
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil
	}
	var out []QdiscDrop
	for _, q := range qs {
		a := q.Attrs()
		qd := QdiscDrop{Namespace: nsName, Interface: iface, Kind: q.Type(), Handle: netlink.HandleStr(a.Handle), Root: a.Parent == netlink.HANDLE_ROOT}
		if a.Statistics != nil && a.Statistics.Queue != nil {
			qd.Drops = uint64(a.Statistics.Queue.Drops)
		}
		if ne, ok := q.(*netlink.Netem); ok {
			qd.LossPct = float64(ne.Loss) * 100 / math.MaxUint32
		}
		if qd.Drops > 0 || qd.LossPct > 0 {
			out = append(out, qd)
		}
	}
	return out
}

func (q QdiscDrop) String() string {
	s := fmt.Sprintf("tc -n %s -s qdisc show dev %s: %s %s", q.Namespace, q.Interface, q.Kind, q.Handle)
	if q.LossPct > 0 {
		s += fmt.Sprintf(" loss %.4g%%", q.LossPct)
	}
	return s + fmt.Sprintf(", %d packets dropped", q.Drops)
}
