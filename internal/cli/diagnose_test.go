package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/lab"
)

// upReference builds the reference design under a unique prefix and
// returns the common flags.
func upReference(t *testing.T) (string, []string) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip")
	testutil.RequireTool(t, "bridge")
	prefix := testutil.UniquePrefix(t)
	common := []string{"--prefix", prefix, "--state-dir", t.TempDir()}
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 {
		t.Fatalf("up: %d %s %s", code, out, stderr)
	}
	out, err := testutil.Try("ip", "netns", "exec", prefix+"vm1", "ping", "-c", "2", "-i", "0.2", "-W", "2", "192.168.1.1")
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	return prefix, common
}

// TestStatusAgreesWithBridgeFDBAndIPNeigh: `kvmnet status -o json` shows the
// same FDB as `bridge fdb` and the same neighbours as `ip neigh`, and the
// table shows ports, FDB, neighbours and routes.
func TestStatusAgreesWithBridgeFDBAndIPNeigh(t *testing.T) {
	prefix, common := upReference(t)
	code, out, stderr := run(t, append([]string{"status", "-o", "json", "--interval", "200ms"}, common...)...)
	if code != 0 {
		t.Fatalf("status: %d %s", code, stderr)
	}
	var st struct {
		InSync     bool   `json:"in_sync"`
		Interval   string `json:"interval"`
		Namespaces []struct {
			Name       string
			Interfaces []struct {
				Name      string
				AdminUp   bool `json:"admin_up"`
				Carrier   bool
				MTU       int
				MAC       string
				Addresses []string
				Stats     struct {
					RxPackets uint64 `json:"rx_packets"`
					TxPackets uint64 `json:"tx_packets"`
				}
				Rates *struct{} `json:"rates"`
			}
			Bridges []struct {
				Name  string
				Ports []struct{ Name, State string }
				FDB   []struct {
					MAC, Port string
					Master    bool
					Local     bool
				} `json:"fdb"`
			}
			Neighbours []struct{ IP, MAC, Interface, State string }
			Routes     []struct {
				Dst    string
				Kvmnet bool
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if !st.InSync || st.Interval != "200ms" || len(st.Namespaces) != 3 {
		t.Fatalf("status: in_sync %v interval %q, %d namespaces", st.InSync, st.Interval, len(st.Namespaces))
	}
	for _, ns := range st.Namespaces {
		switch ns.Name {
		case prefix + "bridge":
			if len(ns.Bridges) != 1 || len(ns.Bridges[0].Ports) != 2 {
				t.Fatalf("bridges: %+v", ns.Bridges)
			}
			for _, p := range ns.Bridges[0].Ports {
				if p.State != "forwarding" {
					t.Errorf("port %s state %s", p.Name, p.State)
				}
			}
			var got []string
			for _, e := range ns.Bridges[0].FDB {
				if e.Master {
					got = append(got, fmt.Sprintf("%s %s %v", e.MAC, e.Port, e.Local))
				}
			}
			var want []string
			for _, l := range strings.Split(testutil.Run(t, "bridge", "-n", ns.Name, "fdb", "show", "br", "br0"), "\n") {
				f := strings.Fields(l)
				if len(f) >= 5 && strings.Contains(l, "master br0") {
					want = append(want, fmt.Sprintf("%s %s %v", f[0], f[2], strings.HasSuffix(l, "permanent")))
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("status FDB differs from bridge fdb:\nstatus:\n%s\nbridge fdb:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if !strings.Contains(strings.Join(got, "\n"), "00:11:22:33:44:55 vm1 false") {
				t.Fatalf("vm1's MAC is not learned on port vm1: %v", got)
			}
		case prefix + "vm1", prefix + "host":
			var got, want []string
			for _, n := range ns.Neighbours {
				if n.MAC != "" && n.State != "noarp" {
					got = append(got, fmt.Sprintf("%s %s %s", n.IP, n.Interface, n.MAC))
				}
			}
			for _, l := range strings.Split(testutil.Run(t, "ip", "-n", ns.Name, "neigh", "show"), "\n") {
				if f := strings.Fields(l); len(f) >= 5 && f[3] == "lladdr" {
					want = append(want, fmt.Sprintf("%s %s %s", f[0], f[2], f[4]))
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if len(got) == 0 || strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("%s: status neighbours %v, ip neigh %v", ns.Name, got, want)
			}
			eth0 := ns.Interfaces[0]
			for _, i := range ns.Interfaces {
				if i.Name == "eth0" {
					eth0 = i
				}
			}
			if !eth0.AdminUp || !eth0.Carrier || eth0.MTU != 1500 || eth0.Stats.TxPackets < 2 || eth0.Rates == nil {
				t.Errorf("%s eth0: %+v", ns.Name, eth0)
			}
		}
	}
	code, out, _ = run(t, append([]string{"status"}, common...)...)
	for _, want := range []string{"COUNTERS", "BRIDGE " + prefix + "bridge/br0 (stp off)", "forwarding", "00:11:22:33:44:55  vm1", "learned", "NEIGHBOURS", "192.168.1.1", "* " + prefix + "vm1: default via 192.168.1.1 dev eth0 proto kvmnet", "in sync"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
}

func TestDiagnoseAndTraceExitStatus(t *testing.T) {
	prefix, common := upReference(t)
	code, out, stderr := run(t, append([]string{"diagnose"}, common...)...)
	if code != 0 || !strings.Contains(out, "no problem found") {
		t.Fatalf("diagnose on a healthy network: %d\n%s\n%s", code, out, stderr)
	}
	if code, out, _ = run(t, append([]string{"trace", "vm1", "host"}, common...)...); code != 0 || !strings.Contains(out, "the path is clear") {
		t.Fatalf("trace: %d\n%s", code, out)
	}
	testutil.Run(t, "ip", "-n", prefix+"host", "link", "set", "eth0", "down")
	code, out, stderr = run(t, append([]string{"diagnose", "-o", "json"}, common...)...)
	var rep struct {
		OK       bool
		Findings []struct{ Check, Namespace, Interface, Fix string }
	}
	if code != ExitFindings || json.Unmarshal([]byte(out), &rep) != nil || rep.OK {
		t.Fatalf("diagnose with host/eth0 down: exit %d (want %d)\n%s\n%s", code, ExitFindings, out, stderr)
	}
	found := false
	for _, f := range rep.Findings {
		found = found || f.Check == "link-down" && f.Namespace == prefix+"host" && f.Interface == "eth0"
	}
	if !found {
		t.Fatalf("no link-down at host/eth0:\n%s", out)
	}
	code, out, _ = run(t, append([]string{"diagnose", "vm1"}, common...)...)
	if code != ExitFindings || !strings.Contains(out, "link-down") || !strings.Contains(out, "fix:") {
		t.Fatalf("diagnose vm1: %d\n%s", code, out)
	}
	code, out, _ = run(t, append([]string{"trace", "vm1", "host"}, common...)...)
	if code != ExitFindings || !strings.Contains(out, "traffic stops at "+prefix+"bridge/host: no carrier: its peer "+prefix+"host/eth0 is administratively down") {
		t.Fatalf("trace vm1 host: %d\n%s", code, out)
	}
	if code, _, stderr = run(t, append([]string{"diagnose", "nosuchnode"}, common...)...); code != ExitError || !strings.Contains(stderr, "not a namespace") {
		t.Fatalf("diagnose of an unknown node: %d %s", code, stderr)
	}
}

// TestVMsForDiagnose: what lab.VMStatus reports reaches diagnose whole.
func TestVMsForDiagnose(t *testing.T) {
	l := dhcp.Lease{MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("192.168.1.100"), State: dhcp.StateBound}
	r := &lab.VMStatusReport{
		Supervisor: lab.SupervisorStatus{State: "dead", Reason: "gone", Log: "/x/supervise.log"},
		VMs:        []lab.VMState{{Status: vm.Status{Name: "vm1", State: vm.StateRunning, PID: 7}, Namespace: "p-vm1"}},
		DHCP: []lab.DHCPStatus{{Namespace: "p-host", Interface: "eth0", Listening: true, Error: "e", Stats: &dhcp.Stats{Acks: 3},
			LeaseFile: "/x/l.json", Leases: []dhcp.Lease{l}}},
	}
	got := r.ForDiagnose()
	want := &diagnose.VMs{Supervisor: "dead", SupervisorReason: "gone", SupervisorLog: "/x/supervise.log",
		VMs: []diagnose.VM{{Name: "vm1", Status: r.VMs[0].Status}},
		DHCP: []diagnose.DHCPServer{{Namespace: "p-host", Interface: "eth0", Listening: true, Error: "e", Stats: r.DHCP[0].Stats,
			LeaseFile: "/x/l.json", Leases: []dhcp.Lease{l}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}
