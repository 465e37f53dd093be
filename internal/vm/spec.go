// Package vm runs kvmnet's virtual machines: QEMU processes whose NICs are
// tap devices in each VM's own network namespace.
//
// The pieces, in the order `kvmnet up` would use them:
//
//   - Spec describes a VM (vCPUs, memory, NICs, what to boot); Validate
//     rejects bad specs (memory larger than the host's, a missing image, a
//     MAC collision) before anything is built.
//   - AttachNIC creates the VM's tap in its namespace and joins it to the
//     veth that reaches the segment's bridge (a small per-VM bridge by
//     default: see Wiring and docs/vms.md); DetachNIC removes it.
//   - PrepareGuest readies the built-in minimal guest: Debian's cloud kernel
//     (internal/guest, cached, never installed) and an initramfs with the
//     static Go agent (internal/vm/agent) as /init. It also decides KVM or
//     TCG once (internal/guest.ChooseAccel).
//   - Machine starts QEMU in the background (-daemonize: it outlives the
//     caller, in its own session, with a pidfile, a serial log, a console
//     socket and a QMP socket in the VM's state directory), reports its
//     state (running, stopped, crashed) and shuts it down over QMP (ACPI
//     power button, then kill after a timeout).
//   - WriteSeed writes a cloud-init NoCloud seed (ISO 9660) for user disk
//     images.
//
// QEMU is the only process this package starts besides `go build` of the
// agent; the network side talks netlink in-process.
package vm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
)

// Defaults.
const (
	DefaultCPUs         = 1
	DefaultMemoryMiB    = 128 // the built-in guest needs little
	DefaultImageMemory  = 1024
	DefaultWiring       = WiringBridge
	maxIfname           = 15
	DefaultStopTimeout  = 30 // seconds of ACPI shutdown before kill
	builtinKernelParams = "console=ttyS0 panic=-1 rdinit=/init edd=off quiet loglevel=3"
)

// Spec is one VM.
type Spec struct {
	// Name is the VM's name and host name (letters, digits, '-').
	Name      string `json:"name"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	NICs      []NIC  `json:"nics"`
	Boot      Boot   `json:"boot"`
}

// NIC is one VM network interface: a tap in the VM's namespace, joined to
// the veth (Uplink) that reaches the segment's bridge.
type NIC struct {
	// Namespace is the VM's namespace (e.g. "vm1"); the tap lives there.
	Namespace string `json:"namespace"`
	// Tap is the tap's name in Namespace; default "tap<i>".
	Tap string `json:"tap,omitempty"`
	// Uplink is the existing interface in Namespace the tap is joined to
	// (the veth whose peer is a port of the segment's bridge). With
	// WiringDirect it is the segment bridge itself.
	Uplink string `json:"uplink"`
	// Bridge names the per-VM bridge of WiringBridge; default "vbr<i>".
	Bridge string `json:"bridge,omitempty"`
	// Wiring joins tap and uplink; default WiringBridge.
	Wiring Wiring `json:"wiring,omitempty"`
	// MAC of the guest's interface (the virtio NIC, not the tap).
	MAC string `json:"mac"`
	// DHCP, or a static Address (with an optional Gateway).
	DHCP    bool         `json:"dhcp,omitempty"`
	Address netip.Prefix `json:"address,omitzero"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DNS     []netip.Addr `json:"dns,omitempty"`
}

// Boot says what the VM boots.
type Boot struct {
	// Image is a disk image (qcow2 or raw); empty means the built-in guest.
	Image string `json:"image,omitempty"`
	// Format is "qcow2" or "raw"; default: from the file's header.
	Format string `json:"format,omitempty"`
	// Snapshot discards the guest's writes to Image when QEMU exits.
	Snapshot bool `json:"snapshot,omitempty"`
	// CloudInit, for an image: a NoCloud seed is generated and attached.
	CloudInit *CloudInit `json:"cloud_init,omitempty"`
}

// CloudInit is what the generated NoCloud seed tells the image.
type CloudInit struct {
	// Hostname defaults to the VM's name.
	Hostname string `json:"hostname,omitempty"`
	// User is the account the SSH keys are for; default "kvmnet".
	User    string   `json:"user,omitempty"`
	SSHKeys []string `json:"ssh_keys,omitempty"`
	// ExtraUserData is appended to the generated #cloud-config (YAML).
	ExtraUserData string `json:"extra_user_data,omitempty"`
}

// BuiltIn reports whether the spec boots the built-in guest.
func (s *Spec) BuiltIn() bool { return s.Boot.Image == "" }

// WithDefaults returns a copy with defaults filled in.
func (s Spec) WithDefaults() Spec {
	if s.CPUs == 0 {
		s.CPUs = DefaultCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
		if !s.BuiltIn() {
			s.MemoryMiB = DefaultImageMemory
		}
	}
	nics := make([]NIC, len(s.NICs))
	for i, n := range s.NICs {
		if n.Tap == "" {
			n.Tap = fmt.Sprintf("tap%d", i)
		}
		if n.Bridge == "" {
			n.Bridge = fmt.Sprintf("vbr%d", i)
		}
		if n.Wiring == "" {
			n.Wiring = DefaultWiring
		}
		if hw, err := net.ParseMAC(n.MAC); err == nil {
			n.MAC = hw.String()
		}
		nics[i] = n
	}
	s.NICs = nics
	if s.Boot.CloudInit != nil {
		ci := *s.Boot.CloudInit
		if ci.Hostname == "" {
			ci.Hostname = s.Name
		}
		if ci.User == "" {
			ci.User = "kvmnet"
		}
		s.Boot.CloudInit = &ci
	}
	return s
}

// ErrInvalidSpec is wrapped by every Validate error.
var ErrInvalidSpec = errors.New("invalid VM spec")

// Host is what Validate checks specs against.
type Host struct {
	MemoryMiB int // total RAM
	CPUs      int
}

// HostInfo reads the host's RAM (MemTotal) and CPU count.
func HostInfo() (Host, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return Host{}, err
	}
	h := Host{CPUs: numCPU()}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int
		if _, err := fmt.Sscanf(l, "MemTotal: %d kB", &kb); err == nil {
			h.MemoryMiB = kb / 1024
		}
	}
	if h.MemoryMiB == 0 {
		return h, errors.New("no MemTotal in /proc/meminfo")
	}
	return h, nil
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// Validate checks specs against each other and the host, without touching
// the kernel: names, vCPUs, memory (each VM at most the host's RAM, and all
// of them together too), NICs (MAC syntax, unicast, no collision between
// any two NICs, static addressing, interface names), and images (present,
// readable). All problems are returned joined, each wrapping ErrInvalidSpec.
func Validate(specs []Spec, h Host) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, args...)...))
	}
	names := map[string]bool{}
	macs := map[string]string{} // MAC -> "vm nic i"
	taps := map[string]string{} // namespace/tap -> vm
	total := 0
	for _, s := range specs {
		s = s.WithDefaults()
		if !nameRe.MatchString(s.Name) {
			bad("vm %q: name must be letters, digits and '-' (at most 63)", s.Name)
		}
		if names[s.Name] {
			bad("vm %q: defined twice", s.Name)
		}
		names[s.Name] = true
		if s.CPUs < 1 || (h.CPUs > 0 && s.CPUs > h.CPUs) {
			bad("vm %q: %d vCPUs, the host has %d", s.Name, s.CPUs, h.CPUs)
		}
		if s.MemoryMiB < 64 {
			bad("vm %q: memory %d MiB is below 64 MiB", s.Name, s.MemoryMiB)
		}
		if h.MemoryMiB > 0 && s.MemoryMiB > h.MemoryMiB {
			bad("vm %q: memory %d MiB is more than the host's %d MiB", s.Name, s.MemoryMiB, h.MemoryMiB)
		}
		total += s.MemoryMiB
		if len(s.NICs) == 0 {
			bad("vm %q: no NICs", s.Name)
		}
		for i, n := range s.NICs {
			where := fmt.Sprintf("vm %q nic %d", s.Name, i)
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case err != nil || len(hw) != 6:
				bad("%s: MAC %q is not an Ethernet MAC", where, n.MAC)
			case hw[0]&1 != 0:
				bad("%s: MAC %s is a multicast address", where, hw)
			case hw.String() == "00:00:00:00:00:00":
				bad("%s: MAC %s is all zeros", where, hw)
			default:
				if other, dup := macs[hw.String()]; dup {
					bad("%s: MAC %s collides with %s", where, hw, other)
				}
				macs[hw.String()] = where
			}
			if n.Namespace == "" {
				bad("%s: no namespace", where)
			}
			if n.Uplink == "" {
				bad("%s: no uplink interface", where)
			}
			for _, ifn := range []string{n.Tap, n.Uplink, n.Bridge} {
				if len(ifn) > maxIfname || strings.ContainsAny(ifn, "/ \t") {
					bad("%s: interface name %q is not a valid name (at most %d bytes)", where, ifn, maxIfname)
				}
			}
			k := n.Namespace + "/" + n.Tap
			if other, dup := taps[k]; dup {
				bad("%s: tap %q in namespace %q is also used by %s", where, n.Tap, n.Namespace, other)
			}
			taps[k] = where
			switch n.Wiring {
			case WiringBridge, WiringMirred, WiringDirect:
			default:
				bad("%s: unknown wiring %q (want bridge, mirred or direct)", where, n.Wiring)
			}
			if n.DHCP && n.Address.IsValid() {
				bad("%s: both DHCP and a static address", where)
			}
			if !n.DHCP && !n.Address.IsValid() && s.BuiltIn() {
				bad("%s: neither DHCP nor a static address", where)
			}
			if n.Address.IsValid() && !n.Address.Addr().Is4() {
				bad("%s: address %v: the built-in guest configures IPv4 only", where, n.Address)
			}
			if n.Gateway.IsValid() && (!n.Address.IsValid() || !n.Address.Masked().Contains(n.Gateway)) {
				bad("%s: gateway %v is not in the NIC's subnet %v", where, n.Gateway, n.Address)
			}
		}
		if !s.BuiltIn() {
			fi, err := os.Stat(s.Boot.Image)
			switch {
			case err != nil:
				bad("vm %q: image %q: %v", s.Name, s.Boot.Image, errors.Unwrap(err))
			case !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0:
				bad("vm %q: image %q is not a file or block device", s.Name, s.Boot.Image)
			default:
				if f, err := os.Open(s.Boot.Image); err != nil {
					bad("vm %q: image %q: %v", s.Name, s.Boot.Image, err)
				} else {
					f.Close()
				}
			}
			switch s.Boot.Format {
			case "", "qcow2", "raw":
			default:
				bad("vm %q: image format %q (want qcow2 or raw)", s.Name, s.Boot.Format)
			}
		} else if s.Boot.CloudInit != nil {
			bad("vm %q: cloud-init needs a disk image (the built-in guest is configured from the kernel command line)", s.Name)
		}
	}
	if h.MemoryMiB > 0 && total > h.MemoryMiB && len(specs) > 1 {
		bad("%d VMs need %d MiB together, more than the host's %d MiB", len(specs), total, h.MemoryMiB)
	}
	return errors.Join(errs...)
}
