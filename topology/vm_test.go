package topology

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The VM checks compare memory and vCPUs with the host's. The tests (the
// invalid catalogue among them) run against a fixed host, so that the
// expected messages read the same on every machine.
func init() {
	hostResources = func() (memMiB, cpus int) { return 4096, 2 }
}

const vmBase = `name: vmt
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [10.9.0.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0}
      - {namespace: bridge, name: vm2, bridge: br0}
dhcp:
  servers:
    - namespace: host
      interface: eth0
      pool: {start: 10.9.0.100, end: 10.9.0.199}
`

func TestVMsParse(t *testing.T) {
	topo, err := Parse("vms.yaml", []byte(vmBase+`vms:
  - name: vm1
    nics: [{uplink: eth0, dhcp: true}]
  - name: two
    namespace: vm2
    cpus: 2
    memory: 256
    nics: [{uplink: eth0, mac: "52:54:00:00:00:02", addresses: [10.9.0.20/24], gateway: 10.9.0.1, dns: [10.9.0.1]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.VMs) != 2 {
		t.Fatalf("vms: %+v", topo.VMs)
	}
	a, b := topo.VMs[0], topo.VMs[1]
	if a.NS() != "vm1" || b.NS() != "vm2" || a.VCPUs() != 1 || a.MemoryMiB() != DefaultVMMemory || b.VCPUs() != 2 || b.MemoryMiB() != 256 {
		t.Errorf("defaults: %+v %+v", a, b)
	}
	// The derived MAC is a locally administered unicast MAC, stable, and
	// different from every other MAC of the topology.
	hw, err := net.ParseMAC(a.NICs[0].MAC)
	if err != nil || hw[0]&0x03 != 0x02 {
		t.Fatalf("derived MAC %q", a.NICs[0].MAC)
	}
	again, err := Parse("vms.yaml", []byte(vmBase+`vms:
  - name: vm1
    nics: [{uplink: eth0, dhcp: true}]
`))
	if err != nil || again.VMs[0].NICs[0].MAC != a.NICs[0].MAC {
		t.Fatalf("derived MAC not stable: %v %v", again.VMs[0].NICs[0].MAC, err)
	}
	seen := map[string]bool{}
	topo.eachMAC(func(_ string, mac *string) { seen[*mac] = true })
	if seen[a.NICs[0].MAC] {
		t.Errorf("derived VM MAC %s equals an interface's", a.NICs[0].MAC)
	}
	if b.NICs[0].MAC != "52:54:00:00:00:02" {
		t.Errorf("explicit MAC changed: %q", b.NICs[0].MAC)
	}
	s := &topo.DHCP.Servers[0]
	if p, ok := topo.DHCPAddress(s); !ok || p != netip.MustParsePrefix("10.9.0.1/24") {
		t.Errorf("DHCPAddress = %v %v", p, ok)
	}
	if r := topo.DHCPRouter(s); r != netip.MustParseAddr("10.9.0.1") {
		t.Errorf("DHCPRouter = %v", r)
	}
	// A second Normalize + Validate (as the examples test does) is a no-op.
	if err := topo.Normalize(); err != nil {
		t.Fatal(err)
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	if topo.VMs[0].NICs[0].MAC != a.NICs[0].MAC {
		t.Errorf("MAC changed by a second validation")
	}
}

// TestVMDerivedMACAvoidsExplicit: a derived MAC never takes a MAC written
// in the file, even one of another VM.
func TestVMDerivedMACAvoidsExplicit(t *testing.T) {
	topo, err := Parse("vms.yaml", []byte(vmBase+`vms:
  - name: vm1
    nics: [{uplink: eth0, dhcp: true}]
`))
	if err != nil {
		t.Fatal(err)
	}
	derived := topo.VMs[0].NICs[0].MAC
	// Write that MAC explicitly for vm2: vm1's is derived again, elsewhere.
	topo2, err := Parse("vms.yaml", []byte(vmBase+`vms:
  - name: vm1
    nics: [{uplink: eth0, dhcp: true}]
  - name: vm2
    nics: [{uplink: eth0, dhcp: true, mac: "`+derived+`"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo2.VMs[0].NICs[0].MAC; got == derived || got == "" {
		t.Errorf("vm1's derived MAC %q collides with vm2's explicit %q", got, derived)
	}
}

func TestVMImagePath(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	if err := os.WriteFile(img, []byte("QFI\xfb"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "lab.yaml")
	src := vmBase + `vms:
  - name: vm1
    boot:
      image: disk.qcow2
      format: qcow2
      cloud_init: {user: debian, ssh_keys: ["ssh-ed25519 AAAAC3 me@host"]}
    nics: [{uplink: eth0, dhcp: true}]
`
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	topo, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	v := &topo.VMs[0]
	if v.BuiltIn() || topo.ImagePath(v) != img || v.MemoryMiB() != DefaultImageMemory {
		t.Errorf("image %q (builtin %v, memory %d)", topo.ImagePath(v), v.BuiltIn(), v.MemoryMiB())
	}
	// The same file elsewhere: the relative image is missing.
	_, err = Parse(filepath.Join(t.TempDir(), "lab.yaml"), []byte(src))
	if err == nil || !strings.Contains(err.Error(), "vms[0].boot.image: image ") || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing image: %v", err)
	}
}

// TestVMErrors checks single problems by their message (the catalogue in
// testdata/invalid/vm-*.yaml has the exact, positioned texts).
func TestVMErrors(t *testing.T) {
	for _, c := range []struct{ name, vms, want string }{
		{"memory", `  - {name: vm1, memory: 8192, nics: [{uplink: eth0, dhcp: true}]}`, "memory 8192 MiB is more than the host's 4096 MiB"},
		{"cpus", `  - {name: vm1, cpus: 4, nics: [{uplink: eth0, dhcp: true}]}`, "4 vCPUs is more than the host's 2 CPUs"},
		{"together", `  - {name: vm1, memory: 3000, nics: [{uplink: eth0, dhcp: true}]}
  - {name: vm2, memory: 3000, nics: [{uplink: eth0, dhcp: true}]}`, "the 2 VMs need 6000 MiB together"},
		{"no-nic", `  - {name: vm1}`, "a VM needs at least one NIC"},
		{"both", `  - {name: vm1, nics: [{uplink: eth0, dhcp: true, addresses: [10.9.0.5/24]}]}`, "give dhcp: true or addresses, not both"},
		{"neither", `  - {name: vm1, nics: [{uplink: eth0}]}`, "say how the guest gets its address"},
		{"bridge-port", `  - {name: vm1, namespace: bridge, nics: [{uplink: vm1, dhcp: true}]}`, `"vm1" in namespace "bridge" is a port of bridge "br0"`},
		{"bridge", `  - {name: vm1, namespace: bridge, nics: [{uplink: br0, dhcp: true}]}`, `"br0" in namespace "bridge" is a bridge`},
		{"undeclared", `  - {name: vm1, nics: [{uplink: eth1, dhcp: true}]}`, `interface "eth1" is not declared in namespace "vm1"`},
		{"with-address", `  - {name: vm1, namespace: host, nics: [{uplink: eth0, dhcp: true}]}`, `"eth0" in namespace "host" holds addresses`},
		{"ns-missing", `  - {name: vm9, nics: [{uplink: eth0, dhcp: true}]}`, `namespace "vm9" (the VM's name, as no namespace is given) is not declared`},
		{"ns-twice", `  - {name: a, namespace: vm1, nics: [{uplink: eth0, dhcp: true}]}
  - {name: b, namespace: vm1, nics: [{uplink: eth0, dhcp: true}]}`, `namespace "vm1" already holds the VM`},
		{"outside", `  - {name: vm1, nics: [{uplink: eth0, addresses: [10.8.0.5/24]}]}`, "10.8.0.5/24 is outside the subnet of its L2 segment (10.9.0.0/24)"},
		{"in-pool", `  - {name: vm1, nics: [{uplink: eth0, addresses: [10.9.0.150/24]}]}`, "pool 10.9.0.100-10.9.0.199 contains 10.9.0.150, the static address of vm \"vm1\""},
		{"gw-outside", `  - {name: vm1, nics: [{uplink: eth0, addresses: [10.9.0.5/24], gateway: 10.8.0.1}]}`, "gateway 10.8.0.1 is outside the NIC's subnet 10.9.0.0/24"},
		{"dup-addr", `  - {name: vm1, nics: [{uplink: eth0, addresses: [10.9.0.1/24]}]}`, `address 10.9.0.1 is already assigned to "eth0" in namespace "host"`},
		{"mac-dup", `  - {name: vm1, nics: [{uplink: eth0, dhcp: true, mac: "52:54:00:00:00:01"}]}
  - {name: vm2, nics: [{uplink: eth0, dhcp: true, mac: "52:54:00:00:00:01"}]}`, "MAC 52:54:00:00:00:01 is already used"},
		{"name", `  - {name: -vm, namespace: vm1, nics: [{uplink: eth0, dhcp: true}]}`, "a VM name is letters, digits and '-'"},
		{"cloud-init-builtin", `  - {name: vm1, boot: {cloud_init: {user: x}}, nics: [{uplink: eth0, dhcp: true}]}`, "cloud_init needs an image"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("vms.yaml", []byte(vmBase+"vms:\n"+c.vms+"\n"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant an error containing %q", err, c.want)
			}
			if err != nil {
				checkPositioned(t, err)
			}
		})
	}
}

func TestDHCPErrors(t *testing.T) {
	head := strings.TrimSuffix(vmBase, "dhcp:\n  servers:\n    - namespace: host\n      interface: eth0\n      pool: {start: 10.9.0.100, end: 10.9.0.199}\n")
	if head == vmBase {
		t.Fatal("vmBase changed; fix the test")
	}
	for _, c := range []struct{ name, servers, want string }{
		{"no-dhcp", "", "no DHCP server serves the L2 segment"},
		{"outside", `    - {namespace: host, interface: eth0, pool: {start: 10.8.0.100, end: 10.9.0.199}}`, "10.8.0.100 is outside the subnet 10.9.0.0/24"},
		{"reversed", `    - {namespace: host, interface: eth0, pool: {start: 10.9.0.199, end: 10.9.0.100}}`, "the pool ends (10.9.0.100) before it starts (10.9.0.199)"},
		{"holds-gateway", `    - {namespace: host, interface: eth0, pool: {start: 10.9.0.1, end: 10.9.0.9}}`, "pool 10.9.0.1-10.9.0.9 contains 10.9.0.1, assigned to \"eth0\" in namespace \"host\""},
		{"bridge-port", `    - {namespace: bridge, interface: host, pool: {start: 10.9.0.100, end: 10.9.0.199}}`, "is a port of bridge \"br0\" and holds no address"},
		{"no-address", `    - {namespace: bridge, interface: br0, pool: {start: 10.9.0.100, end: 10.9.0.199}}`, "has no IPv4 address"},
		{"two-on-segment", `    - {namespace: host, interface: eth0, pool: {start: 10.9.0.100, end: 10.9.0.149}}
    - {namespace: host, interface: eth0, pool: {start: 10.9.0.150, end: 10.9.0.199}}`, "already has the DHCP server"},
		{"lease", `    - {namespace: host, interface: eth0, lease_time: 5, pool: {start: 10.9.0.100, end: 10.9.0.199}}`, "lease time 5 s is out of range"},
		{"static", `    - namespace: host
      interface: eth0
      pool: {start: 10.9.0.100, end: 10.9.0.199}
      static: [{mac: "52:54:00:00:00:09", ip: 10.9.0.1}]`, "10.9.0.1 is the server's own address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := head
			if c.servers != "" {
				src += "dhcp:\n  servers:\n" + c.servers + "\n"
			}
			src += "vms:\n  - {name: vm1, nics: [{uplink: eth0, dhcp: true}]}\n"
			_, err := Parse("vms.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant an error containing %q", err, c.want)
			}
			if err != nil {
				checkPositioned(t, err)
			}
		})
	}
}

// TestVMReservedNames: the tap and per-VM bridge names kvmnet uses in a
// VM's namespace cannot be declared there.
func TestVMReservedNames(t *testing.T) {
	src := strings.Replace(vmBase, "dhcp:\n", "  - endpoints:\n      - {namespace: vm1, name: vbr0}\n      - {namespace: bridge, name: x, bridge: br0}\ndhcp:\n", 1)
	_, err := Parse("vms.yaml", []byte(src+"vms:\n  - {name: vm1, nics: [{uplink: eth0, dhcp: true}]}\n"))
	if err == nil || !strings.Contains(err.Error(), `interface name "vbr0" in namespace "vm1" is taken by vm "vm1"`) {
		t.Errorf("got %v", err)
	}
}
