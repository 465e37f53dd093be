package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

const (
	vm1MAC = "02:00:00:00:00:01"
	vm2MAC = "02:00:00:00:00:02"
)

// bridgeLab builds vm1 and vm2 on br0 in the bridge namespace br, through
// the ports vm1 and vm2 (vm1: 192.168.1.100, fd00::100; vm2: .101, ::101).
func bridgeLab(t *testing.T) (br, vm1, vm2 *netns.NS) {
	t.Helper()
	testutil.RequireTool(t, "nft")
	br, vm1, vm2 = newNS(t), newNS(t), newNS(t)
	ipn(t, br, "link", "add", "br0", "type", "bridge")
	ipn(t, br, "link", "set", "br0", "up")
	for i, vm := range []*netns.NS{vm1, vm2} {
		port := fmt.Sprintf("vm%d", i+1)
		ipn(t, vm, "link", "set", "lo", "up")
		ipn(t, vm, "link", "add", "eth0", "address", []string{vm1MAC, vm2MAC}[i], "type", "veth", "peer", "name", port, "netns", br.Name)
		ipn(t, br, "link", "set", port, "master", "br0", "up")
		ipn(t, vm, "link", "set", "eth0", "up")
		addrs(t, vm, "eth0", fmt.Sprintf("192.168.1.%d/24", 100+i), fmt.Sprintf("fd00::%d/64", 100+i))
	}
	return br, vm1, vm2
}

func vm1Guard(pps int) model.PortGuard {
	return model.PortGuard{Port: "vm1", MACs: []string{vm1MAC},
		IPs: []netip.Addr{netip.MustParseAddr("192.168.1.100"), netip.MustParseAddr("fd00::100")}, BroadcastPPS: pps}
}

// TestGuardSpoofing: with a guard on vm1's port, vm1's real MAC and
// addresses pass; a hand-set source IP, IPv6 source, MAC, ARP sender IP or
// ARP sender MAC is dropped and counted by the rule that says so.
func TestGuardSpoofing(t *testing.T) {
	br, vm1, vm2 := bridgeLab(t)
	serveTCP(t, vm2, ":7001")
	// vm1 gets extra addresses it does not own; static neighbours on both
	// sides, so that the IP checks (not ARP) decide.
	addrs(t, vm1, "eth0", "192.168.1.99/24", "fd00::99/64")
	ipn(t, vm1, "neigh", "replace", "192.168.1.101", "lladdr", vm2MAC, "dev", "eth0", "nud", "permanent")
	ipn(t, vm1, "neigh", "replace", "fd00::101", "lladdr", vm2MAC, "dev", "eth0", "nud", "permanent")
	for _, ip := range []string{"192.168.1.99", "192.168.1.100", "fd00::99", "fd00::100"} {
		ipn(t, vm2, "neigh", "replace", ip, "lladdr", vm1MAC, "dev", "eth0", "nud", "permanent")
	}
	spoofed := []struct{ src, to string }{{"192.168.1.99", "192.168.1.101:7001"}, {"fd00::99", "[fd00::101]:7001"}}
	// Without a guard, the spoofed sources get through.
	for _, s := range spoofed {
		expect(t, withSource(reach(vm1, "tcp", s.to), s.src))
	}
	if !arpAsk(t, vm1, vm1MAC, "192.168.1.77", "192.168.1.101") {
		t.Fatal("without a guard, a spoofed ARP request got no answer")
	}

	tb := Table{Guards: []model.PortGuard{vm1Guard(0)}}
	apply(t, br, tb)
	expect(t,
		withSource(reach(vm1, "tcp", "192.168.1.101:7001"), "192.168.1.100"),
		withSource(reach(vm1, "tcp", "[fd00::101]:7001"), "fd00::100"),
		reach(vm1, "icmp", "192.168.1.101"), reach(vm2, "icmp", "192.168.1.100"),
		reach(vm2, "arp", "192.168.1.100"), withSource(reach(vm1, "icmp", "fd00::101"), "fd00::100"))
	if !arpAsk(t, vm1, vm1MAC, "192.168.1.100", "192.168.1.101") {
		t.Error("vm1's real ARP request got no answer")
	}
	for _, s := range spoofed {
		expect(t, withSource(block(vm1, "tcp", s.to), s.src))
	}
	if arpAsk(t, vm1, vm1MAC, "192.168.1.77", "192.168.1.101") {
		t.Error("an ARP request with a spoofed sender IP got an answer")
	}
	if arpAsk(t, vm1, "02:00:00:00:00:77", "192.168.1.100", "192.168.1.101") {
		t.Error("an ARP request with a spoofed sender MAC got an answer")
	}
	got := counts(t, br, tb)
	for _, o := range []string{"guard vm1: IPv4 source not 192.168.1.100", "guard vm1: IPv6 source not fd00::100",
		"guard vm1: ARP sender IP not 192.168.1.100", "guard vm1: ARP sender MAC not " + vm1MAC} {
		if got[o] == 0 {
			t.Errorf("%q counted nothing: %v", o, got)
		}
	}
	mac := "guard vm1: source MAC not " + vm1MAC
	if got[mac] != 0 {
		t.Errorf("the real MAC was counted as spoofed: %v", got)
	}

	// A hand-set MAC on vm1's NIC: everything it sends is dropped.
	ipn(t, vm1, "link", "set", "eth0", "address", "02:00:00:00:00:99")
	expect(t, withSource(block(vm1, "tcp", "192.168.1.101:7001"), "192.168.1.100"), block(vm1, "icmp", "192.168.1.101"))
	if got := counts(t, br, tb); got[mac] == 0 {
		t.Errorf("spoofed MAC not counted: %v", got)
	}
	ipn(t, vm1, "link", "set", "eth0", "address", vm1MAC)
	expect(t, withSource(reach(vm1, "tcp", "192.168.1.101:7001"), "192.168.1.100"))

	// VLAN-tagged frames (which would hide ARP behind another ether type)
	// are dropped.
	tagged := frame(vm1MAC, "ff:ff:ff:ff:ff:ff", 0x8100, append([]byte{0, 7, 0x88, 0xb5}, []byte("kvmnet-tagged")...))
	if n := sendAndCount(t, vm1, vm2, [][]byte{tagged, tagged, tagged}, 0, []byte("kvmnet-tagged")); n != 0 {
		t.Errorf("%d tagged frames crossed the guard", n)
	}
	if got := counts(t, br, tb); got["guard vm1: VLAN-tagged frame"] == 0 {
		t.Errorf("tagged frames not counted: %v", got)
	}
}

// TestGuardBroadcastLimit: a broadcast flood from a port limited to 100
// frames a second is capped near 100/s (+ the burst of 5); the same flood
// from an unguarded port passes whole.
func TestGuardBroadcastLimit(t *testing.T) {
	br, vm1, vm2 := bridgeLab(t)
	tb := Table{Guards: []model.PortGuard{vm1Guard(100)}}
	apply(t, br, tb)
	const n = 3000
	storm := func(from string, marker string) [][]byte {
		f := frame(from, "ff:ff:ff:ff:ff:ff", 0x88b5, []byte(marker))
		out := make([][]byte, n)
		for i := range out {
			out[i] = f
		}
		return out
	}
	start := time.Now()
	got := sendAndCount(t, vm1, vm2, storm(vm1MAC, "kvmnet-storm-1"), time.Second, []byte("kvmnet-storm-1"))
	elapsed := time.Since(start).Seconds() - 0.3 // sendAndCount waits 300 ms after the last frame
	limit := int(100*elapsed) + 5
	t.Logf("guarded port: %d of %d broadcast frames passed in %.2f s (limit 100/s + burst 5: %d)", got, n, elapsed, limit)
	if got > limit+limit/10 || got < 90 {
		t.Errorf("%d broadcast frames passed in %.2f s, want about 100/s (at most %d)", got, elapsed, limit)
	}
	if c := counts(t, br, tb)["guard vm1: broadcast/multicast over 100/s"]; c < uint64(n-limit-limit/5) {
		t.Errorf("limit rule dropped %d, want about %d", c, n-got)
	}
	// Unicast from the same port is not limited.
	serveTCP(t, vm2, ":7001")
	expect(t, reach(vm1, "tcp", "192.168.1.101:7001"))
	// The other direction has no guard: the whole flood arrives.
	if back := sendAndCount(t, vm2, vm1, storm(vm2MAC, "kvmnet-storm-2"), time.Second, []byte("kvmnet-storm-2")); back < n*9/10 {
		t.Errorf("unguarded port: only %d of %d frames arrived", back, n)
	}
}

func frame(src, dst string, ethertype uint16, payload []byte) []byte {
	s, _ := net.ParseMAC(src)
	d, _ := net.ParseMAC(dst)
	f := append(append(append([]byte(nil), d...), s...), byte(ethertype>>8), byte(ethertype))
	f = append(f, payload...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

// packetSocket opens an AF_PACKET socket on eth0 inside ns.
func packetSocket(t *testing.T, ns *netns.NS, proto uint16) (int, int) {
	t.Helper()
	var fd, idx int
	if err := netns.Do(ns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		idx = ifi.Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(proto)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: idx}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, idx
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sendAndCount sends frames from from's eth0, spread over spread, and
// counts the frames containing marker that to's eth0 receives.
func sendAndCount(t *testing.T, from, to *netns.NS, frames [][]byte, spread time.Duration, marker []byte) int {
	t.Helper()
	rfd, _ := packetSocket(t, to, unix.ETH_P_ALL)
	unix.SetsockoptTimeval(rfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	var got atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(rfd, buf, 0)
			if err == nil && bytes.Contains(buf[:n], marker) {
				got.Add(1)
			}
		}
	}()
	sfd, idx := packetSocket(t, from, unix.ETH_P_ALL)
	gap := spread / time.Duration(len(frames))
	next := time.Now()
	for _, f := range frames {
		if err := unix.Sendto(sfd, f, 0, &unix.SockaddrLinklayer{Ifindex: idx}); err != nil {
			t.Fatalf("send frame: %v", err)
		}
		if gap > 0 {
			next = next.Add(gap)
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	return int(got.Load())
}

// arpAsk sends, from vm's eth0, an ARP request for target with the given
// sender MAC and IP (hand-set: possibly not vm's), and reports whether an
// answer to that sender came back.
func arpAsk(t *testing.T, vm *netns.NS, senderMAC, senderIP, target string) bool {
	t.Helper()
	fd, idx := packetSocket(t, vm, unix.ETH_P_ARP)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	sha, _ := net.ParseMAC(senderMAC)
	spa, tpa := netip.MustParseAddr(senderIP).As4(), netip.MustParseAddr(target).As4()
	arp := make([]byte, 28)
	binary.BigEndian.PutUint16(arp[0:], 1)
	binary.BigEndian.PutUint16(arp[2:], 0x0800)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1)
	copy(arp[8:], sha)
	copy(arp[14:], spa[:])
	copy(arp[24:], tpa[:])
	f := frame(vm1MAC, "ff:ff:ff:ff:ff:ff", unix.ETH_P_ARP, arp)
	if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: idx}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n < 42 {
			continue
		}
		a := buf[14:n]
		if binary.BigEndian.Uint16(a[6:]) == 2 && bytes.Equal(a[14:18], tpa[:]) && bytes.Equal(a[24:28], spa[:]) {
			return true
		}
	}
	return false
}

// neighbourAdvert is an unsolicited, overriding IPv6 neighbour
// advertisement from srcMAC (sent from its EUI-64 link-local address to all
// nodes) claiming target for srcMAC: the frame that poisons neighbour caches.
func neighbourAdvert(srcMAC string, target netip.Addr) []byte {
	hw, _ := net.ParseMAC(srcMAC)
	icmp := make([]byte, 32)
	icmp[0] = ndNeighborAdvert
	icmp[4] = 0x20 // override
	tb := target.As16()
	copy(icmp[8:24], tb[:])
	icmp[24], icmp[25] = 2, 1 // target link-layer address option
	copy(icmp[26:32], hw)
	return ndFrame(srcMAC, icmp)
}

// routerAdvert is a router advertisement from srcMAC announcing prefix:
// the rogue RA that would make every host on the segment route through it.
func routerAdvert(srcMAC string, prefix netip.Addr) []byte {
	icmp := make([]byte, 16+32)
	icmp[0] = ndRouterAdvert
	icmp[4] = 64                               // hop limit
	binary.BigEndian.PutUint16(icmp[6:], 1800) // router lifetime
	icmp[16], icmp[17], icmp[18], icmp[19] = 3, 4, 64, 0xc0
	binary.BigEndian.PutUint32(icmp[20:], 86400)
	binary.BigEndian.PutUint32(icmp[24:], 14400)
	p := prefix.As16()
	copy(icmp[32:48], p[:])
	return ndFrame(srcMAC, icmp)
}

// ndFrame sends the ICMPv6 message icmp from srcMAC's EUI-64 link-local
// address to all nodes (ff02::1, hop limit 255, as ND requires), with its
// checksum filled in.
func ndFrame(srcMAC string, icmp []byte) []byte {
	hw, _ := net.ParseMAC(srcMAC)
	src, dst := eui64LinkLocal(hw).As16(), netip.MustParseAddr("ff02::1").As16()
	binary.BigEndian.PutUint16(icmp[2:], icmpv6Checksum(src, dst, icmp))
	ip6 := make([]byte, 40)
	ip6[0] = 0x60
	binary.BigEndian.PutUint16(ip6[4:], uint16(len(icmp)))
	ip6[6], ip6[7] = unix.IPPROTO_ICMPV6, 255
	copy(ip6[8:24], src[:])
	copy(ip6[24:40], dst[:])
	return frame(srcMAC, "33:33:00:00:00:01", unix.ETH_P_IPV6, append(ip6, icmp...))
}

func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	add([]byte{0, 0, byte(len(msg) >> 8), byte(len(msg)), 0, 0, 0, unix.IPPROTO_ICMPV6})
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestGuardNeighbourAndRouterAdverts: a guarded port may advertise its own
// IPv6 addresses and EUI-64 link-local, not another's (cache poisoning),
// and sends no router advertisements. Without the guard, the spoofed
// advertisement really rewrites vm2's neighbour entry.
func TestGuardNeighbourAndRouterAdverts(t *testing.T) {
	br, vm1, vm2 := bridgeLab(t)
	victim := netip.MustParseAddr("fd00::102")
	poisoned := func() bool {
		t.Helper()
		ipn(t, vm2, "neigh", "replace", victim.String(), "lladdr", "02:00:00:00:00:42", "dev", "eth0", "nud", "stale")
		sendAndCount(t, vm1, vm2, [][]byte{neighbourAdvert(vm1MAC, victim)}, 0, []byte("never"))
		out := ipn(t, vm2, "neigh", "show", victim.String(), "dev", "eth0")
		return strings.Contains(out, vm1MAC)
	}
	if !poisoned() {
		t.Fatal("without a guard, the spoofed neighbour advertisement did not rewrite vm2's entry (the test frame is wrong)")
	}
	// A rogue RA makes vm2 route its IPv6 through vm1 (a default route via
	// vm1's link-local) and take an address in the rogue prefix.
	rogue := netip.MustParseAddr("2001:db8:bad::")
	hw, _ := net.ParseMAC(vm1MAC)
	viaVM1 := "via " + eui64LinkLocal(hw).String()
	routed := func() bool {
		t.Helper()
		sendAndCount(t, vm1, vm2, [][]byte{routerAdvert(vm1MAC, rogue)}, 0, []byte("never"))
		return strings.Contains(ipn(t, vm2, "-6", "route", "show", "default"), viaVM1)
	}
	if !routed() {
		t.Fatal("without a guard, the router advertisement gave vm2 no default route via vm1 (the test frame is wrong)")
	}
	ipn(t, vm2, "-6", "route", "flush", "default")
	for _, line := range strings.Split(ipn(t, vm2, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"), "\n") {
		if f := strings.Fields(line); len(f) > 3 && strings.HasPrefix(f[3], "2001:db8:bad:") {
			ipn(t, vm2, "-6", "addr", "del", f[3], "dev", "eth0")
		}
	}

	tb := Table{Guards: []model.PortGuard{vm1Guard(0)}}
	apply(t, br, tb)
	if poisoned() {
		t.Error("a neighbour advertisement for another's address crossed the guard")
	}
	for _, own := range []netip.Addr{netip.MustParseAddr("fd00::100"), eui64LinkLocal(hw)} {
		b := own.As16()
		if n := sendAndCount(t, vm1, vm2, [][]byte{neighbourAdvert(vm1MAC, own)}, 0, b[:]); n < 1 {
			t.Errorf("vm1's advertisement of its own %s was dropped", own)
		}
	}
	if routed() {
		t.Error("a rogue router advertisement crossed the guard: vm2 routes through vm1")
	}
	got := counts(t, br, tb)
	na := "guard vm1: IPv6 neighbour advertisement for a target not fd00::100,fe80::ff:fe00:1"
	if got[na] == 0 || got["guard vm1: IPv6 router advertisement"] == 0 {
		t.Errorf("the advertisement rules counted nothing: %v", got)
	}
	// IPv6 between the VMs still works (their own NS/NA pass).
	ipn(t, vm2, "neigh", "flush", "dev", "eth0")
	ipn(t, vm1, "neigh", "flush", "dev", "eth0")
	expect(t, withSource(reach(vm1, "icmp", "fd00::101"), "fd00::100"), reach(vm2, "icmp", "fd00::100"))
}
