package inspect

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// Workers bounds how many namespaces are read at once.
var Workers = 2

// ErrMissing says a namespace to inspect does not exist.
var ErrMissing = netns.ErrNotFound

// Network reads the named namespaces (kernel names) with up to Workers at a
// time. Namespaces that do not exist are skipped; the result is in the order
// of names.
func Network(names []string, what What) ([]*Namespace, error) {
	out := make([]*Namespace, len(names))
	errs := make([]error, len(names))
	sem := make(chan struct{}, Workers)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i], errs[i] = Read(name, what)
			if errors.Is(errs[i], netns.ErrNotFound) {
				errs[i] = nil
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	res := out[:0]
	for _, n := range out {
		if n != nil {
			res = append(res, n)
		}
	}
	return res, nil
}

// conn holds the sockets opened inside one namespace.
type conn struct {
	name string
	h    *netlink.Handle
	raw  map[int]*nl.SocketHandle
	nft  *nftables.Conn
}

func (c *conn) close() {
	if c.h != nil {
		c.h.Close()
	}
	for _, s := range c.raw {
		s.Close()
	}
	if c.nft != nil {
		c.nft.CloseLasting()
	}
}

// Read reads one namespace (kernel name).
func Read(name string, what What) (*Namespace, error) {
	ns, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	c := &conn{name: name}
	defer c.close()
	var sysctls map[string]string
	var netstat map[string]uint64
	var links []netlink.Link
	var legacy []LegacyChain
	// One switch into the namespace: open the sockets, and read what only
	// resolves there (/proc/sys/net and /proc/thread-self/net).
	err = netns.Do(ns, func() error {
		var err error
		if c.h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return err
		}
		sock, err := nl.GetNetlinkSocketAt(vnetns.None(), vnetns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		c.raw = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}
		if what&Firewall != 0 {
			// Best effort: a kernel without nf_tables has no firewall to show.
			c.nft, _ = nftables.New(nftables.AsLasting())
			legacy = readLegacyFilter()
		}
		if links, err = c.h.LinkList(); err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		if what&Kernel != 0 {
			sysctls = readSysctls(links)
			netstat = readNetstat()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inspect namespace %q: %w", name, err)
	}
	n := &Namespace{Name: name, Sysctls: sysctls, Netstat: netstat, Legacy: legacy, ReadAt: time.Now()}
	if err := c.read(n, links, what); err != nil {
		return nil, fmt.Errorf("inspect namespace %q: %w", name, err)
	}
	sortNamespace(n)
	return n, nil
}

func (c *conn) read(n *Namespace, links []netlink.Link, what What) error {
	byIndex := map[int]*Interface{}
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" {
			if m, ok := model.ParseMark(a.Alias); ok {
				n.Owner = m.ID
			}
		}
		i := &Interface{
			Name: a.Name, Index: a.Index, Kind: l.Type(), Alias: a.Alias,
			AdminUp:   a.Flags&net.FlagUp != 0,
			OperState: a.OperState.String(),
			Carrier:   a.RawFlags&unix.IFF_LOWER_UP != 0,
			MTU:       a.MTU,
			Addresses: []netip.Prefix{},
		}
		if m, ok := model.ParseMark(a.Alias); ok && a.Name != "lo" {
			i.Owner = m.ID
			if m.Peer.NS != "" {
				i.Peer = m.Peer.String()
			}
		}
		if i.Kind == "device" {
			i.Kind = ""
		}
		if a.HardwareAddr != nil {
			i.MAC = a.HardwareAddr.String()
		}
		if i.Kind == "veth" {
			i.PeerIndex, i.PeerNetNSID = a.ParentIndex, a.NetNsID
		}
		if s := a.Statistics; s != nil {
			i.Stats = Stats{
				RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets,
				RxErrors: s.RxErrors, TxErrors: s.TxErrors, RxDropped: s.RxDropped, TxDropped: s.TxDropped,
				Multicast: s.Multicast,
			}
		}
		byIndex[a.Index] = i
		n.Interfaces = append(n.Interfaces, i)
	}
	bridges := map[int]*Bridge{}
	for _, l := range links {
		a := l.Attrs()
		if m := byIndex[a.MasterIndex]; m != nil && a.MasterIndex != 0 {
			byIndex[a.Index].Master = m.Name
		}
		if l.Type() == "bridge" {
			b := &Bridge{Name: a.Name, Ports: []Port{}, FDB: []FDBEntry{}}
			bridges[a.Index] = b
			n.Bridges = append(n.Bridges, b)
		}
	}
	if what&Addresses != 0 {
		addrs, err := c.h.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			i := byIndex[a.LinkIndex]
			ip, ok := netip.AddrFromSlice(a.IP)
			if i == nil || !ok {
				continue
			}
			bits, _ := a.Mask.Size()
			i.Addresses = append(i.Addresses, netip.PrefixFrom(ip.Unmap(), bits))
		}
		for _, i := range n.Interfaces {
			model.SortPrefixes(i.Addresses)
		}
	}
	if what&Mirrors != 0 {
		if err := c.mirrors(n, links, byIndex); err != nil {
			return err
		}
	}
	if len(bridges) > 0 && what&Ports != 0 {
		for idx, b := range bridges {
			stp, err := c.bridgeSTP(byIndex[idx].Name)
			if err != nil {
				return err
			}
			b.STP = stp
		}
		ports, err := c.portStates()
		if err != nil {
			return err
		}
		for _, p := range ports {
			if b := bridges[p.master]; b != nil && byIndex[p.index] != nil {
				b.Ports = append(b.Ports, Port{Name: byIndex[p.index].Name, State: p.state, Cost: p.cost})
			}
		}
	}
	if len(bridges) > 0 && what&FDB != 0 {
		if err := c.fdb(bridges, byIndex); err != nil {
			return err
		}
	}
	if what&Neighbours != 0 {
		if err := c.neighbours(n, byIndex); err != nil {
			return err
		}
	}
	if what&Routes != 0 {
		if err := c.routes(n, byIndex); err != nil {
			return err
		}
	}
	if what&Firewall != 0 && c.nft != nil {
		fw, err := readFirewall(c.nft)
		if err != nil {
			return err
		}
		n.Firewall = fw
	}
	return nil
}

// clockTicks converts kernel clock_t values (USER_HZ, 100 on Linux) to seconds.
func clockTicks(v uint32) float64 { return float64(v) / 100 }

func (c *conn) fdb(bridges map[int]*Bridge, byIndex map[int]*Interface) error {
	entries, err := c.h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list bridge fdb: %w", err)
	}
	for _, e := range entries {
		port := byIndex[e.LinkIndex]
		if port == nil || e.HardwareAddr == nil {
			continue
		}
		// An entry belongs to the bridge it names (NDA_MASTER), to the
		// bridge itself, or to a port's bridge ("self" entries of a port).
		b := bridges[e.MasterIndex]
		if b == nil {
			b = bridges[e.LinkIndex]
		}
		if b == nil {
			for idx, br := range bridges {
				if byIndex[idx] != nil && port.Master == byIndex[idx].Name {
					b = br
				}
			}
		}
		if b == nil {
			continue
		}
		fe := FDBEntry{
			MAC:        e.HardwareAddr.String(),
			Port:       port.Name,
			VLAN:       e.Vlan,
			Master:     e.Flags&unix.NTF_MASTER != 0 || e.MasterIndex != 0,
			Local:      e.State&unix.NUD_PERMANENT != 0,
			Static:     e.State&unix.NUD_NOARP != 0 && e.State&unix.NUD_PERMANENT == 0,
			AgeSeconds: clockTicks(e.Updated),
		}
		if e.Flags&unix.NTF_SELF != 0 && e.MasterIndex == 0 {
			fe.Master = false
		}
		fe.Learned = !fe.Local && !fe.Static
		b.FDB = append(b.FDB, fe)
	}
	return nil
}

var nudNames = []struct {
	bit  int
	name string
}{
	{unix.NUD_INCOMPLETE, "incomplete"}, {unix.NUD_REACHABLE, "reachable"}, {unix.NUD_STALE, "stale"},
	{unix.NUD_DELAY, "delay"}, {unix.NUD_PROBE, "probe"}, {unix.NUD_FAILED, "failed"},
	{unix.NUD_NOARP, "noarp"}, {unix.NUD_PERMANENT, "permanent"},
}

// NUDState names a neighbour state bit set as `ip neigh` does.
func NUDState(s int) string {
	var out []string
	for _, n := range nudNames {
		if s&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

func (c *conn) neighbours(n *Namespace, byIndex map[int]*Interface) error {
	entries, err := c.h.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	n.Neighbours = []Neighbour{}
	for _, e := range entries {
		if e.Family != unix.AF_INET && e.Family != unix.AF_INET6 {
			continue
		}
		ip, ok := netip.AddrFromSlice(e.IP)
		i := byIndex[e.LinkIndex]
		if !ok || i == nil {
			continue
		}
		nb := Neighbour{IP: ip.Unmap(), Interface: i.Name, State: NUDState(e.State), Router: e.Flags&unix.NTF_ROUTER != 0}
		if len(e.HardwareAddr) > 0 {
			nb.MAC = e.HardwareAddr.String()
		}
		n.Neighbours = append(n.Neighbours, nb)
	}
	return nil
}

var scopes = map[netlink.Scope]string{
	netlink.SCOPE_UNIVERSE: "global", netlink.SCOPE_SITE: "site", netlink.SCOPE_LINK: "link",
	netlink.SCOPE_HOST: "host", netlink.SCOPE_NOWHERE: "nowhere",
}

var routeTypes = map[int]string{
	unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
	unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
	unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw",
}

// kvmnetProto is the protocol number kvmnet's routes carry (link.RouteProtocol).
const kvmnetProto = 211

func (c *conn) routes(n *Namespace, byIndex map[int]*Interface) error {
	rs, err := c.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	n.Routes = []Route{}
	for _, r := range rs {
		if r.Family == unix.AF_INET6 && r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() && r.Gw == nil {
			continue // fe80::/64 of every IPv6 interface
		}
		rt := Route{Metric: r.Priority, Protocol: int(r.Protocol), Scope: scopes[r.Scope], Type: routeTypes[r.Type]}
		rt.Kvmnet = rt.Protocol == kvmnetProto
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			bits, _ := r.Dst.Mask.Size()
			rt.Dst = netip.PrefixFrom(ip.Unmap(), bits)
		} else if r.Family == unix.AF_INET6 {
			rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		} else {
			rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			rt.Via = gw.Unmap()
		}
		if src, ok := netip.AddrFromSlice(r.Src); ok {
			rt.Src = src.Unmap()
		}
		if i := byIndex[r.LinkIndex]; i != nil {
			rt.Dev = i.Name
		}
		n.Routes = append(n.Routes, rt)
	}
	return nil
}

// Sysctl keys read with Kernel. Per-interface keys use the interface name
// (which may contain dots) in place of IFACE.
const (
	SysctlIPv4Forward    = "net.ipv4.ip_forward"
	SysctlIPv6Forward    = "net.ipv6.conf.all.forwarding"
	SysctlRPFilterAll    = "net.ipv4.conf.all.rp_filter"
	SysctlBridgeNFIP     = "net.bridge.bridge-nf-call-iptables"
	SysctlBridgeNFIP6    = "net.bridge.bridge-nf-call-ip6tables"
	SysctlBridgeNFARP    = "net.bridge.bridge-nf-call-arptables"
	sysctlIfacePrefix    = "net.ipv4.conf."
	sysctlRPFilterSuffix = ".rp_filter"
)

// RPFilterKey is the sysctl key of an interface's rp_filter.
func RPFilterKey(iface string) string { return sysctlIfacePrefix + iface + sysctlRPFilterSuffix }

// readSysctls runs inside the namespace.
func readSysctls(links []netlink.Link) map[string]string {
	out := map[string]string{}
	read := func(key, path string) {
		b, err := os.ReadFile(path)
		if err == nil {
			out[key] = strings.TrimSpace(string(b))
		}
	}
	read(SysctlIPv4Forward, "/proc/sys/net/ipv4/ip_forward")
	read(SysctlIPv6Forward, "/proc/sys/net/ipv6/conf/all/forwarding")
	read(SysctlRPFilterAll, "/proc/sys/net/ipv4/conf/all/rp_filter")
	hasBridge := false
	for _, l := range links {
		name := l.Attrs().Name
		hasBridge = hasBridge || l.Type() == "bridge"
		if name != "lo" {
			read(RPFilterKey(name), "/proc/sys/net/ipv4/conf/"+name+"/rp_filter")
		}
	}
	if hasBridge {
		read(SysctlBridgeNFIP, "/proc/sys/net/bridge/bridge-nf-call-iptables")
		read(SysctlBridgeNFIP6, "/proc/sys/net/bridge/bridge-nf-call-ip6tables")
		read(SysctlBridgeNFARP, "/proc/sys/net/bridge/bridge-nf-call-arptables")
	}
	return out
}

// readNetstat runs inside the namespace: /proc/thread-self/net resolves to
// the namespace of the calling thread.
func readNetstat() map[string]uint64 {
	out := map[string]uint64{}
	for _, f := range []string{"/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		var head []string
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 2 {
				continue
			}
			if head == nil || head[0] != fields[0] {
				head = fields
				continue
			}
			prefix := strings.TrimSuffix(fields[0], ":")
			for i := 1; i < len(fields) && i < len(head); i++ {
				if v, err := strconv.ParseUint(fields[i], 10, 64); err == nil {
					out[prefix+"."+head[i]] = v
				}
			}
			head = nil
		}
		fh.Close()
	}
	return out
}

// bridgeSTP reads IFLA_BR_STP_STATE of bridge name (the netlink library
// does not parse it).
func (c *conn) bridgeSTP(name string) (bool, error) {
	req := c.request(unix.RTM_GETLINK, 0)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil || len(msgs) == 0 {
		return false, fmt.Errorf("read bridge %q: %w", name, err)
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return false, err
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return false, err
		}
		for _, info := range infos {
			if info.Attr.Type&^unix.NLA_F_NESTED != nl.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(info.Value)
			if err != nil {
				return false, err
			}
			for _, d := range data {
				if d.Attr.Type == nl.IFLA_BR_STP_STATE && len(d.Value) >= 4 {
					return nl.NativeEndian().Uint32(d.Value) != 0, nil
				}
			}
		}
	}
	return false, nil
}

func (c *conn) request(typ, flags int) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr), Type: uint16(typ), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		Sockets:  c.raw,
	}
}

type portInfo struct {
	index, master int
	state         string
	cost          uint32
}

// PortStates names the STP port states (IFLA_BRPORT_STATE, BR_STATE_*).
var PortStates = []string{"disabled", "listening", "learning", "forwarding", "blocking"}

// portStates dumps the bridge ports (RTM_GETLINK, family AF_BRIDGE) and reads
// IFLA_PROTINFO's port state.
func (c *conn) portStates() ([]portInfo, error) {
	req := c.request(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, fmt.Errorf("dump bridge ports: %w", err)
	}
	var out []portInfo
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		info := nl.DeserializeIfInfomsg(m)
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
		if err != nil {
			return nil, err
		}
		p := portInfo{index: int(info.Index), state: "?"}
		for _, a := range attrs {
			switch a.Attr.Type &^ unix.NLA_F_NESTED {
			case unix.IFLA_MASTER:
				p.master = int(nl.NativeEndian().Uint32(a.Value))
			case unix.IFLA_PROTINFO:
				sub, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					return nil, err
				}
				for _, s := range sub {
					switch s.Attr.Type {
					case nl.IFLA_BRPORT_STATE:
						if len(s.Value) > 0 && int(s.Value[0]) < len(PortStates) {
							p.state = PortStates[s.Value[0]]
						}
					case nl.IFLA_BRPORT_COST:
						if len(s.Value) >= 4 {
							p.cost = nl.NativeEndian().Uint32(s.Value)
						}
					}
				}
			}
		}
		if p.master != 0 && p.master != p.index {
			out = append(out, p)
		}
	}
	return out, nil
}
