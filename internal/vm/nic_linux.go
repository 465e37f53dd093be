package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

func numCPU() int { return runtime.NumCPU() }

// Wiring is how a VM's tap reaches the veth to the segment's bridge.
// docs/vms.md has the measurements behind the default.
type Wiring string

const (
	// WiringBridge joins tap and uplink with a small bridge in the VM's
	// namespace. Traffic crosses that namespace's netfilter (the bridge
	// family, and the inet family through br_netfilter) and its qdiscs: a
	// firewall rule or rate limit placed there acts on the VM. The default.
	WiringBridge Wiring = "bridge"
	// WiringMirred redirects frames between tap and uplink with tc ingress
	// u32 + mirred, both ways (as Kata Containers does). qdiscs on the two
	// devices act, but netfilter in the namespace never sees the traffic.
	WiringMirred Wiring = "mirred"
	// WiringDirect enslaves the tap to the segment bridge itself (Uplink
	// names the bridge and Namespace the bridge's namespace): no VM
	// namespace at all. For comparison only; it fails the namespace
	// boundary requirement.
	WiringDirect Wiring = "direct"
)

// ErrTapBusy is returned when a tap exists but belongs to someone else.
var ErrTapBusy = errors.New("tap exists and is not kvmnet's")

const (
	tunDevice = "/dev/net/tun"
	tapFlags  = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
)

// tunsetiff attaches fd to (creating if needed) the tap name.
func tunsetiff(fd int, name string) error {
	var ifr [unix.IFNAMSIZ + 64]byte
	copy(ifr[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = tapFlags
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// openTapHere opens name in the calling thread's namespace (inside Do).
//
// A single-queue tap is busy while any descriptor of it is open. When VMs
// boot in parallel, a QEMU being forked for one VM briefly holds, until its
// exec closes them, copies of every descriptor the process had open, among
// them the tap another VM is attaching (O_CLOEXEC closes it only at exec):
// so EBUSY is retried for a moment before it is an error.
func openTapHere(name string) (*os.File, error) {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", tunDevice, err)
	}
	for try := 0; ; try++ {
		err = tunsetiff(fd, name)
		if !errors.Is(err, unix.EBUSY) || try == 100 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// OpenTap opens the persistent tap name in ns and returns its queue file
// descriptor, for QEMU's -netdev tap,fd=N. The tap must exist (AttachNIC).
// The open happens inside ns (a tap is found by name in the namespace of
// the thread that calls TUNSETIFF), so QEMU itself needs no namespace.
func OpenTap(ns *netns.NS, name string) (*os.File, error) {
	var f *os.File
	err := netns.Do(ns, func() error {
		// TUNSETIFF would create a missing tap (one that vanishes with
		// QEMU): check first, with a netlink socket of this thread.
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("tap %q: %w", name, err)
		}
		var err error
		f, err = openTapHere(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open tap %q in namespace %q: %w", name, ns.Name, err)
	}
	return f, nil
}

// createTap makes a persistent tap in ns (the thread is inside ns for
// TUNSETIFF: a tap made through a netlink handle bound to another
// namespace lands in the caller's, silently).
func createTap(ns *netns.NS, name string) error {
	return netns.Do(ns, func() error {
		f, err := openTapHere(name)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETPERSIST, 1); err != nil {
			return fmt.Errorf("TUNSETPERSIST %q: %w", name, err)
		}
		return nil
	})
}

func handleAt(ns *netns.NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %q: %w", ns.Name, err)
	}
	return h, nil
}

// AttachNIC creates nic's persistent tap in ns (with the uplink's MTU,
// marked with the ifalias mark, up) and joins it to nic.Uplink as
// nic.Wiring says. It is idempotent: a tap and bridge that already carry the
// mark are kept; a tap without the mark is ErrTapBusy.
func AttachNIC(ns *netns.NS, nic NIC, mark string) error {
	return AttachNICMarks(ns, nic, mark, mark)
}

// AttachNICMarks is AttachNIC with the per-VM bridge (WiringBridge)
// marked bridgeMark and the tap tapMark. kvmnet's network plan makes the
// per-VM bridge of a VM declared in a topology (it is part of the network,
// marked as the network's, with the uplink enslaved) and AttachNICMarks
// then only adds the tap, which the plan leaves alone because it carries
// another mark. A bridge carrying neither mark is refused.
func AttachNICMarks(ns *netns.NS, nic NIC, tapMark, bridgeMark string) error {
	mark := tapMark
	nic = Spec{NICs: []NIC{nic}}.WithDefaults().NICs[0]
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	where := fmt.Sprintf("tap %q in namespace %q", nic.Tap, ns.Name)
	up, err := h.LinkByName(nic.Uplink)
	if err != nil {
		return fmt.Errorf("%s: uplink %q: %w", where, nic.Uplink, err)
	}
	tap, err := h.LinkByName(nic.Tap)
	if err == nil {
		if tap.Type() != "tuntap" || tap.Attrs().Alias != mark {
			return fmt.Errorf("%s: %w (kind %s, alias %q)", where, ErrTapBusy, tap.Type(), tap.Attrs().Alias)
		}
	} else {
		if err := createTap(ns, nic.Tap); err != nil {
			return fmt.Errorf("create %s: %w", where, err)
		}
		if tap, err = h.LinkByName(nic.Tap); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := h.LinkSetAlias(tap, mark); err != nil {
			return fmt.Errorf("mark %s: %w", where, err)
		}
	}
	if tap.Attrs().MTU != up.Attrs().MTU {
		if err := h.LinkSetMTU(tap, up.Attrs().MTU); err != nil {
			return fmt.Errorf("%s: MTU %d: %w", where, up.Attrs().MTU, err)
		}
	}
	switch nic.Wiring {
	case WiringDirect:
		if err := h.LinkSetMaster(tap, up); err != nil {
			return fmt.Errorf("%s: master %q: %w", where, nic.Uplink, err)
		}
	case WiringBridge:
		br, err := h.LinkByName(nic.Bridge)
		if err != nil {
			b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: nic.Bridge, MTU: up.Attrs().MTU}}
			if err := h.LinkAdd(b); err != nil {
				return fmt.Errorf("%s: create bridge %q: %w", where, nic.Bridge, err)
			}
			if br, err = h.LinkByName(nic.Bridge); err != nil {
				return err
			}
			if err := h.LinkSetAlias(br, bridgeMark); err != nil {
				return err
			}
		} else if br.Type() != "bridge" || (br.Attrs().Alias != bridgeMark && br.Attrs().Alias != tapMark) {
			return fmt.Errorf("%s: bridge %q exists and is not kvmnet's (kind %s, alias %q)", where, nic.Bridge, br.Type(), br.Attrs().Alias)
		}
		// No IPv6 on the per-VM bridge: it must stay silent on the
		// segment (no router solicitations or DAD from it). Bridged
		// traffic passes this namespace's inet/ip/ip6 hooks
		// (br_netfilter; the default, but not left to chance): that is
		// what makes the namespace the VM's firewall boundary. A kernel
		// without br_netfilter has no such sysctls; the bridge family
		// still sees the traffic.
		_ = netns.WriteSysctls(ns, [][2]string{
			{"net.ipv6.conf." + nic.Bridge + ".disable_ipv6", "1"},
		})
		_ = netns.WriteSysctls(ns, [][2]string{
			{"net.bridge.bridge-nf-call-iptables", "1"},
			{"net.bridge.bridge-nf-call-ip6tables", "1"},
		})
		for _, l := range []netlink.Link{tap, up} {
			if l.Attrs().MasterIndex != br.Attrs().Index {
				if err := h.LinkSetMaster(l, br); err != nil {
					return fmt.Errorf("%s: join %q to bridge %q: %w", where, l.Attrs().Name, nic.Bridge, err)
				}
			}
		}
		if err := h.LinkSetUp(br); err != nil {
			return err
		}
	case WiringMirred:
		if err := redirect(h, tap, up); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := redirect(h, up, tap); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	default:
		return fmt.Errorf("%s: unknown wiring %q", where, nic.Wiring)
	}
	for _, l := range []netlink.Link{tap, up} {
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("%s: set %q up: %w", where, l.Attrs().Name, err)
		}
	}
	return nil
}

// redirect installs an ingress qdisc on from and a match-all u32 filter
// that redirects every frame to to's egress.
func redirect(h *netlink.Handle, from, to netlink.Link) error {
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := h.QdiscReplace(ingress); err != nil {
		return fmt.Errorf("ingress qdisc on %q: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		Sel:         &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Nkeys: 1, Keys: []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}}},
		Actions:     []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := h.FilterReplace(f); err != nil {
		return fmt.Errorf("mirred %q -> %q: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// DetachNIC removes what AttachNIC made in ns: the tap, the per-VM bridge
// (the uplink is released, not deleted) or the redirect qdiscs. Objects that
// are gone already are fine; objects without the mark are left alone.
func DetachNIC(ns *netns.NS, nic NIC, mark string) error {
	nic = Spec{NICs: []NIC{nic}}.WithDefaults().NICs[0]
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	if nic.Wiring == WiringMirred {
		if up, err := h.LinkByName(nic.Uplink); err == nil {
			ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: up.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
			if err := h.QdiscDel(ingress); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("delete ingress qdisc on %q in namespace %q: %w", nic.Uplink, ns.Name, err))
			}
		}
	}
	names := []string{nic.Tap}
	if nic.Wiring == WiringBridge {
		names = append(names, nic.Bridge)
	}
	for _, n := range names {
		l, err := h.LinkByName(n)
		if err != nil {
			continue
		}
		if l.Attrs().Alias != mark {
			errs = append(errs, fmt.Errorf("%q in namespace %q is not kvmnet's (alias %q): left alone", n, ns.Name, l.Attrs().Alias))
			continue
		}
		if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %q in namespace %q: %w", n, ns.Name, err))
		}
	}
	return errors.Join(errs...)
}

// DetachTap deletes nic's tap in ns if it carries mark; a tap that is gone
// already is fine. It leaves the per-VM bridge and the uplink alone (for a
// bridge made by kvmnet's network plan: see AttachNICMarks).
func DetachTap(ns *netns.NS, nic NIC, mark string) error {
	nic = Spec{NICs: []NIC{nic}}.WithDefaults().NICs[0]
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(nic.Tap)
	if err != nil {
		return nil
	}
	if l.Attrs().Alias != mark {
		return fmt.Errorf("%q in namespace %q is not kvmnet's (alias %q): left alone", nic.Tap, ns.Name, l.Attrs().Alias)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %q in namespace %q: %w", nic.Tap, ns.Name, err)
	}
	return nil
}

// NICAttached reports, reading only, whether nic is wired as AttachNIC
// leaves it: its tap exists with mark, is up, has the uplink's MTU and,
// with WiringBridge, is a port of the per-VM bridge together with the
// uplink. The reason says what is missing.
func NICAttached(ns *netns.NS, nic NIC, mark string) (ok bool, reason string, err error) {
	nic = Spec{NICs: []NIC{nic}}.WithDefaults().NICs[0]
	h, err := handleAt(ns)
	if err != nil {
		return false, "", err
	}
	defer h.Close()
	up, err := h.LinkByName(nic.Uplink)
	if err != nil {
		return false, fmt.Sprintf("uplink %q: %v", nic.Uplink, err), nil
	}
	tap, err := h.LinkByName(nic.Tap)
	switch {
	case err != nil:
		return false, fmt.Sprintf("no tap %q", nic.Tap), nil
	case tap.Type() != "tuntap" || tap.Attrs().Alias != mark:
		return false, fmt.Sprintf("%q is not kvmnet's tap (kind %s, alias %q)", nic.Tap, tap.Type(), tap.Attrs().Alias), nil
	case tap.Attrs().Flags&net.FlagUp == 0:
		return false, fmt.Sprintf("tap %q is down", nic.Tap), nil
	case tap.Attrs().MTU != up.Attrs().MTU:
		return false, fmt.Sprintf("tap %q has MTU %d, its uplink %d", nic.Tap, tap.Attrs().MTU, up.Attrs().MTU), nil
	}
	if nic.Wiring == WiringBridge {
		br, err := h.LinkByName(nic.Bridge)
		switch {
		case err != nil:
			return false, fmt.Sprintf("no bridge %q", nic.Bridge), nil
		case tap.Attrs().MasterIndex != br.Attrs().Index || up.Attrs().MasterIndex != br.Attrs().Index:
			return false, fmt.Sprintf("tap %q and uplink %q are not both ports of %q", nic.Tap, nic.Uplink, nic.Bridge), nil
		case br.Attrs().Flags&net.FlagUp == 0:
			return false, fmt.Sprintf("bridge %q is down", nic.Bridge), nil
		}
	}
	return true, "", nil
}
