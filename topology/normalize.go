package topology

import (
	"crypto/sha256"
	"fmt"
	"net"
	"strings"
)

// Default values filled in by Normalize.
const (
	DefaultMTU        = 1500
	DefaultAgeingTime = 300
	DefaultUplinkName = "uplink0"
)

// Normalize fills in defaults: roles, MTUs, ageing times, the uplink's
// namespace and name, and a MAC for every interface that has none. Derived MACs
// are locally administered unicast addresses hashed from the network ID, the
// namespace and the interface name, so they are stable across runs and hosts;
// a derived MAC that would collide with any other MAC in the topology is
// re-hashed until it does not. Normalize is idempotent.
func (t *Topology) Normalize() error {
	for i := range t.Namespaces {
		if t.Namespaces[i].Role == "" {
			t.Namespaces[i].Role = RoleEndpoint
		}
	}
	for i := range t.Bridges {
		if t.Bridges[i].AgeingTime == nil {
			v := DefaultAgeingTime
			t.Bridges[i].AgeingTime = &v
		}
	}
	for i := range t.Links {
		if t.Links[i].MTU == 0 {
			t.Links[i].MTU = DefaultMTU
		}
	}
	if u := t.Uplink; u != nil {
		if u.Mode == "" {
			u.Mode = ModeIsolated
		}
		if u.Namespace == "" {
			if hosts := t.NamespacesWithRole(RoleHost); len(hosts) == 1 {
				u.Namespace = hosts[0]
			}
		}
		if u.Name == "" && u.Mode != ModeIsolated {
			if u.Device != "" {
				u.Name = u.Device
			} else {
				u.Name = DefaultUplinkName
			}
		}
	}

	// MACs: explicit ones are taken first, so a derived MAC never steals one.
	used := map[string]bool{}
	t.eachMAC(func(_ string, mac *string) {
		if hw, err := net.ParseMAC(*mac); err == nil && *mac != "" {
			used[hw.String()] = true
		}
	})
	t.eachMAC(func(owner string, mac *string) {
		if *mac == "" {
			*mac = deriveMAC(t.ID(), owner, used)
			used[*mac] = true
		}
	})
	return nil
}

// eachMAC calls fn for every MAC field with a stable owner key ("ns/ifname").
// A real NIC moved in as uplink keeps its own MAC unless one is given, so it
// is skipped.
func (t *Topology) eachMAC(fn func(owner string, mac *string)) {
	for i := range t.Bridges {
		b := &t.Bridges[i]
		fn(b.Namespace+"/"+b.Name, &b.MAC)
	}
	for i := range t.Links {
		for j := range t.Links[i].Endpoints {
			e := &t.Links[i].Endpoints[j]
			fn(e.Namespace+"/"+e.Name, &e.MAC)
		}
	}
	if u := t.Uplink; u != nil && u.Mode != ModeIsolated {
		if u.Device == "" {
			fn(u.Namespace+"/"+u.Name, &u.MAC)
		}
		if u.Peer != nil {
			fn(u.Peer.Namespace+"/"+u.Peer.Name, &u.Peer.MAC)
		}
	}
}

// deriveMAC hashes network ID and owner into a locally administered unicast
// MAC not in used.
func deriveMAC(id, owner string, used map[string]bool) string {
	for n := 0; ; n++ {
		key := id + "\x00" + owner
		if n > 0 {
			key += fmt.Sprintf("\x00%d", n)
		}
		sum := sha256.Sum256([]byte(key))
		hw := net.HardwareAddr(sum[:6])
		hw[0] = hw[0]&0xfc | 0x02 // unicast, locally administered
		if s := hw.String(); !used[s] && !strings.HasSuffix(s, "00:00:00:00:00") {
			return s
		}
	}
}
