package nft

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// newNS is a scratch namespace ("kvmf-<hex>") removed when the test ends.
func newNS(t *testing.T) *netns.NS {
	t.Helper()
	return testutil.NewNSPrefix(t, "kvmf-")
}

// ipn runs `ip -n NS args...` (iproute2 builds the test topologies).
func ipn(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	return testutil.Run(t, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// nftIn runs nft inside ns.
func nftIn(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	return testutil.Run(t, "ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...)
}

// veth joins a (as an) and b (as bn) and brings both ends up.
func veth(t *testing.T, a *netns.NS, an string, b *netns.NS, bn string) {
	t.Helper()
	ipn(t, a, "link", "add", an, "type", "veth", "peer", "name", bn, "netns", b.Name)
	ipn(t, a, "link", "set", an, "up")
	ipn(t, b, "link", "set", bn, "up")
}

func addrs(t *testing.T, ns *netns.NS, dev string, cidrs ...string) {
	t.Helper()
	for _, c := range cidrs {
		args := []string{"addr", "add", c, "dev", dev}
		if strings.Contains(c, ":") {
			args = append(args, "nodad")
		}
		ipn(t, ns, args...)
	}
}

// routerLab builds a - r - c: a (10.1.0.2 and 10.1.0.3, 192.168.1.100,
// fd01::2) and c (10.2.0.2, fd02::2) route through r (a0: 10.1.0.1,
// 192.168.1.1, fd01::1; c0: 10.2.0.1, fd02::1), which forwards.
func routerLab(t *testing.T) (a, r, c *netns.NS) {
	t.Helper()
	testutil.RequireTool(t, "nft")
	a, r, c = newNS(t), newNS(t), newNS(t)
	for _, ns := range []*netns.NS{a, r, c} {
		ipn(t, ns, "link", "set", "lo", "up")
	}
	veth(t, a, "eth0", r, "a0")
	veth(t, c, "eth0", r, "c0")
	addrs(t, a, "eth0", "10.1.0.2/24", "10.1.0.3/24", "192.168.1.100/24", "fd01::2/64")
	addrs(t, r, "a0", "10.1.0.1/24", "192.168.1.1/24", "fd01::1/64")
	addrs(t, r, "c0", "10.2.0.1/24", "fd02::1/64")
	addrs(t, c, "eth0", "10.2.0.2/24", "fd02::2/64")
	ipn(t, a, "route", "add", "default", "via", "10.1.0.1")
	ipn(t, a, "-6", "route", "add", "default", "via", "fd01::1")
	ipn(t, c, "route", "add", "default", "via", "10.2.0.1")
	ipn(t, c, "-6", "route", "add", "default", "via", "fd02::1")
	if err := netns.WriteSysctls(r, [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}}); err != nil {
		t.Fatal(err)
	}
	return a, r, c
}

// serveTCP accepts (and closes) connections on each address inside ns.
func serveTCP(t *testing.T, ns *netns.NS, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		var ln net.Listener
		if err := netns.Do(ns, func() error {
			var err error
			ln, err = net.Listen("tcp", addr)
			return err
		}); err != nil {
			t.Fatalf("listen on %s in %s: %v", addr, ns.Name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello\n"))
				c.Close()
			}
		}()
	}
}

// serveUDPEcho echoes datagrams on addr inside ns.
func serveUDPEcho(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := netns.Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on udp %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// expect runs probes (in parallel) and fails t for each unexpected result.
func expect(t *testing.T, probes ...probe.Probe) []probe.Result {
	t.Helper()
	for i := range probes {
		if probes[i].Timeout == 0 {
			probes[i].Timeout = 700 * time.Millisecond
		}
	}
	res := probe.Run(context.Background(), probes)
	for _, r := range res {
		if !r.OK {
			t.Errorf("%s (from %s%s): want %s, got %s (%s)", r.Probe.Label(), r.Probe.FromNS, srcNote(r.Probe), r.Probe.Expect, r.Got(), r.Detail)
		}
	}
	return res
}

func srcNote(p probe.Probe) string {
	if p.Source == "" {
		return ""
	}
	return " source " + p.Source
}

func reach(from *netns.NS, proto, to string) probe.Probe {
	return probe.Probe{FromNS: from.Name, Proto: proto, To: to, Expect: probe.Reachable}
}

func block(from *netns.NS, proto, to string) probe.Probe {
	return probe.Probe{FromNS: from.Name, Proto: proto, To: to, Expect: probe.Blocked}
}

func withSource(p probe.Probe, src string) probe.Probe {
	p.Source = src
	return p
}

// counts returns the packet counter of each rule by origin.
func counts(t *testing.T, ns *netns.NS, tb Table) map[string]uint64 {
	t.Helper()
	cs, err := Counters(ns)
	if err != nil {
		t.Fatal(err)
	}
	Label(cs, tb)
	out := map[string]uint64{}
	for _, c := range cs {
		out[c.Origin] += c.Packets
	}
	return out
}

func apply(t *testing.T, ns *netns.NS, tb Table) {
	t.Helper()
	if err := Apply(ns, tb); err != nil {
		t.Fatal(err)
	}
	got, err := Observe(ns)
	if err != nil {
		t.Fatal(err)
	}
	if want := Canonical(tb); got != want {
		t.Fatalf("observed after Apply:\n%s\nwant:\n%s", got, want)
	}
}

var counterRe = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// listing is `nft list ruleset` in ns with the counters zeroed.
func listing(t *testing.T, ns *netns.NS) string {
	t.Helper()
	return counterRe.ReplaceAllString(nftIn(t, ns, "list", "ruleset"), "counter packets 0 bytes 0")
}

var (
	ruleHeadRe = regexp.MustCompile(`(?m)^((?:inet|bridge|ip|ip6) kvmnet \S+)(?: \d+)+$`)
	pktsRe     = regexp.MustCompile(`\[ counter pkts \d+ bytes \d+ \]`)
)

// bytecode is `nft --debug=netlink list ruleset` in ns: every set element
// and every rule's expressions as the kernel holds them, with rule handles
// and counters left out.
func bytecode(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out := nftIn(t, ns, "--debug=netlink", "list", "ruleset")
	out = ruleHeadRe.ReplaceAllString(out, "$1")
	out = pktsRe.ReplaceAllString(out, "[ counter pkts 0 bytes 0 ]")
	// A hash set lists its elements in hash order: sort each set's lines.
	lines := strings.Split(out, "\n")
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && strings.HasPrefix(lines[j], "\telement ") {
			j++
		}
		slices.Sort(lines[i:j])
		i = j + 1
	}
	return strings.Join(lines, "\n")
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
