package vm

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// echoFrom sends a line to addr's TCP echo port from inside ns and reports
// whether it came back.
func echoFrom(ns *netns.NS, addr string) bool {
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "busybox", "nc", "-w", "2", addr, "7")
	cmd.Stdin = strings.NewReader("boundary\n")
	out, err := cmd.Output()
	return err == nil && string(out) == "boundary\n"
}

const dropEcho = `table inet vmfw {
	chain vmforward {
		type filter hook forward priority 0; policy accept;
		tcp dport 7 counter drop
	}
}
`

// TestWiringBoundary shows why the per-VM bridge is the default: an
// nftables rule placed in the VM's namespace (inet family, forward hook)
// drops the VM's traffic with WiringBridge (br_netfilter passes bridged
// IPv4 through the namespace's inet hooks), and is bypassed with
// WiringMirred (tc redirects frames before netfilter sees them).
func TestWiringBoundary(t *testing.T) {
	prepare(t)
	testutil.RequireTool(t, "nft")
	l := newLab(t, 2)
	br := l.machine(0, WiringBridge, netip.MustParsePrefix("10.77.0.10/24"))
	mi := l.machine(1, WiringMirred, netip.MustParsePrefix("10.77.0.11/24"))
	bootAll(t, br, mi)
	for _, a := range []string{"10.77.0.10", "10.77.0.11"} {
		pingFrom(t, l.sw, a)
		if !echoFrom(l.sw, a) {
			t.Fatalf("echo to %s fails before any rule", a)
		}
	}
	rules := t.TempDir() + "/drop-echo.nft"
	if err := os.WriteFile(rules, []byte(dropEcho), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ns := range l.vms {
		testutil.Run(t, "ip", "netns", "exec", ns.Name, "nft", "-f", rules)
	}
	if echoFrom(l.sw, "10.77.0.10") {
		t.Fatal("bridge wiring: a forward-hook drop rule in the VM's namespace did not stop the VM's echo")
	}
	if out := testutil.Run(t, "ip", "netns", "exec", l.vms[0].Name, "nft", "list", "table", "inet", "vmfw"); strings.Contains(out, "packets 0 ") {
		t.Fatalf("bridge wiring: the drop rule counted nothing:\n%s", out)
	}
	if !echoFrom(l.sw, "10.77.0.11") {
		t.Fatal("mirred wiring: expected netfilter in the VM's namespace to be bypassed, but the echo was dropped")
	}
	pingFrom(t, l.sw, "10.77.0.10") // only TCP port 7 is dropped
}

// dialIn connects to addr (IPv4:port) with a socket opened inside ns.
func dialIn(ns *netns.NS, addr string) (net.Conn, error) {
	ap := netip.MustParseAddrPort(addr)
	var fd int
	if err := netns.Do(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close()
	return net.FileConn(f)
}

// throughput sends n bytes to the guest's discard port and fetches n
// bytes from its HTTP /bytes, from inside ns; it returns MB/s each way.
func throughput(ns *netns.NS, addr string, n int) (up, down float64, err error) {
	c, err := dialIn(ns, addr+":9")
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, 0, err
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c) // the guest closes after EOF: all bytes are in
	up = float64(n) / time.Since(start).Seconds() / 1e6
	c.Close()

	c, err = dialIn(ns, addr+":80")
	if err != nil {
		return up, 0, err
	}
	defer c.Close()
	start = time.Now()
	fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.0\r\n\r\n", n)
	got, err := io.Copy(io.Discard, c)
	if err != nil {
		return up, 0, err
	}
	if got < int64(n) {
		return up, 0, fmt.Errorf("fetched %d of %d bytes", got, n)
	}
	down = float64(n) / time.Since(start).Seconds() / 1e6
	return up, down, nil
}

// BenchmarkWiring measures TCP throughput through a built-in guest for
// each wiring: the host side (namespace sw, on the segment bridge) streams
// to the guest's discard port (up) and fetches from its HTTP /bytes
// (down). One VM per wiring, booted one after another, best of 3 runs of
// 64 MiB each way.
//
//	go test -run '^$' -bench Wiring -benchtime 1x ./internal/vm
func BenchmarkWiring(b *testing.B) {
	prepare(b)
	for _, w := range []Wiring{WiringDirect, WiringBridge, WiringMirred} {
		b.Run(string(w), func(b *testing.B) {
			l := newLab(b, 1)
			var m *Machine
			addr := netip.MustParsePrefix("10.77.0.10/24")
			if w == WiringDirect {
				l.vms[0] = l.sw // the tap joins br0 in the bridge's namespace
				m = l.machineNIC(0, NIC{Namespace: l.sw.Name, Uplink: "br0", Tap: "tapd0", Wiring: WiringDirect, MAC: testMAC(0), Address: addr})
			} else {
				m = l.machine(0, w, addr)
			}
			bootAll(b, m)
			pingFrom(b, l.sw, "10.77.0.10")
			var ups, downs []float64
			for i := 0; i < 3; i++ {
				up, down, err := throughput(l.sw, "10.77.0.10", 64<<20)
				if err != nil {
					b.Fatal(err)
				}
				ups, downs = append(ups, up), append(downs, down)
			}
			sort.Float64s(ups)
			sort.Float64s(downs)
			b.ReportMetric(ups[2], "up-MB/s")
			b.ReportMetric(downs[2], "down-MB/s")
			b.Logf("%s: up %.0f MB/s (runs %.0f), down %.0f MB/s (runs %.0f)", w, ups[2], ups, downs[2], downs)
		})
	}
}

// BenchmarkBoot boots 1, 4 and 8 built-in guests at once on one bridge,
// each getting its address by DHCP, and reports the time from Start until
// every guest answers ping from the gateway's namespace (boot-to-ping:
// slowest and mean), and QEMU's RSS per guest.
//
//	go test -run '^$' -bench Boot -benchtime 1x ./internal/vm
func BenchmarkBoot(b *testing.B) {
	prepare(b)
	for _, n := range []int{1, 4, 8} {
		b.Run(fmt.Sprintf("guests=%d", n), func(b *testing.B) {
			l := newLab(b, n)
			ms := make([]*Machine, n)
			for i := range ms {
				ms[i] = l.machine(i, WiringBridge, netip.Prefix{})
			}
			start := time.Now()
			for _, m := range ms {
				if err := m.Start(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			times := make([]time.Duration, n)
			var wg sync.WaitGroup
			for i := range ms {
				wg.Add(1)
				go func() {
					defer wg.Done()
					times[i] = bootToPing(l, testMAC(i), start)
				}()
			}
			wg.Wait()
			var slowest, sum time.Duration
			for i, d := range times {
				if d == 0 {
					b.Fatalf("guest%d never answered ping\n%s", i, ms[i].ConsoleTail(20))
				}
				slowest, sum = max(slowest, d), sum+d
			}
			rss := 0
			for _, m := range ms {
				st, _ := m.Status(b.Context())
				rss += st.RSSKiB
			}
			b.ReportMetric(slowest.Seconds(), "s-all-pingable")
			b.ReportMetric((sum / time.Duration(n)).Seconds(), "s-mean")
			b.ReportMetric(float64(rss)/float64(n)/1024, "MiB-RSS/guest")
			b.Logf("%d guests: all pingable after %s (mean %s), RSS %.0f MiB per guest", n, slowest.Round(10*time.Millisecond), (sum / time.Duration(n)).Round(10*time.Millisecond), float64(rss)/float64(n)/1024)
		})
	}
}

// bootToPing waits for mac's DHCP lease, then pings it until it answers;
// it returns the time since start, or 0 after two minutes.
func bootToPing(l *lab, mac string, start time.Time) time.Duration {
	for time.Since(start) < 2*time.Minute {
		ip := ""
		for _, ls := range l.dhcp.Leases() {
			if ls.MAC == mac && ls.State == "bound" {
				ip = ls.IP.String()
			}
		}
		if ip != "" {
			if err := exec.Command("ip", "netns", "exec", l.sw.Name, "ping", "-c", "1", "-W", "1", "-q", ip).Run(); err == nil {
				return time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}
