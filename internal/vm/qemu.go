package vm

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kvmnet/kvmnet/internal/guest"
	"github.com/kvmnet/kvmnet/internal/vm/bootcfg"
)

// Files in a VM's state directory.
const (
	PidFile     = "qemu.pid"
	QMPSocket   = "qmp.sock"
	ConsoleSock = "console.sock" // the serial console, interactive (vm console)
	SerialLog   = "serial.log"   // everything the serial console printed, this boot
	StateFile   = "state.json"
	StderrFile  = "qemu.stderr"
	SeedFile    = "seed.iso"
)

// Launch is what the QEMU command line needs besides the spec.
type Launch struct {
	Dir    string      // the VM's state directory (absolute)
	Accel  guest.Accel // AccelKVM or AccelTCG
	Kernel string      // built-in guest: kernel and initramfs
	Initrd string
	Seed   string // image with cloud-init: the seed's path
	// TapFDs are the file descriptor numbers QEMU gets for each NIC's
	// tap, in NIC order (ExtraFiles start at 3).
	TapFDs []int
	// Vhost asks for vhost-net; Args only honours it when the caller
	// found /dev/vhost-net (QEMU 7.2 aborts on vhost=on without it).
	Vhost bool
}

// Args returns QEMU's arguments for spec s (defaults applied). The VM
// daemonizes (-daemonize with -pidfile): QEMU forks, its parent exits once
// the VM is set up (status 0) or failed (status 1 with the reason on
// stderr), and the VM runs on in its own session. -no-shutdown keeps QEMU
// alive after the guest powers off (QMP reports "shutdown"), so a guest that
// stopped itself is told apart from a QEMU that died; a guest kernel panic
// pauses the VM (pvpanic, -action panic=pause) and reads as crashed.
func Args(s Spec, l Launch) []string {
	s = s.WithDefaults()
	p := func(name string) string { return filepath.Join(l.Dir, name) }
	args := []string{
		"-name", "kvmnet-" + s.Name + ",process=kvmnet-" + s.Name,
		"-accel", string(l.Accel),
	}
	if l.Accel == guest.AccelKVM {
		args = append(args, "-cpu", "host")
	} else {
		// "max" gives TCG guests RDRAND: the kernel's RNG is ready at
		// once (see docs/guest-lane.md).
		args = append(args, "-cpu", "max")
	}
	args = append(args,
		"-m", strconv.Itoa(s.MemoryMiB), "-smp", strconv.Itoa(s.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-daemonize", "-pidfile", p(PidFile),
		"-chardev", "socket,id=console,path="+p(ConsoleSock)+",server=on,wait=off,logfile="+p(SerialLog)+",logappend=on",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path="+p(QMPSocket)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-no-shutdown",
		"-device", "pvpanic",
		"-action", "panic=pause",
	)
	if s.BuiltIn() {
		args = append(args, "-kernel", l.Kernel, "-initrd", l.Initrd, "-append", KernelParams(s))
	} else {
		drive := "file=" + s.Boot.Image + ",if=virtio,cache=writeback"
		if s.Boot.Format != "" {
			drive += ",format=" + s.Boot.Format
		}
		if s.Boot.Snapshot {
			drive += ",snapshot=on"
		}
		args = append(args, "-drive", drive)
		if l.Seed != "" {
			args = append(args, "-drive", "file="+l.Seed+",if=virtio,format=raw,readonly=on")
		}
	}
	for i, n := range s.NICs {
		netdev := fmt.Sprintf("tap,id=net%d,fd=%d", i, l.TapFDs[i])
		if l.Vhost {
			netdev += ",vhost=on"
		}
		args = append(args,
			"-netdev", netdev,
			"-device", fmt.Sprintf("virtio-net-pci,netdev=net%d,mac=%s", i, n.MAC))
	}
	return args
}

// KernelParams is the built-in guest's kernel command line for s: the
// console and panic settings, then its bootcfg parameters.
func KernelParams(s Spec) string {
	return builtinKernelParams + " " + BootConfig(s).Params()
}

// BootConfig is what the built-in guest's agent is told about s.
func BootConfig(s Spec) bootcfg.Config {
	s = s.WithDefaults()
	c := bootcfg.Config{Name: s.Name}
	for _, n := range s.NICs {
		c.NICs = append(c.NICs, bootcfg.NIC{MAC: n.MAC, DHCP: n.DHCP, Addr: n.Address, Gateway: n.Gateway})
		c.DNS = append(c.DNS, n.DNS...)
	}
	return c
}

// shellQuote renders args for logs.
func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
