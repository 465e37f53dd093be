package vm

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/guest"
	"github.com/kvmnet/kvmnet/internal/vm/bootcfg"
)

func goodSpec(name, mac string) Spec {
	return Spec{Name: name, NICs: []NIC{{Namespace: name, Uplink: "eth0", MAC: mac, DHCP: true}}}
}

func TestValidate(t *testing.T) {
	host := Host{MemoryMiB: 4096, CPUs: 2}
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := os.WriteFile(img, []byte("QFI\xfb"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		specs []Spec
		want  []string // substrings, each must appear
	}{
		{"ok", []Spec{goodSpec("vm1", "52:54:00:00:00:01"), goodSpec("vm2", "52:54:00:00:00:02")}, nil},
		{"memory larger than the host", []Spec{func() Spec { s := goodSpec("big", "52:54:00:00:00:01"); s.MemoryMiB = 65536; return s }()},
			[]string{`vm "big": memory 65536 MiB is more than the host's 4096 MiB`}},
		{"memory together", []Spec{
			func() Spec { s := goodSpec("a", "52:54:00:00:00:01"); s.MemoryMiB = 3000; return s }(),
			func() Spec { s := goodSpec("b", "52:54:00:00:00:02"); s.MemoryMiB = 3000; return s }(),
		}, []string{"2 VMs need 6000 MiB together, more than the host's 4096 MiB"}},
		{"MAC collision", []Spec{goodSpec("vm1", "52:54:00:00:00:01"), goodSpec("vm2", "52:54:00:00:00:01")},
			[]string{`vm "vm2" nic 0: MAC 52:54:00:00:00:01 collides with vm "vm1" nic 0`}},
		{"MAC collision spelled differently", []Spec{goodSpec("vm1", "52:54:00:00:00:0a"), goodSpec("vm2", "52-54-00-00-00-0A")},
			[]string{"collides with"}},
		{"multicast MAC", []Spec{goodSpec("vm1", "01:00:5e:00:00:01")}, []string{"multicast"}},
		{"missing image", []Spec{func() Spec {
			s := goodSpec("img", "52:54:00:00:00:01")
			s.Boot.Image = "/nonexistent/disk.qcow2"
			return s
		}()},
			[]string{`vm "img": image "/nonexistent/disk.qcow2": no such file or directory`}},
		{"image ok", []Spec{func() Spec {
			s := goodSpec("img", "52:54:00:00:00:01")
			s.Boot = Boot{Image: img, CloudInit: &CloudInit{SSHKeys: []string{"ssh-ed25519 AAAA test"}}}
			return s
		}()}, nil},
		{"cloud-init without image", []Spec{func() Spec { s := goodSpec("vm1", "52:54:00:00:00:01"); s.Boot.CloudInit = &CloudInit{}; return s }()},
			[]string{"cloud-init needs a disk image"}},
		{"too many vCPUs", []Spec{func() Spec { s := goodSpec("vm1", "52:54:00:00:00:01"); s.CPUs = 8; return s }()}, []string{"8 vCPUs, the host has 2"}},
		{"dhcp and static", []Spec{func() Spec {
			s := goodSpec("vm1", "52:54:00:00:00:01")
			s.NICs[0].Address = netip.MustParsePrefix("10.0.0.5/24")
			return s
		}()}, []string{"both DHCP and a static address"}},
		{"gateway outside", []Spec{func() Spec {
			s := goodSpec("vm1", "52:54:00:00:00:01")
			s.NICs[0].DHCP, s.NICs[0].Address, s.NICs[0].Gateway = false, netip.MustParsePrefix("10.0.0.5/24"), netip.MustParseAddr("10.0.1.1")
			return s
		}()}, []string{"gateway 10.0.1.1 is not in the NIC's subnet 10.0.0.5/24"}},
		{"duplicate name", []Spec{goodSpec("vm1", "52:54:00:00:00:01"), goodSpec("vm1", "52:54:00:00:00:02")}, []string{`vm "vm1": defined twice`}},
		{"long tap name", []Spec{func() Spec {
			s := goodSpec("vm1", "52:54:00:00:00:01")
			s.NICs[0].Tap = "a-very-long-tap-name"
			return s
		}()}, []string{"not a valid name"}},
		{"unknown wiring", []Spec{func() Spec { s := goodSpec("vm1", "52:54:00:00:00:01"); s.NICs[0].Wiring = "macvtap"; return s }()}, []string{`unknown wiring "macvtap"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.specs, host)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Validate = %v, want ErrInvalidSpec", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestHostInfo(t *testing.T) {
	h, err := HostInfo()
	if err != nil || h.MemoryMiB < 64 || h.CPUs < 1 {
		t.Fatalf("HostInfo = %+v, %v", h, err)
	}
}

func TestArgsBuiltIn(t *testing.T) {
	s := Spec{Name: "vm1", NICs: []NIC{
		{Namespace: "vm1", Uplink: "eth0", MAC: "52:54:00:12:34:56", DHCP: true},
		{Namespace: "vm1", Uplink: "eth1", MAC: "52:54:00:12:34:57", Address: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1")},
	}}
	args := Args(s, Launch{Dir: "/run/kvmnet/n/vm1", Accel: guest.AccelTCG, Kernel: "/k", Initrd: "/i", TapFDs: []int{3, 4}})
	got := strings.Join(args, " ")
	for _, want := range []string{
		"-accel tcg -cpu max -m 128 -smp 1 -nodefaults -no-user-config -display none -daemonize -pidfile /run/kvmnet/n/vm1/qemu.pid",
		"-chardev socket,id=console,path=/run/kvmnet/n/vm1/console.sock,server=on,wait=off,logfile=/run/kvmnet/n/vm1/serial.log,logappend=on -serial chardev:console",
		"-chardev socket,id=qmp,path=/run/kvmnet/n/vm1/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control",
		"-no-shutdown -device pvpanic -action panic=pause",
		"-kernel /k -initrd /i",
		"-netdev tap,id=net0,fd=3 -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"-netdev tap,id=net1,fd=4 -device virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "vhost") {
		t.Errorf("vhost without /dev/vhost-net: %s", got)
	}
	i := slices.Index(args, "-append")
	cmdline := args[i+1]
	if !strings.HasPrefix(cmdline, "console=ttyS0 panic=-1 rdinit=/init") {
		t.Errorf("cmdline %q", cmdline)
	}
	cfg, err := bootcfg.Parse(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "vm1" || len(cfg.NICs) != 2 || !cfg.NICs[0].DHCP || cfg.NICs[1].Addr.String() != "10.0.0.5/24" || cfg.NICs[1].Gateway.String() != "10.0.0.1" {
		t.Errorf("the agent would read %+v from %q", cfg, cmdline)
	}
	kvm := strings.Join(Args(s, Launch{Dir: "/d", Accel: guest.AccelKVM, TapFDs: []int{3, 4}, Vhost: true}), " ")
	if !strings.Contains(kvm, "-accel kvm -cpu host") || !strings.Contains(kvm, "fd=3,vhost=on") {
		t.Errorf("kvm args: %s", kvm)
	}
}

func TestArgsImage(t *testing.T) {
	s := Spec{Name: "deb", MemoryMiB: 2048, CPUs: 2, NICs: []NIC{{Namespace: "deb", Uplink: "eth0", MAC: "52:54:00:12:34:56", DHCP: true}},
		Boot: Boot{Image: "/img/debian.qcow2", Format: "qcow2", Snapshot: true, CloudInit: &CloudInit{}}}
	got := strings.Join(Args(s, Launch{Dir: "/d", Accel: guest.AccelTCG, Seed: "/d/seed.iso", TapFDs: []int{3}}), " ")
	for _, want := range []string{
		"-m 2048 -smp 2",
		"-drive file=/img/debian.qcow2,if=virtio,cache=writeback,format=qcow2,snapshot=on",
		"-drive file=/d/seed.iso,if=virtio,format=raw,readonly=on",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "-kernel") || strings.Contains(got, "-append") {
		t.Errorf("an image VM boots from its disk: %s", got)
	}
}

func TestBootcfgReady(t *testing.T) {
	r := bootcfg.Ready{Name: "vm1", NICs: []bootcfg.ReadyNIC{{MAC: "52:54:00:12:34:56", Iface: "eth0", Addr: netip.MustParsePrefix("10.0.0.100/24")}}}
	line := "\x1b[0m" + r.Line()
	got, ok := bootcfg.ParseReady(line)
	if !ok || got.Name != "vm1" || len(got.NICs) != 1 || got.NICs[0] != r.NICs[0] {
		t.Fatalf("ParseReady(%q) = %+v, %v", line, got, ok)
	}
	if _, ok := bootcfg.ParseReady("kvmnet-agent: powering off"); ok {
		t.Fatal("not a readiness line")
	}
}
