package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/topology"
)

// maxEvents bounds the VM events kept in the health report.
const maxEvents = 50

// Serve is the body of `kvmnet supervise`: it runs the supervisor of the
// network whose state directory is dir until SIGTERM or SIGINT, logging to
// w, and returns the process exit code.
func Serve(dir string, w io.Writer) int {
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	if err := Run(ctx, dir, log); err != nil {
		log.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}

// server is one DHCP server the supervisor runs (or retries).
type server struct {
	cfg DHCPServer
	srv *dhcp.Server
	err error
	// mu guards srv against the DNS servers' goroutines, which read the
	// leases (serving); the supervisor's loop, which alone writes srv,
	// reads it without.
	mu sync.Mutex
}

// serving returns the running DHCP server, or nil.
func (s *server) serving() *dhcp.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Run runs the supervisor of the network whose state directory is dir: it
// writes its pidfile, starts the DHCP servers of the configuration in their
// namespaces (retrying, at every interval, one that could not start), and
// watches the VMs under dir/vms, writing a heartbeat (HealthFile) at every
// interval, until ctx ends. Then it closes the servers (their lease files
// stay) and removes its pidfile.
func Run(ctx context.Context, dir string, log *slog.Logger) error {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return err
	}
	if pid := readPid(dir); pid != os.Getpid() && Alive(dir, pid) {
		return fmt.Errorf("a supervisor of network %q runs already (pid %d)", cfg.Network, pid)
	}
	if err := writeAtomic(filepath.Join(dir, PidFile), []byte(strconv.Itoa(os.Getpid())+"\n")); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	defer func() {
		if readPid(dir) == os.Getpid() {
			_ = os.Remove(filepath.Join(dir, PidFile))
		}
	}()
	interval := cfg.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	h := &Health{PID: os.Getpid(), Network: cfg.Network, Started: time.Now(), ConfigHash: cfg.Hash(), Interval: Duration(interval)}
	log.Info("supervisor started", "network", cfg.Network, "pid", h.PID, "dhcp_servers", len(cfg.DHCP), "interval", interval)

	servers := make([]*server, len(cfg.DHCP))
	for i, c := range cfg.DHCP {
		servers[i] = &server{cfg: c}
	}
	defer func() {
		for _, s := range servers {
			if s.srv != nil {
				_ = s.srv.Close()
				log.Info("dhcp server stopped", "server", s.cfg.Name())
			}
		}
	}()
	names := make([]*nameServer, len(cfg.DNS))
	for i, c := range cfg.DNS {
		names[i] = &nameServer{cfg: c, dhcp: servers}
	}
	defer func() {
		for _, n := range names {
			if n.srv != nil {
				_ = n.srv.Close()
				log.Info("dns server stopped", "server", n.cfg.Name())
			}
		}
	}()
	vms := map[string]*VMHealth{}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		for _, s := range servers {
			if s.srv == nil {
				s.start(dir, log)
			}
		}
		for _, n := range names {
			if n.srv == nil {
				n.start(log)
			}
		}
		watch(ctx, dir, vms, h, log)
		h.Heartbeat = time.Now()
		h.DHCP = h.DHCP[:0]
		for _, s := range servers {
			dh := DHCPHealth{Namespace: s.cfg.Namespace, Interface: s.cfg.Config.Interface, Listening: s.srv != nil}
			if s.err != nil {
				dh.Error = s.err.Error()
			}
			if s.srv != nil {
				dh.Stats, dh.Leases = s.srv.Stats(), len(s.srv.Leases())
			}
			h.DHCP = append(h.DHCP, dh)
		}
		h.DNS = h.DNS[:0]
		for _, n := range names {
			nh := DNSHealth{Namespace: n.cfg.Namespace, Domain: n.cfg.Config.Domain, Addresses: n.cfg.Config.Listen, Listening: n.srv != nil}
			if n.err != nil {
				nh.Error = n.err.Error()
			}
			if n.srv != nil {
				nh.Stats = n.srv.Stats()
			}
			h.DNS = append(h.DNS, nh)
		}
		if err := writeHealth(dir, h); err != nil {
			log.Warn("health report", "err", err)
		}
		select {
		case <-ctx.Done():
			log.Info("supervisor stopping", "why", context.Cause(ctx))
			return nil
		case <-tick.C:
		}
	}
}

// start starts s's DHCP server, remembering why it could not.
func (s *server) start(dir string, log *slog.Logger) {
	c := s.cfg.Config
	if c.LeaseFile == "" {
		c.LeaseFile = LeaseFile(dir, s.cfg.Namespace, c.Interface)
	}
	c.Log = log
	ns, err := netns.Open(s.cfg.Namespace)
	if err != nil {
		s.fail(err, log)
		return
	}
	defer ns.Close()
	srv, err := dhcp.New(c)
	if err != nil {
		s.fail(err, log)
		return
	}
	if err := srv.Start(ns); err != nil {
		s.fail(err, log)
		return
	}
	s.mu.Lock()
	s.srv, s.err = srv, nil
	s.mu.Unlock()
	log.Info("dhcp server serving", "server", s.cfg.Name(), "subnet", c.Subnet, "pool", fmt.Sprintf("%v-%v", c.PoolStart, c.PoolEnd), "leases", c.LeaseFile)
}

func (s *server) fail(err error, log *slog.Logger) {
	if s.err == nil || s.err.Error() != err.Error() {
		log.Error("dhcp server cannot serve; retrying", "server", s.cfg.Name(), "err", err)
	}
	s.err = err
}

// nameServer is one DNS server the supervisor runs (or retries).
type nameServer struct {
	cfg  DNSServer
	dhcp []*server // the DHCP servers, whose leases name the VMs
	srv  *dns.Server
	err  error
}

// names is the zone at the time of a question (Zone, over the leases of
// the supervisor's running DHCP servers).
func (n *nameServer) names() map[string][]netip.Addr {
	var leases []dhcp.Lease
	for _, d := range n.dhcp {
		if srv := d.serving(); srv != nil {
			leases = append(leases, srv.Leases()...)
		}
	}
	names, _ := Zone(n.cfg.Names, n.cfg.VMs, leases)
	return names
}

// Sources of a zone name (Zone).
const (
	SourceTopology = "topology"    // a namespace, a VM's static address, a declared host
	SourceVMLease  = "vm lease"    // a VM, by its NIC's DHCP lease
	SourceClient   = "dhcp client" // another DHCP client, by the host name it sent
)

// Zone is a name server's zone: the static names; each VM whose NIC (by
// MAC, vms) holds a bound lease, with that lease's address; and, as dnsmasq
// does, the host name any other DHCP client sent with a bound lease (a name
// the topology or a VM already gives is never taken over). source says
// where each name comes from.
func Zone(static map[string][]netip.Addr, vms map[string]string, leases []dhcp.Lease) (names map[string][]netip.Addr, source map[string]string) {
	names = make(map[string][]netip.Addr, len(static)+len(vms))
	source = make(map[string]string, len(names))
	for k, v := range static {
		names[k], source[k] = v, SourceTopology
	}
	var clients []dhcp.Lease
	for _, l := range leases {
		if l.State != dhcp.StateBound {
			continue
		}
		if vm, ok := vms[strings.ToLower(l.MAC)]; ok {
			if !slices.Contains(names[vm], l.IP) {
				names[vm] = append(slices.Clone(names[vm]), l.IP)
			}
			if source[vm] == "" || len(static[vm]) == 0 {
				source[vm] = SourceVMLease
			}
			continue
		}
		clients = append(clients, l)
	}
	for _, l := range clients {
		h := strings.ToLower(l.Hostname)
		if _, taken := names[h]; !taken && topology.IsDNSLabel(h) {
			names[h], source[h] = []netip.Addr{l.IP}, SourceClient
		}
	}
	return names, source
}

// start starts the DNS server, remembering why it could not.
func (n *nameServer) start(log *slog.Logger) {
	ns, err := netns.Open(n.cfg.Namespace)
	if err == nil {
		defer ns.Close()
		var srv *dns.Server
		if srv, err = dns.New(n.cfg.Config, n.names, log); err == nil {
			if err = srv.Start(ns); err == nil {
				n.srv, n.err = srv, nil
				log.Info("dns server serving", "server", n.cfg.Name(), "addresses", n.cfg.Config.Listen, "names", len(n.cfg.Names), "vms", len(n.cfg.VMs))
				return
			}
		}
	}
	if n.err == nil || n.err.Error() != err.Error() {
		log.Error("dns server cannot serve; retrying", "server", n.cfg.Name(), "err", err)
	}
	n.err = err
}

// watch reads the state of every VM under dir/vms and records changes. A
// crash is logged at Error and kept as crashed: the supervisor never
// restarts a VM.
func watch(ctx context.Context, dir string, seen map[string]*VMHealth, h *Health, log *slog.Logger) {
	ents, err := os.ReadDir(filepath.Join(dir, VMsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("list VMs", "err", err)
	}
	present := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		present[name] = true
		m := &vm.Machine{Spec: vm.Spec{Name: name}, Dir: filepath.Join(dir, VMsDir, name)}
		st, err := m.Status(ctx)
		if err != nil {
			continue
		}
		prev := seen[name]
		if prev != nil && prev.State == st.State {
			continue
		}
		now := time.Now()
		seen[name] = &VMHealth{Name: name, State: st.State, Reason: st.Reason, Since: now}
		switch {
		case st.State == vm.StateCrashed:
			log.Error("vm crashed; not restarting it (kvmnet vm start "+name+" boots it again)", "vm", name, "reason", st.Reason)
		case prev == nil:
			log.Info("watching vm", "vm", name, "state", st.State)
		default:
			log.Info("vm state changed", "vm", name, "from", prev.State, "to", st.State, "reason", st.Reason)
		}
		if prev != nil || st.State == vm.StateCrashed {
			h.Events = append(h.Events, Event{Time: now, VM: name, State: st.State, Reason: st.Reason})
			if len(h.Events) > maxEvents {
				h.Events = h.Events[len(h.Events)-maxEvents:]
			}
		}
	}
	for name := range seen {
		if !present[name] {
			delete(seen, name)
		}
	}
	h.VMs = h.VMs[:0]
	for _, v := range seen {
		h.VMs = append(h.VMs, *v)
	}
	sort.Slice(h.VMs, func(i, j int) bool { return h.VMs[i].Name < h.VMs[j].Name })
}

func writeHealth(dir string, h *Health) error {
	b, err := jsonIndent(h)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, HealthFile), b)
}
