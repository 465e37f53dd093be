//go:build linux

// Command guestinit is the /init of the guest-kernel test lane's initramfs.
// It is built static (CGO_ENABLED=0) by the lane, never run on the host (it
// refuses to run unless it is PID 1).
//
// It mounts proc, sys, dev, /run and /tmp, loads the kernel modules listed in
// its config with finit_module, brings up lo, runs each test binary with
// -test.v and the configured environment (output straight to the serial
// console), reports the verdict through isa-debug-exit and powers off. It
// never hangs: the test binaries share one deadline, a watchdog reports a
// timeout if anything overruns it, and if even that fails the kernel panics
// (panic=-1) and QEMU (-no-reboot) exits.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/guest"
)

// watchdogGrace is how long past the test deadline /init waits for the last
// binary to die before it reports a timeout regardless.
const watchdogGrace = 20 * time.Second

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guestinit: refusing to run: this is the guest lane's /init and must be PID 1 inside the guest")
		os.Exit(2)
	}
	finish(run())
}

func say(format string, args ...any) {
	fmt.Printf(guest.MarkerPrefix+format+"\n", args...)
}

var finishOnce sync.Once

// finish prints the verdict line, reports code to QEMU and powers off. It
// never returns: PID 1 must not exit.
func finish(code int) {
	finishOnce.Do(func() {
		fmt.Println(guest.VerdictMarker(code))
		unix.Sync()
		// The serial driver sends console output from a buffer, by
		// interrupt; wait until it is out, or QEMU exits before the host
		// sees the last lines.
		_ = unix.IoctlSetInt(1, unix.TCSBRK, 1) // tcdrain
		time.Sleep(20 * time.Millisecond)
		if err := debugExit(code); err != nil {
			say("isa-debug-exit: %v; powering off", err)
		}
		// Without an isa-debug-exit device QEMU is still running: power
		// off, which the host reads as "no verdict".
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	})
	select {}
}

func run() int {
	start := time.Now()
	// Start on a fresh line: the firmware may have left a partial one.
	fmt.Println()
	if err := mountAll(); err != nil {
		say("init: %v", err)
		return guest.CodeInitErr
	}
	b, err := os.ReadFile(guest.ConfigPath)
	if err != nil {
		say("init: read config: %v", err)
		return guest.CodeInitErr
	}
	var cfg guest.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		say("init: parse config: %v", err)
		return guest.CodeInitErr
	}
	if cfg.Probe {
		say("init: probe guest up")
		return guest.CodePass
	}
	_ = unix.Sethostname([]byte("kvmnet-guest"))
	timeout := time.Duration(cfg.Timeout)
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	deadline := start.Add(timeout)
	time.AfterFunc(timeout+watchdogGrace, func() {
		say("init: watchdog: tests still running %s past the %s deadline", watchdogGrace, timeout)
		finish(guest.CodeTimeout)
	})

	var u unix.Utsname
	_ = unix.Uname(&u)
	t0 := time.Now()
	for _, m := range cfg.Modules {
		if err := loadModule(m); err != nil {
			say("init: load module %s: %v", m.Name, err)
			return guest.CodeInitErr
		}
	}
	if err := linkUp("lo"); err != nil {
		say("init: bring up lo: %v", err)
		return guest.CodeInitErr
	}
	say("init: kernel %s up %s, %d modules loaded in %s, %d test binaries, deadline %s",
		unix.ByteSliceToString(u.Release[:]), uptime(), len(cfg.Modules), time.Since(t0).Round(time.Millisecond), len(cfg.Tests), timeout)

	env := []string{"PATH=" + guest.GuestPath, "HOME=/root", "TMPDIR=/tmp", "KVMNET_IN_GUEST=1"}
	env = append(env, cfg.Env...)
	code := guest.CodePass
	for _, t := range cfg.Tests {
		exit, timedOut := runTest(t, cfg.Run, cfg.Short, env, deadline)
		if timedOut {
			return guest.CodeTimeout
		}
		if exit != 0 {
			code = guest.CodeFail
		}
	}
	return code
}

// runTest runs one test binary in its own process group and kills the group
// at the deadline.
func runTest(t guest.TestBinary, run string, short bool, env []string, deadline time.Time) (exit int, timedOut bool) {
	left := time.Until(deadline)
	if left <= 0 {
		say("init: no time left for %s", t.Package)
		fmt.Println(guest.EndMarker(t.Package, -1, 0))
		return -1, true
	}
	// Let the testing package's own timeout fire first: it names the stuck
	// test and prints its goroutines. The kill at the deadline is the
	// backstop.
	grace := min(5*time.Second, left/5)
	testTimeout := left - grace
	args := []string{"-test.v", "-test.timeout=" + testTimeout.String()}
	if run != "" {
		args = append(args, "-test.run="+run)
	}
	if short {
		args = append(args, "-test.short")
	}
	args = append(args, t.Args...)
	fmt.Println(guest.RunMarker(t.Package))
	cmd := exec.Command(t.Path, args...)
	cmd.Dir = t.Dir
	cmd.Env = env
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		say("init: start %s: %v", t.Path, err)
		fmt.Println(guest.EndMarker(t.Package, -1, 0))
		return -1, false
	}
	var killed atomic.Bool
	kill := time.AfterFunc(left, func() {
		killed.Store(true)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	err := cmd.Wait()
	kill.Stop()
	timedOut = killed.Load()
	exit = cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		say("init: wait %s: %v", t.Path, err)
	}
	// Anything the test left behind in its group goes too.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	fmt.Println(guest.EndMarker(t.Package, exit, time.Since(start)))
	if timedOut {
		say("init: %s killed at the deadline", t.Package)
	}
	return exit, timedOut
}

func mountAll() error {
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	// Tests expect the usual /dev links.
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		_ = os.Symlink(target, name)
	}
	return nil
}

func loadModule(m guest.ModuleLoad) error {
	f, err := os.Open(m.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if m.Compressed {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finit_module %s: %w", strings.TrimPrefix(m.Path, "/"), err)
	}
	return nil
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// uptime is the time since the kernel booted, from /proc/uptime.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}
