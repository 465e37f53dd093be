package dns

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// resolver is Go's own DNS client, asking addr from inside ns: an
// independent witness of what the server answers.
func resolver(ns *netns.NS, addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(ns, func() (err error) {
			c, err = net.DialTimeout(network, addr, 2*time.Second)
			return err
		})
		return c, err
	}}
}

// A server in a scratch namespace answers its zone over UDP and TCP, PTR
// included, says NXDOMAIN for a name it lacks, and forwards other names to
// an upstream server (another one, for another zone) from its namespace.
func TestServer(t *testing.T) {
	ns := testutil.NewNSPrefix(t, "kvdn-")
	testutil.RequireTool(t, "ip")
	testutil.Run(t, "ip", "-n", ns.Name, "link", "set", "lo", "up")
	testutil.Run(t, "ip", "-n", ns.Name, "addr", "add", "10.53.0.1/32", "dev", "lo")
	testutil.Run(t, "ip", "-n", ns.Name, "addr", "add", "10.53.0.2/32", "dev", "lo")

	up, err := New(Config{Domain: "up.test", Listen: []netip.Addr{netip.MustParseAddr("10.53.0.2")}},
		func() map[string][]netip.Addr {
			return map[string][]netip.Addr{"www": {netip.MustParseAddr("192.0.2.80")}}
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(ns); err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	srv, err := New(Config{Domain: "lab", Listen: []netip.Addr{netip.MustParseAddr("10.53.0.1")},
		Forward: []netip.AddrPort{netip.MustParseAddrPort("10.53.0.2:53")}},
		func() map[string][]netip.Addr { return testNames }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ns); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	r := resolver(ns, "10.53.0.1:53")
	ctx := context.Background()
	addrs, err := r.LookupHost(ctx, "vm1.lab.")
	slices.Sort(addrs)
	if err != nil || !slices.Equal(addrs, []string{"192.168.1.100", "fd00::100"}) {
		t.Errorf("vm1.lab: %v %v", addrs, err)
	}
	if names, err := r.LookupAddr(ctx, "192.168.1.5"); err != nil || !slices.Equal(names, []string{"files.nas.lab."}) {
		t.Errorf("PTR 192.168.1.5: %v %v", names, err)
	}
	var dnsErr *net.DNSError
	if _, err := r.LookupHost(ctx, "nope.lab."); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("nope.lab: %v, want not found", err)
	}
	if addrs, err := r.LookupHost(ctx, "www.up.test."); err != nil || !slices.Equal(addrs, []string{"192.0.2.80"}) {
		t.Errorf("www.up.test through the upstream: %v %v", addrs, err)
	}

	// Over TCP: an answer from the zone and a forwarded one.
	for _, tc := range []struct{ name, want string }{{"host.lab.", "192.168.1.1"}, {"www.up.test.", "192.0.2.80"}} {
		var c net.Conn
		if err := netns.Do(ns, func() (err error) { c, err = net.Dial("tcp", "10.53.0.1:53"); return err }); err != nil {
			t.Fatal(err)
		}
		if err := writeTCP(c, query(t, tc.name, dnsmessage.TypeA)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := readTCP(c)
		c.Close()
		if err != nil {
			t.Fatalf("%s over TCP: %v", tc.name, err)
		}
		m := unpack(t, b)
		if len(m.Answers) != 1 || netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A).String() != tc.want {
			t.Errorf("%s over TCP: %+v", tc.name, m.Answers)
		}
	}
	st := srv.Stats()
	if st.Forwarded < 2 || st.NXDomain < 1 || st.Answered < 3 || st.Failed != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// Query, diagnose's client, reads an answer, a name error, and says when
// nothing answers.
func TestQuery(t *testing.T) {
	ns, srv := scratchServer(t)
	at := netip.MustParseAddrPort("10.53.0.1:53")
	a, err := Query(ns.Name, at, "vm1.lab", dnsmessage.TypeA, time.Second)
	if err != nil || a.RCode != "Success" || !slices.Equal(a.Addrs, []netip.Addr{netip.MustParseAddr("192.168.1.100")}) {
		t.Errorf("vm1.lab: %+v %v", a, err)
	}
	if a, err := Query(ns.Name, at, "nope.lab.", dnsmessage.TypeA, time.Second); err != nil || a.RCode != "NameError" || len(a.Addrs) != 0 {
		t.Errorf("nope.lab: %+v %v", a, err)
	}
	srv.Close()
	if _, err := Query(ns.Name, at, "vm1.lab", dnsmessage.TypeA, 400*time.Millisecond); err == nil {
		t.Error("an answer with no server")
	}
}

// A server takes at most maxTCPConns connections at once: one more is
// closed at once and counted as dropped, and a slot freed is taken again.
func TestTCPBound(t *testing.T) {
	ns, srv := scratchServer(t)
	defer srv.Close()
	dial := func() net.Conn {
		var c net.Conn
		if err := netns.Do(ns, func() (err error) { c, err = net.Dial("tcp", "10.53.0.1:53"); return err }); err != nil {
			t.Fatal(err)
		}
		return c
	}
	ask := func(c net.Conn) error {
		if err := writeTCP(c, query(t, "vm1.lab.", dnsmessage.TypeA)); err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, err := readTCP(c)
		return err
	}
	var held []net.Conn
	for range maxTCPConns {
		c := dial()
		if err := ask(c); err != nil { // answered: the server holds it
			t.Fatalf("connection %d: %v", len(held), err)
		}
		held = append(held, c)
	}
	extra := dial()
	if err := ask(extra); err == nil {
		t.Fatal("a connection over the bound was served")
	}
	extra.Close()
	if st := srv.Stats(); st.Dropped != 1 {
		t.Errorf("dropped %d, want 1", st.Dropped)
	}
	held[0].Close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		c := dial()
		err := ask(c)
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a freed slot is not taken again: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range held[1:] {
		c.Close()
	}
}

// scratchServer is a server for testNames in zone lab on 10.53.0.1, in a
// scratch namespace (deleted when the test ends; close the server).
func scratchServer(t *testing.T) (*netns.NS, *Server) {
	t.Helper()
	ns := testutil.NewNSPrefix(t, "kvdn-")
	testutil.RequireTool(t, "ip")
	testutil.Run(t, "ip", "-n", ns.Name, "link", "set", "lo", "up")
	testutil.Run(t, "ip", "-n", ns.Name, "addr", "add", "10.53.0.1/32", "dev", "lo")
	srv, err := New(Config{Domain: "lab", Listen: []netip.Addr{netip.MustParseAddr("10.53.0.1")}},
		func() map[string][]netip.Addr { return testNames }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ns); err != nil {
		t.Fatal(err)
	}
	return ns, srv
}

// A question no upstream answers gets SERVFAIL at once; such forwards are
// logged once, then at most once a minute with how many failed since: a
// guest asking in a loop does not fill the supervisor's log.
func TestUpstreamFailuresLoggedSparingly(t *testing.T) {
	var buf syncBuffer
	ns, srv := scratchServer(t)
	srv.Close()
	srv, err := New(Config{Domain: "lab", Listen: []netip.Addr{netip.MustParseAddr("10.53.0.1")},
		Forward: []netip.AddrPort{netip.MustParseAddrPort("10.53.0.9:53")}}, // nothing there
		func() map[string][]netip.Addr { return testNames }, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ns); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for range 3 {
		// SERVFAIL at once, not silence until the client's timeout.
		start := time.Now()
		a, err := Query(ns.Name, netip.MustParseAddrPort("10.53.0.1:53"), "www.example.org", dnsmessage.TypeA, 3*time.Second)
		if err != nil || a.RCode != "ServerFailure" || time.Since(start) > time.Second {
			t.Fatalf("a question for a dead upstream: %+v %v after %s", a, err, time.Since(start))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Failed < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if st := srv.Stats(); st.Failed < 3 {
		t.Fatalf("stats: %+v", st)
	}
	if n := strings.Count(buf.String(), "no upstream answered"); n != 1 {
		t.Errorf("%d log lines for 3+ unanswered forwards, want 1:\n%s", n, buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
