package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

func run(ctx context.Context, p Probe) (bool, string, error) {
	dst, port, err := target(p)
	if err != nil {
		return false, "", err
	}
	src, err := source(p, dst)
	if err != nil {
		return false, "", err
	}
	ns, err := netns.Open(p.FromNS)
	if err != nil {
		return false, "", fmt.Errorf("probe %q: %w", p.Label(), err)
	}
	defer ns.Close()
	switch p.Proto {
	case "tcp":
		return tcp(ctx, ns, src, dst, port)
	case "udp":
		return udp(ctx, ns, src, dst, port)
	case "icmp":
		return echo(ctx, ns, src, dst)
	case "arp":
		return arp(ctx, ns, src, dst)
	}
	return false, "", fmt.Errorf("probe %q: unknown protocol %q", p.Label(), p.Proto)
}

// socket opens a non-blocking socket inside ns: it stays bound to ns when
// used from any thread afterwards.
func socket(ns *netns.NS, domain, typ, proto int) (int, error) {
	var fd int
	err := netns.Do(ns, func() error {
		var err error
		fd, err = unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("open socket in namespace %q: %w", ns.Name, err)
	}
	return fd, nil
}

func sockaddr(a netip.Addr, port uint16) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(port)}
}

func domain(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func bindSource(fd int, src netip.Addr) error {
	if !src.IsValid() {
		return nil
	}
	if err := unix.Bind(fd, sockaddr(src, 0)); err != nil {
		return fmt.Errorf("bind source %s: %w", src, err)
	}
	return nil
}

// wait polls fd until it has one of events or ctx ends (false).
func wait(ctx context.Context, fd int, events int16) bool {
	for {
		if ctx.Err() != nil {
			return false
		}
		ms := 50
		if dl, ok := ctx.Deadline(); ok {
			if rem := time.Until(dl); rem < 50*time.Millisecond {
				// Never 0 or less: a negative timeout makes poll wait forever.
				ms = max(int(rem/time.Millisecond)+1, 1)
			}
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false
		}
		if n > 0 {
			return true
		}
	}
}

func timeoutDetail(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.Canceled) {
		return "cancelled"
	}
	return "timeout"
}

// errDetail says why a socket operation failed, as the probe's Detail.
func errDetail(err error) string {
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return "refused" // a TCP reset or an ICMP port unreachable
	case errors.Is(err, unix.EHOSTUNREACH):
		return "ICMP host unreachable"
	case errors.Is(err, unix.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, unix.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "blocked locally (output filter)"
	case errors.Is(err, unix.EHOSTDOWN):
		return "host down (no ARP reply)"
	}
	return err.Error()
}

func tcp(ctx context.Context, ns *netns.NS, src, dst netip.Addr, port uint16) (bool, string, error) {
	fd, err := socket(ns, domain(dst), unix.SOCK_STREAM, 0)
	if err != nil {
		return false, "", err
	}
	defer unix.Close(fd)
	if err := bindSource(fd, src); err != nil {
		return false, "", err
	}
	err = unix.Connect(fd, sockaddr(dst, port))
	if err == nil {
		return true, "connected", nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return false, errDetail(err), nil
	}
	if !wait(ctx, fd, unix.POLLOUT) {
		return false, timeoutDetail(ctx), nil
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return false, "", fmt.Errorf("read connect result: %w", err)
	}
	if soerr == 0 {
		return true, "connected", nil
	}
	return false, errDetail(unix.Errno(soerr)), nil
}

func udp(ctx context.Context, ns *netns.NS, src, dst netip.Addr, port uint16) (bool, string, error) {
	fd, err := socket(ns, domain(dst), unix.SOCK_DGRAM, 0)
	if err != nil {
		return false, "", err
	}
	defer unix.Close(fd)
	if err := bindSource(fd, src); err != nil {
		return false, "", err
	}
	if err := unix.Connect(fd, sockaddr(dst, port)); err != nil {
		return false, errDetail(err), nil
	}
	if _, err := unix.Write(fd, []byte("kvmnet probe\n")); err != nil {
		return false, errDetail(err), nil
	}
	buf := make([]byte, 1500)
	for wait(ctx, fd, unix.POLLIN) {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ECONNREFUSED):
			return false, "refused (ICMP port unreachable)", nil
		case err != nil:
			return false, errDetail(err), nil
		}
		return true, fmt.Sprintf("reply (%d bytes)", n), nil
	}
	return false, timeoutDetail(ctx) + " (no reply)", nil
}

func randID() uint16 {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint16(b[:])
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

var unreach4 = map[byte]string{0: "network", 1: "host", 2: "protocol", 3: "port", 9: "network administratively prohibited", 10: "host administratively prohibited", 13: "administratively prohibited"}
var unreach6 = map[byte]string{0: "no route", 1: "administratively prohibited", 3: "address", 4: "port", 5: "source address failed policy", 6: "reject route"}

// echo sends one ICMP(v6) echo request from a raw socket and waits for the
// reply, or for an ICMP error quoting the request.
func echo(ctx context.Context, ns *netns.NS, src, dst netip.Addr) (bool, string, error) {
	v4 := dst.Is4()
	proto, reqType, replyType := unix.IPPROTO_ICMP, byte(8), byte(0)
	if !v4 {
		proto, reqType, replyType = unix.IPPROTO_ICMPV6, 128, 129
	}
	fd, err := socket(ns, domain(dst), unix.SOCK_RAW, proto)
	if err != nil {
		return false, "", err
	}
	defer unix.Close(fd)
	if err := bindSource(fd, src); err != nil {
		return false, "", err
	}
	id, seq := randID(), uint16(1)
	msg := make([]byte, 8, 8+16)
	msg[0] = reqType
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	msg = append(msg, "kvmnet-probe-icm"...)
	if v4 {
		binary.BigEndian.PutUint16(msg[2:], checksum(msg)) // the kernel sums ICMPv6 itself
	}
	if err := unix.Sendto(fd, msg, 0, sockaddr(dst, 0)); err != nil {
		return false, errDetail(err), nil
	}
	buf := make([]byte, 2048)
	for wait(ctx, fd, unix.POLLIN) {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return false, errDetail(err), nil
		}
		pkt := buf[:n]
		var fromAddr netip.Addr
		switch sa := from.(type) {
		case *unix.SockaddrInet4:
			fromAddr = netip.AddrFrom4(sa.Addr)
		case *unix.SockaddrInet6:
			fromAddr = netip.AddrFrom16(sa.Addr)
		}
		if v4 { // a raw IPv4 socket reads the IP header too
			if len(pkt) < 20 {
				continue
			}
			pkt = pkt[int(pkt[0]&0x0f)*4:]
		}
		if len(pkt) < 8 {
			continue
		}
		typ, code := pkt[0], pkt[1]
		if typ == replyType && fromAddr == dst && binary.BigEndian.Uint16(pkt[4:]) == id && binary.BigEndian.Uint16(pkt[6:]) == seq {
			return true, "echo reply", nil
		}
		// An error quotes the offending packet: its IP header, then the
		// first 8 bytes of our echo request (type, code, sum, id, seq).
		quoted := pkt[8:]
		if v4 {
			if len(quoted) < 20 {
				continue
			}
			quoted = quoted[int(quoted[0]&0x0f)*4:]
		} else {
			if len(quoted) < 40 {
				continue
			}
			quoted = quoted[40:]
		}
		if len(quoted) < 8 || quoted[0] != reqType || binary.BigEndian.Uint16(quoted[4:]) != id {
			continue
		}
		switch {
		case v4 && typ == 3:
			return false, fmt.Sprintf("ICMP %s unreachable from %s", name(unreach4, code), fromAddr), nil
		case !v4 && typ == 1:
			return false, fmt.Sprintf("ICMPv6 %s unreachable from %s", name(unreach6, code), fromAddr), nil
		case v4 && typ == 11, !v4 && typ == 3:
			return false, fmt.Sprintf("time exceeded at %s", fromAddr), nil
		}
	}
	return false, timeoutDetail(ctx), nil
}

func name(m map[byte]string, code byte) string {
	if s, ok := m[code]; ok {
		return s
	}
	return fmt.Sprintf("code %d", code)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arp asks, from the interface the route to dst leaves by, who has dst, and
// waits for the answer.
func arp(ctx context.Context, ns *netns.NS, src, dst netip.Addr) (bool, string, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return false, "", fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(time.Second); err != nil {
		return false, "", fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	routes, err := h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		return false, "no route", nil
	}
	rt := routes[0]
	if rt.Gw != nil {
		return false, "", fmt.Errorf("ARP probe of %s from %q: not on-link (routed via %s)", dst, ns.Name, rt.Gw)
	}
	l, err := h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return false, "", fmt.Errorf("ARP probe of %s from %q: %w", dst, ns.Name, err)
	}
	mac := l.Attrs().HardwareAddr
	if len(mac) != 6 {
		return false, "", fmt.Errorf("ARP probe of %s from %q: %s has no Ethernet address", dst, ns.Name, l.Attrs().Name)
	}
	if !src.IsValid() {
		if s, ok := netip.AddrFromSlice(rt.Src); ok {
			src = s.Unmap()
		}
	}
	if !src.Is4() {
		return false, "", fmt.Errorf("ARP probe of %s from %q: no IPv4 source address on %s", dst, ns.Name, l.Attrs().Name)
	}
	fd, err := socket(ns, unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return false, "", err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: rt.LinkIndex}); err != nil {
		return false, "", fmt.Errorf("bind ARP socket to %s: %w", l.Attrs().Name, err)
	}
	req := make([]byte, 28)
	binary.BigEndian.PutUint16(req[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(req[2:], 0x0800) // IPv4
	req[4], req[5] = 6, 4
	binary.BigEndian.PutUint16(req[6:], 1) // request
	copy(req[8:], mac)
	s4, d4 := src.As4(), dst.As4()
	copy(req[14:], s4[:])
	copy(req[24:], d4[:])
	bcast := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: rt.LinkIndex, Halen: 6}
	copy(bcast.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := unix.Sendto(fd, req, 0, bcast); err != nil {
		return false, errDetail(err), nil
	}
	buf := make([]byte, 128)
	for wait(ctx, fd, unix.POLLIN) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return false, errDetail(err), nil
		}
		a := buf[:n]
		if len(a) < 28 || binary.BigEndian.Uint16(a[6:]) != 2 || netip.AddrFrom4([4]byte(a[14:18])) != dst {
			continue
		}
		return true, "is-at " + net.HardwareAddr(a[8:14]).String(), nil
	}
	return false, timeoutDetail(ctx) + " (no ARP reply)", nil
}
