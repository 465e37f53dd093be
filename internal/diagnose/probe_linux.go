package diagnose

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// PingResult is the outcome of an ICMP echo probe.
type PingResult struct {
	OK bool `json:"ok"`
	// RTT of the first reply.
	RTT time.Duration `json:"rtt_ns,omitempty"`
	// Sent counts echo requests sent; Size is the ICMP payload size.
	Sent int  `json:"sent"`
	Size int  `json:"size"`
	DF   bool `json:"df"`
	// Error says why nothing was sent or what came back instead of a
	// reply (an ICMP error, "message too long" for a DF probe larger than
	// the local MTU).
	Error string `json:"error,omitempty"`
}

// icmpConn opens a raw ICMP (v6: ICMPv6) socket inside namespace nsName,
// with Don't Fragment set when df (IPv4; IPv6 never fragments in transit).
// It stays bound to that namespace and is used from the calling goroutine.
func icmpConn(nsName string, v6, df bool) (net.PacketConn, error) {
	ns, err := netns.Open(nsName)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var fd int
	err = netns.Do(ns, func() error {
		var err error
		if v6 {
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_ICMPV6)
		} else {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_ICMP)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open ICMP socket in namespace %q: %w", nsName, err)
	}
	if !v6 {
		mode := unix.IP_PMTUDISC_DONT
		if df {
			mode = unix.IP_PMTUDISC_PROBE // DF set, the device MTU still applies
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode); err != nil {
			unix.Close(fd)
			return nil, err
		}
	} else if df {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
	}
	f := os.NewFile(uintptr(fd), "icmp")
	pc, err := net.FilePacketConn(f)
	f.Close()
	return pc, err
}

// LossResult counts the replies to a burst of echo requests.
type LossResult struct {
	Sent     int `json:"sent"`
	Received int `json:"received"`
}

// Percent is the share of requests that got no reply.
func (l LossResult) Percent() float64 {
	if l.Sent == 0 {
		return 0
	}
	return 100 * float64(l.Sent-l.Received) / float64(l.Sent)
}

// PingLoss sends count echo requests from namespace nsName to dst, interval
// apart, and counts the distinct replies that arrive until all have or wait
// has passed after the last request.
func PingLoss(nsName string, dst netip.Addr, count int, interval, wait time.Duration) (LossResult, error) {
	var res LossResult
	v6 := dst.Is6() && !dst.Is4In6()
	pc, err := icmpConn(nsName, v6, false)
	if err != nil {
		return res, err
	}
	defer pc.Close()
	id := uint16(rand.Uint32())
	payload := make([]byte, 56)
	to := &net.IPAddr{IP: dst.AsSlice()}
	got := map[uint16]bool{}
	buf := make([]byte, 65536)
	// read takes the replies that arrive until deadline.
	read := func(deadline time.Time) {
		for len(got) < count {
			_ = pc.SetReadDeadline(deadline)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			kind, rid, rseq, _ := parseICMP(v6, buf[:n])
			if kind == "reply" && rid == id && src.Unmap() == dst.Unmap() && rseq >= 1 && int(rseq) <= count {
				got[rseq] = true
			}
		}
	}
	for seq := 1; seq <= count; seq++ {
		if _, err := pc.WriteTo(echo(v6, id, uint16(seq), payload), to); err != nil {
			return res, err
		}
		res.Sent++
		read(time.Now().Add(interval))
	}
	read(time.Now().Add(wait))
	res.Received = len(got)
	return res, nil
}

// Ping sends up to count ICMP echo requests (IPv4 or IPv6) from namespace
// nsName to dst, interval apart, and waits up to timeout in all for a reply.
// The raw socket is opened inside the namespace (netns.Do) and used from
// this goroutine afterwards: it stays bound to that namespace. size is the
// payload size; df sets Don't Fragment (IPv6 never fragments in transit).
func Ping(nsName string, dst netip.Addr, size int, df bool, count int, interval, timeout time.Duration) (PingResult, error) {
	res := PingResult{Size: size, DF: df}
	v6 := dst.Is6() && !dst.Is4In6()
	pc, err := icmpConn(nsName, v6, df)
	if err != nil {
		return res, err
	}
	defer pc.Close()
	id := uint16(rand.Uint32())
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	to := &net.IPAddr{IP: dst.AsSlice()}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	start := map[uint16]time.Time{}
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		if int(seq) <= count {
			msg := echo(v6, id, seq, payload)
			start[seq] = time.Now()
			if _, err := pc.WriteTo(msg, to); err != nil {
				if errors.Is(err, unix.EMSGSIZE) {
					res.Error = "message too long for the local MTU"
					return res, nil
				}
				res.Error = err.Error()
				return res, nil
			}
			res.Sent++
		}
		wait := time.Now().Add(interval)
		if int(seq) >= count || wait.After(deadline) {
			wait = deadline
		}
		for {
			_ = pc.SetReadDeadline(wait)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				break // deadline: send the next one
			}
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			kind, rid, rseq, code := parseICMP(v6, buf[:n])
			if rid != id {
				continue
			}
			switch kind {
			case "reply":
				if src.Unmap() == dst.Unmap() {
					res.OK = true
					res.RTT = time.Since(start[rseq])
					return res, nil
				}
			case "error":
				res.Error = fmt.Sprintf("%s from %s", code, src.Unmap())
			}
		}
	}
	return res, nil
}

func echo(v6 bool, id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8 // echo request
	if v6 {
		b[0] = 128
	}
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	if !v6 { // the kernel computes the ICMPv6 checksum
		binary.BigEndian.PutUint16(b[2:], checksum(b))
	}
	return b
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

var unreachCodes = map[byte]string{
	0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable", 3: "port unreachable",
	4: "fragmentation needed", 9: "network prohibited", 10: "host prohibited", 13: "administratively prohibited",
}

// parseICMP reads an echo reply or an ICMP error quoting one of our
// requests: kind is "reply", "error" or "".
func parseICMP(v6 bool, b []byte) (kind string, id, seq uint16, desc string) {
	if !v6 {
		if len(b) < 20 {
			return "", 0, 0, ""
		}
		b = b[int(b[0]&0x0f)*4:] // IPv4 raw sockets deliver the IP header
	}
	if len(b) < 8 {
		return "", 0, 0, ""
	}
	typ, code := b[0], b[1]
	switch {
	case !v6 && typ == 0, v6 && typ == 129:
		return "reply", binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), ""
	case !v6 && (typ == 3 || typ == 11):
		inner := b[8:]
		if len(inner) < 20 {
			return "", 0, 0, ""
		}
		inner = inner[int(inner[0]&0x0f)*4:]
		if len(inner) < 8 || inner[0] != 8 {
			return "", 0, 0, ""
		}
		d := "time exceeded"
		if typ == 3 {
			d = unreachCodes[code]
			if d == "" {
				d = fmt.Sprintf("destination unreachable (code %d)", code)
			}
			if code == 4 {
				d += fmt.Sprintf(" (next-hop MTU %d)", binary.BigEndian.Uint16(b[6:]))
			}
		}
		return "error", binary.BigEndian.Uint16(inner[4:]), binary.BigEndian.Uint16(inner[6:]), d
	case v6 && typ >= 1 && typ <= 3:
		inner := b[8:]
		if len(inner) < 48 || inner[40] != 128 {
			return "", 0, 0, ""
		}
		d := map[byte]string{1: "destination unreachable", 2: "packet too big", 3: "time exceeded"}[typ]
		return "error", binary.BigEndian.Uint16(inner[44:]), binary.BigEndian.Uint16(inner[46:]), d
	}
	return "", 0, 0, ""
}

// ARPConflict is an answer to an ARP probe from another MAC.
type ARPConflict struct {
	IP  netip.Addr `json:"ip"`
	MAC string     `json:"mac"`
}

// ARPProbe sends an ARP probe (RFC 5227: sender IP 0.0.0.0) for ip out of
// iface in namespace nsName, a few times within wait, and returns the MACs
// other than the interface's own that claim ip. The AF_PACKET socket is
// opened inside the namespace.
func ARPProbe(nsName, iface string, ip netip.Addr, wait time.Duration) ([]string, error) {
	if !ip.Is4() {
		return nil, nil
	}
	ns, err := netns.Open(nsName)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var fd int
	var ifi *net.Interface
	err = netns.Do(ns, func() error {
		var err error
		if ifi, err = net.InterfaceByName(iface); err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ARP probe on %s/%s: %w", nsName, iface, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}); err != nil {
		return nil, err
	}
	own := ifi.HardwareAddr
	req := make([]byte, 28)
	binary.BigEndian.PutUint16(req[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(req[2:], 0x0800) // IPv4
	req[4], req[5] = 6, 4
	binary.BigEndian.PutUint16(req[6:], 1) // request
	copy(req[8:14], own)
	// sender IP 0.0.0.0 (a probe), target MAC zero
	t4 := ip.As4()
	copy(req[24:28], t4[:])
	bcast := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	seen := map[string]bool{}
	var out []string
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for try := 0; try < 2 && time.Now().Before(deadline); try++ {
		if err := unix.Sendto(fd, req, 0, bcast); err != nil {
			return nil, fmt.Errorf("ARP probe on %s/%s: %w", nsName, iface, err)
		}
		until := time.Now().Add(wait / 2)
		if until.After(deadline) {
			until = deadline
		}
		for time.Now().Before(until) {
			left := time.Until(until)
			tv := unix.NsecToTimeval(left.Nanoseconds())
			_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				break
			}
			p := buf[:n]
			if len(p) < 28 || binary.BigEndian.Uint16(p[6:]) != 2 {
				continue // not a reply
			}
			if netip.AddrFrom4([4]byte(p[14:18])) != ip {
				continue
			}
			mac := net.HardwareAddr(p[8:14]).String()
			if mac != own.String() && !seen[mac] {
				seen[mac] = true
				out = append(out, mac)
			}
		}
	}
	return out, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
