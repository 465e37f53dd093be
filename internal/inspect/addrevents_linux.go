package inspect

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Address and route events for Watch: RTM_NEWADDR/RTM_DELADDR and
// RTM_NEWROUTE/RTM_DELROUTE, decoded from the raw netlink messages.

func addrKey(index int, p netip.Prefix) string { return fmt.Sprintf("%d|%s", index, p) }

func addrPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), bits), true
}

func familyName(f uint8) string {
	switch f {
	case unix.AF_INET:
		return "inet"
	case unix.AF_INET6:
		return "inet6"
	}
	return fmt.Sprint(f)
}

// addrEvent decodes an address notification. The kernel repeats
// RTM_NEWADDR for an address it already has (IPv6 duplicate address
// detection finishing, lifetime updates): those are not changes and are
// dropped, as link statistics refreshes are.
func (w *watcher) addrEvent(typ uint16, data []byte) []Event {
	if len(data) < unix.SizeofIfAddrmsg {
		return nil
	}
	msg := nl.DeserializeIfAddrmsg(data)
	attrs, err := nl.ParseRouteAttr(data[msg.Len():])
	if err != nil {
		return nil
	}
	var local, addr []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local = a.Value
		case unix.IFA_ADDRESS:
			addr = a.Value
		}
	}
	// IPv4 sends both IFA_LOCAL (this host's address) and IFA_ADDRESS (the
	// peer's on a point-to-point link); IPv6 sends IFA_ADDRESS only.
	if local != nil {
		addr = local
	}
	ip, ok := netip.AddrFromSlice(addr)
	if !ok {
		return nil
	}
	p := netip.PrefixFrom(ip.Unmap(), int(msg.Prefixlen))
	idx := int(msg.Index)
	key := addrKey(idx, p)
	ev := Event{Namespace: w.ns, Type: "addr", Action: "new", Interface: w.names[idx], Family: familyName(msg.Family),
		Address: p.String(), Scope: scopeName(msg.Scope)}
	if typ == unix.RTM_DELADDR {
		ev.Action = "del"
		delete(w.addrs, key)
		if p.Addr().Is4() {
			return append([]Event{ev}, w.flushedRoutes("address "+p.String()+" was removed from "+ev.Interface)...)
		}
		return []Event{ev}
	}
	if w.addrs[key] {
		return nil
	}
	w.addrs[key] = true
	return []Event{ev}
}

// routeEvent decodes a route notification. Routes of the local table (the
// kernel's own local and broadcast routes that come with every address) and
// cached clones are left out: events show the tables `ip route` shows.
func (w *watcher) routeEvent(typ uint16, data []byte) []Event {
	if len(data) < unix.SizeofRtMsg {
		return nil
	}
	msg := nl.DeserializeRtMsg(data)
	if msg.Flags&unix.RTM_F_CLONED != 0 {
		return nil
	}
	attrs, err := nl.ParseRouteAttr(data[msg.Len():])
	if err != nil {
		return nil
	}
	table := int(msg.Table)
	var dst, via, src netip.Addr
	oif, metric := 0, 0
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_GATEWAY:
			via, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_VIA:
			// struct rtvia: family (u16), then the address.
			if len(a.Value) > 2 {
				via, _ = netip.AddrFromSlice(a.Value[2:])
			}
		case unix.RTA_PREFSRC:
			src, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_OIF:
			if len(a.Value) >= 4 {
				oif = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) >= 4 {
				metric = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) >= 4 {
				table = int(binary.NativeEndian.Uint32(a.Value))
			}
		}
	}
	if table == unix.RT_TABLE_LOCAL {
		return nil
	}
	ev := Event{Namespace: w.ns, Type: "route", Action: "new", Interface: w.names[oif], Family: familyName(msg.Family),
		Protocol: routeProtoName(int(msg.Protocol)), Table: table, Metric: metric, Scope: scopeName(msg.Scope)}
	if typ == unix.RTM_DELROUTE {
		ev.Action = "del"
	}
	switch {
	case msg.Dst_len == 0:
		ev.Dst = "default"
	case dst.IsValid():
		ev.Dst = netip.PrefixFrom(dst.Unmap(), int(msg.Dst_len)).String()
	}
	if via.IsValid() {
		ev.Via = via.Unmap().String()
	}
	if src.IsValid() {
		ev.Src = src.Unmap().String()
	}
	if msg.Type != unix.RTN_UNICAST {
		ev.Kind = routeTypeName(msg.Type)
	}
	return []Event{ev}
}

func scopeName(s uint8) string {
	switch s {
	case unix.RT_SCOPE_UNIVERSE:
		return "global"
	case unix.RT_SCOPE_SITE:
		return "site"
	case unix.RT_SCOPE_LINK:
		return "link"
	case unix.RT_SCOPE_HOST:
		return "host"
	case unix.RT_SCOPE_NOWHERE:
		return "nowhere"
	}
	return fmt.Sprint(s)
}

func routeProtoName(p int) string {
	switch p {
	case unix.RTPROT_RA:
		return "ra"
	case unix.RTPROT_DHCP:
		return "dhcp"
	}
	return protoName(p)
}

var routeTypeNames = map[uint8]string{
	unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
	unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
	unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw",
	unix.RTN_NAT: "nat", unix.RTN_XRESOLVE: "xresolve",
}

func routeTypeName(t uint8) string {
	if n, ok := routeTypeNames[t]; ok {
		return n
	}
	return fmt.Sprint(t)
}
