// Package link talks rtnetlink to one namespace at a time through a
// descriptor-bound connection: it creates bridges and veth pairs (both ends
// born in their namespaces), sets link attributes, addresses and routes, and
// reads a namespace back into the model. It never switches the calling
// thread's namespace itself.
package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// RouteProtocol marks the routes kvmnet installs (`ip route` shows "proto 211").
const RouteProtocol = 211

// Sentinel errors; kernel errnos are translated to these at this boundary.
var (
	ErrExists   = errors.New("already exists")
	ErrNotFound = errors.New("not found")
)

func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %w", ErrExists, err)
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// Conn is an rtnetlink connection bound to one namespace.
type Conn struct {
	NS  *netns.NS
	h   *netlink.Handle
	raw map[int]*nl.SocketHandle
	// index caches ifindex by name for links this Conn created or looked up.
	index map[string]int
	// Writes counts the requests sent that change kernel state.
	Writes int
}

// Dial opens a connection to ns. Close it when done.
func Dial(ns *netns.NS) (*Conn, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	sock, err := nl.GetNetlinkSocketAt(vnetns.NsHandle(ns.Fd()), vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	return &Conn{NS: ns, h: h, raw: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}, index: map[string]int{}}, nil
}

// Close closes the sockets (not the namespace).
func (c *Conn) Close() {
	c.h.Close()
	for _, s := range c.raw {
		s.Close()
	}
}

func (c *Conn) request(typ, flags int) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr), Type: uint16(typ), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		Sockets:  c.raw,
	}
}

func (c *Conn) exec(req *nl.NetlinkRequest) error {
	c.Writes++
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// Index returns the ifindex of name.
func (c *Conn) Index(name string) (int, error) {
	if i, ok := c.index[name]; ok {
		return i, nil
	}
	l, err := c.h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("link %q in namespace %q: %w", name, c.NS.Name, translate(err))
	}
	c.index[name] = l.Attrs().Index
	return l.Attrs().Index, nil
}

func ifname(name string) *nl.RtAttr { return nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)) }

func u32(typ int, v uint32) *nl.RtAttr { return nl.NewRtAttr(typ, nl.Uint32Attr(v)) }

func hwaddr(mac string) (*nl.RtAttr, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, err
	}
	return nl.NewRtAttr(unix.IFLA_ADDRESS, hw), nil
}

// linkAttrs adds the attributes shared by created links: MTU, MAC, one queue.
func linkAttrs(parent interface{ AddChild(nl.NetlinkRequestData) }, l *model.Link) error {
	if l.MTU > 0 {
		parent.AddChild(u32(unix.IFLA_MTU, uint32(l.MTU)))
	}
	if l.MAC != "" {
		a, err := hwaddr(l.MAC)
		if err != nil {
			return err
		}
		parent.AddChild(a)
	}
	return nil
}

// reqParent adapts a request to the AddChild shape of RtAttr.
type reqParent struct{ r *nl.NetlinkRequest }

func (p reqParent) AddChild(d nl.NetlinkRequestData) { p.r.AddData(d) }

func upMsg(up bool) *nl.IfInfomsg {
	m := nl.NewIfInfomsg(unix.AF_UNSPEC)
	if up {
		m.Change, m.Flags = unix.IFF_UP, unix.IFF_UP
	}
	return m
}

// CreateBridge creates bridge l with its MAC, MTU, STP and ageing time, marks
// it and brings it up, in one request.
func (c *Conn) CreateBridge(l *model.Link, mark string) error {
	req := c.request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(upMsg(l.Up))
	req.AddData(ifname(l.Name))
	if err := linkAttrs(reqParent{req}, l); err != nil {
		return err
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	if l.Bridge != nil {
		data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(b2u(l.Bridge.STP)))
		data.AddRtAttr(nl.IFLA_BR_AGEING_TIME, nl.Uint32Attr(uint32(l.Bridge.AgeingTime*100)))
		if l.Bridge.VLANFiltering {
			data.AddRtAttr(nl.IFLA_BR_VLAN_FILTERING, []byte{1})
		}
		if l.Bridge.DefaultPVID != 0 {
			data.AddRtAttr(nl.IFLA_BR_VLAN_DEFAULT_PVID, nl.Uint16Attr(uint16(l.Bridge.DefaultPVID)))
		}
	}
	req.AddData(info)
	if err := c.exec(req); err != nil {
		if l.Bridge != nil && l.Bridge.VLANFiltering {
			return fmt.Errorf("create bridge %q in namespace %q: %w", l.Name, c.NS.Name,
				kernelfeat.Check(kernelfeat.BridgeVLANFiltering, translate(err)))
		}
		return c.createErr("bridge", l.Name, err)
	}
	return c.SetAlias(l.Name, mark)
}

// CreateVLAN creates the 802.1Q sub-interface l (ID l.VID on l.Parent) with
// its MAC, MTU and master, up, and marks it.
func (c *Conn) CreateVLAN(l *model.Link, mark string) error {
	pi, err := c.Index(l.Parent)
	if err != nil {
		return err
	}
	req := c.request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(upMsg(l.Up))
	req.AddData(ifname(l.Name))
	req.AddData(u32(unix.IFLA_LINK, uint32(pi)))
	if err := linkAttrs(reqParent{req}, l); err != nil {
		return err
	}
	if l.Master != "" {
		mi, err := c.Index(l.Master)
		if err != nil {
			return err
		}
		req.AddData(u32(unix.IFLA_MASTER, uint32(mi)))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("vlan"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(nl.IFLA_VLAN_ID, nl.Uint16Attr(uint16(l.VID)))
	req.AddData(info)
	if err := c.exec(req); err != nil {
		return c.createErr("vlan", l.Name, err)
	}
	return c.SetAlias(l.Name, mark)
}

// PortVLANs returns the VLAN membership of port name (sorted by VID).
func (c *Conn) PortVLANs(name string) ([]model.VLANEntry, error) {
	idx, err := c.Index(name)
	if err != nil {
		return nil, err
	}
	all, err := c.h.BridgeVlanList()
	if err != nil {
		return nil, fmt.Errorf("list bridge VLANs in namespace %q: %w", c.NS.Name, translate(err))
	}
	return vlanEntries(all[int32(idx)]), nil
}

func vlanEntries(infos []*nl.BridgeVlanInfo) []model.VLANEntry {
	out := make([]model.VLANEntry, 0, len(infos))
	for _, v := range infos {
		out = append(out, model.VLANEntry{VID: int(v.Vid), PVID: v.Flags&nl.BRIDGE_VLAN_INFO_PVID != 0, Untagged: v.Flags&nl.BRIDGE_VLAN_INFO_UNTAGGED != 0})
	}
	slices.SortFunc(out, func(a, b model.VLANEntry) int { return a.VID - b.VID })
	return out
}

// SetPortVLANs makes the VLAN membership of bridge port name exactly want:
// it reads the current membership, adds or updates what differs, then
// removes what is not wanted (so a port is never left without its PVID).
func (c *Conn) SetPortVLANs(name string, want []model.VLANEntry) error {
	have, err := c.PortVLANs(name)
	if err != nil {
		return err
	}
	idx, _ := c.Index(name)
	dev := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: name}}
	for _, w := range want {
		if slices.Contains(have, w) {
			continue
		}
		c.Writes++
		if err := c.h.BridgeVlanAdd(dev, uint16(w.VID), w.PVID, w.Untagged, false, true); err != nil {
			return fmt.Errorf("add VLAN %s to port %q in namespace %q: %w", w, name, c.NS.Name, translate(err))
		}
	}
	for _, h := range have {
		if slices.ContainsFunc(want, func(w model.VLANEntry) bool { return w.VID == h.VID }) {
			continue
		}
		c.Writes++
		if err := c.h.BridgeVlanDel(dev, uint16(h.VID), false, false, false, true); err != nil {
			return fmt.Errorf("delete VLAN %d from port %q in namespace %q: %w", h.VID, name, c.NS.Name, translate(err))
		}
	}
	return nil
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func (c *Conn) createErr(kind, name string, err error) error {
	return fmt.Errorf("create %s %q in namespace %q: %w", kind, name, c.NS.Name,
		kernelfeat.Check(kernelfeat.LinkKind(kind), translate(err)))
}

// CreateVeth creates the veth pair l <-> peer: l in this namespace, peer
// directly in peerNS (no move afterwards: moving a link costs an RCU barrier),
// each with its MAC, MTU, one TX/RX queue (the default two cost extra grace
// periods) and up. l's master is set in the same request. Both ends are
// marked.
func (c *Conn) CreateVeth(l, peer *model.Link, pc *Conn, mark, peerMark string) error {
	req := c.request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(upMsg(l.Up))
	req.AddData(ifname(l.Name))
	if err := linkAttrs(reqParent{req}, l); err != nil {
		return err
	}
	req.AddData(u32(unix.IFLA_NUM_TX_QUEUES, 1))
	req.AddData(u32(unix.IFLA_NUM_RX_QUEUES, 1))
	if l.Master != "" {
		mi, err := c.Index(l.Master)
		if err != nil {
			return err
		}
		req.AddData(u32(unix.IFLA_MASTER, uint32(mi)))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	p := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	pm := upMsg(false)
	p.AddChild(pm)
	p.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(peer.Name))
	if err := linkAttrs(p, peer); err != nil {
		return err
	}
	p.AddRtAttr(unix.IFLA_NUM_TX_QUEUES, nl.Uint32Attr(1))
	p.AddRtAttr(unix.IFLA_NUM_RX_QUEUES, nl.Uint32Attr(1))
	p.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(pc.NS.Fd())))
	req.AddData(info)
	if err := c.exec(req); err != nil {
		return c.createErr("veth", l.Name, err)
	}
	// The kernel ignores IFLA_IFALIAS in a create request: mark afterwards.
	if err := c.SetAlias(l.Name, mark); err != nil {
		return err
	}
	return pc.markUp(peer.Name, peerMark, peer.Up)
}

// markUp sets the mark and the administrative state of name in one request.
// (A veth peer cannot be brought up in the request that creates it: the
// kernel answers ENOTCONN, so this follows the creation.)
func (c *Conn) markUp(name, mark string, up bool) error {
	m := nl.NewIfInfomsg(unix.AF_UNSPEC)
	m.Change = unix.IFF_UP
	if up {
		m.Flags = unix.IFF_UP
	}
	if err := c.setlink(name, m, nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(mark))); err != nil {
		return fmt.Errorf("mark %q in namespace %q: %w", name, c.NS.Name, err)
	}
	return nil
}

// SetAlias sets the ifalias of name (the ownership mark).
func (c *Conn) SetAlias(name, alias string) error {
	req := c.request(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(ifname(name))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	if err := c.exec(req); err != nil {
		return fmt.Errorf("mark %q in namespace %q: %w", name, c.NS.Name, translate(err))
	}
	return nil
}

// setlink sends one RTM_SETLINK for name with extra attributes.
func (c *Conn) setlink(name string, msg *nl.IfInfomsg, attrs ...nl.NetlinkRequestData) error {
	req := c.request(unix.RTM_SETLINK, unix.NLM_F_ACK)
	if msg == nil {
		msg = nl.NewIfInfomsg(unix.AF_UNSPEC)
	}
	req.AddData(msg)
	req.AddData(ifname(name))
	for _, a := range attrs {
		req.AddData(a)
	}
	return translate(c.exec(req))
}

// SetUp sets the administrative state of name.
func (c *Conn) SetUp(name string, up bool) error {
	m := nl.NewIfInfomsg(unix.AF_UNSPEC)
	m.Change = unix.IFF_UP
	if up {
		m.Flags = unix.IFF_UP
	}
	if err := c.setlink(name, m); err != nil {
		return fmt.Errorf("set %q %s in namespace %q: %w", name, map[bool]string{true: "up", false: "down"}[up], c.NS.Name, err)
	}
	return nil
}

// SetMTU sets the MTU of name.
func (c *Conn) SetMTU(name string, mtu int) error {
	if err := c.setlink(name, nil, u32(unix.IFLA_MTU, uint32(mtu))); err != nil {
		return fmt.Errorf("set MTU %d on %q in namespace %q: %w", mtu, name, c.NS.Name, err)
	}
	return nil
}

// SetMAC sets the MAC of name; a device that refuses a live change is taken
// down for it and brought back up.
func (c *Conn) SetMAC(name, mac string) error {
	a, err := hwaddr(mac)
	if err != nil {
		return err
	}
	err = c.setlink(name, nil, a)
	if errors.Is(err, unix.EBUSY) {
		if err = c.SetUp(name, false); err == nil {
			err = c.setlink(name, nil, a)
			err = errors.Join(err, c.SetUp(name, true))
		}
	}
	if err != nil {
		return fmt.Errorf("set MAC %s on %q in namespace %q: %w", mac, name, c.NS.Name, err)
	}
	return nil
}

// SetMaster enslaves name to bridge master, or releases it when master is "".
func (c *Conn) SetMaster(name, master string) error {
	idx := 0
	if master != "" {
		var err error
		if idx, err = c.Index(master); err != nil {
			return err
		}
	}
	if err := c.setlink(name, nil, u32(unix.IFLA_MASTER, uint32(idx))); err != nil {
		return fmt.Errorf("set master of %q to %q in namespace %q: %w", name, master, c.NS.Name, err)
	}
	return nil
}

// BridgeChange lists the bridge options to change; nil fields stay.
type BridgeChange struct {
	STP           *bool
	Ageing        *int // seconds
	VLANFiltering *bool
	DefaultPVID   *int
}

// SetBridgeOpts changes options of bridge name in one request.
func (c *Conn) SetBridgeOpts(name string, ch BridgeChange) error {
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	if ch.STP != nil {
		data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(b2u(*ch.STP)))
	}
	if ch.Ageing != nil {
		data.AddRtAttr(nl.IFLA_BR_AGEING_TIME, nl.Uint32Attr(uint32(*ch.Ageing*100)))
	}
	if ch.VLANFiltering != nil {
		data.AddRtAttr(nl.IFLA_BR_VLAN_FILTERING, []byte{byte(b2u(*ch.VLANFiltering))})
	}
	if ch.DefaultPVID != nil {
		data.AddRtAttr(nl.IFLA_BR_VLAN_DEFAULT_PVID, nl.Uint16Attr(uint16(*ch.DefaultPVID)))
	}
	req := c.request(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(ifname(name))
	req.AddData(info)
	if err := translate(c.exec(req)); err != nil {
		if ch.VLANFiltering != nil && *ch.VLANFiltering {
			err = kernelfeat.Check(kernelfeat.BridgeVLANFiltering, err)
		}
		return fmt.Errorf("set bridge options of %q in namespace %q: %w", name, c.NS.Name, err)
	}
	return nil
}

// DeleteLink deletes name; a link that is already gone is not an error.
func (c *Conn) DeleteLink(name string) error {
	req := c.request(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(ifname(name))
	err := translate(c.exec(req))
	delete(c.index, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete %q in namespace %q: %w", name, c.NS.Name, err)
	}
	return nil
}

// AddAddr adds prefix to name.
func (c *Conn) AddAddr(name string, p netip.Prefix) error {
	idx, err := c.Index(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // declared addresses are unique by validation
	}
	c.Writes++
	if err := c.h.AddrAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: name}}, a); err != nil {
		return fmt.Errorf("add address %s to %q in namespace %q: %w", p, name, c.NS.Name, translate(err))
	}
	return nil
}

// DelAddr removes prefix from name; an address already gone is not an error.
func (c *Conn) DelAddr(name string, p netip.Prefix) error {
	idx, err := c.Index(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	c.Writes++
	err = c.h.AddrDel(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: name}}, a)
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %q in namespace %q: %w", p, name, c.NS.Name, translate(err))
	}
	return nil
}

func (c *Conn) nlRoute(r *model.Route) (*netlink.Route, error) {
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Protocol: RouteProtocol,
		Priority: r.Metric,
		Table:    unix.RT_TABLE_MAIN,
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	}
	if r.Dev != "" {
		idx, err := c.Index(r.Dev)
		if err != nil {
			return nil, err
		}
		nr.LinkIndex = idx
	}
	if !r.Via.IsValid() {
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr, nil
}

// ReplaceRoute installs r (replacing a route with the same destination and metric).
func (c *Conn) ReplaceRoute(r *model.Route) error {
	nr, err := c.nlRoute(r)
	if err == nil {
		c.Writes++
		err = translate(c.h.RouteReplace(nr))
	}
	if err != nil {
		return fmt.Errorf("add route %s in namespace %q: %w", r, c.NS.Name, err)
	}
	return nil
}

// DelRoute removes r; a route already gone is not an error.
func (c *Conn) DelRoute(r *model.Route) error {
	nr, err := c.nlRoute(r)
	if err == nil {
		c.Writes++
		err = translate(c.h.RouteDel(nr))
	}
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s in namespace %q: %w", r, c.NS.Name, err)
	}
	return nil
}

// MarkNamespace brings lo up and writes the namespace's ownership mark on it.
func (c *Conn) MarkNamespace(mark string) error {
	m := nl.NewIfInfomsg(unix.AF_UNSPEC)
	m.Change, m.Flags = unix.IFF_UP, unix.IFF_UP
	if err := c.setlink("lo", m, nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(mark))); err != nil {
		return fmt.Errorf("mark namespace %q: %w", c.NS.Name, err)
	}
	return nil
}

// Rename renames link old to name (the link must be down).
func (c *Conn) Rename(old, name string) error {
	l, err := c.h.LinkByName(old)
	if err != nil {
		return fmt.Errorf("rename %q in namespace %q: %w", old, c.NS.Name, translate(err))
	}
	c.Writes++
	if err := c.h.LinkSetName(l, name); err != nil {
		return fmt.Errorf("rename %q to %q in namespace %q: %w", old, name, c.NS.Name, translate(err))
	}
	delete(c.index, old)
	return nil
}

// MoveTo moves link name into the namespace open at fd.
func (c *Conn) MoveTo(name string, fd int) error {
	c.Writes++
	if err := c.setlink(name, nil, u32(unix.IFLA_NET_NS_FD, uint32(fd))); err != nil {
		return fmt.Errorf("move %q out of namespace %q: %w", name, c.NS.Name, err)
	}
	delete(c.index, name)
	return nil
}

// Alias returns the ifalias of name.
func (c *Conn) Alias(name string) (string, error) {
	l, err := c.h.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("link %q in namespace %q: %w", name, c.NS.Name, translate(err))
	}
	return l.Attrs().Alias, nil
}

// DeviceConfig is the L3 configuration of a real NIC in the root namespace,
// saved before kvmnet moves it (the kernel flushes it on the move) and
// restored when it comes back.
type DeviceConfig struct {
	Addrs  []netip.Prefix `json:"addrs"`
	Routes []DeviceRoute  `json:"routes"`
	Up     bool           `json:"up"`
}

// DeviceRoute is a route through the NIC (main table, not the kernel's own
// connected routes).
type DeviceRoute struct {
	Dst      netip.Prefix `json:"dst"`
	Via      netip.Addr   `json:"via,omitzero"`
	Metric   int          `json:"metric"`
	Protocol int          `json:"protocol"`
	Scope    int          `json:"scope"`
}

// Snapshot reads name's addresses (without IPv6 link-local ones) and the
// routes through it.
func (c *Conn) Snapshot(name string) (DeviceConfig, error) {
	var cfg DeviceConfig
	l, err := c.h.LinkByName(name)
	if err != nil {
		return cfg, fmt.Errorf("read %q in namespace %q: %w", name, c.NS.Name, translate(err))
	}
	cfg.Up = l.Attrs().Flags&net.FlagUp != 0
	addrs, err := c.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return cfg, fmt.Errorf("read addresses of %q: %w", name, translate(err))
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			continue
		}
		bits, _ := a.Mask.Size()
		cfg.Addrs = append(cfg.Addrs, netip.PrefixFrom(ip, bits))
	}
	routes, err := c.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return cfg, fmt.Errorf("read routes through %q: %w", name, translate(err))
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue // comes back with the address
		}
		dst, via := routeDstVia(r)
		cfg.Routes = append(cfg.Routes, DeviceRoute{Dst: dst, Via: via, Metric: r.Priority, Protocol: int(r.Protocol), Scope: int(r.Scope)})
	}
	return cfg, nil
}

// Restore puts a snapshot back on name: addresses, then routes.
func (c *Conn) Restore(name string, cfg DeviceConfig) error {
	var errs []error
	if cfg.Up {
		errs = append(errs, c.SetUp(name, true))
	}
	for _, a := range cfg.Addrs {
		if err := c.AddAddr(name, a); err != nil && !errors.Is(err, ErrExists) {
			errs = append(errs, err)
		}
	}
	idx, err := c.Index(name)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range cfg.Routes {
		nr := &netlink.Route{
			LinkIndex: idx, Priority: r.Metric, Protocol: netlink.RouteProtocol(r.Protocol), Scope: netlink.Scope(r.Scope), Table: unix.RT_TABLE_MAIN,
			Dst: &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		}
		if r.Via.IsValid() {
			nr.Gw = r.Via.AsSlice()
		}
		c.Writes++
		if err := c.h.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("restore route %s on %q: %w", r.Dst, name, translate(err)))
		}
	}
	return errors.Join(errs...)
}

// routeDstVia returns a route's destination (0.0.0.0/0 or ::/0 for a
// default route) and gateway (zero when on-link).
func routeDstVia(r netlink.Route) (dst netip.Prefix, via netip.Addr) {
	switch {
	case r.Dst != nil:
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		bits, _ := r.Dst.Mask.Size()
		dst = netip.PrefixFrom(ip.Unmap(), bits)
	case r.Family == unix.AF_INET6:
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	default:
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if r.Gw != nil {
		gw, _ := netip.AddrFromSlice(r.Gw)
		via = gw.Unmap()
	}
	return dst, via
}
