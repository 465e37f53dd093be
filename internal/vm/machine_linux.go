package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/guest"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/vm/bootcfg"
)

// VM states.
const (
	StateRunning = "running"
	StateStopped = "stopped"
	StateCrashed = "crashed"
)

// Sentinel errors.
var (
	ErrRunning  = errors.New("VM is already running")
	ErrNotReady = errors.New("VM did not become ready")
)

// Machine is one VM and its state directory. Every method works from any
// process: the state lives in Dir (pidfile, QMP socket, serial log,
// state.json), not in the Machine value.
type Machine struct {
	Spec Spec
	// Dir is the VM's state directory, e.g. /var/lib/kvmnet/<network>/vms/<name>.
	// Keep it short: unix socket paths are limited to 107 bytes.
	Dir string
	// Guest is the built-in guest (kernel, initramfs, accelerator); for an
	// image, only its Accel is used.
	Guest *Guest
	// QEMU is the binary; default "qemu-system-x86_64".
	QEMU string
	Log  *slog.Logger
}

// record is state.json: what Start did, and whether a stop was asked for.
type record struct {
	Name          string    `json:"name"`
	PID           int       `json:"pid"`
	Started       time.Time `json:"started"`
	Accel         string    `json:"accel"`
	Args          []string  `json:"args"`
	StopRequested bool      `json:"stop_requested"`
	Stopped       time.Time `json:"stopped,omitzero"`
}

// Status is what Status observed.
type Status struct {
	Name  string `json:"name"`
	State string `json:"state"` // StateRunning, StateStopped or StateCrashed
	// Reason explains stopped and crashed states.
	Reason string `json:"reason,omitempty"`
	// QEMU is QMP's run state when QEMU answered ("running", "shutdown",
	// "guest-panicked", ...).
	QEMU    string    `json:"qemu,omitempty"`
	PID     int       `json:"pid,omitempty"`
	Accel   string    `json:"accel,omitempty"`
	Started time.Time `json:"started,omitzero"`
	RSSKiB  int       `json:"rss_kib,omitempty"`
	// Addresses from the built-in guest's readiness line (this boot).
	Addresses []bootcfg.ReadyNIC `json:"addresses,omitempty"`
}

func (m *Machine) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

func (m *Machine) path(name string) string { return filepath.Join(m.Dir, name) }

func readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &r, nil
}

func writeRecord(dir string, r *record) error {
	b, _ := json.MarshalIndent(r, "", "  ")
	tmp := filepath.Join(dir, "."+StateFile)
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, StateFile))
}

// pidAlive reports whether pid is a live (not zombie) QEMU of this state
// directory: its command line names our pidfile, so a reused pid does not
// count.
func pidAlive(dir string, pid int) bool {
	return ProcessAlive(pid, []byte(filepath.Join(dir, PidFile)))
}

// ProcessAlive reports whether pid is a live process (not a zombie) whose
// command line (NUL-separated) contains every one of want: a reused pid of
// some other program does not count.
func ProcessAlive(pid int, want ...[]byte) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
		return false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, w := range want {
		if !bytes.Contains(cmd, w) {
			return false
		}
	}
	return true
}

// PID returns the VM's QEMU process id, or 0 when it is not running.
func (m *Machine) PID() int {
	r, err := readRecord(m.Dir)
	if err != nil || !pidAlive(m.Dir, r.PID) {
		return 0
	}
	return r.PID
}

// Start boots the VM in the background and returns once QEMU runs (not
// once the guest is ready: see WaitReady). The taps must exist
// (AttachNIC). QEMU is started inside the first NIC's namespace, with the
// taps opened there and passed as file descriptors; it daemonizes, so it
// outlives the caller. A VM that runs already is ErrRunning; a crashed or
// stopped VM is started afresh (this is the only way a VM restarts).
func (m *Machine) Start(ctx context.Context) error {
	s := m.Spec.WithDefaults()
	if !filepath.IsAbs(m.Dir) {
		return fmt.Errorf("vm %q: state directory %q is not absolute", s.Name, m.Dir)
	}
	if len(m.path(ConsoleSock)) > 107 {
		return fmt.Errorf("vm %q: state directory %q is too long for a unix socket path", s.Name, m.Dir)
	}
	if m.PID() != 0 {
		// QEMU is alive: refuse if the guest runs; a guest that powered
		// itself off or panicked (QEMU kept alive by -no-shutdown or
		// paused by pvpanic) is cleared away and booted afresh.
		if st, err := m.Status(ctx); err != nil || st.State == StateRunning {
			return fmt.Errorf("vm %q: %w", s.Name, ErrRunning)
		}
		if err := m.Kill(); err != nil {
			return err
		}
	}
	if m.Guest == nil {
		return fmt.Errorf("vm %q: no guest (PrepareGuest)", s.Name)
	}
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return fmt.Errorf("vm %q: %w", s.Name, err)
	}
	// A fresh boot: the previous boot's console stays as serial.log.1 (the
	// evidence of a crash), sockets and pidfile go.
	_ = os.Rename(m.path(SerialLog), m.path(SerialLog)+".1")
	for _, f := range []string{PidFile, QMPSocket, ConsoleSock} {
		_ = os.Remove(m.path(f))
	}
	l := Launch{Dir: m.Dir, Accel: m.Guest.Accel.Accel, Kernel: m.Guest.Kernel, Initrd: m.Guest.Initrd}
	if l.Accel == "" || l.Accel == guest.AccelAuto {
		l.Accel = guest.AccelTCG
	}
	if !s.BuiltIn() && s.Boot.CloudInit != nil {
		l.Seed = m.path(SeedFile)
		if err := WriteSeed(l.Seed, s); err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
	}
	if _, err := os.Stat("/dev/vhost-net"); err == nil {
		l.Vhost = true
	}
	var taps []*os.File
	defer func() {
		for _, f := range taps {
			f.Close()
		}
	}()
	var first *netns.NS
	for i, n := range s.NICs {
		ns, err := netns.Open(n.Namespace)
		if err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
		f, err := OpenTap(ns, n.Tap)
		if i == 0 {
			first = ns
			defer first.Close()
		} else {
			ns.Close()
		}
		if err != nil {
			return fmt.Errorf("vm %q: %w", s.Name, err)
		}
		taps = append(taps, f)
		l.TapFDs = append(l.TapFDs, 3+i)
	}
	args := Args(s, l)
	qemu := m.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	stderr, err := os.Create(m.path(StderrFile))
	if err != nil {
		return fmt.Errorf("vm %q: %w", s.Name, err)
	}
	defer stderr.Close()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout, cmd.Stderr = stderr, stderr // files: Start spawns no goroutine
	cmd.ExtraFiles = taps
	cmd.Dir = m.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	m.log().Info("starting vm", "vm", s.Name, "accel", l.Accel, "cmd", qemu+" "+shellQuote(args))
	start := func() error { return cmd.Start() }
	if first != nil {
		err = netns.Do(first, start)
	} else {
		err = start()
	}
	if err != nil {
		return fmt.Errorf("vm %q: start %s: %w", s.Name, qemu, err)
	}
	// The parent exits as soon as the daemon is set up.
	if err := cmd.Wait(); err != nil {
		msg, _ := os.ReadFile(m.path(StderrFile))
		return fmt.Errorf("vm %q: qemu failed to start: %w: %s", s.Name, err, strings.TrimSpace(string(msg)))
	}
	b, err := os.ReadFile(m.path(PidFile))
	if err != nil {
		return fmt.Errorf("vm %q: qemu started but wrote no pidfile: %w", s.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("vm %q: pidfile: %w", s.Name, err)
	}
	return writeRecord(m.Dir, &record{Name: s.Name, PID: pid, Started: time.Now(), Accel: string(l.Accel), Args: args})
}

// WaitReady waits for the built-in guest's readiness line on the serial
// console of this boot and returns it. A QEMU that exits meanwhile, or a
// guest that crashes, ends the wait with ErrNotReady and the console tail.
func (m *Machine) WaitReady(ctx context.Context) (*bootcfg.Ready, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var off int64
	var partial []byte
	checks := 0
	for {
		if f, err := os.Open(m.path(SerialLog)); err == nil {
			_, _ = f.Seek(off, 0)
			b, _ := io.ReadAll(f)
			f.Close()
			off += int64(len(b))
			partial = append(partial, b...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				line := strings.TrimRight(string(partial[:i]), "\r")
				partial = partial[i+1:]
				if r, ok := bootcfg.ParseReady(line); ok {
					return &r, nil
				}
			}
		}
		if checks++; checks%10 == 0 {
			if st, _ := m.Status(ctx); st.State != StateRunning {
				return nil, fmt.Errorf("vm %q: %w: %s (%s)\n%s", m.Spec.Name, ErrNotReady, st.State, st.Reason, m.ConsoleTail(20))
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm %q: %w: %w\n%s", m.Spec.Name, ErrNotReady, ctx.Err(), m.ConsoleTail(20))
		case <-tick.C:
		}
	}
}

// ConsoleTail returns the last n lines of this boot's serial console.
func (m *Machine) ConsoleTail(n int) string {
	b, err := os.ReadFile(m.path(SerialLog))
	if err != nil {
		return "(no serial log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Status observes the VM. A QEMU that is gone although nobody asked it to
// stop is crashed, and so is a guest whose kernel panicked (QEMU reports
// guest-panicked) or that hit a QEMU internal error; a guest that powered
// itself off is stopped. Nothing is restarted.
func (m *Machine) Status(ctx context.Context) (Status, error) {
	st := Status{Name: m.Spec.Name}
	r, err := readRecord(m.Dir)
	if errors.Is(err, os.ErrNotExist) {
		st.State, st.Reason = StateStopped, "never started"
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.Accel, st.Started = r.Accel, r.Started
	if !pidAlive(m.Dir, r.PID) {
		if r.StopRequested {
			st.State, st.Reason = StateStopped, "stopped by kvmnet"
		} else {
			st.State, st.Reason = StateCrashed, "qemu exited without kvmnet stopping it (see "+m.path(SerialLog)+")"
		}
		return st, nil
	}
	st.PID, st.RSSKiB = r.PID, rssKiB(r.PID)
	st.State = StateRunning
	if q, err := dialQMP(m.path(QMPSocket), 2*time.Second); err == nil {
		st.QEMU, err = q.queryStatus(2 * time.Second)
		q.Close()
		if err != nil {
			st.Reason = err.Error()
		}
	} else {
		st.Reason = "qmp: " + err.Error()
	}
	switch st.QEMU {
	case "guest-panicked":
		st.State, st.Reason = StateCrashed, "guest kernel panicked (QEMU paused it; see "+m.path(SerialLog)+")"
	case "internal-error", "io-error":
		st.State, st.Reason = StateCrashed, "qemu reports "+st.QEMU
	case "shutdown":
		st.State, st.Reason = StateStopped, "guest powered off"
	}
	if b, err := os.ReadFile(m.path(SerialLog)); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if rd, ok := bootcfg.ParseReady(sc.Text()); ok {
				st.Addresses = rd.NICs
			}
		}
	}
	return st, nil
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
			return kb
		}
	}
	return 0
}

// Stop shuts the VM down: it records that the stop was asked for, presses
// the ACPI power button (QMP system_powerdown), waits up to timeout for the
// guest to power off, then quits QEMU; if the guest does not power off in
// time, or QMP does not answer, QEMU is killed. A VM that is not running is
// fine. The serial log stays.
func (m *Machine) Stop(ctx context.Context, timeout time.Duration) error {
	r, err := readRecord(m.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	r.StopRequested, r.Stopped = true, time.Now()
	if err := writeRecord(m.Dir, r); err != nil {
		return err
	}
	defer m.cleanup()
	if !pidAlive(m.Dir, r.PID) {
		return nil
	}
	log := m.log().With("vm", m.Spec.Name)
	q, err := dialQMP(m.path(QMPSocket), 2*time.Second)
	if err != nil {
		log.Warn("qmp unreachable; killing qemu", "err", err)
		return m.kill(r.PID)
	}
	defer q.Close()
	if _, err := q.execute("system_powerdown", nil, 2*time.Second); err != nil {
		log.Warn("system_powerdown failed; killing qemu", "err", err)
		return m.kill(r.PID)
	}
	deadline := time.Now().Add(timeout)
	for {
		st, err := q.queryStatus(2 * time.Second)
		if err != nil || st == "shutdown" || st == "guest-panicked" {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log.Warn("guest did not power off in time; killing qemu", "timeout", timeout)
			return m.kill(r.PID)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = q.execute("quit", nil, 2*time.Second)
	if waitGone(m.Dir, r.PID, 5*time.Second) {
		log.Info("vm stopped", "how", "acpi")
		return nil
	}
	return m.kill(r.PID)
}

// Kill stops the VM at once (SIGKILL), recording that kvmnet stopped it.
func (m *Machine) Kill() error {
	r, err := readRecord(m.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	r.StopRequested, r.Stopped = true, time.Now()
	if err := writeRecord(m.Dir, r); err != nil {
		return err
	}
	defer m.cleanup()
	if !pidAlive(m.Dir, r.PID) {
		return nil
	}
	return m.kill(r.PID)
}

func (m *Machine) kill(pid int) error {
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("vm %q: kill qemu %d: %w", m.Spec.Name, pid, err)
	}
	if !waitGone(m.Dir, pid, 5*time.Second) {
		return fmt.Errorf("vm %q: qemu %d survived SIGKILL", m.Spec.Name, pid)
	}
	return nil
}

func (m *Machine) cleanup() {
	for _, f := range []string{PidFile, QMPSocket, ConsoleSock} {
		_ = os.Remove(m.path(f))
	}
}

// waitGone waits for pid to exit: a pidfd becomes readable then (QEMU is
// not our child after -daemonize, so there is nothing to reap).
func waitGone(dir string, pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return !pidAlive(dir, pid)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return !pidAlive(dir, pid)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
		if err == nil && n > 0 {
			return true
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return !pidAlive(dir, pid)
		}
	}
}
