//go:build linux

// Command agent is the /init of kvmnet's built-in minimal guest. The host
// builds it static (CGO_ENABLED=0) and packs it into an initramfs with the
// virtio and ACPI modules (internal/vm.PrepareGuest); it refuses to run
// unless it is PID 1.
//
// It mounts the pseudo file systems, loads the modules listed in
// /kvmnet/config.json, reads its per-VM configuration from the kernel
// command line (internal/vm/bootcfg), configures each NIC (found by MAC) by
// DHCP (internal/dhcp's client) or statically, and serves on every address:
// TCP echo (7), TCP discard (9) and HTTP (80: "/" returns the host name and
// addresses as JSON; "/bytes?n=N" streams N bytes; "/ping?to=IP" and
// "/connect?to=IP:PORT" probe from inside the guest). The kernel answers
// ping. When all NICs are configured it prints the readiness line on the
// serial console. An ACPI power-button press (QMP system_powerdown) makes it
// release its DHCP leases and power off.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/dhcp"
	"github.com/kvmnet/kvmnet/internal/guest"
	"github.com/kvmnet/kvmnet/internal/vm/bootcfg"
)

var start = time.Now()

func say(format string, args ...any) {
	fmt.Printf(bootcfg.Prefix+format+"\n", args...)
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "agent: refusing to run: this is the built-in guest's /init and must be PID 1 inside a VM")
		os.Exit(2)
	}
	fmt.Println()
	if err := run(); err != nil {
		say("error: %v", err)
	}
	// PID 1 must never exit.
	select {}
}

type nicState struct {
	cfg   bootcfg.NIC
	iface string
	addr  netip.Prefix
	lease *dhcp.Acquired
}

var (
	mu   sync.Mutex
	nics []*nicState
	name string
)

func run() error {
	if err := mountAll(); err != nil {
		return err
	}
	var gc guest.Config
	if b, err := os.ReadFile(guest.ConfigPath); err == nil {
		if err := json.Unmarshal(b, &gc); err != nil {
			return fmt.Errorf("parse %s: %w", guest.ConfigPath, err)
		}
	}
	if gc.Probe {
		say("probe guest up")
		fmt.Println(guest.VerdictMarker(guest.CodePass))
		_ = unix.IoctlSetInt(1, unix.TCSBRK, 1)
		return guest.DebugExit(guest.CodePass)
	}
	for _, m := range gc.Modules {
		if err := loadModule(m); err != nil {
			say("load module %s: %v", m.Name, err)
		}
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg, err := bootcfg.Parse(string(cmdline))
	if err != nil {
		return err
	}
	name = cfg.Name
	if name == "" {
		name = "kvmnet-guest"
	}
	_ = unix.Sethostname([]byte(name))
	_ = os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644)
	go powerButton()

	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	if err := writeResolv(cfg.DNS); err != nil {
		say("resolv.conf: %v", err)
	}

	var wg sync.WaitGroup
	errs := make([]error, len(cfg.NICs))
	for i, n := range cfg.NICs {
		st := &nicState{cfg: n}
		nics = append(nics, st)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = configure(st)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := serve(); err != nil {
		return err
	}
	r := bootcfg.Ready{Name: name, Uptime: uptime()}
	for _, n := range nics {
		r.NICs = append(r.NICs, bootcfg.ReadyNIC{MAC: n.cfg.MAC, Iface: n.iface, Addr: n.addr})
	}
	fmt.Println(r.Line())
	return nil
}

// configure finds the interface with the NIC's MAC, brings it up and
// addresses it.
func configure(st *nicState) error {
	var link netlink.Link
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == st.cfg.MAC {
				link = l
			}
		}
		if link != nil {
			break
		}
		if time.Now().After(end) {
			return fmt.Errorf("no interface with MAC %s", st.cfg.MAC)
		}
	}
	st.iface = link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", st.iface, err)
	}
	addr, gw := st.cfg.Addr, st.cfg.Gateway
	if st.cfg.DHCP {
		hw, _ := net.ParseMAC(st.cfg.MAC)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		a, err := dhcp.Acquire(ctx, dhcp.ClientConfig{Interface: st.iface, MAC: hw, ClientID: append([]byte{0}, name...), Hostname: name})
		if err != nil {
			return err
		}
		st.lease = a
		addr, gw = a.Addr, a.Router
		if len(a.DNS) > 0 {
			_ = writeResolv(a.DNS)
		}
		go renew(st)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, st.iface, err)
	}
	if gw.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s on %s: %w", gw, st.iface, err)
		}
	}
	st.addr = addr
	return nil
}

func renew(st *nicState) {
	for {
		time.Sleep(st.lease.Renew)
		ctx, cancel := context.WithTimeout(context.Background(), st.lease.LeaseTime-st.lease.Renew)
		err := st.lease.RenewLease(ctx)
		cancel()
		if err != nil {
			say("dhcp renew on %s: %v", st.iface, err)
		}
	}
}

func writeResolv(dns []netip.Addr) error {
	if len(dns) == 0 {
		return nil
	}
	var b strings.Builder
	for _, d := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644)
}

// serve starts the echo, discard and HTTP servers on all addresses.
func serve() error {
	echo, err := net.Listen("tcp", fmt.Sprintf(":%d", bootcfg.EchoPort))
	if err != nil {
		return err
	}
	discard, err := net.Listen("tcp", fmt.Sprintf(":%d", bootcfg.DiscardPort))
	if err != nil {
		return err
	}
	web, err := net.Listen("tcp", fmt.Sprintf(":%d", bootcfg.HTTPPort))
	if err != nil {
		return err
	}
	accept := func(l net.Listener, h func(net.Conn)) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); h(c) }()
		}
	}
	go accept(echo, func(c net.Conn) { _, _ = io.Copy(c, c) })
	go accept(discard, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	mux := http.NewServeMux()
	mux.HandleFunc("/", index)
	mux.HandleFunc("/bytes", bytesHandler)
	mux.HandleFunc("/ping", pingHandler)
	mux.HandleFunc("/connect", connectHandler)
	go func() { _ = http.Serve(web, mux) }()
	return nil
}

type ifaceInfo struct {
	Name  string   `json:"name"`
	MAC   string   `json:"mac"`
	Addrs []string `json:"addrs"`
	DHCP  bool     `json:"dhcp,omitempty"`
}

func index(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	host, _ := os.Hostname()
	out := struct {
		Hostname   string      `json:"hostname"`
		Uptime     string      `json:"uptime"`
		Interfaces []ifaceInfo `json:"interfaces"`
	}{Hostname: host, Uptime: uptime().Round(time.Millisecond).String()}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 {
			continue
		}
		info := ifaceInfo{Name: i.Name, MAC: i.HardwareAddr.String(), Addrs: []string{}}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			info.Addrs = append(info.Addrs, a.String())
		}
		for _, n := range nics {
			if n.iface == i.Name && n.lease != nil {
				info.DHCP = true
			}
		}
		out.Interfaces = append(out.Interfaces, info)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func bytesHandler(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want ?n=BYTES", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, 256<<10)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		n -= k
	}
}

// pingHandler sends ICMP echo requests to ?to= (count ?c=, default 3) and
// reports how many were answered; 200 when at least one was.
func pingHandler(w http.ResponseWriter, r *http.Request) {
	to, err := netip.ParseAddr(r.URL.Query().Get("to"))
	if err != nil || !to.Is4() {
		http.Error(w, "want ?to=IPv4", http.StatusBadRequest)
		return
	}
	count := 3
	if c, err := strconv.Atoi(r.URL.Query().Get("c")); err == nil && c > 0 && c <= 100 {
		count = c
	}
	got, err := ping(to, count)
	msg := fmt.Sprintf("%d/%d replies from %s", got, count, to)
	if err != nil {
		msg += ": " + err.Error()
	}
	if got == 0 {
		http.Error(w, msg, http.StatusBadGateway)
		return
	}
	fmt.Fprintln(w, msg)
}

func ping(to netip.Addr, count int) (int, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	got := 0
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("kvmnet")}}
		b, _ := m.Marshal(nil)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: to.AsSlice()}); err != nil {
			return got, err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			rm, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || rm.Type != ipv4.ICMPTypeEchoReply || peer.String() != to.String() {
				continue
			}
			if e, ok := rm.Body.(*icmp.Echo); ok && e.Seq == seq {
				got++
				break
			}
		}
	}
	return got, nil
}

func connectHandler(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	c, err := net.DialTimeout("tcp", to, 3*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	c.Close()
	fmt.Fprintf(w, "connected to %s\n", to)
}

// powerButton waits for the ACPI power button (an evdev KEY_POWER press)
// and powers the guest off, releasing DHCP leases first.
func powerButton() {
	var dev string
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && dev == ""; time.Sleep(100 * time.Millisecond) {
		names, _ := filepath.Glob("/sys/class/input/event*/device/name")
		for _, n := range names {
			if b, _ := os.ReadFile(n); strings.TrimSpace(string(b)) == "Power Button" {
				dev = "/dev/input/" + filepath.Base(filepath.Dir(filepath.Dir(n)))
			}
		}
	}
	if dev == "" {
		say("no ACPI power button: system_powerdown will not be heard")
		return
	}
	f, err := os.Open(dev)
	if err != nil {
		say("open %s: %v", dev, err)
		return
	}
	// struct input_event on 64-bit: timeval (16), type u16, code u16, value s32.
	const evKey, keyPower = 1, 116
	ev := make([]byte, 24)
	for {
		if _, err := io.ReadFull(f, ev); err != nil {
			say("read %s: %v", dev, err)
			return
		}
		typ := uint16(ev[16]) | uint16(ev[17])<<8
		code := uint16(ev[18]) | uint16(ev[19])<<8
		val := int32(uint32(ev[20]) | uint32(ev[21])<<8 | uint32(ev[22])<<16 | uint32(ev[23])<<24)
		if typ == evKey && code == keyPower && val == 1 {
			powerOff()
		}
	}
}

func powerOff() {
	mu.Lock()
	for _, n := range nics {
		if n.lease != nil {
			if err := n.lease.Release(); err != nil {
				say("dhcp release on %s: %v", n.iface, err)
			}
		}
	}
	mu.Unlock()
	time.Sleep(50 * time.Millisecond) // let the releases leave
	fmt.Println(bootcfg.PowerOffMarker)
	unix.Sync()
	_ = unix.IoctlSetInt(1, unix.TCSBRK, 1)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func mountAll() error {
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
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
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

func uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Since(start)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return time.Since(start)
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return time.Duration(s * float64(time.Second))
}
