package probe_test

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// lab: a (10.8.0.1, fd08::1) and b (10.8.0.2, fd08::2) on one veth; b
// listens on tcp 7001, 7002 and 7004 and echoes udp 7001; its firewall
// drops tcp 7002, rejects tcp 7004 (TCP reset) and everything to its second
// address 10.8.0.3 (ICMP port unreachable).
func lab(t *testing.T) (a, b *netns.NS) {
	t.Helper()
	testutil.RequireTool(t, "nft")
	a, b = testutil.NewNSPrefix(t, "kvmf-"), testutil.NewNSPrefix(t, "kvmf-")
	ip := func(ns *netns.NS, args ...string) { testutil.Run(t, "ip", append([]string{"-n", ns.Name}, args...)...) }
	ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.Name)
	for i, ns := range []*netns.NS{a, b} {
		ip(ns, "link", "set", "lo", "up")
		ip(ns, "link", "set", "eth0", "up")
		ip(ns, "addr", "add", []string{"10.8.0.1/24", "10.8.0.2/24"}[i], "dev", "eth0")
		ip(ns, "addr", "add", []string{"fd08::1/64", "fd08::2/64"}[i], "dev", "eth0", "nodad")
	}
	ip(b, "addr", "add", "10.8.0.3/24", "dev", "eth0")
	for _, port := range []string{":7001", ":7002", ":7004"} {
		var ln net.Listener
		if err := netns.Do(b, func() error {
			var err error
			ln, err = net.Listen("tcp", port)
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
				c.Close()
			}
		}()
	}
	var pc net.PacketConn
	if err := netns.Do(b, func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":7001")
		return err
	}); err != nil {
		t.Fatal(err)
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
	fw := &model.Firewall{Policy: map[string]string{"input": "accept"}, Rules: []model.Rule{
		{Hook: "input", Action: "drop", Proto: "tcp", DPorts: []model.PortRange{{From: 7002, To: 7002}}},
		{Hook: "input", Action: "reject", Proto: "tcp", DPorts: []model.PortRange{{From: 7004, To: 7004}}},
		{Hook: "input", Action: "reject", Family: "ip", DAddr: []netip.Prefix{netip.MustParsePrefix("10.8.0.3/32")}},
	}}
	if err := nft.Apply(b, nft.Table{Firewall: fw}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestProbes: every protocol, both outcomes, the detail of each way of
// being blocked, and probes that cannot run.
func TestProbes(t *testing.T) {
	a, b := lab(t)
	p := func(proto, to, expect string) probe.Probe {
		return probe.Probe{FromNS: a.Name, Proto: proto, To: to, Expect: expect, Timeout: 500 * time.Millisecond}
	}
	for _, c := range []struct {
		p      probe.Probe
		ok     bool
		detail string
	}{
		{p("tcp", "10.8.0.2:7001", "reachable"), true, "connected"},
		{p("tcp", "10.8.0.2:7002", "blocked"), true, "timeout"},
		{p("tcp", "10.8.0.2:7003", "blocked"), true, "refused"},
		{p("tcp", "10.8.0.2:7004", "blocked"), true, "refused"},
		{p("tcp", "[fd08::2]:7001", ""), true, "connected"},
		{p("tcp", "[fd08::2]:7002", "blocked"), true, "timeout"},
		{p("tcp", "10.8.0.2:7002", "reachable"), false, "timeout"},
		{p("tcp", "10.9.9.9:7001", "blocked"), true, "network unreachable"},
		{p("icmp", "10.8.0.2", "reachable"), true, "echo reply"},
		{p("icmp", "fd08::2", "reachable"), true, "echo reply"},
		{p("icmp", "10.8.0.99", "blocked"), true, "timeout"},
		{p("icmp", "10.8.0.3", "blocked"), true, "ICMP port unreachable from 10.8.0.3"},
		{p("tcp", "10.8.0.3:7001", "blocked"), true, "refused"},
		{p("arp", "10.9.0.1", "blocked"), true, "no route"},
		{p("udp", "10.8.0.2:7001", "reachable"), true, "reply (13 bytes)"},
		{p("udp", "10.8.0.2:7009", "blocked"), true, "refused (ICMP port unreachable)"},
		{p("udp", "[fd08::2]:7009", "blocked"), true, "refused (ICMP port unreachable)"},
		{p("arp", "10.8.0.2", "reachable"), true, "is-at "},
		{p("arp", "10.8.0.77", "blocked"), true, "timeout (no ARP reply)"},
	} {
		r := probe.One(context.Background(), c.p)
		if r.OK != c.ok || !strings.HasPrefix(r.Detail, c.detail) || r.Err != nil {
			t.Errorf("%s %s (expect %q): ok %v detail %q err %v; want ok %v detail %q", c.p.Proto, c.p.To, c.p.Expect, r.OK, r.Detail, r.Err, c.ok, c.detail)
		}
	}
	// The ARP answer names b's MAC.
	mac := strings.Fields(testutil.Run(t, "ip", "-n", b.Name, "-br", "link", "show", "eth0"))[2]
	if r := probe.One(context.Background(), p("arp", "10.8.0.2", "")); r.Detail != "is-at "+mac {
		t.Errorf("ARP detail %q, want is-at %s", r.Detail, mac)
	}
	// A source address picks the sender.
	ipb := p("tcp", "10.8.0.2:7001", "")
	ipb.Source = "10.8.0.1"
	if r := probe.One(context.Background(), ipb); !r.OK {
		t.Errorf("with source: %s", r.Detail)
	}
	// Probes that cannot run: an error, never OK.
	for _, bad := range []probe.Probe{
		{FromNS: "kvmf-does-not-exist", Proto: "tcp", To: "10.8.0.2:7001"},
		{FromNS: a.Name, Proto: "tcp", To: "10.8.0.2"},
		{FromNS: a.Name, Proto: "sctp", To: "10.8.0.2:1"},
		{FromNS: a.Name, Proto: "arp", To: "fd08::2"},
		{FromNS: a.Name, Proto: "icmp", To: "10.8.0.2", Expect: "maybe"},
		{FromNS: a.Name, Proto: "tcp", To: "10.8.0.2:7001", Source: "fd08::1"},
	} {
		r := probe.One(context.Background(), bad)
		if r.Err == nil || r.OK || r.Got() != "error" {
			t.Errorf("%+v: %+v", bad, r)
		}
	}
	if r := probe.One(context.Background(), probe.Probe{FromNS: "kvmf-does-not-exist", Proto: "tcp", To: "10.8.0.2:7001"}); !errors.Is(r.Err, netns.ErrNotFound) {
		t.Errorf("missing namespace: %v", r.Err)
	}
}

// TestRunParallelAndCancel: Run keeps the order, runs at most Parallel
// probes at once, and a cancelled context ends waiting probes.
func TestRunParallelAndCancel(t *testing.T) {
	a, _ := lab(t)
	var ps []probe.Probe
	for range 12 {
		ps = append(ps, probe.Probe{FromNS: a.Name, Proto: "tcp", To: "10.8.0.2:7002", Expect: "blocked", Timeout: 300 * time.Millisecond})
	}
	ps[5] = probe.Probe{Name: "the reachable one", FromNS: a.Name, Proto: "tcp", To: "10.8.0.2:7001", Timeout: 300 * time.Millisecond}
	old := probe.Parallel
	probe.Parallel = 4
	defer func() { probe.Parallel = old }()
	start := time.Now()
	res := probe.Run(context.Background(), ps)
	took := time.Since(start)
	if total, failed := probe.Summary(res); total != 12 || failed != 0 {
		t.Errorf("summary %d/%d:\n%s", total, failed, probe.Matrix(res))
	}
	if res[5].Probe.Name != "the reachable one" || !res[5].Reachable {
		t.Errorf("order: %+v", res[5])
	}
	// 11 timeouts of 300 ms, 4 at a time: at least three rounds.
	if took < 850*time.Millisecond || took > 2500*time.Millisecond {
		t.Errorf("12 probes, 4 at a time, took %v", took)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	r := probe.Run(ctx, []probe.Probe{{FromNS: a.Name, Proto: "tcp", To: "10.8.0.2:7002", Expect: "blocked", Timeout: 5 * time.Second}})
	if r[0].Detail != "cancelled" || r[0].Elapsed > time.Second {
		t.Errorf("cancelled probe: %+v", r[0])
	}
	// The matrix and JUnit of real results.
	m := probe.Matrix(res)
	if !strings.Contains(m, "tcp 10.8.0.2:7002") || !strings.Contains(m, "blocked ok") || !strings.Contains(m, "12 probes, 12 passed, 0 failed") {
		t.Errorf("matrix:\n%s", m)
	}
	x, err := probe.JUnit(res)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
	}
	if err := xml.Unmarshal(x, &v); err != nil || v.Tests != 12 || v.Failures != 0 {
		t.Errorf("junit %+v %v:\n%s", v, err, x)
	}
	_ = io.Discard
}
