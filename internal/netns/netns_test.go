package netns_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

func TestCreateDoSysctlDelete(t *testing.T) {
	ns := testutil.NewNS(t)
	if !netns.Exists(ns.Name) {
		t.Fatalf("namespace %s does not exist after Create", ns.Name)
	}
	if _, err := netns.Create(ns.Name); !errors.Is(err, netns.ErrExists) {
		t.Fatalf("second Create: got %v, want ErrExists", err)
	}
	// The sysctl written inside the namespace is visible to iproute2's view
	// of it, and not in the root namespace.
	rootFwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	want := "1"
	if strings.TrimSpace(string(rootFwd)) == "1" {
		want = "0"
	}
	if err := netns.WriteSysctl(ns, "net.ipv4.ip_forward", want); err != nil {
		t.Fatal(err)
	}
	got := testutil.Run(t, "ip", "netns", "exec", ns.Name, "cat", "/proc/sys/net/ipv4/ip_forward")
	if strings.TrimSpace(got) != want {
		t.Fatalf("ip_forward in namespace = %q, want %q", got, want)
	}
	rootAfter, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if string(rootAfter) != string(rootFwd) {
		t.Fatalf("root namespace ip_forward changed: %q -> %q", rootFwd, rootAfter)
	}
	v, err := netns.ReadSysctl(ns, "net.ipv4.ip_forward")
	if err != nil || v != want {
		t.Fatalf("ReadSysctl = %q, %v; want %q", v, err, want)
	}
	list := testutil.Run(t, "ip", "netns", "list")
	if !strings.Contains(list, ns.Name) {
		t.Fatalf("ip netns list does not show %s:\n%s", ns.Name, list)
	}
	if err := netns.Delete(ns.Name); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(ns.Name) {
		t.Fatal("namespace still exists after Delete")
	}
	if err := netns.Delete(ns.Name); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := netns.Open(ns.Name); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("Open after Delete: got %v, want ErrNotFound", err)
	}
}
