package link

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
)

// NamespaceMark returns what the namespace's mark (lo's alias) says; ok is
// false when kvmnet did not create the namespace.
func (c *Conn) NamespaceMark() (m model.MarkInfo, ok bool, err error) {
	l, err := c.h.LinkByName("lo")
	if err != nil {
		return m, false, fmt.Errorf("read lo in namespace %q: %w", c.NS.Name, translate(err))
	}
	m, ok = model.ParseMark(l.Attrs().Alias)
	return m, ok, nil
}

// Observe reads the namespace's links, addresses and kvmnet routes into a
// model.Namespace. Owner is taken from lo's mark. Sysctls are not read here.
func (c *Conn) Observe() (*model.Namespace, error) {
	links, err := c.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in namespace %q: %w", c.NS.Name, translate(err))
	}
	ns := &model.Namespace{Name: c.NS.Name, Links: map[string]*model.Link{}, Routes: map[string]*model.Route{}, Sysctls: map[string]string{}}
	byIndex := map[int]*model.Link{}
	masters := map[*model.Link]int{}
	parents := map[*model.Link]int{}
	for _, nl := range links {
		a := nl.Attrs()
		if a.Name == "lo" {
			if m, ok := model.ParseMark(a.Alias); ok {
				ns.Owner, ns.Marks = m.ID, m.Marks
			}
			continue
		}
		l := &model.Link{Name: a.Name, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Index: a.Index}
		if a.HardwareAddr != nil {
			l.MAC = a.HardwareAddr.String()
		}
		mark, owned := model.ParseMark(a.Alias)
		if owned {
			l.Owner = mark.ID
		}
		peer, origin := mark.Peer, mark.Origin
		switch {
		case origin != "":
			l.Kind = model.KindDevice // a moved NIC, whatever its driver
		case nl.Type() == "bridge":
			l.Kind = model.KindBridge
		case nl.Type() == "veth":
			l.Kind = model.KindVeth
			l.Peer = peer
		case nl.Type() == "vlan":
			l.Kind = model.KindVLAN
			l.VID = nl.(*netlink.Vlan).VlanId
			parents[l] = a.ParentIndex
		default:
			l.Kind = model.KindOther
		}
		l.Origin = origin
		c.index[a.Name] = a.Index
		ns.Links[a.Name] = l
		byIndex[a.Index] = l
		if a.MasterIndex != 0 {
			masters[l] = a.MasterIndex
		}
	}
	for l, mi := range masters {
		if m := byIndex[mi]; m != nil {
			l.Master = m.Name
		}
	}
	for l, pi := range parents {
		if p := byIndex[pi]; p != nil {
			l.Parent = p.Name
		}
	}
	filtering := false
	for _, l := range ns.Links {
		if l.Kind == model.KindBridge && l.Owner != "" {
			if l.Bridge, err = c.bridgeOpts(l.Name); err != nil {
				return nil, err
			}
			filtering = filtering || l.Bridge.VLANFiltering
		}
	}
	// Port VLANs matter only on VLAN-filtering bridges: dump them only then.
	if filtering {
		all, err := c.h.BridgeVlanList()
		if err != nil {
			return nil, fmt.Errorf("list bridge VLANs in namespace %q: %w", c.NS.Name, translate(err))
		}
		for _, l := range ns.Links {
			if m := ns.Links[l.Master]; m != nil && m.Bridge != nil && m.Bridge.VLANFiltering {
				l.PortVLANs = vlanEntries(all[int32(l.Index)])
			}
		}
	}
	addrs, err := c.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses in namespace %q: %w", c.NS.Name, translate(err))
	}
	for _, a := range addrs {
		l := byIndex[a.LinkIndex]
		if l == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			continue // the kernel's own
		}
		bits, _ := a.Mask.Size()
		l.Addrs = append(l.Addrs, netip.PrefixFrom(ip, bits))
	}
	for _, l := range ns.Links {
		model.SortPrefixes(l.Addrs)
	}
	routes, err := c.h.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes in namespace %q: %w", c.NS.Name, translate(err))
	}
	for _, r := range routes {
		mr := &model.Route{Metric: r.Priority}
		mr.Dst, mr.Via = routeDstVia(r)
		if l := byIndex[r.LinkIndex]; !mr.Via.IsValid() && l != nil {
			mr.Dev = l.Name
		}
		ns.Routes[mr.Key()] = mr
	}
	return ns, nil
}

// bridgeOpts reads STP state and ageing time of a bridge (the library does
// not parse IFLA_BR_STP_STATE).
func (c *Conn) bridgeOpts(name string) (*model.BridgeOpts, error) {
	req := c.request(unix.RTM_GETLINK, 0)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(ifname(name))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil || len(msgs) == 0 {
		return nil, fmt.Errorf("read bridge %q in namespace %q: %w", name, c.NS.Name, translate(err))
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, err
	}
	opts := &model.BridgeOpts{}
	for _, a := range attrs {
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			if info.Attr.Type != nl.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(info.Value)
			if err != nil {
				return nil, err
			}
			for _, d := range data {
				switch d.Attr.Type {
				case nl.IFLA_BR_STP_STATE:
					opts.STP = native().Uint32(d.Value) != 0
				case nl.IFLA_BR_AGEING_TIME:
					opts.AgeingTime = int(native().Uint32(d.Value) / 100)
				case nl.IFLA_BR_VLAN_FILTERING:
					opts.VLANFiltering = d.Value[0] != 0
				case nl.IFLA_BR_VLAN_DEFAULT_PVID:
					opts.DefaultPVID = int(native().Uint16(d.Value))
				}
			}
		}
	}
	return opts, nil
}
