package topology

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
)

// VM is a virtual machine kvmnet boots with QEMU. It lives in a namespace
// of its own (role vm, normally), which is its security and QoS boundary:
// each NIC is a tap there, joined to a link end of that namespace (its
// uplink) whose other end is a port of the segment's bridge.
type VM struct {
	// Name is the VM's name and the built-in guest's host name: letters,
	// digits and '-', at most 63 bytes.
	Name string `yaml:"name" json:"name"`
	// Namespace is the VM's namespace (default: Name).
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// CPUs is the number of vCPUs (default 1).
	CPUs int `yaml:"cpus,omitempty" json:"cpus,omitempty"`
	// Memory in MiB (default 128 for the built-in guest, 1024 for an image).
	Memory int `yaml:"memory,omitempty" json:"memory,omitempty"`
	// Boot is what the VM boots; absent: the built-in minimal guest.
	Boot *VMBoot `yaml:"boot,omitempty" json:"boot,omitempty"`
	NICs []VMNIC `yaml:"nics" json:"nics"`
}

// VMBoot is a user disk image to boot instead of the built-in guest.
type VMBoot struct {
	// Image is a qcow2 or raw disk image; a relative path is relative to
	// the topology file's directory.
	Image string `yaml:"image,omitempty" json:"image,omitempty"`
	// Format is qcow2 or raw (default: QEMU's guess from the header).
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
	// Snapshot discards the guest's writes to the image when it stops.
	Snapshot bool `yaml:"snapshot,omitempty" json:"snapshot,omitempty"`
	// CloudInit attaches a generated NoCloud seed.
	CloudInit *CloudInit `yaml:"cloud_init,omitempty" json:"cloud_init,omitempty"`
}

// CloudInit is what the generated cloud-init seed tells an image.
type CloudInit struct {
	// Hostname defaults to the VM's name.
	Hostname string `yaml:"hostname,omitempty" json:"hostname,omitempty"`
	// User is the account the SSH keys are for (default kvmnet).
	User    string   `yaml:"user,omitempty" json:"user,omitempty"`
	SSHKeys []string `yaml:"ssh_keys,omitempty" json:"ssh_keys,omitempty"`
}

// VMNIC is one guest NIC.
type VMNIC struct {
	// Uplink is the link end in the VM's namespace that the NIC rides on
	// (e.g. eth0). It holds no addresses: the guest does.
	Uplink string `yaml:"uplink" json:"uplink"`
	// MAC of the guest's NIC: explicit, or derived from the network ID, the
	// VM's name and the NIC's index.
	MAC string `yaml:"mac,omitempty" json:"mac,omitempty"`
	// DHCP: the guest asks the segment's DHCP server. Exclusive with
	// Addresses.
	DHCP bool `yaml:"dhcp,omitempty" json:"dhcp,omitempty"`
	// Addresses is the guest's static address (one, IPv4) on the segment.
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// Gateway is the static default route, inside the address's subnet.
	Gateway string `yaml:"gateway,omitempty" json:"gateway,omitempty"`
	// DNS servers the guest uses with a static address.
	DNS []string `yaml:"dns,omitempty" json:"dns,omitempty"`
}

// DHCP is kvmnet's DHCP service: one server per segment, run by kvmnet's
// background supervisor in the gateway's namespace.
type DHCP struct {
	Servers []DHCPServer `yaml:"servers,omitempty" json:"servers,omitempty"`
}

// DHCPServer serves one L2 segment from a declared interface with an IPv4
// address on it (usually the gateway's, e.g. host/eth0).
type DHCPServer struct {
	Namespace string `yaml:"namespace" json:"namespace"`
	// Interface is the declared interface the server answers on; its
	// address in the pool's subnet is the server identifier.
	Interface string   `yaml:"interface" json:"interface"`
	Pool      DHCPPool `yaml:"pool" json:"pool"`
	// Router is announced as the default gateway (default: the
	// interface's address).
	Router string `yaml:"router,omitempty" json:"router,omitempty"`
	// DNS servers announced to clients.
	DNS []string `yaml:"dns,omitempty" json:"dns,omitempty"`
	// Domain is the domain name announced to clients.
	Domain string `yaml:"domain,omitempty" json:"domain,omitempty"`
	// LeaseTime in seconds (default 3600).
	LeaseTime int `yaml:"lease_time,omitempty" json:"lease_time,omitempty"`
	// Static leases pin an address to a MAC.
	Static []DHCPStatic `yaml:"static,omitempty" json:"static,omitempty"`
}

// DHCPPool is the range of addresses the server hands out (inclusive).
type DHCPPool struct {
	Start string `yaml:"start" json:"start"`
	End   string `yaml:"end" json:"end"`
}

// DHCPStatic pins an address (and optionally a host name) to a MAC.
type DHCPStatic struct {
	MAC      string `yaml:"mac" json:"mac"`
	IP       string `yaml:"ip" json:"ip"`
	Hostname string `yaml:"hostname,omitempty" json:"hostname,omitempty"`
}

// Defaults and limits of VMs and DHCP.
const (
	DefaultVMCPUs        = 1
	DefaultVMMemory      = 128  // MiB, built-in guest
	DefaultImageMemory   = 1024 // MiB, disk image
	MinVMMemory          = 64
	DefaultLeaseTime     = 3600 // seconds
	MinLeaseTime         = 10
	MaxLeaseTime         = 365 * 24 * 3600
	maxVMNameLen         = 63
	vmNICOwnerKeyPattern = "vm:%s/nic%d" // derived MAC key of a VM NIC
)

var vmNameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$`)

// NS is the VM's namespace: Namespace, or its name.
func (v *VM) NS() string {
	if v.Namespace != "" {
		return v.Namespace
	}
	return v.Name
}

// BuiltIn reports whether the VM boots the built-in guest.
func (v *VM) BuiltIn() bool { return v.Boot == nil || v.Boot.Image == "" }

// MemoryMiB is the VM's memory with the default applied.
func (v *VM) MemoryMiB() int {
	switch {
	case v.Memory != 0:
		return v.Memory
	case v.BuiltIn():
		return DefaultVMMemory
	}
	return DefaultImageMemory
}

// VCPUs is the VM's vCPU count with the default applied.
func (v *VM) VCPUs() int {
	if v.CPUs == 0 {
		return DefaultVMCPUs
	}
	return v.CPUs
}

// VMTap is the name of the tap of a VM's NIC i in the VM's namespace.
func VMTap(i int) string { return fmt.Sprintf("tap%d", i) }

// VMBridge is the name of the per-VM bridge of NIC i, which joins the tap
// and the NIC's uplink inside the VM's namespace (docs/vms.md).
func VMBridge(i int) string { return fmt.Sprintf("vbr%d", i) }

// VM returns the VM called name, or nil.
func (t *Topology) VM(name string) *VM {
	for i := range t.VMs {
		if t.VMs[i].Name == name {
			return &t.VMs[i]
		}
	}
	return nil
}

// ImagePath is v's disk image path: a relative path is taken relative to
// the directory of the topology file.
func (t *Topology) ImagePath(v *VM) string {
	if v.BuiltIn() {
		return ""
	}
	p := v.Boot.Image
	if filepath.IsAbs(p) || t.File == "" || t.File == DefaultFile {
		return p
	}
	return filepath.Join(filepath.Dir(t.File), p)
}

// DHCPAddress returns the address of server s's interface in the subnet
// that holds the pool (the server identifier and default router), and
// whether there is one.
func (t *Topology) DHCPAddress(s *DHCPServer) (netip.Prefix, bool) {
	start, _ := netip.ParseAddr(s.Pool.Start)
	var first netip.Prefix
	found := false
	t.eachAddress(func(ns, iface, _, a string) {
		p, err := netip.ParsePrefix(a)
		if err != nil || ns != s.Namespace || iface != s.Interface || !p.Addr().Is4() || found {
			return
		}
		if !first.IsValid() {
			first = p
		}
		if start.IsValid() && p.Masked().Contains(start) {
			first, found = p, true
		}
	})
	return first, first.IsValid()
}

// DHCPRouter is the router server s announces: Router, or the server's
// own address.
func (t *Topology) DHCPRouter(s *DHCPServer) netip.Addr {
	if r, err := netip.ParseAddr(s.Router); err == nil {
		return r
	}
	p, _ := t.DHCPAddress(s)
	return p.Addr()
}

// DHCPServers returns the declared DHCP servers (none when there is no dhcp section).
func (t *Topology) DHCPServers() []DHCPServer {
	if t.DHCP == nil {
		return nil
	}
	return t.DHCP.Servers
}

// hostResources reports the host's RAM in MiB and its CPU count, which VM
// specs are checked against. Tests replace it, so that the catalogue of
// invalid files reads the same on every machine.
var hostResources = func() (memMiB, cpus int) {
	cpus = runtime.NumCPU()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, cpus
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var kb int
		if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
			return kb / 1024, cpus
		}
	}
	return 0, cpus
}

// deriveVMMACs gives every VM NIC without a MAC one derived like the other
// interfaces' (docs/topology.md, Derived MACs), keyed by "vm:NAME/nicI",
// avoiding every other MAC of the topology. It runs at the start of the VM
// validation: the VM section is validated (and defaulted) in its own file.
func (t *Topology) deriveVMMACs() {
	used := map[string]bool{}
	note := func(mac string) {
		if hw, err := net.ParseMAC(mac); err == nil && mac != "" {
			used[hw.String()] = true
		}
	}
	t.eachMAC(func(_ string, mac *string) { note(*mac) })
	for _, v := range t.VLANs {
		note(v.MAC)
	}
	for _, v := range t.VMs {
		for _, n := range v.NICs {
			note(n.MAC)
		}
	}
	for i := range t.VMs {
		v := &t.VMs[i]
		for j := range v.NICs {
			if v.NICs[j].MAC == "" {
				v.NICs[j].MAC = deriveMAC(t.ID(), fmt.Sprintf(vmNICOwnerKeyPattern, v.Name, j), used)
				used[v.NICs[j].MAC] = true
			}
		}
	}
}

// ipv4Range reports whether a is in [start, end].
func ipv4Range(a, start, end netip.Addr) bool {
	return a.Is4() && start.Compare(a) <= 0 && a.Compare(end) <= 0
}

// dhcpInfo is what the VM checks need to know of a valid DHCP server.
type dhcpInfo struct {
	field      string
	seg        string
	subnet     netip.Prefix
	start, end netip.Addr
	ok         bool // the pool is valid
}

// vms validates the VMs and the DHCP servers: names, namespaces, vCPUs
// and memory against the host, images, NICs (a plain link end of the VM's
// namespace, the MAC unique in the whole topology, DHCP on a served
// segment or one static address inside the segment's subnet), and each
// server (a declared interface with an IPv4 address, a pool inside its
// subnet that holds no declared or static VM address, one server per
// segment, static leases).
func (v *validator) vms() {
	t := v.t
	if len(t.VMs) == 0 && len(t.DHCPServers()) == 0 {
		return
	}
	t.deriveVMMACs()
	seg := v.segments()
	type decl struct {
		ns, iface, field string
		p                netip.Prefix
	}
	var decls []decl
	segSubnets := map[string][]netip.Prefix{}
	t.eachAddress(func(ns, iface, f, a string) {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return
		}
		decls = append(decls, decl{ns, iface, f, p})
		id := seg.Of(ns, iface)
		if !slices.Contains(segSubnets[id], p.Masked()) {
			segSubnets[id] = append(segSubnets[id], p.Masked())
		}
	})
	assigned := func(a netip.Addr) *decl {
		for i := range decls {
			if decls[i].p.Addr() == a {
				return &decls[i]
			}
		}
		return nil
	}

	servers := v.dhcpServers(seg, func(a netip.Addr) (string, string, string, bool) {
		if d := assigned(a); d != nil {
			return d.ns, d.iface, d.field, true
		}
		return "", "", "", false
	})
	served := map[string]bool{}
	for _, s := range servers {
		if s.seg != "" {
			served[s.seg] = true
		}
	}

	memMiB, cpus := hostResources()
	macs := map[string]string{}
	v.eachMACField(func(f, mac string) {
		if hw, err := net.ParseMAC(mac); err == nil {
			if _, ok := macs[hw.String()]; !ok {
				macs[hw.String()] = f
			}
		}
	})
	names := map[string]string{}
	nsHeld := map[string]string{}
	uplinks := map[string]string{}
	type static struct {
		field, vm string
		addr      netip.Addr
		seg       string
	}
	var statics []static
	total := 0
	for i := range t.VMs {
		vm := &t.VMs[i]
		f := fmt.Sprintf("vms[%d]", i)
		switch {
		case vm.Name == "":
			v.c.add(f+".name", "the VM needs a name")
		case len(vm.Name) > maxVMNameLen || !vmNameRe.MatchString(vm.Name):
			v.c.add(f+".name", "%q: a VM name is letters, digits and '-' (not first or last), at most %d bytes; it is also the guest's host name", vm.Name, maxVMNameLen)
		case names[vm.Name] != "":
			v.c.add(f+".name", "vm %q is already declared at %s", vm.Name, v.c.at(names[vm.Name]))
		default:
			names[vm.Name] = f + ".name"
		}
		ns := vm.NS()
		nsField := f + ".namespace"
		if vm.Namespace == "" {
			nsField = f + ".name"
		}
		nsOK := false
		switch {
		case ns == "":
		case t.Namespace(ns) == nil:
			how := "namespace %q is not declared; a VM runs in a namespace of its own: declare it (role vm)"
			if vm.Namespace == "" {
				how = "namespace %q (the VM's name, as no namespace is given) is not declared; a VM runs in a namespace of its own: declare it (role vm), or name one with namespace"
			}
			v.c.add(nsField, how, ns)
		case nsHeld[ns] != "":
			v.c.add(nsField, "namespace %q already holds the VM at %s; give each VM a namespace of its own", ns, v.c.at(nsHeld[ns]))
		default:
			nsHeld[ns] = f + ".name"
			nsOK = true
		}
		switch {
		case vm.CPUs < 0:
			v.c.add(f+".cpus", "%d vCPUs: give at least 1", vm.CPUs)
		case cpus > 0 && vm.CPUs > cpus:
			v.c.add(f+".cpus", "%d vCPUs is more than the host's %d CPUs", vm.CPUs, cpus)
		}
		mem := vm.MemoryMiB()
		switch {
		case vm.Memory < 0 || (vm.Memory > 0 && vm.Memory < MinVMMemory):
			v.c.add(f+".memory", "memory %d MiB is below the minimum of %d MiB", vm.Memory, MinVMMemory)
		case memMiB > 0 && mem > memMiB:
			v.c.add(f+".memory", "memory %d MiB is more than the host's %d MiB", mem, memMiB)
		default:
			total += mem
		}
		v.vmBoot(vm, f+".boot")
		if len(vm.NICs) == 0 {
			v.c.add(f+".nics", "a VM needs at least one NIC (nics: [{uplink: eth0, dhcp: true}])")
		}
		for j, n := range vm.NICs {
			nf := fmt.Sprintf("%s.nics[%d]", f, j)
			upOK := nsOK && v.vmUplink(ns, n.Uplink, nf+".uplink")
			if upOK {
				key := ns + "/" + n.Uplink
				if prev, ok := uplinks[key]; ok {
					v.c.add(nf+".uplink", "interface %q in namespace %q already carries the NIC at %s; give each NIC a link of its own", n.Uplink, ns, v.c.at(prev))
					upOK = false
				} else {
					uplinks[key] = nf
				}
			}
			if nsOK {
				for _, name := range []string{VMTap(j), VMBridge(j)} {
					if prev := v.ifaces[ns][name]; prev != "" {
						v.c.add(prev, "interface name %q in namespace %q is taken by vm %q: its NIC %d is the tap %q joined by the bridge %q there; rename this interface", name, ns, vm.Name, j, VMTap(j), VMBridge(j))
					}
				}
			}
			// The MAC: explicit ones are checked like every MAC, derived
			// ones are unique by construction.
			if hw, err := net.ParseMAC(n.MAC); v.c.given(nf + ".mac") {
				switch {
				case err != nil || len(hw) != 6:
					v.c.add(nf+".mac", "%q is not a 48-bit MAC address (want e.g. 52:54:00:12:34:56)", n.MAC)
				case hw[0]&1 == 1:
					v.c.add(nf+".mac", "%s is a multicast MAC; a NIC needs a unicast MAC (first octet even)", hw)
				case hw.String() == "00:00:00:00:00:00":
					v.c.add(nf+".mac", "the all-zero MAC is not a valid NIC address")
				case macs[hw.String()] != "":
					v.c.add(nf+".mac", "MAC %s is already used at %s; two interfaces with one MAC cause ARP conflicts", hw, v.c.at(macs[hw.String()]))
				default:
					macs[hw.String()] = nf + ".mac"
				}
			} else if err == nil {
				macs[hw.String()] = nf + ".mac"
			}
			segID := ""
			if upOK {
				segID = seg.Of(ns, n.Uplink)
			}
			switch {
			case n.DHCP && len(n.Addresses) > 0:
				v.c.add(nf+".dhcp", "give dhcp: true or addresses, not both")
			case !n.DHCP && len(n.Addresses) == 0:
				v.c.add(nf, "say how the guest gets its address: dhcp: true, or addresses (with an optional gateway)")
			case n.DHCP && upOK && !served[segID]:
				v.c.add(nf+".dhcp", "no DHCP server serves the L2 segment of %q in namespace %q; add one under dhcp.servers (on the gateway's interface of that segment), or give the NIC a static address", n.Uplink, ns)
			}
			if n.DHCP && (n.Gateway != "" || len(n.DNS) > 0) {
				v.c.add(nf+".dhcp", "with dhcp the server announces the gateway and DNS servers; gateway and dns go with a static address")
			}
			own := netip.Prefix{}
			for k, a := range n.Addresses {
				af := fmt.Sprintf("%s.addresses[%d]", nf, k)
				if k > 0 {
					v.c.add(af, "the guest takes one address per NIC; give this one to another NIC")
					continue
				}
				p, err := netip.ParsePrefix(a)
				switch {
				case err != nil:
					v.c.add(af, "%s", cidrProblem(a))
					continue
				case !p.Addr().Is4() || p.Addr().Zone() != "":
					v.c.add(af, "%s: a VM NIC takes an IPv4 address (the guests are configured for IPv4 only)", a)
					continue
				case p.Addr().IsMulticast() || p.Addr().IsUnspecified() || p.Addr().IsLoopback():
					v.c.add(af, "%s is not a unicast host address", p.Addr())
					continue
				case p.Bits() < 31 && (p.Addr() == p.Masked().Addr() || p.Addr() == broadcast(p)):
					v.c.add(af, "%s is the network or broadcast address of %s; pick a host address", p.Addr(), p.Masked())
					continue
				}
				if d := assigned(p.Addr()); d != nil {
					v.c.add(af, "address %s is already assigned to %q in namespace %q at %s; duplicate addresses cause ARP conflicts", p.Addr(), d.iface, d.ns, v.c.at(d.field))
					continue
				}
				dup := false
				for _, s := range statics {
					if s.addr == p.Addr() {
						v.c.add(af, "address %s is already the address of vm %q at %s; duplicate addresses cause ARP conflicts", p.Addr(), s.vm, v.c.at(s.field))
						dup = true
						break
					}
				}
				if dup {
					continue
				}
				own = p
				if upOK {
					if subs := segSubnets[segID]; len(subs) > 0 && !slices.Contains(subs, p.Masked()) {
						v.c.add(af, "%s is outside the subnet of its L2 segment%s; the gateway and the hosts there would not reach it", p, subnetsHint(subs))
					}
				}
				statics = append(statics, static{field: af, vm: vm.Name, addr: p.Addr(), seg: segID})
			}
			if n.Gateway != "" {
				gf := nf + ".gateway"
				gw, err := netip.ParseAddr(n.Gateway)
				switch {
				case err != nil || gw.Zone() != "":
					v.c.add(gf, "%q is not an IP address", n.Gateway)
				case len(n.Addresses) == 0:
					if !n.DHCP {
						v.c.add(gf, "a gateway goes with a static address (addresses)")
					}
				case !own.IsValid():
				case !own.Masked().Contains(gw):
					v.c.add(gf, "gateway %s is outside the NIC's subnet %s", gw, own.Masked())
				case gw == own.Addr():
					v.c.add(gf, "gateway %s is the NIC's own address; a gateway is a neighbour's address", gw)
				case own.Bits() < 31 && (gw == own.Masked().Addr() || gw == broadcast(own)):
					v.c.add(gf, "gateway %s is the network or broadcast address of %s", gw, own.Masked())
				}
			}
			for k, d := range n.DNS {
				if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || a.Zone() != "" {
					v.c.add(fmt.Sprintf("%s.dns[%d]", nf, k), "%q is not an IPv4 address", d)
				}
			}
		}
	}
	if memMiB > 0 && len(t.VMs) > 1 && total > memMiB {
		v.c.add("vms", "the %d VMs need %d MiB together, more than the host's %d MiB", len(t.VMs), total, memMiB)
	}
	// A static VM address inside a pool of its segment could be handed to
	// another client.
	for _, s := range servers {
		if !s.ok {
			continue
		}
		for _, st := range statics {
			if st.seg == s.seg && ipv4Range(st.addr, s.start, s.end) {
				v.c.add(s.field+".pool", "pool %s-%s contains %s, the static address of vm %q at %s; the server could hand it to another client: shrink the pool or move the address", s.start, s.end, st.addr, st.vm, v.c.at(st.field))
			}
		}
	}
}

// vmBoot checks a VM's boot section: the image exists and is readable, the
// format is known, and cloud-init comes with an image.
func (v *validator) vmBoot(vm *VM, f string) {
	b := vm.Boot
	if b == nil {
		return
	}
	if b.Image == "" {
		for _, x := range []struct {
			key string
			set bool
		}{{"format", b.Format != ""}, {"snapshot", b.Snapshot}, {"cloud_init", b.CloudInit != nil}} {
			if x.set {
				v.c.add(f+"."+x.key, "%s needs an image; without one the VM boots the built-in guest", x.key)
			}
		}
		return
	}
	path := v.t.ImagePath(vm)
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		what := "cannot be read"
		if os.IsNotExist(err) {
			what = "does not exist"
		}
		v.c.add(f+".image", "image %q %s (%v)", path, what, unwrapPathErr(err))
	case !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0:
		v.c.add(f+".image", "image %q is not a file or a block device", path)
	default:
		if fh, err := os.Open(path); err != nil {
			v.c.add(f+".image", "image %q cannot be read (%v)", path, unwrapPathErr(err))
		} else {
			fh.Close()
		}
	}
	switch b.Format {
	case "", "qcow2", "raw":
	default:
		v.c.add(f+".format", "unknown image format %q; want qcow2 or raw", b.Format)
	}
	if ci := b.CloudInit; ci != nil {
		if ci.Hostname != "" && !vmNameRe.MatchString(ci.Hostname) {
			v.c.add(f+".cloud_init.hostname", "%q is not a host name (letters, digits and '-')", ci.Hostname)
		}
		for k, key := range ci.SSHKeys {
			if strings.TrimSpace(key) == "" || strings.ContainsAny(strings.TrimSpace(key), "\n\r") {
				v.c.add(fmt.Sprintf("%s.cloud_init.ssh_keys[%d]", f, k), "an SSH key is one line, e.g. \"ssh-ed25519 AAAA... user@host\"")
			}
		}
	}
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// vmUplink checks that name is a plain link end in namespace ns that a VM
// NIC can ride on, and reports whether it is.
func (v *validator) vmUplink(ns, name, f string) bool {
	t := v.t
	if name == "" {
		v.c.add(f, "name the link end in namespace %q the NIC rides on (e.g. uplink: eth0)", ns)
		return false
	}
	for i, l := range t.Links {
		for j, e := range l.Endpoints {
			if e.Namespace != ns || e.Name != name {
				continue
			}
			ef := fmt.Sprintf("links[%d].endpoints[%d]", i, j)
			if e.Bridge != "" {
				v.c.add(f, "%q in namespace %q is a port of bridge %q; a VM NIC rides on a plain link end whose other end is a port of the segment's bridge", name, ns, e.Bridge)
				return false
			}
			if len(e.Addresses) > 0 {
				v.c.add(f, "%q in namespace %q holds addresses (%s), but the interface a VM NIC rides on carries the guest's traffic and holds none: move the address to this NIC's addresses", name, ns, v.c.at(ef+".addresses"))
				return false
			}
			return true
		}
	}
	what := ""
	switch {
	case t.Bridge(ns, name) != nil:
		what = "a bridge"
	case t.Uplink != nil && t.Uplink.Namespace == ns && t.Uplink.Name == name:
		what = "the uplink"
	case t.Uplink != nil && t.Uplink.Peer != nil && t.Uplink.Peer.Namespace == ns && t.Uplink.Peer.Name == name:
		what = "the uplink's peer"
	default:
		for _, vl := range t.VLANs {
			if vl.Namespace == ns && vl.Name == name {
				what = "a VLAN sub-interface"
			}
		}
	}
	if what != "" {
		v.c.add(f, "%q in namespace %q is %s; a VM NIC rides on a link end (a veth) whose other end is a port of the segment's bridge", name, ns, what)
		return false
	}
	v.c.add(f, "interface %q is not declared in namespace %q; declare a link with an end %s/%s (its other end a port of the segment's bridge)", name, ns, ns, name)
	return false
}

// dhcpServers checks each DHCP server and returns what the VM checks need.
// assigned finds the declared interface holding an address.
func (v *validator) dhcpServers(seg *Segments, assigned func(netip.Addr) (ns, iface, field string, ok bool)) []dhcpInfo {
	t := v.t
	var out []dhcpInfo
	onSeg := map[string]string{}
	for i := range t.DHCPServers() {
		s := &t.DHCP.Servers[i]
		f := fmt.Sprintf("dhcp.servers[%d]", i)
		info := dhcpInfo{field: f}
		out = append(out, info)
		if !v.nsRef(s.Namespace, f+".namespace") {
			continue
		}
		if s.Interface == "" {
			v.c.add(f+".interface", "name the interface the server answers on (e.g. eth0, the gateway's interface on the segment)")
			continue
		}
		if declared, ok := v.ifaces[s.Namespace][s.Interface]; !ok || s.Interface == "lo" || declared == "" {
			v.c.add(f+".interface", "interface %q is not declared in namespace %q", s.Interface, s.Namespace)
			continue
		}
		port := ""
		v.eachEndpoint(func(e Endpoint, _ string) {
			if e.Namespace == s.Namespace && e.Name == s.Interface && e.Bridge != "" {
				port = e.Bridge
			}
		})
		if port != "" {
			v.c.add(f+".interface", "%q is a port of bridge %q and holds no address; serve on the bridge, or on the gateway's interface", s.Interface, port)
			continue
		}
		addr, ok := t.DHCPAddress(s)
		if !ok {
			v.c.add(f+".interface", "%q in namespace %q has no IPv4 address; the server needs one on the segment it serves", s.Interface, s.Namespace)
			continue
		}
		info.seg = seg.Of(s.Namespace, s.Interface)
		if prev, dup := onSeg[info.seg]; dup {
			v.c.add(f+".interface", "the L2 segment of %q in namespace %q already has the DHCP server at %s; two servers would answer every request", s.Interface, s.Namespace, v.c.at(prev))
		} else {
			onSeg[info.seg] = f + ".interface"
		}
		sub := addr.Masked()
		info.subnet = sub
		// The pool.
		start, serr := netip.ParseAddr(s.Pool.Start)
		end, eerr := netip.ParseAddr(s.Pool.End)
		poolOK := true
		for _, x := range []struct {
			key, val string
			err      error
			a        netip.Addr
		}{{"start", s.Pool.Start, serr, start}, {"end", s.Pool.End, eerr, end}} {
			pf := f + ".pool." + x.key
			switch {
			case x.val == "":
				v.c.add(f+".pool", "give the pool's %s address (pool: {start: ..., end: ...})", x.key)
				poolOK = false
			case x.err != nil || !x.a.Is4() || x.a.Zone() != "":
				v.c.add(pf, "%q is not an IPv4 address", x.val)
				poolOK = false
			case !sub.Contains(x.a):
				v.c.add(pf, "%s is outside the subnet %s of %q, the server's interface", x.a, sub, s.Interface)
				poolOK = false
			}
		}
		if poolOK {
			switch {
			case end.Less(start):
				v.c.add(f+".pool.end", "the pool ends (%s) before it starts (%s)", end, start)
				poolOK = false
			case sub.Bits() < 31 && (ipv4Range(sub.Addr(), start, end) || ipv4Range(broadcast(sub), start, end)):
				v.c.add(f+".pool", "pool %s-%s includes the network or broadcast address of %s", start, end, sub)
				poolOK = false
			default:
				// Declared addresses on the segment inside the pool.
				t.eachAddress(func(ns, iface, af, a string) {
					p, err := netip.ParsePrefix(a)
					if err != nil || seg.Of(ns, iface) != info.seg || !ipv4Range(p.Addr(), start, end) {
						return
					}
					v.c.add(f+".pool", "pool %s-%s contains %s, assigned to %q in namespace %q at %s; the server could hand it to a client: shrink the pool or move the address", start, end, p.Addr(), iface, ns, v.c.at(af))
				})
			}
		}
		if poolOK {
			info.start, info.end, info.ok = start, end, true
		}
		router := addr.Addr()
		if s.Router != "" {
			r, err := netip.ParseAddr(s.Router)
			switch {
			case err != nil || !r.Is4() || r.Zone() != "":
				v.c.add(f+".router", "%q is not an IPv4 address", s.Router)
			case !sub.Contains(r):
				v.c.add(f+".router", "router %s is outside the subnet %s the server hands out", r, sub)
			case sub.Bits() < 31 && (r == sub.Addr() || r == broadcast(sub)):
				v.c.add(f+".router", "router %s is the network or broadcast address of %s", r, sub)
			default:
				router = r
				if info.ok && ipv4Range(r, start, end) {
					v.c.add(f+".router", "router %s is inside the pool %s-%s", r, start, end)
				}
			}
		}
		for k, d := range s.DNS {
			if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || a.Zone() != "" {
				v.c.add(fmt.Sprintf("%s.dns[%d]", f, k), "%q is not an IPv4 address", d)
			}
		}
		if s.Domain != "" && (strings.ContainsAny(s.Domain, " \t/\\") || len(s.Domain) > 253) {
			v.c.add(f+".domain", "%q is not a domain name", s.Domain)
		}
		if s.LeaseTime != 0 && (s.LeaseTime < MinLeaseTime || s.LeaseTime > MaxLeaseTime) {
			v.c.add(f+".lease_time", "lease time %d s is out of range %d..%d", s.LeaseTime, MinLeaseTime, MaxLeaseTime)
		}
		smacs := map[string]string{}
		sips := map[netip.Addr]string{}
		for k, st := range s.Static {
			sf := fmt.Sprintf("%s.static[%d]", f, k)
			hw, err := net.ParseMAC(st.MAC)
			switch {
			case err != nil || len(hw) != 6:
				v.c.add(sf+".mac", "%q is not a 48-bit MAC address (want e.g. 52:54:00:12:34:56)", st.MAC)
			case hw[0]&1 == 1 || hw.String() == "00:00:00:00:00:00":
				v.c.add(sf+".mac", "%s is not a unicast MAC", hw)
			case smacs[hw.String()] != "":
				v.c.add(sf+".mac", "MAC %s already has the static lease at %s", hw, v.c.at(smacs[hw.String()]))
			default:
				smacs[hw.String()] = sf + ".mac"
			}
			ip, err := netip.ParseAddr(st.IP)
			switch {
			case err != nil || !ip.Is4() || ip.Zone() != "":
				v.c.add(sf+".ip", "%q is not an IPv4 address", st.IP)
			case !sub.Contains(ip):
				v.c.add(sf+".ip", "%s is outside the subnet %s the server hands out", ip, sub)
			case ip == addr.Addr():
				v.c.add(sf+".ip", "%s is the server's own address", ip)
			case ip == router:
				v.c.add(sf+".ip", "%s is the router's address", ip)
			case sub.Bits() < 31 && (ip == sub.Addr() || ip == broadcast(sub)):
				v.c.add(sf+".ip", "%s is the network or broadcast address of %s", ip, sub)
			case sips[ip] != "":
				v.c.add(sf+".ip", "%s already has the static lease at %s", ip, v.c.at(sips[ip]))
			default:
				sips[ip] = sf + ".ip"
				if ns, iface, af, taken := assigned(ip); taken {
					v.c.add(sf+".ip", "%s is assigned to %q in namespace %q at %s; a client given it would clash", ip, iface, ns, v.c.at(af))
				}
			}
			if st.Hostname != "" && !vmNameRe.MatchString(st.Hostname) {
				v.c.add(sf+".hostname", "%q is not a host name (letters, digits and '-')", st.Hostname)
			}
		}
		out[len(out)-1] = info
	}
	return out
}
