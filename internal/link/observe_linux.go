package link

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// Observation reads a namespace with five rtnetlink dumps (links; IPv4 and
// IPv6 addresses; IPv4 and IPv6 routes) on one socket, parsed in place: the
// library's LinkList/AddrList/RouteList decode every attribute into fresh
// objects, which over 1000 namespaces cost more than the kernel's work. The
// link dump asks the kernel to leave statistics out (RTEXT_FILTER_SKIP_STATS)
// and carries each bridge's options, so a bridge needs no request of its own;
// with strict checking on the socket, the kernel dumps only kvmnet's routes
// of the main table.

// Observe reads the namespace's links, addresses and kvmnet routes into a
// model.Namespace. Owner is taken from lo's mark. Sysctls are not read here.
func (c *Conn) Observe() (*model.Namespace, error) {
	r, done := c.reader()
	defer done()
	return r.observe(unix.AF_INET, unix.AF_INET6)
}

// Reader reads one namespace into the model over an rtnetlink socket of its
// own (no library handle). Open it with NewReaderHere inside netns.Do; the
// socket stays bound to that namespace, so ObserveIPv4 and AddIPv6 can run
// from any thread afterwards. Close it when done.
type Reader struct{ r *reader }

// NewReaderHere opens a Reader for the calling thread's current namespace,
// recorded as ns: it is meant to run inside netns.Do(ns, ...).
func NewReaderHere(ns *netns.NS) (*Reader, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	// Strict checking lets the route dumps filter in the kernel.
	strict := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1) == nil
	return &Reader{&reader{fd: fd, seq: new(uint32), name: ns.Name, index: map[string]int{}, strict: strict,
		vlans: func() (map[int32][]*nl.BridgeVlanInfo, error) {
			h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
			if err != nil {
				return nil, err
			}
			defer h.Close()
			return h.BridgeVlanList()
		}}}, nil
}

// ObserveIPv4 reads the links, the IPv4 addresses and the IPv4 routes: all
// of the namespace where IPv6 is off. AddIPv6 adds the rest.
func (x *Reader) ObserveIPv4() (*model.Namespace, error) { return x.r.observe(unix.AF_INET) }

// AddIPv6 adds the IPv6 addresses and routes to ns, as ObserveIPv4 read it
// on this Reader.
func (x *Reader) AddIPv6(ns *model.Namespace) error {
	byIndex := make(map[int]*model.Link, len(ns.Links))
	for _, l := range ns.Links {
		byIndex[l.Index] = l
	}
	_, err := retry(func() (*model.Namespace, error) {
		for _, l := range ns.Links {
			l.Addrs = slices.DeleteFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() })
		}
		maps.DeleteFunc(ns.Routes, func(_ string, r *model.Route) bool { return r.Dst.Addr().Is6() })
		return ns, x.r.inet(ns, byIndex, unix.AF_INET6)
	})
	return err
}

// Close closes the socket.
func (x *Reader) Close() { unix.Close(x.r.fd) }

// reader reads one namespace over one rtnetlink socket.
type reader struct {
	fd    int
	seq   *uint32
	name  string         // the namespace's, for errors
	index map[string]int // gets the ifindex of every link read
	// strict: the socket has NETLINK_GET_STRICT_CHK (dump filters).
	strict bool
	// vlans dumps the bridge port VLANs (through the library).
	vlans func() (map[int32][]*nl.BridgeVlanInfo, error)
}

// reader reads through the Conn's socket, locked until done is called.
func (c *Conn) reader() (r *reader, done func()) {
	sh := c.raw[unix.NETLINK_ROUTE]
	sh.Socket.Lock()
	return &reader{fd: sh.Socket.GetFd(), seq: &sh.Seq, name: c.NS.Name, index: c.index,
		vlans: c.h.BridgeVlanList}, sh.Socket.Unlock
}

// observe reads the links, then the addresses and routes of families.
func (r *reader) observe(families ...byte) (*model.Namespace, error) {
	return retry(func() (*model.Namespace, error) {
		ns, byIndex, err := r.links()
		if err != nil {
			return nil, err
		}
		return ns, r.inet(ns, byIndex, families...)
	})
}

// retry runs read again when a dump was interrupted by a concurrent change
// (NLM_F_DUMP_INTR): it may have missed objects.
func retry(read func() (*model.Namespace, error)) (*model.Namespace, error) {
	var (
		ns  *model.Namespace
		err error
	)
	for range 4 {
		if ns, err = read(); !errors.Is(err, errDumpInterrupted) {
			break
		}
	}
	return ns, err
}

var errDumpInterrupted = errors.New("netlink dump interrupted by a concurrent change")

// links reads the links (and lo's mark) into a new model.Namespace, with
// the links by ifindex.
func (r *reader) links() (*model.Namespace, map[int]*model.Link, error) {
	ns := &model.Namespace{Name: r.name, Links: map[string]*model.Link{}, Routes: map[string]*model.Route{}, Sysctls: map[string]string{}}
	byIndex := map[int]*model.Link{}
	masters := map[*model.Link]int{}
	parents := map[*model.Link]int{}
	err := r.dump(unix.RTM_GETLINK, unix.NLM_F_DUMP, linkRequest(), func(typ uint16, b []byte) {
		if typ != unix.RTM_NEWLINK || len(b) < unix.SizeofIfInfomsg {
			return
		}
		msg := nl.DeserializeIfInfomsg(b)
		var (
			name, alias, kind   string
			mtu, master, parent int
			mac                 []byte
			vid                 int
			bridge              *model.BridgeOpts
			conf                = model.DevConf{IPv4Forwarding: -1, IPv6Forwarding: -1, IPv6Disabled: -1}
		)
		for t, v := range attrs(b[unix.SizeofIfInfomsg:]) {
			switch t {
			case unix.IFLA_IFNAME:
				name = cstring(v)
			case unix.IFLA_IFALIAS:
				alias = cstring(v)
			case unix.IFLA_MTU:
				mtu = int(u32At(v))
			case unix.IFLA_MASTER:
				master = int(u32At(v))
			case unix.IFLA_LINK:
				parent = int(u32At(v))
			case unix.IFLA_ADDRESS:
				for _, x := range v {
					if x != 0 { // the library's rule: an all-zero address is none
						mac = v
						break
					}
				}
			case unix.IFLA_LINKINFO:
				kind, vid, bridge = linkInfo(v)
			case unix.IFLA_AF_SPEC:
				if ns.DevConf == nil {
					ns.DevConf = map[string]model.DevConf{}
				}
				conf = devConf(v)
			}
		}
		if ns.DevConf != nil {
			ns.DevConf[name] = conf
		}
		if name == "lo" {
			if m, ok := model.ParseMark(alias); ok {
				ns.Owner, ns.Marks = m.ID, m.Marks
			}
			return
		}
		index := int(msg.Index)
		l := &model.Link{Name: name, MTU: mtu, Up: msg.Flags&unix.IFF_UP != 0, Index: index}
		if mac != nil {
			l.MAC = net.HardwareAddr(mac).String()
		}
		mark, owned := model.ParseMark(alias)
		if owned {
			l.Owner = mark.ID
		}
		peer, origin := mark.Peer, mark.Origin
		switch {
		case origin != "":
			l.Kind = model.KindDevice // a moved NIC, whatever its driver
		case kind == "bridge":
			l.Kind = model.KindBridge
			if owned {
				if bridge == nil {
					bridge = &model.BridgeOpts{}
				}
				l.Bridge = bridge
			}
		case kind == "veth":
			l.Kind = model.KindVeth
			l.Peer = peer
		case kind == "vlan":
			l.Kind = model.KindVLAN
			l.VID = vid
			parents[l] = parent
		default:
			l.Kind = model.KindOther
		}
		l.Origin = origin
		r.index[name] = index
		ns.Links[name] = l
		byIndex[index] = l
		if master != 0 {
			masters[l] = master
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list links in namespace %q: %w", r.name, translate(err))
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
		if l.Bridge != nil {
			filtering = filtering || l.Bridge.VLANFiltering
		}
	}
	// Port VLANs matter only on VLAN-filtering bridges: dump them only then.
	if filtering {
		all, err := r.vlans()
		if err != nil {
			return nil, nil, fmt.Errorf("list bridge VLANs in namespace %q: %w", r.name, translate(err))
		}
		for _, l := range ns.Links {
			if m := ns.Links[l.Master]; m != nil && m.Bridge != nil && m.Bridge.VLANFiltering {
				l.PortVLANs = vlanEntries(all[int32(l.Index)])
			}
		}
	}
	return ns, byIndex, nil
}

// inet reads the addresses and the kvmnet routes of families into ns, whose
// links byIndex has by ifindex.
func (r *reader) inet(ns *model.Namespace, byIndex map[int]*model.Link, families ...byte) error {
	err := r.dumpInet(unix.RTM_GETADDR, unix.SizeofIfAddrmsg, families, func(typ uint16, b []byte) {
		if typ != unix.RTM_NEWADDR || len(b) < unix.SizeofIfAddrmsg {
			return
		}
		msg := nl.DeserializeIfAddrmsg(b)
		l := byIndex[int(msg.Index)]
		if l == nil {
			return
		}
		var local, address []byte
		for t, v := range attrs(b[unix.SizeofIfAddrmsg:]) {
			switch t {
			case unix.IFA_LOCAL:
				local = v
			case unix.IFA_ADDRESS:
				address = v
			}
		}
		// As the library reads it: IPv4 gives both, IFA_ADDRESS being the
		// peer when they differ; a local address that is not the prefix's
		// own is read as a host address.
		raw, bits := address, int(msg.Prefixlen)
		switch {
		case local != nil && msg.Family == unix.AF_INET && address != nil && net.IP(local).Equal(net.IP(address)):
		case local != nil:
			raw, bits = local, 8*len(local)
		case address == nil:
			return
		}
		if bits > 8*len(raw) {
			bits = 0 // the library's mask is then empty
		}
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return
		}
		ip = ip.Unmap()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			return // the kernel's own
		}
		l.Addrs = append(l.Addrs, netip.PrefixFrom(ip, bits))
	})
	if err != nil {
		return fmt.Errorf("list addresses in namespace %q: %w", r.name, translate(err))
	}
	for _, l := range ns.Links {
		model.SortPrefixes(l.Addrs)
	}
	err = r.dumpInet(unix.RTM_GETROUTE, unix.SizeofRtMsg, families, func(typ uint16, b []byte) {
		if typ != unix.RTM_NEWROUTE || len(b) < unix.SizeofRtMsg {
			return
		}
		msg := nl.DeserializeRtMsg(b)
		if msg.Flags&unix.RTM_F_CLONED != 0 || msg.Protocol != RouteProtocol {
			return
		}
		table := uint32(msg.Table)
		var dst, gw []byte
		var oif, prio int
		for t, v := range attrs(b[unix.SizeofRtMsg:]) {
			switch t {
			case unix.RTA_TABLE:
				table = u32At(v)
			case unix.RTA_DST:
				dst = v
			case unix.RTA_GATEWAY:
				gw = v
			case unix.RTA_OIF:
				oif = int(u32At(v))
			case unix.RTA_PRIORITY:
				prio = int(u32At(v))
			}
		}
		if table != unix.RT_TABLE_MAIN {
			return
		}
		route := netlink.Route{Family: int(msg.Family), LinkIndex: oif, Priority: prio}
		if dst != nil {
			route.Dst = &net.IPNet{IP: net.IP(dst), Mask: net.CIDRMask(int(msg.Dst_len), 8*len(dst))}
		}
		if gw != nil {
			route.Gw = net.IP(gw)
		}
		mr := &model.Route{Metric: prio}
		mr.Dst, mr.Via = routeDstVia(route)
		if l := byIndex[oif]; !mr.Via.IsValid() && l != nil {
			mr.Dev = l.Name
		}
		ns.Routes[mr.Key()] = mr
	})
	if err != nil {
		return fmt.Errorf("list routes in namespace %q: %w", r.name, translate(err))
	}
	return nil
}

// dumpInet dumps typ for each of families in turn: a request per family, because the
// kernel serves an AF_UNSPEC address or route dump under the RTNL lock
// (rtnl_dump_all), and the per-family ones without it, so that observation
// workers and other netlink users do not wait for each other. size is that
// of the family header (ifaddrmsg, rtmsg: the family is its first byte).
func (r *reader) dumpInet(typ uint16, size int, families []byte, f func(typ uint16, b []byte)) error {
	for _, family := range families {
		body := make([]byte, size)
		body[0] = family
		if typ == unix.RTM_GETROUTE && r.strict {
			// rtm_table and rtm_protocol: the kernel dumps only kvmnet's
			// routes of the main table (the filter below stays).
			body[4], body[5] = unix.RT_TABLE_MAIN, RouteProtocol
		}
		err := r.dump(typ, unix.NLM_F_DUMP, body, f)
		if err == unix.ENOENT && typ == unix.RTM_GETROUTE && r.strict {
			continue // the main table does not exist yet: no routes
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// linkRequest is the body of an RTM_GETLINK dump request: an ifinfomsg and
// the extended mask that leaves statistics out.
func linkRequest() []byte {
	b := make([]byte, unix.SizeofIfInfomsg+unix.SizeofRtAttr+4)
	a := b[unix.SizeofIfInfomsg:]
	native().PutUint16(a[0:2], unix.SizeofRtAttr+4)
	native().PutUint16(a[2:4], unix.IFLA_EXT_MASK)
	native().PutUint32(a[4:8], rtextFilterSkipStats)
	return b
}

// devConf reads IFLA_AF_SPEC: the IPv4 device configuration (IFLA_INET_CONF,
// u32 values indexed by IPV4_DEVCONF_* - 1) and the IPv6 one
// (IFLA_INET6_CONF, s32 values indexed by DEVCONF_*).
func devConf(b []byte) model.DevConf {
	c := model.DevConf{IPv4Forwarding: -1, IPv6Forwarding: -1, IPv6Disabled: -1}
	at := func(conf []byte, i int) int8 {
		if len(conf) < 4*(i+1) {
			return -1
		}
		if native().Uint32(conf[4*i:]) != 0 {
			return 1
		}
		return 0
	}
	for family, v := range attrs(b) {
		for t, conf := range attrs(v) {
			switch {
			case family == unix.AF_INET && t == unix.IFLA_INET_CONF:
				c.IPv4Forwarding = at(conf, ipv4DevconfForwarding-1)
			case family == unix.AF_INET6 && t == unix.IFLA_INET6_CONF:
				c.IPv6Forwarding = at(conf, devconfForwarding)
				c.IPv6Disabled = at(conf, devconfDisableIPv6)
			}
		}
	}
	return c
}

// Indexes of the device configurations (linux/ip.h, linux/ipv6.h).
const (
	ipv4DevconfForwarding = 1  // IPV4_DEVCONF_FORWARDING
	devconfForwarding     = 0  // DEVCONF_FORWARDING
	devconfDisableIPv6    = 26 // DEVCONF_DISABLE_IPV6
)

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS (linux/rtnetlink.h).
const rtextFilterSkipStats = 1 << 3

// linkInfo reads IFLA_LINKINFO: the kind, a VLAN's ID and a bridge's options.
func linkInfo(b []byte) (kind string, vid int, bridge *model.BridgeOpts) {
	var data []byte
	for t, v := range attrs(b) {
		switch t {
		case nl.IFLA_INFO_KIND:
			kind = cstring(v)
		case nl.IFLA_INFO_DATA:
			data = v
		}
	}
	switch kind {
	case "vlan":
		for t, v := range attrs(data) {
			if t == nl.IFLA_VLAN_ID && len(v) >= 2 {
				vid = int(native().Uint16(v))
			}
		}
	case "bridge":
		bridge = &model.BridgeOpts{}
		for t, v := range attrs(data) {
			switch {
			case t == nl.IFLA_BR_STP_STATE && len(v) >= 4:
				bridge.STP = native().Uint32(v) != 0
			case t == nl.IFLA_BR_AGEING_TIME && len(v) >= 4:
				bridge.AgeingTime = int(native().Uint32(v) / 100)
			case t == nl.IFLA_BR_VLAN_FILTERING && len(v) >= 1:
				bridge.VLANFiltering = v[0] != 0
			case t == nl.IFLA_BR_VLAN_DEFAULT_PVID && len(v) >= 2:
				bridge.DefaultPVID = int(native().Uint16(v))
			}
		}
	}
	return kind, vid, bridge
}

// bufPool holds receive buffers: large enough for the biggest chunk the
// kernel puts in one dump message (32 KiB).
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// dump sends one rtnetlink request (typ with flags, body after the netlink
// header) and calls f with the type and payload of each reply message until
// the kernel says done. It returns errDumpInterrupted when the kernel
// flagged the dump as inconsistent.
func (r *reader) dump(typ uint16, flags uint16, body []byte, f func(typ uint16, b []byte)) error {
	fd := r.fd
	seq := atomic.AddUint32(r.seq, 1)
	req := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	req = append(req, body...)
	native().PutUint32(req[0:4], uint32(len(req)))
	native().PutUint16(req[4:6], typ)
	native().PutUint16(req[6:8], unix.NLM_F_REQUEST|flags)
	native().PutUint32(req[8:12], seq)
	for {
		err := rawSend(fd, req)
		if err == nil {
			break
		}
		if err != unix.EINTR && err != unix.EAGAIN {
			return err
		}
		if err == unix.EAGAIN {
			if err := wait(fd, unix.POLLOUT); err != nil {
				return err
			}
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	interrupted := false
	for {
		n, err := rawRecv(fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := wait(fd, unix.POLLIN); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(native().Uint32(b[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return fmt.Errorf("netlink: malformed message")
			}
			mtyp := native().Uint16(b[4:6])
			mflags := native().Uint16(b[6:8])
			mseq := native().Uint32(b[8:12])
			data := b[unix.SizeofNlMsghdr:l]
			b = b[min(nlmAlign(l), len(b)):]
			if mseq != seq {
				continue // a late reply to an earlier request
			}
			if mflags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch mtyp {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(data) >= 4 {
					if errno := int32(native().Uint32(data[0:4])); errno != 0 {
						return unix.Errno(-errno)
					}
				}
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			}
			f(mtyp, data)
			if mflags&unix.NLM_F_MULTI == 0 {
				return nil // a single reply
			}
		}
	}
}

// wait polls fd for events. The reads do not block (MSG_DONTWAIT, and the
// library's sockets are non-blocking), though a dump's next part is normally
// ready as soon as the previous one is read.
func wait(fd int, events int16) error {
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: events}}, 10_000)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return err
		case n == 0:
			return fmt.Errorf("netlink: no answer from the kernel in 10s: %w", unix.ETIMEDOUT)
		default:
			return nil
		}
	}
}

// attrs iterates over the rtnetlink attributes in b (type without the
// nested/byte-order flags, and value), stopping at a malformed one.
func attrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.SizeofRtAttr {
			l := int(native().Uint16(b[0:2]))
			if l < unix.SizeofRtAttr || l > len(b) {
				return
			}
			t := native().Uint16(b[2:4]) & nlaTypeMask
			if !yield(t, b[unix.SizeofRtAttr:l]) {
				return
			}
			b = b[min(rtaAlign(l), len(b)):]
		}
	}
}

func nlmAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
func rtaAlign(l int) int { return (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }

func u32At(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return native().Uint32(v)
}

// cstring reads a NUL-terminated attribute string.
func cstring(v []byte) string {
	s, _, _ := strings.Cut(string(v), "\x00")
	return s
}

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute type.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// rawSend and rawRecv are sendto and recvfrom (MSG_DONTWAIT) as raw system
// calls. Neither blocks: a request to the kernel's rtnetlink socket is
// handled in the call (its first dump chunk included), and the receive does
// not wait. Go's scheduler hands the P of a thread that stays in an ordinary
// system call over 20 µs to another thread, which a dump's first chunk
// often does; over the thousands of dumps of a no-op, those hand-offs (a
// futex wake-up and a sleep each) cost more than the dumps' parsing.
func rawSend(fd int, b []byte) error {
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func rawRecv(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
