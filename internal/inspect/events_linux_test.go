package inspect

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/testutil"
)

// TestWatchAddressAndRouteEvents: addresses and routes added and deleted by
// hand with iproute2 in a scratch namespace arrive as addr and route events
// with the namespace, the interface, the address or destination and the
// action; repeats and the local table's routes do not.
func TestWatchAddressAndRouteEvents(t *testing.T) {
	testutil.RequireTool(t, "ip")
	ns := testutil.NewNSPrefix(t, "dgx-")
	n := ns.Name
	ip := func(args ...string) { testutil.Run(t, "ip", append([]string{"-n", n}, args...)...) }
	ip("link", "add", "dgx0", "type", "veth", "peer", "name", "dgx1")
	ip("link", "set", "dgx0", "up")
	ip("link", "set", "dgx1", "up")

	w, err := newWatcher(n)
	if err != nil {
		t.Fatal(err)
	}
	defer w.sock.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan Event, 1024)
	done := make(chan error, 1)
	go func() { done <- w.run(ctx, ch) }()

	ip("addr", "add", "10.77.0.1/24", "dev", "dgx0")
	ip("-6", "addr", "add", "2001:db8:77::1/64", "dev", "dgx0", "nodad")
	ip("route", "add", "10.88.0.0/16", "via", "10.77.0.2", "dev", "dgx0", "metric", "7")
	ip("route", "add", "blackhole", "10.99.0.0/24")
	ip("route", "add", "default", "via", "10.77.0.254")
	ip("route", "del", "10.88.0.0/16", "via", "10.77.0.2", "dev", "dgx0", "metric", "7")
	ip("addr", "del", "10.77.0.1/24", "dev", "dgx0")

	type want struct {
		desc string
		ok   func(Event) bool
	}
	wants := []want{
		{"addr new dgx0 10.77.0.1/24", func(e Event) bool {
			return e.Type == "addr" && e.Action == "new" && e.Interface == "dgx0" && e.Address == "10.77.0.1/24" && e.Family == "inet"
		}},
		{"addr new dgx0 2001:db8:77::1/64", func(e Event) bool {
			return e.Type == "addr" && e.Action == "new" && e.Interface == "dgx0" && e.Address == "2001:db8:77::1/64" && e.Family == "inet6"
		}},
		{"route new 10.77.0.0/24 dev dgx0 proto kernel (the address's prefix route)", func(e Event) bool {
			return e.Type == "route" && e.Action == "new" && e.Dst == "10.77.0.0/24" && e.Interface == "dgx0" && e.Protocol == "kernel" && e.Scope == "link" && e.Src == "10.77.0.1" && e.Table == 254
		}},
		{"route new 10.88.0.0/16 via 10.77.0.2 dev dgx0 metric 7", func(e Event) bool {
			return e.Type == "route" && e.Action == "new" && e.Dst == "10.88.0.0/16" && e.Via == "10.77.0.2" && e.Interface == "dgx0" && e.Metric == 7 && e.Protocol == "boot" && e.Kind == ""
		}},
		{"route new blackhole 10.99.0.0/24", func(e Event) bool {
			return e.Type == "route" && e.Action == "new" && e.Dst == "10.99.0.0/24" && e.Kind == "blackhole"
		}},
		{"route new default via 10.77.0.254", func(e Event) bool {
			return e.Type == "route" && e.Action == "new" && e.Dst == "default" && e.Via == "10.77.0.254" && e.Interface == "dgx0"
		}},
		{"route del 10.88.0.0/16", func(e Event) bool {
			return e.Type == "route" && e.Action == "del" && e.Dst == "10.88.0.0/16" && e.Via == "10.77.0.2" && e.Interface == "dgx0"
		}},
		{"addr del dgx0 10.77.0.1/24", func(e Event) bool {
			return e.Type == "addr" && e.Action == "del" && e.Interface == "dgx0" && e.Address == "10.77.0.1/24"
		}},
	}
	var got []Event
	seen := make([]bool, len(wants))
	deadline := time.After(5 * time.Second)
	for missing := len(wants); missing > 0; {
		select {
		case e := <-ch:
			got = append(got, e)
			for i, w := range wants {
				if !seen[i] && w.ok(e) {
					seen[i] = true
					missing--
				}
			}
		case <-deadline:
			missing = 0
		}
	}
	// What else arrives within a moment is part of the record too.
	for end := time.After(300 * time.Millisecond); ; {
		select {
		case e := <-ch:
			got = append(got, e)
			continue
		case <-end:
		}
		break
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range got {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	record := strings.Join(lines, "\n")
	for i, w := range wants {
		if !seen[i] {
			t.Errorf("no event %s", w.desc)
		}
	}
	news := map[string]int{}
	for _, e := range got {
		if e.Namespace != n {
			t.Errorf("event from namespace %q, want %q", e.Namespace, n)
		}
		if e.Type == "route" && (strings.HasSuffix(e.Dst, "/32") || e.Kind == "local" || e.Kind == "broadcast") {
			t.Errorf("a local-table route was reported: %+v", e)
		}
		if e.Type == "addr" && e.Action == "new" {
			news[e.Interface+" "+e.Address]++
		}
	}
	for k, c := range news {
		if c > 1 {
			t.Errorf("address %s reported new %d times (a refresh is not a change)", k, c)
		}
	}
	// The JSON line carries the fields by name.
	var line map[string]any
	for _, l := range lines {
		if strings.Contains(l, `"type":"route"`) && strings.Contains(l, "10.88.0.0/16") {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	for k, v := range map[string]any{"namespace": n, "interface": "dgx0", "dst": "10.88.0.0/16", "via": "10.77.0.2", "metric": float64(7)} {
		if line[k] != v {
			t.Errorf("route event JSON: %s = %v, want %v", k, line[k], v)
		}
	}
	if t.Failed() {
		t.Logf("events:\n%s", record)
	} else {
		t.Logf("%d events, e.g.\n%s", len(got), fmt.Sprint(strings.Join(lines[:min(6, len(lines))], "\n")))
	}
}
