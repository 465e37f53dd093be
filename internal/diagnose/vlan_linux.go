package diagnose

import (
	"errors"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// readVLANs reads what the kernel has of VLANs in the named namespaces:
// bridges with vlan_filtering and their default PVID, each port's membership
// (what `bridge vlan show` lists) and the 802.1Q sub-interfaces with their
// parent and ID. It uses the reader that observation, and so `kvmnet status`
// (port_vlans), use: link.Conn.Observe.
func readVLANs(names []string) (map[string]*model.Namespace, error) {
	out := map[string]*model.Namespace{}
	for _, name := range names {
		ns, err := netns.Open(name)
		if errors.Is(err, netns.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		c, err := link.Dial(ns)
		if err != nil {
			ns.Close()
			return nil, err
		}
		obs, err := c.Observe()
		c.Close()
		ns.Close()
		if err != nil {
			return nil, err
		}
		out[name] = obs
	}
	return out, nil
}
