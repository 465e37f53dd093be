package lab

import (
	"bufio"
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/internal/inspect"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// mirrorNet is the reference design with a second VM and a monitoring
// namespace whose eth0 is cabled to the bridge namespace's mon0, which is
// no bridge port: only the mirror's copies reach it.
const mirrorNet = `
name: mirror
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - {name: mon, role: endpoint}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.7.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [192.168.7.100/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [192.168.7.102/24]}
      - {namespace: bridge, name: vm2, bridge: br0}
  - endpoints:
      - {namespace: mon, name: eth0}
      - {namespace: bridge, name: mon0}
mirrors:
  - {name: ids, namespace: bridge, ports: [vm1], to: mon0}
`

// sniff runs tcpdump (the independent witness an IDS stands for) on
// ns/iface while fn runs, and returns the ICMP lines it printed.
func sniff(t *testing.T, topo *topology.Topology, ns, iface string, fn func()) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// -Z root: tcpdump would drop privileges to a user of its own, which
	// the guest lane's initramfs does not have.
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", topo.NSName(ns), "tcpdump", "-Z", "root", "-l", "-n", "-i", iface, "icmp")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	ready := make(chan bool, 1)
	var errText strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { ready <- true })
			} else {
				errText.WriteString(sc.Text() + "\n")
			}
		}
		once.Do(func() { ready <- false })
	}()
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("tcpdump exited before listening:\n%s", errText.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start listening")
	}
	fn()
	time.Sleep(300 * time.Millisecond) // let the last copies arrive
	cancel()
	<-done
	cmd.Wait()
	return lines
}

func countMatching(lines []string, sub ...string) int {
	n := 0
	for _, l := range lines {
		all := true
		for _, s := range sub {
			all = all && strings.Contains(l, s)
		}
		if all {
			n++
		}
	}
	return n
}

func TestPortMirror(t *testing.T) {
	testutil.RequireTool(t, "tc")
	testutil.RequireTool(t, "tcpdump")
	topo := fixture(t, mirrorNet)
	up(t, topo)
	br := topo.NSName("bridge")
	for _, dir := range []string{"ingress", "egress"} {
		out := testutil.Run(t, "tc", "-n", br, "filter", "show", "dev", "vm1", dir)
		if !strings.Contains(out, "mirred (Egress Mirror to device mon0)") {
			t.Fatalf("tc filter show dev vm1 %s:\n%s", dir, out)
		}
	}
	traffic := func() {
		ping(t, topo, "vm1", "192.168.7.1")
		ping(t, topo, "vm2", "192.168.7.1")
	}
	// Both directions of vm1's port reach the monitor, nothing of vm2's.
	lines := sniff(t, topo, "mon", "eth0", traffic)
	req, rep := countMatching(lines, "192.168.7.100 > 192.168.7.1: ICMP echo request"), countMatching(lines, "192.168.7.1 > 192.168.7.100: ICMP echo reply")
	if req < 2 || rep < 2 || countMatching(lines, "192.168.7.102") != 0 {
		t.Fatalf("monitor saw %d requests and %d replies of vm1 (want 2 each) and %d packets of vm2 (want 0):\n%s",
			req, rep, countMatching(lines, "192.168.7.102"), strings.Join(lines, "\n"))
	}
	// status's view (inspect) agrees with tc's own counters.
	in, err := inspect.Read(br, inspect.Mirrors)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Mirrors) != 2 {
		t.Fatalf("inspect found mirrors %+v, want vm1 ingress and egress", in.Mirrors)
	}
	for _, m := range in.Mirrors {
		if m.Port != "vm1" || m.To != "mon0" || !m.ToUp || m.Packets < 2 {
			t.Fatalf("inspect: %+v", m)
		}
		out := testutil.Run(t, "tc", "-s", "-n", br, "filter", "show", "dev", "vm1", m.Direction)
		sent := regexp.MustCompile(`Sent \d+ bytes (\d+) pkt`).FindStringSubmatch(out)
		if sent == nil {
			t.Fatalf("tc -s filter show dev vm1 %s:\n%s", m.Direction, out)
		}
		if n, _ := strconv.ParseUint(sent[1], 10, 64); n < m.Packets {
			t.Fatalf("%s: tc counts %d packets copied, inspect %d (read before)", m.Direction, n, m.Packets)
		}
	}

	// A copy reaches the monitor once: the switch itself is not flooded.
	if got := sniff(t, topo, "vm2", "eth0", func() { ping(t, topo, "vm1", "192.168.7.1") }); len(got) != 0 {
		t.Fatalf("vm2 saw vm1's traffic:\n%s", strings.Join(got, "\n"))
	}
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("re-applying an unchanged mirror wrote %d: %v", again.Writes, again.Steps)
	}

	// Ingress only: what vm1 sends into the bridge, not what it receives.
	topo.Mirrors[0].Direction = topology.MirrorIngress
	res := up(t, topo)
	for _, s := range res.Steps {
		if s.Op != plan.OpMirror && s.Op != plan.OpMark {
			t.Errorf("a direction change did more than re-mirror: %s", s)
		}
	}
	lines = sniff(t, topo, "mon", "eth0", traffic)
	if countMatching(lines, "ICMP echo request") < 2 || countMatching(lines, "ICMP echo reply") != 0 {
		t.Fatalf("ingress mirror: monitor saw\n%s", strings.Join(lines, "\n"))
	}

	// A mirror removed by hand is found by up --deep and put back.
	testutil.Run(t, "tc", "-n", br, "filter", "del", "dev", "vm1", "ingress")
	if res := up(t, topo, WithDeep(true)); res.Writes == 0 {
		t.Fatal("up --deep did not restore a mirror filter deleted by hand")
	}
	if lines = sniff(t, topo, "mon", "eth0", traffic); countMatching(lines, "ICMP echo request") < 2 {
		t.Fatalf("after repair, monitor saw\n%s", strings.Join(lines, "\n"))
	}

	// Recreating the destination (its far end renamed: a new veth pair)
	// rebuilds the mirror, which names its destination by ifindex.
	topo.Links[3].Endpoints[0].Name = "tap0"
	up(t, topo)
	if lines = sniff(t, topo, "mon", "tap0", traffic); countMatching(lines, "ICMP echo request") < 2 {
		t.Fatalf("after recreating the destination, monitor saw\n%s", strings.Join(lines, "\n"))
	}

	// Removing the mirror removes kvmnet's filters and the clsact qdisc.
	topo.Mirrors = nil
	up(t, topo)
	if out := testutil.Run(t, "tc", "-n", br, "qdisc", "show", "dev", "vm1"); strings.Contains(out, "clsact") {
		t.Fatalf("clsact left after removing the mirror:\n%s", out)
	}
	if lines = sniff(t, topo, "mon", "tap0", traffic); len(lines) != 0 {
		t.Fatalf("monitor still sees traffic without a mirror:\n%s", strings.Join(lines, "\n"))
	}
}

// TestDiagnoseMirror: a healthy mirror gives no finding; a destination
// taken down, or a mirror filter deleted by hand, is named at the port with
// evidence and a fix, and up --deep repairs the filter.
func TestDiagnoseMirror(t *testing.T) {
	testutil.RequireTool(t, "tc")
	src := strings.Replace(mirrorNet, "{name: vm1, role: vm}", "{name: vm1, role: vm, routes: [{to: default, via: 192.168.7.1}]}", 1)
	src = strings.Replace(src, "{name: vm2, role: vm}", "{name: vm2, role: vm, routes: [{to: default, via: 192.168.7.1}]}", 1)
	topo := healthy(t, src)
	br := topo.NSName("bridge")

	testutil.Run(t, "ip", "-n", br, "link", "set", "mon0", "down")
	rep := runDiagnose(t, topo, diagnose.Options{})
	f := wantFinding(t, topo, rep, diagnose.CheckMirror, "bridge", "vm1")
	evidenceHas(t, f, "mon0: down")
	testutil.Run(t, "ip", "-n", br, "link", "set", "mon0", "up")

	testutil.Run(t, "tc", "-n", br, "filter", "del", "dev", "vm1", "egress")
	rep = runDiagnose(t, topo, diagnose.Options{})
	f = wantFinding(t, topo, rep, diagnose.CheckMirror, "bridge", "vm1")
	if !strings.Contains(f.Summary, "egress is not copied") {
		t.Errorf("finding: %s", f.Summary)
	}
	up(t, topo, WithDeep(true))
	if rep := runDiagnose(t, topo, diagnose.Options{}); len(rep.Findings) != 0 {
		t.Fatalf("after up --deep:\n%s", describe(rep))
	}
}
