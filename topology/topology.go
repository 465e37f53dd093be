// Package topology holds kvmnet's declarative network description: the spec
// types a user writes in YAML, the loader that decodes them strictly, the
// defaults, and the validation that runs before anything touches the kernel.
//
// The package is pure: it never opens a socket or a namespace, so everything
// in it runs and is tested without root.
package topology

// Role says what job a namespace does in the network.
type Role string

// The namespace roles of the reference design.
const (
	RoleHost     Role = "host"     // the hypervisor: the uplink NIC and its own address
	RoleBridge   Role = "bridge"   // the L2 switch: Linux bridges and their ports
	RoleVM       Role = "vm"       // a VM's own network environment (its NIC, firewall, QoS)
	RoleEndpoint Role = "endpoint" // a plain end host (tests, containers, services)
	RoleExternal Role = "external" // plays the world outside: the physical switch and its hosts
)

// Roles lists the valid roles in documentation order.
var Roles = []Role{RoleHost, RoleBridge, RoleVM, RoleEndpoint, RoleExternal}

// ForwardMode says how the network reaches the outside; the names are libvirt's.
type ForwardMode string

// The forward modes.
const (
	ModeIsolated ForwardMode = "isolated" // no uplink: VMs reach each other and the host only
	ModeRouted   ForwardMode = "routed"   // the host routes between its segments and the uplink
	ModeNAT      ForwardMode = "nat"      // routed, and masqueraded behind the uplink's address
	ModeBridge   ForwardMode = "bridge"   // the uplink is a bridge port: VMs appear on the external segment
)

// Modes lists the valid forward modes.
var Modes = []ForwardMode{ModeIsolated, ModeRouted, ModeNAT, ModeBridge}

// Topology is one whole network. Every name in it is scoped by Name and Prefix:
// the kernel namespace of Namespace "vm1" is Prefix+"vm1", and everything kvmnet
// creates is marked as owned by the network ID (Prefix+Name).
type Topology struct {
	// Name identifies the network; it is part of every ownership mark.
	Name string `yaml:"name" json:"name"`
	// Prefix is prepended to every namespace name, so that several networks can
	// share one host. Empty by default: the reference design's namespaces are
	// literally host, bridge and vm1.
	Prefix     string      `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Namespaces []Namespace `yaml:"namespaces" json:"namespaces"`
	Bridges    []Bridge    `yaml:"bridges,omitempty" json:"bridges,omitempty"`
	Links      []Link      `yaml:"links,omitempty" json:"links,omitempty"`
	// VLANs are 802.1Q sub-interfaces (e.g. eth0.100) of declared interfaces.
	VLANs  []VLANInterface `yaml:"vlans,omitempty" json:"vlans,omitempty"`
	Uplink *Uplink         `yaml:"uplink,omitempty" json:"uplink,omitempty"`
	// Sets are named address or port sets for firewall rules.
	Sets []Set `yaml:"sets,omitempty" json:"sets,omitempty"`
	// SecurityGroups are named rule sets attached to NICs.
	SecurityGroups []SecurityGroup `yaml:"security_groups,omitempty" json:"security_groups,omitempty"`
	// Expect lists reachabilities `kvmnet verify` checks with probes.
	Expect []Expectation `yaml:"expect,omitempty" json:"expect,omitempty"`
	// VMs are QEMU guests booted into their namespaces (topology/vm.go).
	VMs []VM `yaml:"vms,omitempty" json:"vms,omitempty"`
	// DHCP is the DHCP service per segment (topology/vm.go).
	DHCP *DHCP `yaml:"dhcp,omitempty" json:"dhcp,omitempty"`
	// DNS is the network's name service (topology/dns.go).
	DNS *DNS `yaml:"dns,omitempty" json:"dns,omitempty"`
	// Mirrors copy the frames of ports to a monitoring interface (topology/mirror.go).
	Mirrors []Mirror `yaml:"mirrors,omitempty" json:"mirrors,omitempty"`

	// File is the path the topology was loaded from ("" for one built in code).
	File string `yaml:"-" json:"-"`
	src  *source
}

// Namespace is a network namespace and what lives in it besides its links.
type Namespace struct {
	Name string `yaml:"name" json:"name"`
	Role Role   `yaml:"role" json:"role"`
	// Sysctls are written under /proc/sys inside the namespace, e.g.
	// "net.ipv4.ip_forward": "1". Only net.* keys are per-namespace.
	Sysctls map[string]string `yaml:"sysctls,omitempty" json:"sysctls,omitempty"`
	Routes  []Route           `yaml:"routes,omitempty" json:"routes,omitempty"`
	// Firewall is the namespace's packet filter (kvmnet's nftables table).
	Firewall *Firewall `yaml:"firewall,omitempty" json:"firewall,omitempty"`
}

// Bridge is a Linux bridge: the L2 switch of one segment.
type Bridge struct {
	Name      string `yaml:"name" json:"name"`
	Namespace string `yaml:"namespace" json:"namespace"`
	STP       bool   `yaml:"stp,omitempty" json:"stp,omitempty"`
	// MTU of the bridge device; 0 means the kernel's choice (the smallest port MTU).
	MTU int `yaml:"mtu,omitempty" json:"mtu,omitempty"`
	// AgeingTime is how long, in seconds, a learned MAC stays in the FDB (default 300).
	AgeingTime *int   `yaml:"ageing_time,omitempty" json:"ageing_time,omitempty"`
	MAC        string `yaml:"mac,omitempty" json:"mac,omitempty"`
	// Addresses gives the bridge device an L3 presence in its namespace. The
	// reference design keeps the bridge namespace pure L2 and puts the gateway in
	// the host namespace instead; see docs/topology.md.
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// VLANFiltering makes the bridge VLAN-aware: each port's VLAN membership
	// (its `vlan`) decides which frames it carries, tagged or not.
	VLANFiltering bool `yaml:"vlan_filtering,omitempty" json:"vlan_filtering,omitempty"`
	// DefaultPVID is the VLAN of ports (and of the bridge device itself) that
	// declare no `vlan` (default 1). Only with vlan_filtering.
	DefaultPVID int `yaml:"default_pvid,omitempty" json:"default_pvid,omitempty"`
}

// PVID is the bridge's default port VLAN: DefaultPVID, or 1.
func (b *Bridge) PVID() int {
	if b.DefaultPVID == 0 {
		return 1
	}
	return b.DefaultPVID
}

// PortVLAN is the VLAN membership of a port of a VLAN-filtering bridge:
// an access port (one VLAN, untagged), or a trunk (tagged VLANs) with an
// optional native VLAN for untagged frames.
type PortVLAN struct {
	Access int   `yaml:"access,omitempty" json:"access,omitempty"`
	Trunk  []int `yaml:"trunk,omitempty" json:"trunk,omitempty"`
	Native int   `yaml:"native,omitempty" json:"native,omitempty"`
}

// Membership returns the port's PVID (0: untagged frames are dropped), its
// untagged VLANs and its tagged VLANs. A nil PortVLAN is the bridge default:
// untagged member of defaultPVID.
func (p *PortVLAN) Membership(defaultPVID int) (pvid int, untagged, tagged []int) {
	switch {
	case p == nil:
		if defaultPVID == 0 {
			return 0, nil, nil
		}
		return defaultPVID, []int{defaultPVID}, nil
	case p.Access != 0:
		return p.Access, []int{p.Access}, nil
	}
	if p.Native != 0 {
		untagged = []int{p.Native}
	}
	return p.Native, untagged, p.Trunk
}

// VLANInterface is an 802.1Q sub-interface: frames it sends leave Parent
// tagged with ID; tagged frames arriving on Parent with ID come out here.
type VLANInterface struct {
	Namespace string `yaml:"namespace" json:"namespace"`
	// Name of the sub-interface, e.g. "eth0.100" (at most 15 bytes).
	Name string `yaml:"name" json:"name"`
	// Parent is a declared interface in the same namespace.
	Parent string `yaml:"parent" json:"parent"`
	// ID is the VLAN ID, 1..4094.
	ID int `yaml:"id" json:"id"`
	// MAC is explicit, or the parent's (the kernel's default) when empty.
	MAC       string   `yaml:"mac,omitempty" json:"mac,omitempty"`
	MTU       int      `yaml:"mtu,omitempty" json:"mtu,omitempty"`
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// Bridge enslaves the sub-interface to a bridge in its namespace (the
	// per-VLAN-bridge design: one bridge per VLAN fed from a trunk).
	Bridge string `yaml:"bridge,omitempty" json:"bridge,omitempty"`
}

// Link is a veth pair: a cable between two namespaces. Either end may be a
// port of a bridge in its own namespace.
type Link struct {
	Endpoints []Endpoint `yaml:"endpoints" json:"endpoints"`
	// MTU of both ends (default 1500); 9000 for jumbo frames.
	MTU int `yaml:"mtu,omitempty" json:"mtu,omitempty"`
}

// Endpoint is one end of a link: an interface in a namespace.
type Endpoint struct {
	Namespace string `yaml:"namespace" json:"namespace"`
	// Name of the interface inside the namespace: at most 15 bytes.
	Name string `yaml:"name" json:"name"`
	// MAC is explicit, or derived from the network, namespace and name when empty.
	MAC       string   `yaml:"mac,omitempty" json:"mac,omitempty"`
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// Bridge, when set, enslaves this end to that bridge (in the same namespace).
	Bridge string `yaml:"bridge,omitempty" json:"bridge,omitempty"`
	// VLAN is the port's membership on a VLAN-filtering Bridge.
	VLAN *PortVLAN `yaml:"vlan,omitempty" json:"vlan,omitempty"`
	// SecurityGroups attach named rule sets to this NIC, enforced in its
	// namespace.
	SecurityGroups []string `yaml:"security_groups,omitempty" json:"security_groups,omitempty"`
	// Guard limits what this NIC may send into the bridge at the other end
	// of its link.
	Guard *Guard `yaml:"guard,omitempty" json:"guard,omitempty"`
	// QoS shapes this NIC's traffic.
	QoS *QoS `yaml:"qos,omitempty" json:"qos,omitempty"`
}

// Route is a static route inside a namespace.
type Route struct {
	// To is a CIDR prefix, or "default".
	To     string `yaml:"to" json:"to"`
	Via    string `yaml:"via,omitempty" json:"via,omitempty"`
	Dev    string `yaml:"dev,omitempty" json:"dev,omitempty"`
	Metric int    `yaml:"metric,omitempty" json:"metric,omitempty"`
}

// Uplink is how the network reaches the outside world: the "physical NIC" of
// the reference design, in the host namespace.
type Uplink struct {
	Mode ForwardMode `yaml:"mode" json:"mode"`
	// Namespace holding the uplink NIC (default: the namespace with role host).
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// Name of the uplink NIC inside Namespace (default "uplink0").
	Name      string   `yaml:"name,omitempty" json:"name,omitempty"`
	MAC       string   `yaml:"mac,omitempty" json:"mac,omitempty"`
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
	// Bridge (mode bridge): the bridge in Namespace that the uplink joins.
	Bridge string `yaml:"bridge,omitempty" json:"bridge,omitempty"`
	// VLAN (mode bridge, on a VLAN-filtering bridge): the uplink's port
	// membership, typically a trunk to the external switch.
	VLAN *PortVLAN `yaml:"vlan,omitempty" json:"vlan,omitempty"`
	// Device names a real NIC of the root namespace (e.g. eth0) to move into
	// Namespace. It is only done with the explicit opt-in (`up --move-host-nic`)
	// and `down` moves it back. Exclusive with Peer.
	Device string `yaml:"device,omitempty" json:"device,omitempty"`
	// Peer makes the uplink a veth to another namespace of this topology
	// (usually one with role external, playing the physical switch).
	Peer *Endpoint `yaml:"peer,omitempty" json:"peer,omitempty"`
}

// ID is the network's identity in ownership marks: Prefix+Name.
func (t *Topology) ID() string { return t.Prefix + t.Name }

// NSName is the kernel name of the topology's namespace ns.
func (t *Topology) NSName(ns string) string { return t.Prefix + ns }

// Namespace returns the namespace called name, or nil.
func (t *Topology) Namespace(name string) *Namespace {
	for i := range t.Namespaces {
		if t.Namespaces[i].Name == name {
			return &t.Namespaces[i]
		}
	}
	return nil
}

// Bridge returns the bridge called name in namespace ns, or nil.
func (t *Topology) Bridge(ns, name string) *Bridge {
	for i := range t.Bridges {
		if t.Bridges[i].Namespace == ns && t.Bridges[i].Name == name {
			return &t.Bridges[i]
		}
	}
	return nil
}

// NamespacesWithRole returns the names of the namespaces that have role r.
func (t *Topology) NamespacesWithRole(r Role) []string {
	var out []string
	for _, ns := range t.Namespaces {
		if ns.Role == r {
			out = append(out, ns.Name)
		}
	}
	return out
}

// EachAddress calls fn with the namespace of every declared interface
// address (link ends, bridges, VLAN sub-interfaces, the uplink and its peer).
func (t *Topology) EachAddress(fn func(ns, addr string)) {
	t.eachAddress(func(ns, _, _, addr string) { fn(ns, addr) })
}
