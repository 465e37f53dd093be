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
	root, g := Entrypoint(io.Discard, io.Discard)
	root.SetArgs(append([]string{"events"}, common...))
	_ = root.ParseFlags(append([]string{"events"}, common...))
	topo, err := topology.Parse("reference.yaml", topology.DefaultYAML(), topology.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	buf := &lockedBuffer{}
	g.stdout = buf
	go func() { done <- streamEvents(ctx, g, topo) }()
	time.Sleep(300 * time.Millisecond) // subscribed
	host, vm1 := prefix+"host", prefix+"vm1"
	testutil.Run(t, "ip", "-n", host, "addr", "add", "192.168.1.7/24", "dev", "eth0")
	testutil.Run(t, "ip", "-n", vm1, "route", "add", "10.9.0.0/16", "via", "192.168.1.7", "dev", "eth0")
	testutil.Run(t, "ip", "-n", vm1, "route", "del", "10.9.0.0/16")
	testutil.Run(t, "ip", "-n", host, "addr", "del", "192.168.1.7/24", "dev", "eth0")
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("events: %v", err)
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
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
			t.Errorf("no %s event:\n%s", want, buf.String())
		}
	}
}
