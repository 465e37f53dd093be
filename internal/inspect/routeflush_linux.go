package inspect

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// The kernel announces the IPv4 routes it deletes on request, but not those
// it flushes itself: every route through an interface that goes down or is
// deleted, and the routes that depended on an IPv4 address that is removed
// (all of the interface's when it was the last one). IPv6 announces its
// flushes. So the watcher keeps the namespace's IPv4 routes (the local
// table left out, as events leaves it out), and after each of those events
// dumps them again: a route gone without a word is reported as a route del
// event with the reason.

// routeKey identifies a route event's route within its namespace, as the
// kernel's FIB does: family, table, destination, metric, kind.
func routeKey(ev Event) string {
	return ev.Family + "|" + strconv.Itoa(ev.Table) + "|" + ev.Dst + "|" + strconv.Itoa(ev.Metric) + "|" + ev.Kind
}

// trackRoute records a route event of the IPv4 table (new or del).
func (w *watcher) trackRoute(ev Event) {
	if ev.Family != "inet" {
		return
	}
	k := routeKey(ev)
	if ev.Action == "del" {
		delete(w.routes, k)
		return
	}
	w.routes[k] = ev
	delete(w.flushed, k)
}

// flushedRoutes dumps the IPv4 routes again and returns a del event, with
// reason, for each one kvmnet knew that is gone.
func (w *watcher) flushedRoutes(reason string) []Event {
	now, err := w.ipv4Routes()
	if err != nil {
		return nil // the namespace is going away: its own events say so
	}
	var out []Event
	for k, ev := range w.routes {
		if _, ok := now[k]; ok {
			continue
		}
		ev.Action, ev.Reason = "del", reason
		out = append(out, ev)
		delete(w.routes, k)
		w.flushed[k] = true
	}
	sortEvents(out)
	return out
}

// ipv4Routes dumps the namespace's IPv4 routes, but the local table's, as
// route events keyed by routeKey.
func (w *watcher) ipv4Routes() (map[string]Event, error) {
	var msgs [][]byte
	err := netns.Do(w.nsfd, func() (err error) {
		req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
		req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET}})
		msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in namespace %q: %w", w.ns, err)
	}
	out := map[string]Event{}
	for _, m := range msgs {
		for _, ev := range w.routeEvent(unix.RTM_NEWROUTE, m) {
			out[routeKey(ev)] = ev
		}
	}
	return out, nil
}

func sortEvents(evs []Event) {
	slices.SortFunc(evs, func(a, b Event) int {
		return cmp.Or(cmp.Compare(a.Table, b.Table), cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.Metric, b.Metric))
	})
}
