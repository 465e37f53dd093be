package inspect

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/kvmnet/kvmnet/internal/qos"
)

// mirrors reads kvmnet's port mirrors: one qdisc dump for the namespace,
// then the filters of the links that have a clsact qdisc.
func (c *conn) mirrors(n *Namespace, links []netlink.Link, byIndex map[int]*Interface) error {
	qs, err := c.h.QdiscList(nil)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	clsact := map[int]bool{}
	for _, q := range qs {
		if q.Type() == "clsact" {
			clsact[q.Attrs().LinkIndex] = true
		}
	}
	for _, l := range links {
		if !clsact[l.Attrs().Index] {
			continue
		}
		sides, err := qos.MirrorSides(c.h, l)
		if err != nil {
			return fmt.Errorf("mirrors of %q: %w", l.Attrs().Name, err)
		}
		for _, s := range sides {
			m := Mirror{Port: l.Attrs().Name, Direction: s.Direction, Packets: s.Packets, Bytes: s.Bytes}
			if to := byIndex[s.ToIndex]; to != nil && s.ToIndex != 0 {
				m.To, m.ToUp = to.Name, to.AdminUp && to.Carrier
			}
			n.Mirrors = append(n.Mirrors, m)
		}
	}
	return nil
}
