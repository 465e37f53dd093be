package guest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU writes a shell script that stands in for qemu-system-x86_64.
func fakeQEMU(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// hostOnly skips tests that need host tools the guest-kernel lane's guest
// lacks (sh, ldd), should the lane ever be pointed at this package.
func hostOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("KVMNET_IN_GUEST") == "1" {
		t.Skip("needs host tools (sh, ldd) that the guest lacks")
	}
}

func TestVMRunVerdicts(t *testing.T) {
	hostOnly(t)
	tests := []struct {
		name    string
		script  string
		timeout time.Duration
		check   func(error) bool
	}{
		{"pass", `printf 'SeaBIOS\r\n\033[2Jhello\r\nkvmnet-guest: verdict pass code=16\r\n'; exit 33`, 0,
			func(err error) bool { return err == nil }},
		{"fail", `echo 'kvmnet-guest: verdict fail code=17'; exit 35`, 0,
			func(err error) bool {
				var ve *VerdictError
				return errors.Is(err, ErrGuestFailed) && errors.As(err, &ve) && ve.Code == CodeFail
			}},
		{"qemu error status 1", `echo 'qemu: could not load kernel' >&2; exit 1`, 0,
			func(err error) bool {
				return errors.Is(err, ErrNoVerdict) && strings.Contains(err.Error(), "could not load kernel")
			}},
		{"panic then reboot", `echo 'Kernel panic - not syncing'; exit 0`, 0,
			func(err error) bool { return errors.Is(err, ErrNoVerdict) }},
		{"status without console line", `exit 33`, 0,
			func(err error) bool { return errors.Is(err, ErrNoVerdict) }},
		{"hang", `echo booting; exec sleep 60`, 500 * time.Millisecond,
			func(err error) bool { return errors.Is(err, ErrTimeout) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var console strings.Builder
			vm := &VM{QEMU: fakeQEMU(t, tt.script), Kernel: "k", Initrd: "i", Timeout: tt.timeout, Console: &console}
			start := time.Now()
			_, err := vm.Run(context.Background())
			if !tt.check(err) {
				t.Errorf("Run() = %v", err)
			}
			if time.Since(start) > 10*time.Second {
				t.Errorf("Run took %s", time.Since(start))
			}
			if strings.ContainsAny(console.String(), "\r\x1b") {
				t.Errorf("console kept CR or escapes: %q", console.String())
			}
		})
	}
}

func TestVMArgs(t *testing.T) {
	vm := &VM{Kernel: "/k", Initrd: "/i", Accel: AccelKVM, Quiet: true}
	args := strings.Join(vm.Args(), " ")
	for _, want := range []string{
		"-accel kvm", "-m 512", "-nographic", "-no-reboot", "-nic none",
		"-device isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel /k", "-initrd /i",
		"console=ttyS0", "panic=-1", "quiet",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	if strings.Contains(args, "vhost") || strings.Contains(args, "-cpu max") {
		t.Errorf("unexpected args: %s", args)
	}
	vm.Accel = AccelTCG
	if args := strings.Join(vm.Args(), " "); !strings.Contains(args, "-accel tcg -cpu max") {
		t.Errorf("tcg args: %s", args)
	}
}

func TestChooseAccelRequested(t *testing.T) {
	for _, a := range []Accel{AccelKVM, AccelTCG} {
		c, err := ChooseAccel(context.Background(), a, nil, "", t.TempDir(), nil)
		if err != nil || c.Accel != a {
			t.Errorf("ChooseAccel(%s) = %+v, %v", a, c, err)
		}
	}
	if _, err := ChooseAccel(context.Background(), "hvf", nil, "", t.TempDir(), nil); err == nil {
		t.Error("ChooseAccel(hvf): no error")
	}
}
