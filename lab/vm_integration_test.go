package lab

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/topology"
)

// vmTopology: two built-in guests on br0, DHCP from the host (the
// gateway, 192.168.77.1), and the host routing to an external namespace
// (world, 10.77.0.2) that has a route back to the guests' subnet.
const vmTopology = `name: vmnet
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
  - name: world
    role: external
    routes:
      - {to: 192.168.77.0/24, via: 10.77.0.1}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.77.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0}
      - {namespace: bridge, name: vm2, bridge: br0}
uplink:
  mode: routed
  addresses: [10.77.0.1/24]
  peer: {namespace: world, name: eth0, addresses: [10.77.0.2/24]}
dhcp:
  servers:
    - namespace: host
      interface: eth0
      pool: {start: 192.168.77.100, end: 192.168.77.150}
vms:
  - name: vm1
    memory: MEM1
    nics: [{uplink: eth0, dhcp: true}]
  - name: vm2
    memory: MEM2
    nics: [{uplink: eth0, dhcp: true}]
`

func vmYAML(mem1, mem2 int) string {
	return strings.NewReplacer("MEM1", strconv.Itoa(mem1), "MEM2", strconv.Itoa(mem2)).Replace(vmTopology)
}

// supervisorEnv makes the test binary run as the network's supervisor (the
// VM tests have no kvmnet binary): lab starts it with -test.run selecting
// TestSupervisorProcess.
const supervisorEnv = "KVMNET_TEST_SUPERVISOR_PROCESS"

// TestSupervisorProcess is not a test: it is the body of the supervisor
// process the VM tests start (the test binary with supervisorEnv set).
func TestSupervisorProcess(t *testing.T) {
	if os.Getenv(supervisorEnv) != "1" {
		t.Skip("runs only as the VM tests' supervisor process")
	}
	args := flag.Args() // supervise --network ID --state-dir BASE
	var network, base string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--network":
			network = args[i+1]
		case "--state-dir":
			base = args[i+1]
		}
	}
	os.Exit(supervise.Serve(filepath.Join(base, network), os.Stderr))
}

// logWriter writes progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// vmOpts are the options of the VM tests: the test binary as supervisor,
// progress in the test log.
func vmOpts(t *testing.T) []Option {
	t.Setenv(supervisorEnv, "1")
	return testOpts(t, WithSupervisor(os.Args[0], "-test.run=^TestSupervisorProcess$", "--"),
		WithProgress(logWriter{t}), WithVMStopTimeout(20*time.Second))
}

// procsMentioning returns the live processes whose command line contains s.
func procsMentioning(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), s) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

// killAll kills every QEMU and supervisor of the test's state directory
// (registered with t.Cleanup: it runs whatever happened).
func killAll(t *testing.T, dir string) {
	for _, pid := range procsMentioning(dir) {
		t.Logf("cleanup: killing leftover process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func vmState(t *testing.T, r *VMStatusReport, name string) VMState {
	t.Helper()
	for _, v := range r.VMs {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no vm %q in %+v", name, r.VMs)
	return VMState{}
}

func vmStatus(t *testing.T, topo *topology.Topology) *VMStatusReport {
	t.Helper()
	r, err := VMStatus(context.Background(), topo, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mtimes records the modification times of the files under dir that only
// commands write (not the supervisor's heartbeat or log).
func mtimes(t *testing.T, dir string) map[string]time.Time {
	out := map[string]time.Time{}
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		switch filepath.Base(p) {
		case supervise.HealthFile, supervise.LogFile, vm.SerialLog, "lock":
			return nil
		}
		if filepath.Dir(p) == filepath.Join(dir, supervise.LeasesDir) {
			return nil // the server rewrites it on every renewal
		}
		out[p] = fi.ModTime()
		return nil
	})
	return out
}

// vmFixture is fixture for a test that boots QEMU guests (skipped with
// -short; needs qemu and tools): the topology, its state directory and the
// network's directory in it. When the test ends, every guest and supervisor
// it started is killed; when it failed, the guests' serial consoles and the
// supervisor's log are logged first.
func vmFixture(t *testing.T, src string, tools ...string) (topo *topology.Topology, sdir, netDir string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs (skipped with -short)")
	}
	testutil.RequireRoot(t)
	for _, tool := range append([]string{"qemu-system-x86_64"}, tools...) {
		testutil.RequireTool(t, tool)
	}
	topo = fixture(t, src)
	sdir = stateDir(t)
	netDir = filepath.Join(sdir, topo.ID())
	var names []string // as declared now: a test may remove VMs from topo
	for _, v := range topo.VMs {
		names = append(names, v.Name)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range names {
				m := &vm.Machine{Spec: vm.Spec{Name: name}, Dir: filepath.Join(netDir, "vms", name)}
				t.Logf("serial console of %s (last 20 lines):\n%s", name, m.ConsoleTail(20))
			}
			t.Logf("supervisor log:\n%s", supervise.Tail(netDir, 30))
		}
		killAll(t, sdir)
	})
	return topo, sdir, netDir
}

// TestVMsUpDown runs Up on a topology with two built-in guests on one
// bridge, with DHCP from the host namespace and a routed external
// namespace, and checks the whole life of the VMs: leases, traffic, a
// no-op second up, a crash that is reported and not repaired, a changed
// spec, a removed VM, and a down that leaves nothing behind.
func TestVMsUpDown(t *testing.T) {
	topo, sdir, netDir := vmFixture(t, vmYAML(128, 128), "busybox")
	ctx := context.Background()

	// 1. up: the network, the supervisor with the DHCP server, both guests.
	start := time.Now()
	res, err := Up(ctx, topo, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("first up: %d steps, %s", len(res.Steps), time.Since(start).Round(10*time.Millisecond))
	if r := res.VMs; r == nil || !slices.Equal(r.Started, []string{"vm1", "vm2"}) || r.Supervisor != "started" || r.Accel == "" {
		t.Fatalf("up's VM report: %+v", res.VMs)
	}

	st := vmStatus(t, topo)
	if st.Supervisor.State != supervise.StateRunning || len(st.DHCP) != 1 || !st.DHCP[0].Listening {
		t.Fatalf("supervisor %+v, dhcp %+v", st.Supervisor, st.DHCP)
	}
	addr := map[string]string{}
	for _, name := range []string{"vm1", "vm2"} {
		v := vmState(t, st, name)
		if v.State != vm.StateRunning || v.PID == 0 || v.RSSKiB == 0 || len(v.Addresses) != 1 || v.Accel == "" {
			t.Fatalf("%s: %+v", name, v)
		}
		addr[name] = v.Addresses[0].Addr.Addr().String()
		t.Logf("%s: %s, %s, qemu RSS %d MiB, accel %s", name, v.State, v.Addresses[0].Addr, v.RSSKiB/1024, v.Accel)
	}
	// Both guests hold bound leases from the pool, under their names.
	leases := st.DHCP[0].Leases
	if len(leases) != 2 {
		t.Fatalf("leases: %+v", leases)
	}
	for _, l := range leases {
		if l.State != dhcp.StateBound || addr[l.Hostname] != l.IP.String() || !strings.HasPrefix(l.IP.String(), "192.168.77.1") {
			t.Fatalf("lease %+v does not match the guests %v", l, addr)
		}
	}

	// kvmnet verify from inside the guests (through their agents) and from
	// a namespace to a guest: each expectation holds, both ways.
	topo.Expect = []topology.Expectation{
		{From: "vm1", To: "vm2"},
		{From: "vm2", To: "192.168.77.1"},
		{From: "vm1", To: "10.77.0.2"},
		{From: "vm1", To: "192.168.77.1", Proto: "tcp", Port: 7011, Expect: "blocked"},
		{From: "world", To: "vm1", Proto: "tcp", Port: 7},
	}
	results, err := Verify(ctx, topo, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("verify %s: got %s (%s)", r.Probe.Label(), r.Got(), r.Detail)
		}
	}
	if !strings.Contains(results[0].Detail, "from the guest: 2/2 replies from "+addr["vm2"]) {
		t.Errorf("the probe from vm1 did not run in its guest: %s", results[0].Detail)
	}
	topo.Expect = nil

	// 2. Traffic: each guest pings the gateway and the other guest (from
	// inside, through the agent); the external host reaches a guest's HTTP
	// and TCP echo ports through the routed uplink.
	host, world := topo.NSName("host"), topo.NSName("world")
	for _, c := range [][2]string{{"vm1", "192.168.77.1"}, {"vm1", addr["vm2"]}, {"vm2", "192.168.77.1"}, {"vm2", addr["vm1"]}} {
		out, err := testutil.Try("ip", "netns", "exec", host, "busybox", "wget", "-q", "-O", "-", "http://"+addr[c[0]]+"/ping?to="+c[1])
		if err != nil || !strings.Contains(out, "3/3 replies") {
			t.Fatalf("%s pings %s: %v %s", c[0], c[1], err, out)
		}
	}
	out, err := testutil.Try("ip", "netns", "exec", world, "busybox", "wget", "-q", "-O", "-", "http://"+addr["vm1"]+"/")
	var idx struct {
		Hostname string `json:"hostname"`
	}
	if err != nil || json.Unmarshal([]byte(out), &idx) != nil || idx.Hostname != "vm1" {
		t.Fatalf("external host GET http://%s/: %v %s", addr["vm1"], err, out)
	}
	echo := exec.Command("ip", "netns", "exec", world, "busybox", "nc", "-w", "3", addr["vm2"], "7")
	echo.Stdin = strings.NewReader("hello from the world\n")
	if got, err := echo.Output(); err != nil || string(got) != "hello from the world\n" {
		t.Fatalf("echo from the external host to vm2: %q, %v", got, err)
	}

	// 3. A second up changes nothing: no kernel write, no VM started, the
	// same supervisor, and no file written.
	before := mtimes(t, netDir)
	supPID := st.Supervisor.PID
	res, err = Up(ctx, topo, vmOpts(t)...)
	if err != nil {
		t.Fatalf("second up: %v", err)
	}
	if len(res.Steps) != 0 || res.Writes != 0 {
		t.Fatalf("second up: %d steps, %d writes: %v", len(res.Steps), res.Writes, res.Steps)
	}
	if r := res.VMs; len(r.Started)+len(r.Restarted) != 0 || !slices.Equal(r.Unchanged, []string{"vm1", "vm2"}) || r.Supervisor != "running" || r.SupervisorPID != supPID {
		t.Fatalf("second up's VM report: %+v", r)
	}
	after := mtimes(t, netDir)
	for p, m := range after {
		if !before[p].Equal(m) {
			t.Errorf("second up wrote %s", p)
		}
	}
	t.Logf("second up: %s", res.VMs.Summary())

	// The supervisor dies: status says so, the VMs run on, and the next up
	// starts a new one, which restores the leases from their file.
	if err := syscall.Kill(supPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if s := vmStatus(t, topo).Supervisor; s.State == supervise.StateDead {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("supervisor after SIGKILL: %+v", s)
		}
	}
	res, err = Up(ctx, topo, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up after the supervisor died: %v", err)
	}
	if r := res.VMs; r.Supervisor != "started" || r.SupervisorPID == supPID || len(r.Unchanged) != 2 {
		t.Fatalf("up after the supervisor died: %+v", r)
	}
	if st = vmStatus(t, topo); st.Supervisor.State != supervise.StateRunning || !st.DHCP[0].Listening || len(st.DHCP[0].Leases) != 2 {
		t.Fatalf("after the supervisor's restart: %+v %+v", st.Supervisor, st.DHCP)
	}

	// 4. vm2 crashes (its QEMU is killed behind kvmnet's back): status says
	// crashed, the supervisor reports it and does not restart it, and up
	// leaves it crashed too.
	v2 := vmState(t, st, "vm2")
	if err := syscall.Kill(v2.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = vmStatus(t, topo)
		seen := slices.ContainsFunc(st.Supervisor.Events, func(e supervise.Event) bool { return e.VM == "vm2" && e.State == vm.StateCrashed })
		if vmState(t, st, "vm2").State == vm.StateCrashed && seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm2 not reported crashed: %+v, events %+v", vmState(t, st, "vm2"), st.Supervisor.Events)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // three supervisor rounds
	st = vmStatus(t, topo)
	if v := vmState(t, st, "vm2"); v.State != vm.StateCrashed || v.PID != 0 || !strings.Contains(v.Reason, "without kvmnet stopping it") {
		t.Fatalf("vm2 after the crash: %+v", v)
	}
	if p := procsMentioning(filepath.Join(netDir, "vms", "vm2") + "/"); len(p) != 0 {
		t.Fatalf("vm2 was restarted: %v", p)
	}
	if !strings.Contains(supervise.Tail(netDir, 50), "vm crashed; not restarting it") {
		t.Errorf("the supervisor log does not report the crash:\n%s", supervise.Tail(netDir, 50))
	}
	res, err = Up(ctx, topo, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up after the crash: %v", err)
	}
	if r := res.VMs; !slices.Equal(r.Left, []string{"vm2"}) || len(r.Started) != 0 {
		t.Fatalf("up after the crash: %+v", r)
	}

	// 5. Both specs change (more memory): up restarts the running vm1
	// (ACPI, then a fresh boot) and boots the crashed vm2 with the new spec.
	topo2, err := topology.Parse("test.yaml", []byte(vmYAML(160, 160)), topology.WithPrefix(topo.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	res, err = Up(ctx, topo2, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up with the memory changed: %v", err)
	}
	if r := res.VMs; !slices.Equal(r.Started, []string{"vm2"}) || !slices.Equal(r.Restarted, []string{"vm1"}) || len(r.Unchanged) != 0 {
		t.Fatalf("up with the memory changed: %+v", r)
	}
	st2 := vmStatus(t, topo2)
	for _, name := range []string{"vm1", "vm2"} {
		v := vmState(t, st2, name)
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID))
		if v.State != vm.StateRunning || !strings.Contains(string(cmd), "\x00-m\x00160\x00") {
			t.Fatalf("%s after the change: %+v, command line %q", name, v, cmd)
		}
	}
	if vmState(t, st2, "vm1").PID == vmState(t, st, "vm1").PID {
		t.Fatalf("vm1 was not restarted")
	}

	// 6. vm1 is no longer declared: up stops it (ACPI) and removes its tap
	// and per-VM bridge; its namespace stays.
	topo3, err := topology.Parse("test.yaml", []byte(strings.Replace(vmYAML(160, 160),
		"  - name: vm1\n    memory: 160\n    nics: [{uplink: eth0, dhcp: true}]\n", "", 1)), topology.WithPrefix(topo.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	if len(topo3.VMs) != 1 {
		t.Fatalf("vm1 still declared: %+v", topo3.VMs)
	}
	res, err = Up(ctx, topo3, vmOpts(t)...)
	if err != nil {
		t.Fatalf("up without vm1: %v", err)
	}
	if r := res.VMs; !slices.Equal(r.Stopped, []string{"vm1"}) || !slices.Equal(r.Unchanged, []string{"vm2"}) {
		t.Fatalf("up without vm1: %+v", r)
	}
	// It powered off through ACPI: the guest released its lease as it went.
	st = vmStatus(t, topo3)
	if ls := st.DHCP[0].Leases; len(ls) != 1 || ls[0].Hostname != "vm2" {
		t.Fatalf("leases after vm1 was removed: %+v", ls)
	}
	links := testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "-o", "link", "show")
	if strings.Contains(links, "tap0") || strings.Contains(links, "vbr0") || !strings.Contains(links, "eth0") {
		t.Fatalf("vm1's namespace after its VM was removed:\n%s", links)
	}

	// 7. down: no QEMU, supervisor, tap, namespace or lease is left.
	if _, err := Down(ctx, topo3, vmOpts(t)...); err != nil {
		t.Fatalf("down: %v", err)
	}
	if p := procsMentioning(sdir); len(p) != 0 {
		t.Errorf("processes left after down: %v", p)
	}
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, topo.Prefix) {
			t.Errorf("namespace %s left after down", n)
		}
	}
	for _, f := range []string{supervise.LeasesDir, supervise.VMsDir, supervise.PidFile, supervise.ConfigFile} {
		if _, err := os.Stat(filepath.Join(netDir, f)); err == nil {
			t.Errorf("%s left after down", f)
		}
	}
	if s := supervise.Read(netDir); s.State != supervise.StateNotRunning {
		t.Errorf("supervisor after down: %+v", s)
	}
}

// TestVMWiringAndConfigs checks, without root, what the topology's VMs and
// DHCP servers become: the per-VM bridge in the desired state (with the
// uplink as its port), the VM specs and the DHCP configurations.
func TestVMWiringAndConfigs(t *testing.T) {
	topo, err := topology.Load("../examples/vms.yaml", topology.WithPrefix("p-"))
	if err != nil {
		t.Fatal(err)
	}
	desired := model.Desired(topo)
	addVMWiring(topo, desired)
	for _, ns := range []string{"p-vm1", "p-vm2"} {
		n := desired.Namespaces[ns]
		br, up := n.Links["vbr0"], n.Links["eth0"]
		if br == nil || br.Kind != model.KindBridge || br.Owner != topo.ID() || br.MAC == "" || up.Master != "vbr0" || len(up.Addrs) != 0 {
			t.Fatalf("%s: vbr0 %+v, eth0 %+v", ns, br, up)
		}
	}
	specs := vmSpecs(topo)
	if len(specs) != 2 {
		t.Fatalf("specs: %+v", specs)
	}
	n := specs[0].NICs[0]
	if specs[0].Name != "vm1" || specs[0].MemoryMiB != 128 || n.Namespace != "p-vm1" || n.Tap != "tap0" || n.Bridge != "vbr0" ||
		n.Uplink != "eth0" || n.Wiring != vm.WiringBridge || n.MAC != "00:11:22:33:44:55" || !n.DHCP {
		t.Fatalf("vm1's spec: %+v", specs[0])
	}
	if err := vm.Validate(specs, vm.Host{MemoryMiB: 4096, CPUs: 2}); err != nil {
		t.Fatal(err)
	}
	cs := dhcpConfigs(topo, "/state/p-vms")
	if len(cs) != 1 {
		t.Fatalf("dhcp: %+v", cs)
	}
	c := cs[0]
	if c.Namespace != "p-host" || c.Config.Interface != "eth0" || c.Config.ServerIP.String() != "192.168.1.1" || c.Config.Router.String() != "192.168.1.1" ||
		c.Config.Subnet.String() != "192.168.1.0/24" || c.Config.PoolStart.String() != "192.168.1.101" || c.Config.LeaseTime != time.Hour ||
		len(c.Config.Static) != 1 || c.Config.LeaseFile != "/state/p-vms/dhcp/p-host_eth0.json" {
		t.Fatalf("dhcp config: %+v", c)
	}
	if err := c.Config.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestVMSecurityGroup: a security group on the link end a QEMU VM's NIC rides
// on filters the guest's bridged traffic in the VM's namespace: only what it
// allows gets in, plus replies to the guest's own traffic and its DHCP replies.
func TestVMSecurityGroup(t *testing.T) {
	src := strings.Replace(vmYAML(128, 128), "      - {namespace: vm1, name: eth0}", "      - {namespace: vm1, name: eth0, security_groups: [echo]}", 1)
	// Echo from anywhere; the agent's HTTP only from the segment (kvmnet
	// verify reaches the agent from the host, 192.168.77.1).
	src += "security_groups:\n  - name: echo\n    ingress:\n      - {proto: tcp, port: 7}\n      - {proto: tcp, port: 80, from: 192.168.77.0/24}\n"
	topo, _, _ := vmFixture(t, src)
	ctx := context.Background()
	if _, err := Up(ctx, topo, vmOpts(t)...); err != nil {
		t.Fatalf("up (the guest behind the group must still get its DHCP lease): %v", err)
	}
	topo.Expect = []topology.Expectation{
		{From: "world", To: "vm1", Proto: "tcp", Port: 7},                     // allowed from anywhere
		{From: "world", To: "vm1", Proto: "tcp", Port: 80, Expect: "blocked"}, // allowed from the segment only
		{From: "world", To: "vm1", Expect: "blocked"},                         // ICMP: not allowed
		{From: "world", To: "vm2", Proto: "tcp", Port: 80},                    // vm2 has no group
		{From: "vm1", To: "10.77.0.2"},                                        // the guest's own traffic: replies get in
	}
	results, err := Verify(ctx, topo, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("verify %s: got %s (%s)", r.Probe.Label(), r.Got(), r.Detail)
		}
	}
	// The rules live in vm1's namespace: nft as witness.
	rules := inNS(t, topo, "vm1", "nft", "list", "ruleset")
	for _, want := range []string{"meta mark set 0x00006b76", "meta mark != 0x00006b76", "tcp dport 7"} {
		if !strings.Contains(rules, want) {
			t.Errorf("vm1's ruleset lacks %q:\n%s", want, rules)
		}
	}
	if again, err := Up(ctx, topo, vmOpts(t)...); err != nil || again.Writes != 0 {
		t.Fatalf("second up: %v, %d writes: %v", err, again.Writes, again.Steps)
	}
}
