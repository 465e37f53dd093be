package guest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ProbeTimeout bounds the KVM probe boot. A working KVM boots the cloud
// kernel to /init in about a second.
var ProbeTimeout = 10 * time.Second

// AccelChoice is the accelerator to use and why.
type AccelChoice struct {
	Accel  Accel  `json:"accel"`
	Reason string `json:"reason"`
}

// ChooseAccel resolves want. For AccelAuto it uses KVM only if /dev/kvm
// answers and a probe guest (kernel k with a tiny initramfs holding just
// init) boots and reports under KVM within ProbeTimeout; otherwise TCG. The
// probe's answer is cached in cacheRoot per host kernel, QEMU binary and
// guest kernel, so only the first run pays for it.
func ChooseAccel(ctx context.Context, want Accel, k *Kernel, init, cacheRoot string, log *slog.Logger) (AccelChoice, error) {
	if log == nil {
		log = discard
	}
	switch want {
	case AccelKVM, AccelTCG:
		return AccelChoice{want, "requested"}, nil
	case AccelAuto, "":
	default:
		return AccelChoice{}, fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", want)
	}
	if err := KVMUsable(); err != nil {
		return AccelChoice{AccelTCG, fmt.Sprintf("no usable /dev/kvm: %v", err)}, nil
	}
	key := probeKey(k)
	cachePath := filepath.Join(cacheRoot, "accel-probe.json")
	cache := map[string]AccelChoice{}
	if b, err := os.ReadFile(cachePath); err == nil {
		_ = json.Unmarshal(b, &cache)
	}
	if c, ok := cache[key]; ok {
		c.Reason += " (cached probe)"
		return c, nil
	}
	choice := probeKVM(ctx, k, init, log)
	cache[key] = choice
	if b, err := json.MarshalIndent(cache, "", "  "); err == nil {
		_ = os.MkdirAll(cacheRoot, 0o755)
		_ = os.WriteFile(cachePath, b, 0o644)
	}
	return choice, nil
}

func probeKey(k *Kernel) string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	q := "qemu-system-x86_64"
	if p, err := exec.LookPath(q); err == nil {
		if fi, err := os.Stat(p); err == nil {
			q = fmt.Sprintf("%s@%d:%d", p, fi.Size(), fi.ModTime().Unix())
		}
	}
	return strings.Join([]string{unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Version[:]), q, k.Release}, "|")
}

func probeKVM(ctx context.Context, k *Kernel, init string, log *slog.Logger) AccelChoice {
	dir, err := os.MkdirTemp("", "kvmnet-probe-")
	if err != nil {
		return AccelChoice{AccelTCG, fmt.Sprintf("KVM probe: %v", err)}
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "probe.cpio")
	if _, err := WriteImage(img, ImageSpec{Init: init, Config: Config{Probe: true}}); err != nil {
		return AccelChoice{AccelTCG, fmt.Sprintf("KVM probe: %v", err)}
	}
	log.Info("probing KVM with a tiny guest", "timeout", ProbeTimeout)
	vm := &VM{Kernel: k.Vmlinuz, Initrd: img, Accel: AccelKVM, Quiet: true, MemoryMB: 256, Timeout: ProbeTimeout, Log: log}
	res, err := vm.Run(ctx)
	if err != nil {
		return AccelChoice{AccelTCG, fmt.Sprintf("/dev/kvm present but a KVM guest did not boot: %v", firstLine(err.Error()))}
	}
	return AccelChoice{AccelKVM, fmt.Sprintf("/dev/kvm usable (probe guest booted in %s)", res.Elapsed.Round(100*time.Millisecond))}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
