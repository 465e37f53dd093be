// Package supervise is the per-network background process that runs what
// must outlive the kvmnet command that built the network: the DHCP servers
// (one per segment, each serving in the gateway's namespace), the DNS
// servers of the network's zone, and a watch on the network's VMs.
//
// `kvmnet up` starts it (`kvmnet supervise --network ID`, in a session of
// its own) when the topology has VMs, DHCP or DNS servers, restarts it when
// their configuration changes, and `kvmnet down` stops it. Everything it
// shares lives in the network's state directory:
//
//	supervise.json         the configuration up wrote (DHCP and DNS servers)
//	supervise.pid          its pid, while it runs
//	supervise.health.json  its heartbeat, each DHCP and DNS server's state
//	                       and counters, each VM's last state and the crashes
//	                       seen
//	supervise.log          its log (stdout and stderr)
//	dhcp/*.json            the lease files (dhcp.ReadLeases)
//
// VMs are QEMU processes of their own (they daemonize): the supervisor only
// watches them, every Interval, by reading each VM's state directory under
// vms/ (vm.Machine.Status). A VM that crashes is logged and reported as
// crashed; it is never restarted.
package supervise

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/vm"
)

// Files in the network's state directory.
const (
	ConfigFile = "supervise.json"
	PidFile    = "supervise.pid"
	HealthFile = "supervise.health.json"
	LogFile    = "supervise.log"
	// VMsDir holds one state directory per VM (vm.Machine.Dir).
	VMsDir = "vms"
	// LeasesDir holds the DHCP lease files.
	LeasesDir = "dhcp"
)

// DefaultInterval is how often the supervisor looks at the VMs and writes
// its heartbeat.
const DefaultInterval = time.Second

// Config is what the supervisor runs.
type Config struct {
	Network string       `json:"network"`
	DHCP    []DHCPServer `json:"dhcp,omitempty"`
	DNS     []DNSServer  `json:"dns,omitempty"`
	// Interval between VM checks and heartbeats (default DefaultInterval).
	Interval time.Duration `json:"interval_ns,omitempty"`
}

// DHCPServer is one DHCP server and the namespace it serves in.
type DHCPServer struct {
	// Namespace is the kernel name of the namespace.
	Namespace string      `json:"namespace"`
	Config    dhcp.Config `json:"config"`
}

// Name is "namespace/interface".
func (s *DHCPServer) Name() string { return s.Namespace + "/" + s.Config.Interface }

// DNSServer is one name server of the network's zone and the namespace it
// answers in.
type DNSServer struct {
	// Namespace is the kernel name of the namespace.
	Namespace string     `json:"namespace"`
	Config    dns.Config `json:"config"`
	// Names are the zone's names the topology gives (namespaces, VMs with
	// static addresses, declared hosts); VMs maps the MAC of a VM's NIC
	// to the VM's name, which answers with that NIC's DHCP lease.
	Names map[string][]netip.Addr `json:"names"`
	VMs   map[string]string       `json:"vms,omitempty"`
}

// Name is "namespace/domain".
func (s *DNSServer) Name() string { return s.Namespace + "/" + s.Config.Domain }

// LeaseFile is where the lease file of a server on iface in namespace ns
// lives, under the state directory dir.
func LeaseFile(dir, ns, iface string) string {
	return filepath.Join(dir, LeasesDir, ns+"_"+iface+".json")
}

func (c *Config) encode() []byte {
	b, _ := json.MarshalIndent(c, "", "  ")
	return append(b, '\n')
}

// Hash identifies the configuration.
func (c *Config) Hash() string {
	sum := sha256.Sum256(c.encode())
	return hex.EncodeToString(sum[:8])
}

// WriteConfig writes c to dir unless the file already says exactly that;
// it reports whether it wrote.
func WriteConfig(dir string, c *Config) (bool, error) {
	b := c.encode()
	path := filepath.Join(dir, ConfigFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return false, nil
	}
	if err := writeAtomic(path, b); err != nil {
		return false, fmt.Errorf("supervisor configuration: %w", err)
	}
	return true, nil
}

// ReadConfig reads the configuration in dir.
func ReadConfig(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("supervisor configuration: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("supervisor configuration %q: %w", filepath.Join(dir, ConfigFile), err)
	}
	return &c, nil
}

// ConfigUnchanged reports whether dir's configuration file says exactly c.
func ConfigUnchanged(dir string, c *Config) bool {
	old, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	return err == nil && bytes.Equal(old, c.encode())
}

func writeAtomic(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Health is what the supervisor reports about itself (HealthFile), written
// at every heartbeat.
type Health struct {
	PID        int          `json:"pid"`
	Network    string       `json:"network"`
	Started    time.Time    `json:"started"`
	Heartbeat  time.Time    `json:"heartbeat"`
	ConfigHash string       `json:"config_hash"`
	Interval   Duration     `json:"interval"`
	DHCP       []DHCPHealth `json:"dhcp"`
	DNS        []DNSHealth  `json:"dns,omitempty"`
	VMs        []VMHealth   `json:"vms"`
	// Events are the last VM state changes the supervisor saw (newest last).
	Events []Event `json:"events,omitempty"`
}

// Duration is a time.Duration that reads as text in JSON.
type Duration time.Duration

// MarshalJSON writes "1s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "1s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// DHCPHealth is one DHCP server's state.
type DHCPHealth struct {
	Namespace string     `json:"namespace"`
	Interface string     `json:"interface"`
	Listening bool       `json:"listening"`
	Error     string     `json:"error,omitempty"`
	Stats     dhcp.Stats `json:"stats"`
	Leases    int        `json:"leases"`
}

// DNSHealth is one DNS server's state.
type DNSHealth struct {
	Namespace string       `json:"namespace"`
	Domain    string       `json:"domain"`
	Addresses []netip.Addr `json:"addresses"`
	Listening bool         `json:"listening"`
	Error     string       `json:"error,omitempty"`
	Stats     dns.Stats    `json:"stats"`
}

// VMHealth is a VM's state as the supervisor last saw it.
type VMHealth struct {
	Name   string    `json:"name"`
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
}

// Event is one VM state change.
type Event struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
}

// Supervisor states as readers see them.
const (
	StateRunning    = "running"     // alive, heartbeat recent
	StateStale      = "stale"       // alive, but its heartbeat is late
	StateDead       = "dead"        // its pidfile names a process that is gone
	StateNotRunning = "not running" // no pidfile
)

// Status is what Read found.
type Status struct {
	State  string  `json:"state"`
	PID    int     `json:"pid,omitempty"`
	Reason string  `json:"reason,omitempty"`
	Health *Health `json:"health,omitempty"`
}

// Read reports the supervisor of the network whose state directory is
// dir: whether it runs (its pid is alive and is a supervisor of this
// network), and its last health report.
func Read(dir string) Status {
	var st Status
	if b, err := os.ReadFile(filepath.Join(dir, HealthFile)); err == nil {
		var h Health
		if json.Unmarshal(b, &h) == nil {
			st.Health = &h
		}
	}
	pid := readPid(dir)
	switch {
	case pid == 0:
		st.State = StateNotRunning
		return st
	case !Alive(dir, pid):
		st.State, st.PID = StateDead, pid
		st.Reason = "its process is gone (see " + filepath.Join(dir, LogFile) + ")"
		return st
	}
	st.State, st.PID = StateRunning, pid
	if h := st.Health; h == nil || h.PID != pid {
		st.State, st.Reason = StateStale, "no health report yet"
	} else if late := time.Since(h.Heartbeat); late > 3*max(time.Duration(h.Interval), time.Second)+2*time.Second {
		st.State, st.Reason = StateStale, fmt.Sprintf("last heartbeat %s ago", late.Round(time.Second))
	}
	return st
}

func readPid(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, PidFile))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Alive reports whether pid is a live supervisor of the network whose state
// directory is dir: its command line says "supervise" and names the
// network, so a reused pid does not count.
func Alive(dir string, pid int) bool {
	return vm.ProcessAlive(pid, []byte("\x00supervise\x00"), []byte("\x00--network\x00"+filepath.Base(dir)+"\x00"))
}

// Args are the arguments of the supervise command for the network whose
// state directory is dir (base/network), after the command that runs it.
func Args(dir string) []string {
	return []string{"supervise", "--network", filepath.Base(dir), "--state-dir", filepath.Dir(dir)}
}

// Start starts the supervisor of the network whose state directory is dir
// by running argv (e.g. ["/usr/local/bin/kvmnet"]) followed by Args(dir),
// in a session of its own with its output in LogFile, and waits until it
// reports health (or exits). It returns the supervisor's pid.
func Start(ctx context.Context, dir string, argv []string, timeout time.Duration) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("start the supervisor: no command")
	}
	if pid := readPid(dir); Alive(dir, pid) {
		return pid, fmt.Errorf("start the supervisor: it runs already (pid %d)", pid)
	}
	_ = os.Remove(filepath.Join(dir, PidFile))
	logf, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("start the supervisor: %w", err)
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	args := append(append([]string{}, argv[1:]...), Args(dir)...)
	cmd := exec.Command(argv[0], args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start the supervisor %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	// Reap it when it exits (it is our child until we exit ourselves).
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return 0, fmt.Errorf("the supervisor exited at once (%v):\n%s", err, tail(filepath.Join(dir, LogFile), 15))
		case <-deadline.C:
			_ = unix.Kill(pid, unix.SIGKILL)
			return 0, fmt.Errorf("the supervisor did not report health within %s:\n%s", timeout, tail(filepath.Join(dir, LogFile), 15))
		case <-ctx.Done():
			_ = unix.Kill(pid, unix.SIGKILL)
			return 0, ctx.Err()
		case <-tick.C:
			if st := Read(dir); st.PID == pid && st.Health != nil && st.Health.PID == pid {
				return pid, nil
			}
		}
	}
}

// Stop stops the supervisor of dir: SIGTERM (it closes its DHCP servers,
// leaving their lease files, and removes its pidfile), then SIGKILL if it
// is still there after timeout. A supervisor that is not running is fine.
func Stop(dir string, timeout time.Duration) error {
	pid := readPid(dir)
	defer os.Remove(filepath.Join(dir, PidFile))
	if !Alive(dir, pid) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop the supervisor (pid %d): %w", pid, err)
	}
	if waitGone(dir, pid, timeout) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill the supervisor (pid %d): %w", pid, err)
	}
	if !waitGone(dir, pid, 5*time.Second) {
		return fmt.Errorf("the supervisor (pid %d) survived SIGKILL", pid)
	}
	return nil
}

// waitGone waits for pid to exit (a pidfd becomes readable), or for it to
// stop being a supervisor of dir.
func waitGone(dir string, pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return !Alive(dir, pid)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return !Alive(dir, pid)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(min(left, 100*time.Millisecond).Milliseconds())+1)
		if (err == nil && n > 0) || !Alive(dir, pid) {
			return true
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return !Alive(dir, pid)
		}
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Tail returns the last n lines of the supervisor's log in dir.
func Tail(dir string, n int) string { return tail(filepath.Join(dir, LogFile), n) }

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}
