package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accel is a QEMU accelerator.
type Accel string

// Accelerators. AccelAuto means KVM when it is usable, else TCG.
const (
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// Sentinel errors of VM.Run. A guest that reports failure returns a
// *VerdictError, which matches ErrGuestFailed.
var (
	ErrGuestFailed = errors.New("guest reported failure")
	ErrNoVerdict   = errors.New("guest did not report a verdict")
	ErrTimeout     = errors.New("guest timed out")
)

// VerdictError is a verdict other than CodePass reported by the guest.
type VerdictError struct{ Code int }

func (e *VerdictError) Error() string {
	what := map[int]string{CodeFail: "a test failed", CodeInitErr: "guest /init could not set up", CodeTimeout: "in-guest timeout"}[e.Code]
	return fmt.Sprintf("%v: %s (code %#x)", ErrGuestFailed, what, e.Code)
}

// Unwrap lets errors.Is(err, ErrGuestFailed) match.
func (e *VerdictError) Unwrap() error { return ErrGuestFailed }

// DefaultCmdline is the guest kernel command line. panic=-1 with -no-reboot
// turns any kernel panic (including /init dying) into a QEMU exit.
const DefaultCmdline = "console=ttyS0 panic=-1 oops=panic rdinit=/init edd=off"

// VM is one QEMU run of a kernel and initramfs with no network devices.
type VM struct {
	QEMU     string // default "qemu-system-x86_64"
	Kernel   string
	Initrd   string
	Cmdline  string // default DefaultCmdline
	Quiet    bool   // add "quiet loglevel=3" so only /init's output shows
	MemoryMB int    // default 512
	CPUs     int    // default 1
	Accel    Accel  // AccelKVM or AccelTCG (resolve AccelAuto with ChooseAccel)
	Timeout  time.Duration
	// Console receives the guest serial console one whole line per Write
	// (carriage returns and terminal escapes removed, "\n" kept).
	Console io.Writer
	Log     *slog.Logger
}

// Result is what a VM run observed.
type Result struct {
	Status  int // QEMU exit status (-1 if killed)
	Code    int // guest verdict code, when Reported
	Elapsed time.Duration
}

// Args returns QEMU's command-line arguments.
func (vm *VM) Args() []string {
	mem, cpus := vm.MemoryMB, vm.CPUs
	if mem == 0 {
		mem = 512
	}
	if cpus == 0 {
		cpus = 1
	}
	cmdline := vm.Cmdline
	if cmdline == "" {
		cmdline = DefaultCmdline
	}
	if vm.Quiet {
		cmdline += " quiet loglevel=3"
	}
	accel := vm.Accel
	if accel == "" || accel == AccelAuto {
		accel = AccelTCG
	}
	args := []string{"-accel", string(accel)}
	if accel == AccelTCG {
		// "max" gives TCG guests RDRAND, so the kernel's RNG is ready at
		// boot instead of after a second of jitter entropy (Go's
		// crypto/rand waits for it).
		args = append(args, "-cpu", "max")
	}
	return append(args,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-nographic", "-serial", "stdio", "-nic", "none",
		"-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", vm.Kernel, "-initrd", vm.Initrd,
		"-append", cmdline,
	)
}

var ansiRe = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|c)`)

// Run boots the VM and waits for it. It returns nil only when the guest
// reported CodePass through isa-debug-exit and printed the matching
// verdict line; a *VerdictError for another verdict; ErrNoVerdict when QEMU
// exited without one; ErrTimeout when vm.Timeout passed and QEMU was killed.
func (vm *VM) Run(ctx context.Context) (*Result, error) {
	log := vm.Log
	if log == nil {
		log = discard
	}
	qemu := vm.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	if vm.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, vm.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, qemu, vm.Args()...)
	cmd.Stdin = nil // /dev/null: -nographic must not grab a terminal
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	cmd.WaitDelay = 5 * time.Second
	// QEMU dies with us. The lane starts QEMU from an ordinary (unlocked)
	// goroutine, so the "parent thread exits" caveat of Pdeathsig does not
	// bite here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &limitedBuffer{buf: &stderr, max: 16 << 10}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	log.Info("starting qemu", "cmd", qemu+" "+strings.Join(vm.Args(), " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", qemu, err)
	}
	var (
		mu      sync.Mutex
		verdict = -1
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReaderSize(stdout, 64<<10)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				line = ansiRe.ReplaceAllString(strings.ReplaceAll(line, "\r", ""), "")
				if code, ok := parseVerdict(line); ok {
					mu.Lock()
					verdict = code
					mu.Unlock()
				}
				if vm.Console != nil {
					if !strings.HasSuffix(line, "\n") {
						line += "\n"
					}
					_, _ = io.WriteString(vm.Console, line)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	<-done
	werr := cmd.Wait()
	res := &Result{Status: cmd.ProcessState.ExitCode(), Elapsed: time.Since(start)}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return res, fmt.Errorf("%w after %s (qemu killed)", ErrTimeout, vm.Timeout)
		}
		return res, fmt.Errorf("qemu stopped: %w", ctx.Err())
	}
	mu.Lock()
	printed := verdict
	mu.Unlock()
	code, ok := CodeFromStatus(res.Status)
	if !ok {
		return res, fmt.Errorf("%w: qemu exit status %d (%v)%s", ErrNoVerdict, res.Status, werr, stderrTail(stderr.String()))
	}
	res.Code = code
	if printed != code {
		return res, fmt.Errorf("%w: exit code %#x but the console verdict line said %#x%s", ErrNoVerdict, code, printed, stderrTail(stderr.String()))
	}
	if code != CodePass {
		return res, &VerdictError{Code: code}
	}
	return res, nil
}

func stderrTail(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return "\nqemu stderr:\n" + tail([]byte(s), 15)
}

type limitedBuffer struct {
	mu  sync.Mutex
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - l.buf.Len(); room > 0 {
		if len(p) > room {
			l.buf.Write(p[:room])
		} else {
			l.buf.Write(p)
		}
	}
	return len(p), nil
}

// KVMUsable checks that /dev/kvm opens read-write and answers the KVM API
// version ioctl. It cannot tell whether a guest will actually run (nested
// virtualization can accept the ioctls and still hang): ChooseAccel also
// boots a probe guest.
func KVMUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("/dev/kvm: KVM_GET_API_VERSION: %w", errno)
	}
	if v != 12 {
		return fmt.Errorf("/dev/kvm: KVM API version %d, want 12", v)
	}
	return nil
}
