package qos

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// pair is two scratch namespaces joined by a veth: a's eth0 (10.7.0.1) and
// b's eth0 (10.7.0.2), one queue each, as kvmnet makes them.
func pair(t testing.TB) (a, b *netns.NS) {
	t.Helper()
	a, b = testutil.NewNSPrefix(t, "kvmf-"), testutil.NewNSPrefix(t, "kvmf-")
	ipn := func(ns *netns.NS, args ...string) { testutil.Run(t, "ip", append([]string{"-n", ns.Name}, args...)...) }
	ipn(a, "link", "add", "eth0", "numtxqueues", "1", "numrxqueues", "1", "type", "veth", "peer", "name", "eth0",
		"numtxqueues", "1", "numrxqueues", "1", "netns", b.Name)
	for i, ns := range []*netns.NS{a, b} {
		ipn(ns, "link", "set", "lo", "up")
		ipn(ns, "link", "set", "eth0", "up")
		ipn(ns, "addr", "add", []string{"10.7.0.1/24", "10.7.0.2/24"}[i], "dev", "eth0")
	}
	return a, b
}

// dial connects from ns to addr: the socket is made inside ns, the
// (blocking) connect happens outside netns.Do.
func dial(t testing.TB, ns *netns.NS, addr string) net.Conn {
	t.Helper()
	ap := netip4(t, addr)
	var fd int
	if err := netns.Do(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, ap); err != nil {
		unix.Close(fd)
		t.Fatalf("connect %s from %s: %v", addr, ns.Name, err)
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func netip4(t testing.TB, addr string) *unix.SockaddrInet4 {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa
}

// flow is one TCP stream from a to b's port that runs until stopped; rx
// counts what the receiver got.
type flow struct {
	rx   atomic.Int64
	stop func()
}

func stream(t testing.TB, from, to *netns.NS, port string) *flow {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(to, func() error {
		var err error
		ln, err = net.Listen("tcp", ":"+port)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f := &flow{}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			f.rx.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	c := dial(t, from, "10.7.0.2:"+port)
	rc := <-accepted
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	var stopped atomic.Bool
	f.stop = func() {
		if stopped.Swap(true) {
			return
		}
		close(done)
		c.Close()
		if rc != nil {
			rc.Close()
		}
	}
	t.Cleanup(f.stop)
	return f
}

// measure is a stream's goodput in bit/s over window, after warm; class,
// when not nil, also returns the bytes htb class 6b76:10 on ns/ifname
// admitted in the same window, in bit/s (the shaper's own count of L2
// bytes, GSO segments counted one by one).
func measure(t testing.TB, f *flow, warm, window time.Duration, ns *netns.NS, ifname string) (goodput, shaped float64) {
	t.Helper()
	time.Sleep(warm)
	c0, t0 := f.rx.Load(), time.Now()
	b0 := classBytes(t, ns, ifname)
	time.Sleep(window)
	c1, t1 := f.rx.Load(), time.Now()
	b1 := classBytes(t, ns, ifname)
	secs := t1.Sub(t0).Seconds()
	return float64(c1-c0) * 8 / secs, float64(b1-b0) * 8 / secs
}

func classBytes(t testing.TB, ns *netns.NS, ifname string) uint64 {
	t.Helper()
	if ns == nil {
		return 0
	}
	h, err := handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := h.ClassList(l, rootHandle)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Attrs().Handle == classHandle && c.Attrs().Statistics != nil && c.Attrs().Statistics.Basic != nil {
			return c.Attrs().Statistics.Basic.Bytes
		}
	}
	return 0
}

// roundTrip sends a line from a to an echo server in b and reads it back.
func echoServer(t testing.TB, ns *netns.NS, port string) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", ":"+port)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

func qdiscs(t testing.TB, ns *netns.NS, ifname string) []netlink.Qdisc {
	t.Helper()
	h, err := handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	return qs
}

// tcEvents listens to ns's traffic control notifications (RTNLGRP_TC):
// count returns how many qdisc, class and filter changes the kernel
// announced since the previous count (or since tcEvents).
func tcEvents(t testing.TB, ns *netns.NS) (count func() int) {
	t.Helper()
	var fd int
	if err := netns.Do(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_TC - 1)})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	buf := make([]byte, 1<<16)
	return func() int {
		n := 0
		for {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || m <= 0 {
				return n
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:m])
			if err != nil {
				t.Fatal(err)
			}
			n += len(msgs)
		}
	}
}
