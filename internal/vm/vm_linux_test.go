package vm

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// TestTwoGuestsDHCP boots two built-in guests in their own namespaces on
// one bridge. Both get DHCP leases from the gateway's server, ping the
// gateway and each other (from inside the guests, through the agent), and
// a host in another namespace, routed through the gateway, reaches a
// guest's TCP echo and HTTP ports. Then guest0 is shut down over ACPI
// (it releases its lease) and guest1 crashes (QEMU killed behind kvmnet's
// back): Status says stopped and crashed, nothing restarts it, and once
// the crashed VM's lease is dropped and the NICs detached no QEMU, tap or
// lease is left.
func TestTwoGuestsDHCP(t *testing.T) {
	prepare(t)
	l := newLab(t, 2)
	ms := []*Machine{l.machine(0, WiringBridge, netip.Prefix{}), l.machine(1, WiringBridge, netip.Prefix{})}
	start := time.Now()
	bootAll(t, ms...)
	t.Logf("two guests ready in %s", time.Since(start).Round(10*time.Millisecond))

	a, b := guestAddr(t, ms[0]), guestAddr(t, ms[1])
	leases := l.dhcp.Leases()
	if len(leases) != 2 {
		t.Fatalf("leases: %+v", leases)
	}
	for i, m := range ms {
		want := map[int]string{0: a, 1: b}[i]
		found := false
		for _, ls := range leases {
			if ls.MAC == testMAC(i) {
				found = ls.State == dhcp.StateBound && ls.Hostname == m.Spec.Name && ls.IP.String() == want
			}
		}
		if !found {
			t.Fatalf("no bound lease of %s for %s at %s: %+v", testMAC(i), m.Spec.Name, want, leases)
		}
	}

	// The kernel answers ping, from the gateway's namespace.
	pingFrom(t, l.sw, a)
	pingFrom(t, l.sw, b)
	// Each guest pings the gateway and the other guest.
	for _, c := range []struct{ from, to string }{{a, "10.77.0.1"}, {a, b}, {b, "10.77.0.1"}, {b, a}} {
		out, err := wget(l.sw, "http://"+c.from+"/ping?to="+c.to)
		if err != nil || !strings.Contains(out, "3/3 replies") {
			t.Fatalf("guest %s ping %s: %v %s", c.from, c.to, err, out)
		}
	}
	// The external host reaches guest0's HTTP and echo ports.
	out, err := wget(l.ext, "http://"+a+"/")
	if err != nil {
		t.Fatalf("external host GET http://%s/: %v\n%s", a, err, out)
	}
	var idx struct {
		Hostname   string `json:"hostname"`
		Interfaces []struct {
			MAC   string   `json:"mac"`
			Addrs []string `json:"addrs"`
			DHCP  bool     `json:"dhcp"`
		} `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(out), &idx); err != nil || idx.Hostname != "guest0" || len(idx.Interfaces) != 1 ||
		idx.Interfaces[0].MAC != testMAC(0) || !idx.Interfaces[0].DHCP || len(idx.Interfaces[0].Addrs) == 0 || !strings.HasPrefix(idx.Interfaces[0].Addrs[0], a+"/24") {
		t.Fatalf("GET / = %s (%v)", out, err)
	}
	echo := exec.Command("ip", "netns", "exec", l.ext.Name, "busybox", "nc", "-w", "3", a, "7")
	echo.Stdin = strings.NewReader("hello through the bridge\n")
	if got, err := echo.Output(); err != nil || string(got) != "hello through the bridge\n" {
		t.Fatalf("echo from the external host: %q, %v", got, err)
	}

	for _, m := range ms {
		st, err := m.Status(context.Background())
		if err != nil || st.State != StateRunning || st.QEMU != "running" || st.RSSKiB == 0 || st.PID == 0 {
			t.Fatalf("status of %s: %+v, %v", m.Spec.Name, st, err)
		}
		t.Logf("%s: %s, qemu RSS %d MiB, accel %s", m.Spec.Name, st.State, st.RSSKiB/1024, st.Accel)
	}

	// guest1 crashes: its QEMU is killed behind kvmnet's back.
	if err := syscall.Kill(ms[1].PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// guest0 is shut down over ACPI.
	if err := ms[0].Stop(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ms[0].ConsoleTail(5), "kvmnet-agent: powering off") {
		t.Fatalf("guest0 did not power off through ACPI:\n%s", ms[0].ConsoleTail(10))
	}
	time.Sleep(500 * time.Millisecond)
	st0, _ := ms[0].Status(context.Background())
	st1, _ := ms[1].Status(context.Background())
	if st0.State != StateStopped || st0.Reason != "stopped by kvmnet" {
		t.Fatalf("guest0 after Stop: %+v", st0)
	}
	if st1.State != StateCrashed || !strings.Contains(st1.Reason, "without kvmnet stopping it") || ms[1].PID() != 0 {
		t.Fatalf("guest1 after its QEMU was killed: %+v", st1)
	}
	// Only an explicit Start boots the crashed VM again; the crashed
	// boot's console is kept as serial.log.1. Kill is kvmnet stopping it.
	if err := ms[1].Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitAll(t, ms[1])
	if _, err := os.Stat(filepath.Join(ms[1].Dir, SerialLog+".1")); err != nil {
		t.Fatalf("the crashed boot's console: %v", err)
	}
	if err := ms[1].Kill(); err != nil {
		t.Fatal(err)
	}
	if st, _ := ms[1].Status(context.Background()); st.State != StateStopped {
		t.Fatalf("guest1 after Kill: %+v", st)
	}
	// The guest that shut down released its lease; the killed one could
	// not: kvmnet drops it when it removes the VM.
	if ls := l.dhcp.Leases(); len(ls) != 1 || ls[0].MAC != testMAC(1) {
		t.Fatalf("leases after shutdown: %+v", ls)
	}
	if ok, err := l.dhcp.Release(testMAC(1)); !ok || err != nil {
		t.Fatalf("release guest1's lease: %v %v", ok, err)
	}
	if ls, err := dhcp.ReadLeases(l.dhcp.Config().LeaseFile); err != nil || len(ls) != 0 {
		t.Fatalf("lease file after removal: %+v %v", ls, err)
	}
	for i, m := range ms {
		if p := qemuProcesses(m.Dir); len(p) != 0 {
			t.Fatalf("%s: qemu still running: %v", m.Spec.Name, p)
		}
		if err := DetachNIC(l.vms[i], m.Spec.NICs[0], testMark); err != nil {
			t.Fatal(err)
		}
		out := testutil.Run(t, "ip", "-n", l.vms[i].Name, "-o", "link", "show")
		if strings.Contains(out, "tap0") || strings.Contains(out, "vbr0") {
			t.Fatalf("%s: tap or bridge left:\n%s", m.Spec.Name, out)
		}
	}
}
