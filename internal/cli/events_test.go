package cli

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// TestEventsReportAddressAndRouteChanges: addresses and routes added and
// deleted by hand in the network's namespaces arrive as JSON lines of type
// addr and route, with the namespace, the interface, the address or
// destination, and the action.
func TestEventsReportAddressAndRouteChanges(t *testing.T) {
	prefix, common := upReference(t)
	topo, err := topology.Parse("reference.yaml", topology.DefaultYAML(), topology.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	stop := watchEvents(t, common, topo)
	host, vm1 := prefix+"host", prefix+"vm1"
	testutil.Run(t, "ip", "-n", host, "addr", "add", "192.168.1.7/24", "dev", "eth0")
	testutil.Run(t, "ip", "-n", vm1, "route", "add", "10.9.0.0/16", "via", "192.168.1.7", "dev", "eth0")
	testutil.Run(t, "ip", "-n", vm1, "route", "del", "10.9.0.0/16")
	testutil.Run(t, "ip", "-n", host, "addr", "del", "192.168.1.7/24", "dev", "eth0")
	time.Sleep(300 * time.Millisecond)
	out := stop()
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Namespace, Type, Action, Interface, Address, Dst, Via, Protocol string
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		switch {
		case ev.Type == "addr" && ev.Namespace == host && ev.Interface == "eth0" && ev.Address == "192.168.1.7/24":
			seen["addr "+ev.Action] = true
		case ev.Type == "route" && ev.Namespace == vm1 && ev.Interface == "eth0" && ev.Dst == "10.9.0.0/16" && ev.Via == "192.168.1.7" && ev.Protocol == "boot":
			seen["route "+ev.Action] = true
		}
	}
	for _, want := range []string{"addr new", "route new", "route del", "addr del"} {
		if !seen[want] {
			t.Errorf("no %s event:\n%s", want, out)
		}
	}
}

// TestEventsReportFlushedRoutes: the kernel deletes IPv4 routes without a
// notification when their interface goes down or loses its address; events
// reports each once, as a route del with the reason, and the routes the
// kernel does announce are not reported twice.
func TestEventsReportFlushedRoutes(t *testing.T) {
	prefix, common := upReference(t)
	topo, err := topology.Parse("reference.yaml", topology.DefaultYAML(), topology.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	stop := watchEvents(t, common, topo)
	vm1 := prefix + "vm1"
	testutil.Run(t, "ip", "-n", vm1, "link", "set", "eth0", "down")
	if out := testutil.Run(t, "ip", "-n", vm1, "-4", "route"); strings.TrimSpace(out) != "" {
		t.Fatalf("the kernel left routes through a down interface:\n%s", out)
	}
	testutil.Run(t, "ip", "-n", vm1, "link", "set", "eth0", "up")
	testutil.Run(t, "ip", "-n", vm1, "route", "add", "10.9.0.0/16", "via", "192.168.1.1")
	testutil.Run(t, "ip", "-n", vm1, "addr", "del", "192.168.1.100/24", "dev", "eth0")
	time.Sleep(500 * time.Millisecond)
	out := stop()
	dels := map[string][]string{} // dst -> reasons of its del events in vm1
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct{ Namespace, Type, Action, Dst, Reason string }
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		if ev.Type == "route" && ev.Action == "del" && ev.Namespace == vm1 {
			dels[ev.Dst] = append(dels[ev.Dst], ev.Reason)
		}
	}
	want := map[string][]string{
		// Flushed silently when eth0 went down (the kernel's subnet route too).
		"default":     {"interface eth0 went down"},
		"10.0.0.0/24": {"interface eth0 went down"},
		// Flushed silently with the address it went through.
		"10.9.0.0/16": {"address 192.168.1.100/24 was removed from eth0"},
	}
	for dst, reasons := range want {
		if got := dels[dst]; len(got) != 1 || got[0] != reasons[0] {
			t.Errorf("route del events for %s: reasons %q, want exactly %q\n%s", dst, got, reasons, out)
		}
	}
	// The subnet route goes twice (link down, then its address removed),
	// each reported once: the second time the kernel announces it, and
	// events reports it either from that announcement or, when the address
	// notification comes first, from its dump (then not again).
	got := dels["192.168.1.0/24"]
	if len(got) != 2 || got[0] != "interface eth0 went down" || got[1] != "" && got[1] != "address 192.168.1.100/24 was removed from eth0" {
		t.Errorf("route del events for 192.168.1.0/24: reasons %q\n%s", got, out)
	}
}

// watchEvents streams the events of topo's network (up, with the command
// line flags common) until the returned stop, which gives the JSON lines.
func watchEvents(t *testing.T, common []string, topo *topology.Topology) (stop func() string) {
	t.Helper()
	root, g := Entrypoint(io.Discard, io.Discard)
	_ = root.ParseFlags(append([]string{"events"}, common...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	buf := &lockedBuffer{}
	g.stdout = buf
	go func() { done <- streamEvents(ctx, g, topo) }()
	time.Sleep(300 * time.Millisecond) // subscribed
	return func() string {
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("events: %v", err)
		}
		return buf.String()
	}
}
