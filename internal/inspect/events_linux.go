package inspect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// Event is one change the kernel announced in a namespace: a link's state,
// a bridge FDB entry, a neighbour (ARP/NDP) entry, an address, or a route.
type Event struct {
	Time      time.Time `json:"time"`
	Namespace string    `json:"namespace"`
	// Type is link, fdb, neigh, addr or route; Action is new or del.
	Type      string `json:"type"`
	Action    string `json:"action"`
	Interface string `json:"interface,omitempty"`
	// Link events.
	AdminUp   *bool  `json:"admin_up,omitempty"`
	Carrier   *bool  `json:"carrier,omitempty"`
	OperState string `json:"oper_state,omitempty"`
	MTU       int    `json:"mtu,omitempty"`
	Master    string `json:"master,omitempty"`
	// FDB and neighbour events.
	MAC    string `json:"mac,omitempty"`
	IP     string `json:"ip,omitempty"`
	State  string `json:"state,omitempty"`
	Bridge string `json:"bridge,omitempty"`
	VLAN   int    `json:"vlan,omitempty"`
	// MovedFrom is set on an FDB event when the MAC was last learned on
	// another port of the same bridge: a MAC moving between ports (a VM
	// migrated, a duplicate MAC, or a loop when it flaps).
	MovedFrom string `json:"moved_from,omitempty"`
	// Family is inet or inet6 (address and route events).
	Family string `json:"family,omitempty"`
	// Address is an address event's address with its prefix length
	// (10.0.0.1/24), as `ip addr` shows it.
	Address string `json:"address,omitempty"`
	// Route events: the destination (a prefix, or "default"), the gateway,
	// the preferred source, who installed it (kernel, boot, static, dhcp,
	// kvmnet, or the number), its table (main is 254), metric, scope, and
	// its kind when not unicast (blackhole, unreachable, prohibit, ...).
	Dst      string `json:"dst,omitempty"`
	Via      string `json:"via,omitempty"`
	Src      string `json:"src,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Table    int    `json:"table,omitempty"`
	Metric   int    `json:"metric,omitempty"`
	Scope    string `json:"scope,omitempty"`
	Kind     string `json:"kind,omitempty"`
	// Reason says why the kernel deleted a route without announcing it
	// (an IPv4 route flushed because its interface went down, was deleted,
	// or lost the address the route depended on): such a route del event
	// is kvmnet's, from a dump after that change.
	Reason string `json:"reason,omitempty"`
}

// Watch subscribes to link, neighbour (including bridge FDB), address and
// route changes in each named namespace and sends them on out until ctx ends. The netlink
// sockets are opened inside each namespace (netns.Do) and read from
// goroutines outside it. Watch returns when ctx ends or every socket failed.
func Watch(ctx context.Context, names []string, out chan<- Event) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(names))
	for _, name := range names {
		w, err := newWatcher(name)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.nsfd.Close()
			defer w.sock.Close()
			errc <- w.run(ctx, out)
		}()
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type watcher struct {
	ns    string
	nsfd  *netns.NS // open for the watcher's life (route dumps)
	sock  *nl.NetlinkSocket
	names map[int]string    // ifindex -> name
	links map[int]Event     // last link state, to report changes only
	fdb   map[string]string // bridge|mac|vlan -> port
	addrs map[string]bool   // ifindex|prefix of the addresses present
	// routes holds the IPv4 routes present (routeKey), to find those the
	// kernel flushes without a word (routeflush_linux.go); flushed, those
	// reported so, whose late announcement is then not repeated.
	routes  map[string]Event
	flushed map[string]bool
}

func newWatcher(name string) (*watcher, error) {
	ns, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	w := &watcher{ns: name, nsfd: ns, names: map[int]string{}, links: map[int]Event{}, fdb: map[string]string{}, addrs: map[string]bool{},
		routes: map[string]Event{}, flushed: map[string]bool{}}
	var links []netlink.Link
	var fdb []netlink.Neigh
	var addrs []netlink.Addr
	err = netns.Do(ns, func() error {
		var err error
		w.sock, err = nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH,
			unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
		if err != nil {
			return err
		}
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		if links, err = h.LinkList(); err != nil {
			return err
		}
		if fdb, err = h.NeighList(0, unix.AF_BRIDGE); err != nil {
			return err
		}
		addrs, err = h.AddrList(nil, netlink.FAMILY_ALL)
		return err
	})
	if err != nil {
		if w.sock != nil {
			w.sock.Close()
		}
		ns.Close()
		return nil, fmt.Errorf("watch namespace %q: %w", name, err)
	}
	for _, l := range links {
		a := l.Attrs()
		w.names[a.Index] = a.Name
		w.links[a.Index] = w.linkEvent(l, "new")
	}
	for _, l := range links {
		w.links[l.Attrs().Index] = w.linkEvent(l, "new") // masters resolved now
	}
	for _, e := range fdb {
		if e.HardwareAddr != nil && e.MasterIndex != 0 {
			w.fdb[w.fdbKey(&e)] = w.names[e.LinkIndex]
		}
	}
	for _, a := range addrs {
		if p, ok := addrPrefix(a.IPNet); ok {
			w.addrs[addrKey(a.LinkIndex, p)] = true
		}
	}
	if w.routes, err = w.ipv4Routes(); err != nil {
		w.sock.Close()
		ns.Close()
		return nil, err
	}
	tv := unix.NsecToTimeval((300 * time.Millisecond).Nanoseconds())
	if err := w.sock.SetReceiveTimeout(&tv); err != nil {
		w.sock.Close()
		ns.Close()
		return nil, err
	}
	return w, nil
}

func (w *watcher) fdbKey(e *netlink.Neigh) string {
	return fmt.Sprintf("%s|%s|%d", w.names[e.MasterIndex], e.HardwareAddr, e.Vlan)
}

func (w *watcher) linkEvent(l netlink.Link, action string) Event {
	a := l.Attrs()
	up, carrier := a.Flags&net.FlagUp != 0, a.RawFlags&unix.IFF_LOWER_UP != 0
	ev := Event{Namespace: w.ns, Type: "link", Action: action, Interface: a.Name,
		AdminUp: &up, Carrier: &carrier, OperState: a.OperState.String(), MTU: a.MTU}
	if a.HardwareAddr != nil {
		ev.MAC = a.HardwareAddr.String()
	}
	if a.MasterIndex != 0 {
		ev.Master = w.names[a.MasterIndex]
	}
	return ev
}

func same(a, b Event) bool {
	return a.Interface == b.Interface && *a.AdminUp == *b.AdminUp && *a.Carrier == *b.Carrier &&
		a.OperState == b.OperState && a.MTU == b.MTU && a.MAC == b.MAC && a.Master == b.Master
}

func (w *watcher) run(ctx context.Context, out chan<- Event) error {
	for ctx.Err() == nil {
		msgs, _, err := w.sock.Receive()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				continue // events were lost: the kernel's buffer overflowed
			}
			return fmt.Errorf("watch namespace %q: %w", w.ns, err)
		}
		for _, m := range msgs {
			for _, ev := range w.parse(m.Header.Type, m.Data) {
				ev.Time = time.Now()
				select {
				case out <- ev:
				case <-ctx.Done():
					return nil
				}
			}
		}
	}
	return nil
}

func (w *watcher) parse(typ uint16, data []byte) []Event {
	switch typ {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		hdr := &unix.NlMsghdr{Type: typ}
		l, err := netlink.LinkDeserialize(hdr, data)
		if err != nil {
			return nil
		}
		a := l.Attrs()
		if len(data) >= unix.SizeofIfInfomsg && nl.DeserializeIfInfomsg(data).Family == unix.AF_BRIDGE {
			return nil // the bridge's port notifications repeat the link's
		}
		action := "new"
		if typ == unix.RTM_DELLINK {
			action = "del"
			ev := w.linkEvent(l, action)
			delete(w.links, a.Index)
			delete(w.names, a.Index)
			return append([]Event{ev}, w.flushedRoutes("interface "+a.Name+" was deleted")...)
		}
		w.names[a.Index] = a.Name
		ev := w.linkEvent(l, action)
		old, ok := w.links[a.Index]
		if ok && same(old, ev) {
			return nil // a statistics or attribute refresh, not a change
		}
		w.links[a.Index] = ev
		if ok && *old.AdminUp && !*ev.AdminUp {
			return append([]Event{ev}, w.flushedRoutes("interface "+a.Name+" went down")...)
		}
		return []Event{ev}
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		e, err := netlink.NeighDeserialize(data)
		if err != nil {
			return nil
		}
		action := "new"
		if typ == unix.RTM_DELNEIGH {
			action = "del"
		}
		ev := Event{Namespace: w.ns, Action: action, Interface: w.names[e.LinkIndex], State: NUDState(e.State)}
		if e.HardwareAddr != nil {
			ev.MAC = e.HardwareAddr.String()
		}
		if e.Family == unix.AF_BRIDGE {
			if e.MasterIndex == 0 {
				return nil // a port's own address list ("self")
			}
			ev.Type, ev.Bridge, ev.VLAN = "fdb", w.names[e.MasterIndex], e.Vlan
			key := w.fdbKey(e)
			if action == "del" {
				if w.fdb[key] == ev.Interface {
					delete(w.fdb, key)
				}
			} else {
				if old, ok := w.fdb[key]; ok && old != ev.Interface {
					ev.MovedFrom = old
				} else if ok {
					return nil // refreshed on the same port
				}
				w.fdb[key] = ev.Interface
			}
			return []Event{ev}
		}
		ev.Type = "neigh"
		if e.IP != nil {
			ev.IP = e.IP.String()
		}
		return []Event{ev}
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		return w.addrEvent(typ, data)
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		evs := w.routeEvent(typ, data)
		for _, ev := range evs {
			if k := routeKey(ev); ev.Action == "del" && w.flushed[k] {
				delete(w.flushed, k)
				return nil // reported when it was flushed
			}
			w.trackRoute(ev)
		}
		return evs
	}
	return nil
}
