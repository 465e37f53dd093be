package vm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// The VM tests boot real guests under QEMU (TCG here: ~5 s each, in
// parallel). They run in `go test ./...`; -short skips them.

const testMark = "kvmnet:vmtest"

var (
	guestOnce sync.Once
	testGuest *Guest
	guestErr  error
)

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// prepare skips unless VMs can run here and returns the built-in guest
// (built once per test binary).
func prepare(t testing.TB) *Guest {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs (skipped with -short)")
	}
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	testutil.RequireTool(t, "ip")
	testutil.RequireTool(t, "busybox")
	guestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		testGuest, guestErr = PrepareGuest(ctx, GuestOptions{Log: testLog(t)})
	})
	if guestErr != nil {
		t.Fatalf("prepare the built-in guest: %v", guestErr)
	}
	return testGuest
}

// lab is a segment built by hand: namespace sw holds bridge br0 with the
// gateway 10.77.0.1/24 and its DHCP server, and routes to namespace ext
// (10.78.0.2, "an external host"); each VM namespace joins br0 through a
// veth (eth0 in the VM namespace).
type lab struct {
	t    testing.TB
	sw   *netns.NS
	ext  *netns.NS
	dhcp *dhcp.Server
	vms  []*netns.NS
}

func ipn(t testing.TB, ns *netns.NS, args ...string) {
	t.Helper()
	testutil.Run(t, "ip", append([]string{"-n", ns.Name}, args...)...)
}

func newLab(t testing.TB, vms int) *lab {
	t.Helper()
	l := &lab{t: t, sw: testutil.NewNSPrefix(t, "kvmv-"), ext: testutil.NewNSPrefix(t, "kvmv-")}
	ipn(t, l.sw, "link", "set", "lo", "up")
	ipn(t, l.sw, "link", "add", "br0", "type", "bridge")
	ipn(t, l.sw, "addr", "add", "10.77.0.1/24", "dev", "br0")
	ipn(t, l.sw, "link", "set", "br0", "up")
	ipn(t, l.sw, "link", "add", "e0", "type", "veth", "peer", "name", "e0", "netns", l.ext.Name)
	ipn(t, l.sw, "addr", "add", "10.78.0.1/24", "dev", "e0")
	ipn(t, l.sw, "link", "set", "e0", "up")
	ipn(t, l.ext, "addr", "add", "10.78.0.2/24", "dev", "e0")
	ipn(t, l.ext, "link", "set", "e0", "up")
	ipn(t, l.ext, "link", "set", "lo", "up")
	ipn(t, l.ext, "route", "add", "default", "via", "10.78.0.1")
	if err := netns.WriteSysctl(l.sw, "net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < vms; i++ {
		ns := testutil.NewNSPrefix(t, "kvmv-")
		port := fmt.Sprintf("p%d", i)
		ipn(t, l.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
		ipn(t, l.sw, "link", "set", port, "master", "br0", "up")
		ipn(t, ns, "link", "set", "lo", "up")
		l.vms = append(l.vms, ns)
	}
	srv, err := dhcp.New(dhcp.Config{
		Interface: "br0",
		ServerIP:  netip.MustParseAddr("10.77.0.1"),
		Router:    netip.MustParseAddr("10.77.0.1"),
		Subnet:    netip.MustParsePrefix("10.77.0.0/24"),
		PoolStart: netip.MustParseAddr("10.77.0.100"),
		PoolEnd:   netip.MustParseAddr("10.77.0.199"),
		LeaseFile: filepath.Join(t.TempDir(), "leases.json"),
		Log:       testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(l.sw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	l.dhcp = srv
	return l
}

func testMAC(i int) string { return fmt.Sprintf("52:54:00:77:00:%02x", i+1) }

// machine attaches VM i's NIC (DHCP unless addr is valid) and returns its
// Machine; t.Cleanup kills QEMU whatever happens and dumps the console
// tail when the test failed.
func (l *lab) machine(i int, w Wiring, addr netip.Prefix) *Machine {
	l.t.Helper()
	nic := NIC{Namespace: l.vms[i].Name, Uplink: "eth0", MAC: testMAC(i), Wiring: w}
	if addr.IsValid() {
		nic.Address, nic.Gateway = addr, netip.MustParseAddr("10.77.0.1")
	} else {
		nic.DHCP = true
	}
	return l.machineNIC(i, nic)
}

// machineNIC attaches nic in l.vms[i] and returns VM i's Machine.
func (l *lab) machineNIC(i int, nic NIC) *Machine {
	t := l.t
	t.Helper()
	if err := AttachNIC(l.vms[i], nic, testMark); err != nil {
		t.Fatal(err)
	}
	m := &Machine{
		Spec:  Spec{Name: fmt.Sprintf("guest%d", i), NICs: []NIC{nic}},
		Dir:   t.TempDir(),
		Guest: prepare(t),
		Log:   testLog(t),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serial console of %s (last 30 lines):\n%s", m.Spec.Name, m.ConsoleTail(30))
		}
		if err := m.Kill(); err != nil {
			t.Errorf("kill %s: %v", m.Spec.Name, err)
		}
	})
	return m
}

// bootAll starts the machines and waits until every one is ready.
func bootAll(t testing.TB, ms ...*Machine) {
	t.Helper()
	for _, m := range ms {
		if err := m.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitAll(t, ms...)
}

func waitAll(t testing.TB, ms ...*Machine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.WaitReady(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// guestAddr returns the address the guest announced on its console.
func guestAddr(t testing.TB, m *Machine) string {
	t.Helper()
	st, err := m.Status(context.Background())
	if err != nil || len(st.Addresses) == 0 {
		t.Fatalf("%s: no address in status %+v: %v", m.Spec.Name, st, err)
	}
	return st.Addresses[0].Addr.Addr().String()
}

func pingFrom(t testing.TB, ns *netns.NS, to string) {
	t.Helper()
	out, err := testutil.Try("ip", "netns", "exec", ns.Name, "ping", "-c", "2", "-i", "0.2", "-W", "2", to)
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping %s from %s: %v\n%s", to, ns.Name, err, out)
	}
}

// wget fetches url from inside ns with busybox wget (without -T: busybox
// 1.35 wget crashes with -T on an HTTP error status).
func wget(ns *netns.NS, url string) (string, error) {
	return testutil.Try("ip", "netns", "exec", ns.Name, "busybox", "wget", "-q", "-O", "-", url)
}

// qemuProcesses lists live processes whose command line mentions dir.
func qemuProcesses(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) && pidAlive(dir, atoi(e.Name())) {
			out = append(out, e.Name())
		}
	}
	return out
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}
