package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kvmnet/kvmnet/internal/guest"
)

// AgentPackage is the built-in guest's /init.
const AgentPackage = "github.com/kvmnet/kvmnet/internal/vm/agent"

// AgentModules are the guest kernel modules the agent loads: the virtio
// NIC, the ACPI power button and evdev (system_powerdown), and pvpanic (a
// guest panic pauses QEMU, which reports it).
var AgentModules = []string{"virtio_pci", "virtio_net", "button", "evdev", "pvpanic_mmio"}

// Guest is the prepared built-in guest and the accelerator every VM uses.
type Guest struct {
	Kernel  string            // vmlinuz
	Initrd  string            // the initramfs with the agent, shared by every VM
	Release string            // guest kernel release
	Accel   guest.AccelChoice // KVM or TCG, and why
}

// GuestOptions configures PrepareGuest.
type GuestOptions struct {
	// CacheDir is the guest cache (default guest.CacheDir()); the kernel
	// is fetched there, the agent and initramfs go to CacheDir/vm.
	CacheDir string
	// Agent is a prebuilt static agent binary; default: KVMNET_AGENT, else
	// built with `go build` from the kvmnet source tree (BuildAgent).
	Agent string
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel guest.Accel
	Log   *slog.Logger
}

var sayAccelOnce sync.Once

// PrepareGuest fetches the guest kernel (cached), builds the agent and the
// initramfs (cached by content), and decides the accelerator: KVM only if a
// probe guest boots under it (internal/guest.ChooseAccel, cached per host),
// else TCG. The choice is logged once per process, at Info.
func PrepareGuest(ctx context.Context, o GuestOptions) (*Guest, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := o.CacheDir
	if root == "" {
		root = guest.CacheDir()
	}
	k, err := guest.FetchKernel(ctx, guest.FetchOptions{CacheDir: root, Log: log})
	if err != nil {
		return nil, fmt.Errorf("built-in guest: %w", err)
	}
	dir := filepath.Join(root, "vm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := guest.LockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	agent := o.Agent
	if agent == "" {
		agent = os.Getenv("KVMNET_AGENT")
	}
	if agent == "" {
		agent = filepath.Join(dir, "agent")
		err := BuildAgent(ctx, agent)
		if errors.Is(err, ErrNoSource) {
			// Outside a source tree: the agent scripts/install.sh installed.
			if _, serr := os.Stat(InstalledAgent); serr == nil {
				agent, err = InstalledAgent, nil
			}
		}
		if err != nil {
			return nil, err
		}
	}
	plan, err := guest.ResolveModules(k.ModDir, AgentModules)
	if err != nil {
		return nil, fmt.Errorf("built-in guest: %w", err)
	}
	h := sha256.New()
	f, err := os.Open(agent)
	if err != nil {
		return nil, fmt.Errorf("built-in guest: agent: %w", err)
	}
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(h, "|%s|%s", k.Release, strings.Join(plan.Names(), ","))
	initrd := filepath.Join(dir, "initrd-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio")
	if _, err := os.Stat(initrd); err != nil {
		if _, err := guest.WriteImage(initrd, guest.ImageSpec{Init: agent, Modules: plan.Load, KernelConfig: k.Config}); err != nil {
			return nil, fmt.Errorf("built-in guest: %w", err)
		}
		log.Info("built-in guest initramfs written", "path", initrd, "modules", len(plan.Load))
	}
	choice, err := guest.ChooseAccel(ctx, o.Accel, k, agent, root, log)
	if err != nil {
		return nil, err
	}
	sayAccelOnce.Do(func() {
		log.Info(fmt.Sprintf("VMs run under %s: %s", strings.ToUpper(string(choice.Accel)), choice.Reason))
	})
	return &Guest{Kernel: k.Vmlinuz, Initrd: initrd, Release: k.Release, Accel: choice}, nil
}

// InstalledAgent is where scripts/install.sh puts the static agent, used
// when kvmnet runs outside its source tree and KVMNET_AGENT is not set.
var InstalledAgent = "/usr/local/lib/kvmnet/agent"

// ErrNoSource is returned by BuildAgent outside a kvmnet source tree.
var ErrNoSource = errors.New("the built-in guest's agent is built from the kvmnet source tree; run kvmnet from it, install the agent with scripts/install.sh, or set KVMNET_AGENT to a prebuilt static agent")

// BuildAgent builds the static agent (CGO_ENABLED=0, stripped) into dst
// with the Go toolchain, from the source tree around the working directory
// (or KVMNET_SRC). The Go build cache makes a rebuild take well under a
// second.
func BuildAgent(ctx context.Context, dst string) error {
	src := os.Getenv("KVMNET_SRC")
	if src == "" {
		src = findModuleRoot()
	}
	if src == "" {
		return ErrNoSource
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		if _, serr := os.Stat("/usr/local/go/bin/go"); serr != nil {
			return fmt.Errorf("build the guest agent: %w: %w", ErrNoSource, err)
		}
		gobin = "/usr/local/go/bin/go"
	}
	tmp := dst + ".tmp"
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, AgentPackage)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the guest agent: %w\n%s", err, out)
	}
	return os.Rename(tmp, dst)
}

func findModuleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if strings.Contains(string(b), "module github.com/kvmnet/kvmnet\n") {
				return dir
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
