package lab

// VMs and DHCP: what Up does after the network is built and verified
// (reconcile the VMs, run the DHCP servers in the background supervisor),
// what Down does before it deletes the namespaces (stop the VMs and the
// supervisor, drop the leases), the per-VM bridge the network plan builds,
// and the views status and `kvmnet vm` use. docs/vms.md describes it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/diagnose"
	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/state"
	"github.com/kvmnet/kvmnet/internal/supervise"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/topology"
)

// vmOptions configure the VM side of Up, Down and the VM commands.
type vmOptions struct {
	supervisor   []string
	progress     io.Writer
	parallel     int
	stopTimeout  time.Duration
	readyTimeout time.Duration
	guest        vm.GuestOptions
}

// WithSupervisor sets the command that runs `kvmnet supervise` (the
// network's background supervisor); Args of internal/supervise are
// appended. Default: this executable, which must be kvmnet.
func WithSupervisor(argv ...string) Option {
	return func(o *options) { o.vm.supervisor = argv }
}

// WithProgress sets where VM progress lines go (booting, ready, the
// accelerator, the summary). Default os.Stderr: it is neither the data on
// stdout nor a log. On a terminal a live status line is kept too.
func WithProgress(w io.Writer) Option { return func(o *options) { o.vm.progress = w } }

// WithVMParallel bounds how many VMs boot at once (default: the number of
// CPUs, at least 2).
func WithVMParallel(n int) Option { return func(o *options) { o.vm.parallel = n } }

// WithVMStopTimeout sets how long a VM gets to power off after the ACPI
// power button before it is killed (default 30 s).
func WithVMStopTimeout(d time.Duration) Option { return func(o *options) { o.vm.stopTimeout = d } }

// WithGuest configures the built-in guest (cache directory, prebuilt agent,
// accelerator).
func WithGuest(g vm.GuestOptions) Option { return func(o *options) { o.vm.guest = g } }

func (o *options) progressW() io.Writer {
	if o.vm.progress == nil {
		return os.Stderr
	}
	return o.vm.progress
}

func (o *options) stopTimeout() time.Duration {
	if o.vm.stopTimeout <= 0 {
		return vm.DefaultStopTimeout * time.Second
	}
	return o.vm.stopTimeout
}

func (o *options) readyTimeout() time.Duration {
	if o.vm.readyTimeout <= 0 {
		return 3 * time.Minute
	}
	return o.vm.readyTimeout
}

func (o *options) parallel() int {
	if o.vm.parallel > 0 {
		return o.vm.parallel
	}
	return max(2, runtime.NumCPU())
}

func (o *options) supervisorArgv() ([]string, error) {
	if len(o.vm.supervisor) > 0 {
		return o.vm.supervisor, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find kvmnet to run the supervisor: %w", err)
	}
	return []string{exe}, nil
}

// VMReport is what Up (or Down) did to the VMs and the supervisor.
type VMReport struct {
	// Accel is "kvm" or "tcg" when VMs were started, with the reason.
	Accel       string   `json:"accel,omitempty"`
	AccelReason string   `json:"accel_reason,omitempty"`
	Started     []string `json:"started"`
	Restarted   []string `json:"restarted"`
	Unchanged   []string `json:"unchanged"`
	// Left are declared VMs that are stopped or crashed with an unchanged
	// spec: up does not boot them (`kvmnet vm start` does).
	Left    []string `json:"left"`
	Stopped []string `json:"stopped"` // removed from the topology (up) or all (down)
	// Supervisor is "started", "restarted", "running", "stopped" or "".
	Supervisor    string        `json:"supervisor,omitempty"`
	SupervisorPID int           `json:"supervisor_pid,omitempty"`
	Duration      time.Duration `json:"duration_ns"`
}

func newVMReport() *VMReport {
	return &VMReport{Started: []string{}, Restarted: []string{}, Unchanged: []string{}, Left: []string{}, Stopped: []string{}}
}

// Summary is a one-line account.
func (r *VMReport) Summary() string {
	var parts []string
	if len(r.Started)+len(r.Restarted)+len(r.Unchanged)+len(r.Left)+len(r.Stopped) > 0 {
		s := fmt.Sprintf("vms: %d started, %d restarted, %d unchanged, %d left stopped or crashed, %d stopped and removed",
			len(r.Started), len(r.Restarted), len(r.Unchanged), len(r.Left), len(r.Stopped))
		if r.Accel != "" {
			s += " (" + strings.ToUpper(r.Accel) + ")"
		}
		parts = append(parts, s)
	}
	switch r.Supervisor {
	case "":
	case "stopped":
		parts = append(parts, "supervisor stopped")
	default:
		parts = append(parts, fmt.Sprintf("supervisor %s (pid %d)", r.Supervisor, r.SupervisorPID))
	}
	if len(parts) == 0 {
		parts = append(parts, "vms: none")
	}
	return strings.Join(parts, "; ") + fmt.Sprintf(" (%s)", r.Duration.Round(time.Millisecond))
}

// specFile records, in a VM's state directory, the spec it was started
// with: a running VM whose declared spec still equals it is left alone.
const specFile = "spec.json"

// stateDirOf is the state directory of network id.
func (o *options) netDir(id string) string {
	base := o.stateDir
	if base == "" {
		base = state.DefaultDir
	}
	return filepath.Join(base, id)
}

func vmDir(dir, name string) string { return filepath.Join(dir, supervise.VMsDir, name) }

// tapMark is the ifalias of a VM's tap: the network's mark with "/vm", so
// that the network plan (which owns, and would delete, links marked as the
// network's) leaves taps to the VM code, and `down` does not take them for
// interfaces of someone else.
func tapMark(id string) string { return model.MarkPrefix + id + "/vm" }

// addVMWiring adds, to the desired state of t, what the network itself
// builds for each VM NIC: the per-VM bridge (topology.VMBridge) in the VM's
// namespace with the NIC's uplink as its port. The tap is added to that
// bridge when the VM starts (vm.AttachNICMarks).
func addVMWiring(t *topology.Topology, s *model.State) {
	for _, v := range t.VMs {
		ns := s.Namespaces[t.NSName(v.NS())]
		if ns == nil {
			continue
		}
		for j, n := range v.NICs {
			up := ns.Links[n.Uplink]
			if up == nil {
				continue
			}
			br := topology.VMBridge(j)
			ns.Links[br] = &model.Link{
				Name: br, Kind: model.KindBridge, Owner: s.Network, Up: true,
				MAC:    derivedMAC(t.ID(), v.NS()+"/"+br),
				Bridge: &model.BridgeOpts{AgeingTime: topology.DefaultAgeingTime},
			}
			up.Master = br
		}
	}
}

// derivedMAC derives a MAC the way topology derives one for an interface
// (docs/topology.md, Derived MACs): a stable, locally administered unicast
// MAC hashed from the network ID and "namespace/interface". The per-VM
// bridge never sends from it (no address, no IPv6, no STP); a fixed MAC
// keeps it from following its ports'.
func derivedMAC(id, owner string) string {
	sum := sha256.Sum256([]byte(id + "\x00" + owner))
	hw := net.HardwareAddr(sum[:6])
	hw[0] = hw[0]&0xfc | 0x02
	return hw.String()
}

// vmSpecs turns the topology's VMs into vm.Specs (defaults applied).
func vmSpecs(t *topology.Topology) []vm.Spec {
	var out []vm.Spec
	for i := range t.VMs {
		v := &t.VMs[i]
		s := vm.Spec{Name: v.Name, CPUs: v.VCPUs(), MemoryMiB: v.MemoryMiB()}
		if !v.BuiltIn() {
			img := t.ImagePath(v)
			if abs, err := filepath.Abs(img); err == nil {
				img = abs
			}
			s.Boot = vm.Boot{Image: img, Format: v.Boot.Format, Snapshot: v.Boot.Snapshot}
			if ci := v.Boot.CloudInit; ci != nil {
				s.Boot.CloudInit = &vm.CloudInit{Hostname: ci.Hostname, User: ci.User, SSHKeys: ci.SSHKeys}
			}
		}
		for j, n := range v.NICs {
			nic := vm.NIC{
				Namespace: t.NSName(v.NS()), Tap: topology.VMTap(j), Uplink: n.Uplink,
				Bridge: topology.VMBridge(j), Wiring: vm.WiringBridge, MAC: n.MAC, DHCP: n.DHCP,
			}
			if len(n.Addresses) > 0 {
				nic.Address, _ = netip.ParsePrefix(n.Addresses[0])
			}
			nic.Gateway, _ = netip.ParseAddr(n.Gateway)
			for _, d := range n.DNS {
				if a, err := netip.ParseAddr(d); err == nil {
					nic.DNS = append(nic.DNS, a)
				}
			}
			s.NICs = append(s.NICs, nic)
		}
		out = append(out, s.WithDefaults())
	}
	return out
}

// supervisorConfig is what the supervisor of network t runs.
func supervisorConfig(t *topology.Topology, dir string) *supervise.Config {
	return &supervise.Config{Network: t.ID(), DHCP: dhcpConfigs(t, dir), DNS: dnsConfigs(t)}
}

// dnsConfigs turns the topology's DNS servers into the supervisor's, each
// with the zone's static names and the MACs of the VMs' DHCP NICs (a VM's
// name answers with its lease).
func dnsConfigs(t *topology.Topology) []supervise.DNSServer {
	if t.DNS == nil {
		return nil
	}
	names := t.DNSNames()
	vms := map[string]string{}
	for _, v := range t.VMs {
		for _, n := range v.NICs {
			if n.DHCP {
				vms[strings.ToLower(n.MAC)] = strings.ToLower(v.Name)
			}
		}
	}
	var out []supervise.DNSServer
	for i := range t.DNS.Servers {
		s := &t.DNS.Servers[i]
		c := dns.Config{Domain: t.DNSDomain(), Listen: t.DNSServerAddrs(s)}
		for _, f := range s.Forward {
			if ap, err := topology.ParseForward(f); err == nil {
				c.Forward = append(c.Forward, ap)
			}
		}
		out = append(out, supervise.DNSServer{Namespace: t.NSName(s.Namespace), Config: c, Names: names, VMs: vms})
	}
	return out
}

// networkDNS is the name server a DHCP server on interface iface of
// namespace ns announces when it declares none: a server of the network's
// zone on the same L2 segment (its IPv4 address in subnet, else its first
// IPv4 one), else one in the same namespace (the DHCP server's namespace
// is its clients' gateway and routes to it).
func networkDNS(t *topology.Topology, ns, iface string, subnet netip.Prefix) (netip.Addr, bool) {
	if t.DNS == nil {
		return netip.Addr{}, false
	}
	seg := t.Segments()
	pick := func(s *topology.DNSServer) (netip.Addr, bool) {
		var first netip.Addr
		for _, a := range t.DNSServerAddrs(s) {
			if !a.Is4() {
				continue
			}
			if subnet.Contains(a) {
				return a, true
			}
			if !first.IsValid() {
				first = a
			}
		}
		return first, first.IsValid()
	}
	for i := range t.DNS.Servers {
		if s := &t.DNS.Servers[i]; seg.Of(s.Namespace, s.Interface) == seg.Of(ns, iface) {
			if a, ok := pick(s); ok {
				return a, true
			}
		}
	}
	for i := range t.DNS.Servers {
		if s := &t.DNS.Servers[i]; s.Namespace == ns {
			if a, ok := pick(s); ok {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// dhcpConfigs turns the topology's DHCP servers into the supervisor's.
func dhcpConfigs(t *topology.Topology, dir string) []supervise.DHCPServer {
	var out []supervise.DHCPServer
	for _, s := range t.DHCPServers() {
		addr, _ := t.DHCPAddress(&s)
		c := dhcp.Config{
			Interface: s.Interface, ServerIP: addr.Addr(), Subnet: addr.Masked(),
			Router: t.DHCPRouter(&s), Domain: s.Domain,
			LeaseTime: time.Duration(cmpOr(s.LeaseTime, topology.DefaultLeaseTime)) * time.Second,
			LeaseFile: supervise.LeaseFile(dir, t.NSName(s.Namespace), s.Interface),
		}
		c.PoolStart, _ = netip.ParseAddr(s.Pool.Start)
		c.PoolEnd, _ = netip.ParseAddr(s.Pool.End)
		for _, d := range s.DNS {
			if a, err := netip.ParseAddr(d); err == nil {
				c.DNS = append(c.DNS, a)
			}
		}
		// No name server declared: the network's own, for its zone.
		if a, ok := networkDNS(t, s.Namespace, s.Interface, c.Subnet); ok && len(s.DNS) == 0 {
			c.DNS = []netip.Addr{a}
			if c.Domain == "" {
				c.Domain = t.DNSDomain()
			}
		}
		for _, st := range s.Static {
			ip, _ := netip.ParseAddr(st.IP)
			c.Static = append(c.Static, dhcp.StaticLease{MAC: st.MAC, IP: ip, Hostname: st.Hostname})
		}
		out = append(out, supervise.DHCPServer{Namespace: t.NSName(s.Namespace), Config: c})
	}
	return out
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

func specJSON(s vm.Spec) []byte {
	b, _ := json.MarshalIndent(s, "", "  ")
	return append(b, '\n')
}

// recordedSpec reads the spec a VM was started with (nil when it has none).
func recordedSpec(dir string) ([]byte, *vm.Spec) {
	b, err := os.ReadFile(filepath.Join(dir, specFile))
	if err != nil {
		return nil, nil
	}
	var s vm.Spec
	if json.Unmarshal(b, &s) != nil {
		return nil, nil
	}
	return b, &s
}

// recordedVMs lists the VMs with a state directory.
func recordedVMs(dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, supervise.VMsDir))
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// machineAt is the Machine of the VM whose state directory is dir, with
// the spec it was started with (or only its name).
func (o *options) machineAt(dir, name string) *vm.Machine {
	m := &vm.Machine{Spec: vm.Spec{Name: name}, Dir: dir, Log: o.log}
	if _, s := recordedSpec(dir); s != nil {
		m.Spec = *s
	}
	return m
}

// lockNet takes network id's lock (the one every command on it takes).
func (o *options) lockNet(id string) (*state.Store, error) {
	store, err := state.Open(o.stateDir, id)
	if err != nil {
		return nil, err
	}
	if err := store.Lock(5 * time.Minute); err != nil {
		store.Close()
		return nil, err
	}
	return store, nil
}

// vmsBeforeUp runs before the network pipeline of Up: it checks the VM specs
// against the host (the topology was validated already; this catches a host
// that changed), and stops and removes the VMs that are no longer declared,
// before the plan removes their per-VM bridges or namespaces.
func vmsBeforeUp(ctx context.Context, o *options, t *topology.Topology) (*VMReport, error) {
	specs := vmSpecs(t)
	if len(specs) > 0 {
		if h, err := vm.HostInfo(); err == nil {
			if err := vm.Validate(specs, h); err != nil {
				return nil, err
			}
		}
	}
	rep := newVMReport()
	dir := o.netDir(t.ID())
	var gone []string
	for _, name := range recordedVMs(dir) {
		if t.VM(name) == nil {
			gone = append(gone, name)
		}
	}
	if len(gone) == 0 {
		return rep, nil
	}
	store, err := o.lockNet(t.ID())
	if err != nil {
		return nil, err
	}
	defer store.Close()
	p := newProgress(o.progressW())
	defer p.close()
	err = o.stopVMs(ctx, t.ID(), dir, gone, p, "no longer declared")
	rep.Stopped = append(rep.Stopped, gone...)
	return rep, err
}

// stopVMs stops the named VMs at once (ACPI, then kill after the stop
// timeout), removes their taps and their state directories.
func (o *options) stopVMs(ctx context.Context, id, dir string, names []string, p *progress, why string) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := o.machineAt(vmDir(dir, name), name)
			start := time.Now()
			if err := m.Stop(ctx, o.stopTimeout()); err != nil {
				errs[i] = err
				return
			}
			errs[i] = detachTaps(id, m.Spec.WithDefaults().NICs)
			if errs[i] == nil {
				errs[i] = os.RemoveAll(m.Dir)
			}
			if errs[i] == nil {
				p.event(name, "stopped (%s) in %s", why, time.Since(start).Round(10*time.Millisecond))
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// detachTaps removes the VM taps of nics; a namespace that is gone took
// them along.
func detachTaps(id string, nics []vm.NIC) error {
	var errs []error
	for _, n := range nics {
		ns, err := netns.Open(n.Namespace)
		if err != nil {
			continue
		}
		errs = append(errs, vm.DetachTap(ns, n, tapMark(id)))
		ns.Close()
	}
	return errors.Join(errs...)
}

// vmsAfterUp runs after the network was built and verified: it makes sure
// the supervisor runs with the declared DHCP servers, then boots the
// declared VMs that do not run (bounded parallelism, progress), restarts
// the ones whose spec changed, and leaves the others alone.
func vmsAfterUp(ctx context.Context, o *options, t *topology.Topology, res *Result, rep *VMReport) error {
	id := t.ID()
	dir := o.netDir(id)
	specs := vmSpecs(t)
	cfg := supervisorConfig(t, dir)
	need := len(specs) > 0 || len(cfg.DHCP) > 0 || len(cfg.DNS) > 0
	if !need && len(rep.Stopped) == 0 && supervise.Read(dir).State == supervise.StateNotRunning {
		if _, err := os.Stat(filepath.Join(dir, supervise.ConfigFile)); err != nil {
			return nil
		}
	}
	res.VMs = rep
	start := time.Now()
	store, err := o.lockNet(id)
	if err != nil {
		return err
	}
	defer store.Close()
	p := newProgress(o.progressW())
	defer p.close()
	defer func() {
		rep.Duration = time.Since(start)
		p.line("%s", rep.Summary())
	}()
	if err := o.ensureSupervisor(ctx, dir, cfg, need, rep); err != nil {
		return err
	}
	var jobs []*bootJob
	for _, s := range specs {
		m := &vm.Machine{Spec: s, Dir: vmDir(dir, s.Name), Log: o.log}
		st, err := m.Status(ctx)
		if err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
		old, oldSpec := recordedSpec(m.Dir)
		same := bytes.Equal(old, specJSON(s))
		switch {
		case st.State == vm.StateRunning && same:
			ok, why, err := nicsAttached(id, s.NICs)
			if err != nil {
				return fmt.Errorf("vm %q: %w", s.Name, err)
			}
			if ok {
				rep.Unchanged = append(rep.Unchanged, s.Name)
				continue
			}
			jobs = append(jobs, &bootJob{m: m, old: oldSpec, restart: true, why: "running, but " + why})
		case st.State == vm.StateRunning:
			jobs = append(jobs, &bootJob{m: m, old: oldSpec, restart: true, why: "spec changed"})
		case old != nil && same:
			rep.Left = append(rep.Left, s.Name)
			p.event(s.Name, "%s (%s); left as it is: `kvmnet vm start %s` boots it", st.State, st.Reason, s.Name)
		default:
			jobs = append(jobs, &bootJob{m: m, old: oldSpec})
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	g, err := o.prepareGuest(ctx, rep, p)
	if err != nil {
		return err
	}
	if err := o.boot(ctx, id, g, jobs, p); err != nil {
		return err
	}
	for _, j := range jobs {
		if j.restart {
			rep.Restarted = append(rep.Restarted, j.m.Spec.Name)
		} else {
			rep.Started = append(rep.Started, j.m.Spec.Name)
		}
	}
	return nil
}

func (o *options) prepareGuest(ctx context.Context, rep *VMReport, p *progress) (*vm.Guest, error) {
	gopts := o.vm.guest
	if gopts.Log == nil {
		gopts.Log = o.log
	}
	g, err := vm.PrepareGuest(ctx, gopts)
	if err != nil {
		return nil, err
	}
	rep.Accel, rep.AccelReason = string(g.Accel.Accel), g.Accel.Reason
	p.line("VMs run under %s: %s", strings.ToUpper(string(g.Accel.Accel)), g.Accel.Reason)
	return g, nil
}

// nicsAttached reports whether every NIC's tap is in place.
func nicsAttached(id string, nics []vm.NIC) (bool, string, error) {
	for _, n := range nics {
		ns, err := netns.Open(n.Namespace)
		if err != nil {
			return false, fmt.Sprintf("namespace %q: %v", n.Namespace, err), nil
		}
		ok, why, err := vm.NICAttached(ns, n, tapMark(id))
		ns.Close()
		if err != nil || !ok {
			return false, why, err
		}
	}
	return true, "", nil
}

// ensureSupervisor starts the supervisor when it is needed and not
// running, restarts it when its configuration (DHCP and DNS servers)
// changed, stops it when it is not needed, and checks that every server
// serves.
func (o *options) ensureSupervisor(ctx context.Context, dir string, cfg *supervise.Config, need bool, rep *VMReport) error {
	st := supervise.Read(dir)
	alive := st.State == supervise.StateRunning || st.State == supervise.StateStale
	if !need {
		if alive || st.State == supervise.StateDead {
			if err := supervise.Stop(dir, 10*time.Second); err != nil {
				return err
			}
			rep.Supervisor = "stopped"
		}
		_ = os.Remove(filepath.Join(dir, supervise.ConfigFile))
		_ = os.Remove(filepath.Join(dir, supervise.HealthFile))
		return nil
	}
	if st.State == supervise.StateRunning && supervise.ConfigUnchanged(dir, cfg) && st.Health.ConfigHash == cfg.Hash() {
		rep.Supervisor, rep.SupervisorPID = "running", st.PID
	} else {
		what := "started"
		if alive {
			if err := supervise.Stop(dir, 10*time.Second); err != nil {
				return err
			}
			what = "restarted"
		}
		if _, err := supervise.WriteConfig(dir, cfg); err != nil {
			return err
		}
		argv, err := o.supervisorArgv()
		if err != nil {
			return err
		}
		pid, err := supervise.Start(ctx, dir, argv, 20*time.Second)
		if err != nil {
			return err
		}
		rep.Supervisor, rep.SupervisorPID = what, pid
		st = supervise.Read(dir)
	}
	var errs []error
	if h := st.Health; h != nil {
		for _, d := range h.DHCP {
			if !d.Listening {
				errs = append(errs, fmt.Errorf("dhcp server on %q in namespace %q does not serve: %s (see %s)", d.Interface, d.Namespace, d.Error, filepath.Join(dir, supervise.LogFile)))
			}
		}
		for _, d := range h.DNS {
			if !d.Listening {
				errs = append(errs, fmt.Errorf("dns server for %s on %v in namespace %q does not serve: %s (see %s)", d.Domain, d.Addresses, d.Namespace, d.Error, filepath.Join(dir, supervise.LogFile)))
			}
		}
	}
	return errors.Join(errs...)
}

// bootJob is one VM to (re)start.
type bootJob struct {
	m   *vm.Machine
	old *vm.Spec // the spec it runs (ran) with, if any
	// restart: the VM runs and is stopped first, for this reason.
	restart bool
	why     string
}

// boot (re)starts the jobs' VMs, at most parallel() at a time, and waits
// for the built-in guests to be ready.
func (o *options) boot(ctx context.Context, id string, g *vm.Guest, jobs []*bootJob, p *progress) error {
	names := make([]string, len(jobs))
	for i, j := range jobs {
		names[i] = j.m.Spec.Name
	}
	p.line("booting %d VM(s), %d at a time: %s", len(jobs), min(o.parallel(), len(jobs)), strings.Join(names, ", "))
	sem := make(chan struct{}, o.parallel())
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = o.bootOne(ctx, id, g, j, p)
			if errs[i] != nil {
				p.event(j.m.Spec.Name, "failed: %s", firstLineOf(errs[i].Error()))
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (o *options) bootOne(ctx context.Context, id string, g *vm.Guest, j *bootJob, p *progress) error {
	m, s := j.m, j.m.Spec
	if j.old != nil {
		old := &vm.Machine{Spec: *j.old, Dir: m.Dir, Log: o.log}
		if j.restart {
			p.event(s.Name, "%s: stopping it", j.why)
			if err := old.Stop(ctx, o.stopTimeout()); err != nil {
				return err
			}
		}
		// Taps the new spec does not use go.
		var stale []vm.NIC
		for _, n := range old.Spec.WithDefaults().NICs {
			if !slices.ContainsFunc(s.NICs, func(x vm.NIC) bool { return x.Namespace == n.Namespace && x.Tap == n.Tap }) {
				stale = append(stale, n)
			}
		}
		if err := detachTaps(id, stale); err != nil {
			return err
		}
	}
	for _, n := range s.NICs {
		ns, err := netns.Open(n.Namespace)
		if err != nil {
			return fmt.Errorf("vm %q: %w (is the network up?)", s.Name, err)
		}
		err = vm.AttachNICMarks(ns, n, tapMark(id), model.Mark(id, nil))
		ns.Close()
		if err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
	}
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.Dir, specFile), specJSON(s), 0o644); err != nil {
		return err
	}
	m.Guest = g
	start := time.Now()
	p.begin(s.Name)
	if err := m.Start(ctx); err != nil {
		p.end(s.Name)
		return err
	}
	if !s.BuiltIn() {
		p.end(s.Name)
		p.event(s.Name, "started (disk image: readiness is not awaited)")
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, o.readyTimeout())
	defer cancel()
	r, err := m.WaitReady(wctx)
	p.end(s.Name)
	if err != nil {
		return err
	}
	var addrs []string
	for _, n := range r.NICs {
		addrs = append(addrs, n.Iface+" "+n.Addr.String())
	}
	p.event(s.Name, "ready in %s (%s)", time.Since(start).Round(10*time.Millisecond), strings.Join(addrs, ", "))
	return nil
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// vmsDown runs before Down deletes the namespaces: it stops every VM of
// network id (ACPI, then kill after the stop timeout; the built-in guest
// releases its DHCP lease as it powers off), removes their taps, stops the
// supervisor, and removes the VMs' state directories and the lease files.
func vmsDown(ctx context.Context, o *options, id string) (*VMReport, error) {
	dir := o.netDir(id)
	names := recordedVMs(dir)
	st := supervise.Read(dir)
	_, cfgErr := os.Stat(filepath.Join(dir, supervise.ConfigFile))
	_, leaseErr := os.Stat(filepath.Join(dir, supervise.LeasesDir))
	if len(names) == 0 && st.State == supervise.StateNotRunning && cfgErr != nil && leaseErr != nil {
		return nil, nil
	}
	start := time.Now()
	store, err := o.lockNet(id)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	rep := newVMReport()
	p := newProgress(o.progressW())
	defer p.close()
	if err := o.stopVMs(ctx, id, dir, names, p, "down"); err != nil {
		return rep, err
	}
	rep.Stopped = names
	if st.State != supervise.StateNotRunning {
		if err := supervise.Stop(dir, 10*time.Second); err != nil {
			return rep, err
		}
		rep.Supervisor = "stopped"
	}
	var errs []error
	for _, f := range []string{supervise.VMsDir, supervise.LeasesDir, supervise.ConfigFile, supervise.HealthFile, supervise.PidFile} {
		if err := os.RemoveAll(filepath.Join(dir, f)); err != nil {
			errs = append(errs, err)
		}
	}
	rep.Duration = time.Since(start)
	if len(names) > 0 || rep.Supervisor != "" {
		p.line("%s", rep.Summary())
	}
	return rep, errors.Join(errs...)
}

// VMStatusReport is the state of a network's VMs, DHCP servers and
// supervisor (for `kvmnet status` and `kvmnet vm list`).
type VMStatusReport struct {
	Network    string           `json:"network"`
	Supervisor SupervisorStatus `json:"supervisor"`
	VMs        []VMState        `json:"vms"`
	DHCP       []DHCPStatus     `json:"dhcp"`
	// DNS are the name servers of the network's zone, as the supervisor
	// last reported them (not serving when it does not run); Names, the
	// zone they answer from (the topology's names and the leases of the
	// lease files, as the supervisor merges them).
	DNS   []supervise.DNSHealth `json:"dns,omitempty"`
	Names []ZoneName            `json:"names,omitempty"`
}

// ZoneName is a name of the network's zone.
type ZoneName struct {
	Name      string       `json:"name"` // fully qualified, "vm1.lab"
	Addresses []netip.Addr `json:"addresses"`
	Source    string       `json:"source"` // supervise.SourceTopology, SourceVMLease, SourceClient
}

// SupervisorStatus is the supervisor's health.
type SupervisorStatus struct {
	// State is running, stale, dead or "not running".
	State     string            `json:"state"`
	PID       int               `json:"pid,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	Started   time.Time         `json:"started,omitzero"`
	Heartbeat time.Time         `json:"heartbeat,omitzero"`
	Log       string            `json:"log"`
	Events    []supervise.Event `json:"events,omitempty"`
}

// VMState is one VM: what vm.Machine.Status observes, and where it is.
type VMState struct {
	vm.Status
	Namespace string   `json:"namespace"`
	MACs      []string `json:"macs"`
	// Declared is false for a VM that runs but is no longer in the
	// topology (the next up stops it).
	Declared bool   `json:"declared"`
	Dir      string `json:"dir"`
}

// DHCPStatus is one DHCP server and its leases.
type DHCPStatus struct {
	Namespace string       `json:"namespace"`
	Interface string       `json:"interface"`
	Subnet    string       `json:"subnet"`
	Pool      string       `json:"pool"`
	Listening bool         `json:"listening"`
	Error     string       `json:"error,omitempty"`
	Stats     *dhcp.Stats  `json:"stats,omitempty"`
	LeaseFile string       `json:"lease_file"`
	Leases    []dhcp.Lease `json:"leases"`
}

// VMStatus reports the VMs of t (declared ones and any other with a state
// directory), its DHCP servers with their leases, and the supervisor. It
// only reads: the VM state directories, QMP, /proc and the lease files.
func VMStatus(ctx context.Context, t *topology.Topology, opts ...Option) (*VMStatusReport, error) {
	o := build(opts)
	dir := o.netDir(t.ID())
	sup := supervise.Read(dir)
	r := &VMStatusReport{Network: t.ID(), VMs: []VMState{}, DHCP: []DHCPStatus{},
		Supervisor: SupervisorStatus{State: sup.State, PID: sup.PID, Reason: sup.Reason, Log: filepath.Join(dir, supervise.LogFile)}}
	if h := sup.Health; h != nil {
		r.Supervisor.Started, r.Supervisor.Heartbeat, r.Supervisor.Events = h.Started, h.Heartbeat, h.Events
	}
	seen := map[string]bool{}
	add := func(s vm.Spec, declared bool) error {
		m := &vm.Machine{Spec: s, Dir: vmDir(dir, s.Name)}
		st, err := m.Status(ctx)
		if err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
		v := VMState{Status: st, Declared: declared, Dir: m.Dir, MACs: []string{}}
		for _, n := range s.WithDefaults().NICs {
			v.Namespace = cmpOrS(v.Namespace, n.Namespace)
			v.MACs = append(v.MACs, n.MAC)
		}
		r.VMs = append(r.VMs, v)
		seen[s.Name] = true
		return nil
	}
	for _, s := range vmSpecs(t) {
		if err := add(s, true); err != nil {
			return nil, err
		}
	}
	for _, name := range recordedVMs(dir) {
		if !seen[name] {
			if err := add(o.machineAt(vmDir(dir, name), name).Spec, false); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range dhcpConfigs(t, dir) {
		c := s.Config
		d := DHCPStatus{Namespace: s.Namespace, Interface: c.Interface, Subnet: c.Subnet.String(),
			Pool: c.PoolStart.String() + "-" + c.PoolEnd.String(), LeaseFile: c.LeaseFile, Leases: []dhcp.Lease{}}
		if h := sup.Health; h != nil && sup.State == supervise.StateRunning {
			for _, x := range h.DHCP {
				if x.Namespace == s.Namespace && x.Interface == c.Interface {
					d.Listening, d.Error = x.Listening, x.Error
					stats := x.Stats
					d.Stats = &stats
				}
			}
		}
		ls, err := dhcp.ReadLeases(c.LeaseFile)
		if err != nil {
			d.Error = strings.TrimSpace(d.Error + " " + err.Error())
		}
		if ls != nil {
			d.Leases = ls
		}
		r.DHCP = append(r.DHCP, d)
	}
	cfgs := dnsConfigs(t)
	if len(cfgs) > 0 {
		var leases []dhcp.Lease
		for _, d := range r.DHCP {
			leases = append(leases, d.Leases...)
		}
		names, source := supervise.Zone(cfgs[0].Names, cfgs[0].VMs, leases)
		for _, n := range slices.Sorted(maps.Keys(names)) {
			r.Names = append(r.Names, ZoneName{Name: n + "." + t.DNSDomain(), Addresses: names[n], Source: source[n]})
		}
	}
	for _, s := range cfgs {
		d := supervise.DNSHealth{Namespace: s.Namespace, Domain: s.Config.Domain, Addresses: s.Config.Listen}
		if h := sup.Health; h != nil && sup.State == supervise.StateRunning {
			for _, x := range h.DNS {
				if x.Namespace == s.Namespace && x.Domain == s.Config.Domain {
					d = x
				}
			}
		}
		r.DNS = append(r.DNS, d)
	}
	return r, nil
}

func cmpOrS(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// declaredVM returns the spec of t's VM name, or an error naming the VMs.
func declaredVM(t *topology.Topology, name string) (vm.Spec, error) {
	var names []string
	for _, s := range vmSpecs(t) {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	if len(names) == 0 {
		return vm.Spec{}, fmt.Errorf("no vm %q: the topology declares no VMs", name)
	}
	sort.Strings(names)
	return vm.Spec{}, fmt.Errorf("no vm %q in the topology (it declares %s)", name, strings.Join(names, ", "))
}

// VMStart boots VM name of t (the network must be up), whatever state it
// is in unless it runs: this is how a crashed or stopped VM boots again.
// It makes sure the supervisor runs (for DHCP) and waits for a built-in
// guest to be ready.
func VMStart(ctx context.Context, t *topology.Topology, name string, opts ...Option) error {
	o := build(opts)
	s, err := declaredVM(t, name)
	if err != nil {
		return err
	}
	id := t.ID()
	dir := o.netDir(id)
	for _, n := range s.NICs {
		if !netns.Exists(n.Namespace) {
			return fmt.Errorf("vm %q: namespace %q does not exist: run kvmnet up first", name, n.Namespace)
		}
	}
	store, err := o.lockNet(id)
	if err != nil {
		return err
	}
	defer store.Close()
	p := newProgress(o.progressW())
	defer p.close()
	rep := newVMReport()
	if err := o.ensureSupervisor(ctx, dir, supervisorConfig(t, dir), true, rep); err != nil {
		return err
	}
	m := &vm.Machine{Spec: s, Dir: vmDir(dir, name), Log: o.log}
	if st, err := m.Status(ctx); err == nil && st.State == vm.StateRunning {
		return fmt.Errorf("vm %q: %w", name, vm.ErrRunning)
	}
	_, old := recordedSpec(m.Dir)
	g, err := o.prepareGuest(ctx, rep, p)
	if err != nil {
		return err
	}
	return o.bootOne(ctx, id, g, &bootJob{m: m, old: old}, p)
}

// VMStop shuts VM name of t down (ACPI, then kill after the stop timeout).
// It stays stopped: up leaves it so, `kvmnet vm start` boots it again.
func VMStop(ctx context.Context, t *topology.Topology, name string, opts ...Option) error {
	o := build(opts)
	dir := o.netDir(t.ID())
	m := o.machineAt(vmDir(dir, name), name)
	if _, err := os.Stat(m.Dir); err != nil {
		if _, derr := declaredVM(t, name); derr != nil {
			return derr
		}
		return nil // never started
	}
	store, err := o.lockNet(t.ID())
	if err != nil {
		return err
	}
	defer store.Close()
	return m.Stop(ctx, o.stopTimeout())
}

// VMRestart stops VM name (if it runs) and boots it again.
func VMRestart(ctx context.Context, t *topology.Topology, name string, opts ...Option) error {
	if err := VMStop(ctx, t, name, opts...); err != nil {
		return err
	}
	return VMStart(ctx, t, name, opts...)
}

// VMDir returns the state directory of VM name of t (its console socket
// and serial log are there: vm.ConsoleSock, vm.SerialLog).
func VMDir(t *topology.Topology, name string, opts ...Option) (string, error) {
	o := build(opts)
	dir := vmDir(o.netDir(t.ID()), name)
	if _, err := os.Stat(dir); err != nil {
		if _, derr := declaredVM(t, name); derr != nil {
			return "", derr
		}
		return "", fmt.Errorf("vm %q has not been started (no %s)", name, dir)
	}
	return dir, nil
}

// progress prints VM progress lines; on a terminal it also keeps a live
// line with the VMs being booted and their elapsed time.
type progress struct {
	w       io.Writer
	tty     bool
	mu      sync.Mutex
	booting map[string]time.Time
	shown   bool
	done    chan struct{}
	wg      sync.WaitGroup
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, tty: isTerminal(w), booting: map[string]time.Time{}, done: make(chan struct{})}
	if p.tty {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-p.done:
					return
				case <-tick.C:
					p.mu.Lock()
					p.render()
					p.mu.Unlock()
				}
			}
		}()
	}
	return p
}

// render redraws the live line (terminal only; p.mu held).
func (p *progress) render() {
	if !p.tty {
		return
	}
	if len(p.booting) == 0 {
		if p.shown {
			fmt.Fprint(p.w, "\r\033[K")
			p.shown = false
		}
		return
	}
	names := make([]string, 0, len(p.booting))
	for n := range p.booting {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.1fs", n, time.Since(p.booting[n]).Seconds())
	}
	fmt.Fprintf(p.w, "\r\033[Kbooting: %s", strings.Join(parts, ", "))
	p.shown = true
}

func (p *progress) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
	fmt.Fprintf(p.w, format+"\n", args...)
	p.render()
}

func (p *progress) event(vmName, format string, args ...any) {
	p.line("vm %s: "+format, append([]any{vmName}, args...)...)
}

func (p *progress) begin(name string) {
	p.mu.Lock()
	p.booting[name] = time.Now()
	p.mu.Unlock()
	p.event(name, "starting")
}

func (p *progress) end(name string) {
	p.mu.Lock()
	delete(p.booting, name)
	p.mu.Unlock()
}

func (p *progress) close() {
	close(p.done)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// ForDiagnose turns the report into what diagnose's DHCP lease check reads
// (diagnose cannot import lab).
func (r *VMStatusReport) ForDiagnose() *diagnose.VMs {
	out := &diagnose.VMs{Supervisor: r.Supervisor.State, SupervisorReason: r.Supervisor.Reason, SupervisorLog: r.Supervisor.Log,
		VMs: []diagnose.VM{}, DHCP: []diagnose.DHCPServer{}}
	for _, v := range r.VMs {
		out.VMs = append(out.VMs, diagnose.VM{Name: v.Name, Status: v.Status})
	}
	for _, s := range r.DHCP {
		out.DHCP = append(out.DHCP, diagnose.DHCPServer{Namespace: s.Namespace, Interface: s.Interface, Listening: s.Listening,
			Error: s.Error, Stats: s.Stats, LeaseFile: s.LeaseFile, Leases: s.Leases})
	}
	out.DNS = r.DNS
	return out
}
