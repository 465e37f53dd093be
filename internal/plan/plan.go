// Package plan computes what must change to turn an observed network into the
// desired one: Diff is a pure function from two model.States to an ordered
// list of Steps, each of which knows its inverse for rollback.
package plan

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kvmnet/kvmnet/internal/model"
)

// Op is the kind of a step.
type Op string

// The operations, in the order Diff emits them.
const (
	OpCreateNS     Op = "create-namespace"
	OpSysctl       Op = "set-sysctl"
	OpMark         Op = "mark"
	OpDeleteLink   Op = "delete-link"
	OpCreateLink   Op = "create-link"
	OpMoveDevice   Op = "move-device"
	OpSetLink      Op = "set-link"
	OpPortVLANs    Op = "set-port-vlans"
	OpDelAddr      Op = "delete-address"
	OpAddAddr      Op = "add-address"
	OpDelRoute     Op = "delete-route"
	OpAddRoute     Op = "add-route"
	OpFirewall     Op = "write-nftables"
	OpQoS          Op = "set-qos"
	OpMirror       Op = "set-mirror"
	OpDeleteNS     Op = "delete-namespace"
	OpReturnDevice Op = "return-device"
)

// Step is one kernel change. Only the fields its Op needs are set.
type Step struct {
	Op Op     `json:"op"`
	NS string `json:"namespace"`
	// Link is the link to create (OpCreateLink) or delete (OpDeleteLink, the
	// observed link, so the inverse can recreate it), or the link changed.
	Link *model.Link `json:"link,omitempty"`
	// Peer is the far end of a veth that OpCreateLink creates, in Link.Peer.NS.
	Peer *model.Link `json:"peer,omitempty"`
	// Set and Old hold the attributes changed by OpSetLink, and their old values.
	Set *LinkAttrs `json:"set,omitempty"`
	Old *LinkAttrs `json:"old,omitempty"`
	// Addr is the address of OpAddAddr and OpDelAddr.
	Addr netip.Prefix `json:"address,omitzero"`
	// Route and OldRoute: OpAddRoute replaces OldRoute when it is set.
	Route    *model.Route `json:"route,omitempty"`
	OldRoute *model.Route `json:"old_route,omitempty"`
	// Key, Value, OldValue: OpSysctl (a sysctl), OpMark (an aspect's hash).
	// Marks and OldMarks: OpMark writes all aspect hashes of the namespace
	// (the aspect Key set to Value, the others as they were or as earlier
	// steps of the same plan set them).
	Marks    model.Marks `json:"marks,omitempty"`
	OldMarks model.Marks `json:"old_marks,omitempty"`
	Key      string      `json:"key,omitempty"`
	Value    string      `json:"value,omitempty"`
	OldValue string      `json:"old_value,omitempty"`
	// VLANs and OldVLANs: OpPortVLANs makes a bridge port's membership VLANs.
	VLANs    []model.VLANEntry `json:"vlans,omitempty"`
	OldVLANs []model.VLANEntry `json:"old_vlans,omitempty"`
	// Masq, Firewall and Guards: OpFirewall writes kvmnet's nftables tables
	// whole from them; OldNFT is the canonical form it replaces.
	Masq     []model.Masquerade `json:"masquerade,omitempty"`
	Firewall *model.Firewall    `json:"firewall,omitempty"`
	Guards   []model.PortGuard  `json:"guards,omitempty"`
	OldNFT   string             `json:"old_nft,omitempty"`
	// QoS and OldQoS: OpQoS shapes Link's egress (nil: none).
	QoS    *model.QoS `json:"qos,omitempty"`
	OldQoS *model.QoS `json:"old_qos,omitempty"`
	// Mirror and OldMirror: OpMirror makes Link's mirror Mirror (nil: none).
	Mirror    *model.Mirror `json:"mirror,omitempty"`
	OldMirror *model.Mirror `json:"old_mirror,omitempty"`
	// Network is the owning network ID (for the marks of created objects).
	Network string `json:"network"`
}

// LinkAttrs are the settable attributes of OpSetLink; nil means unchanged.
type LinkAttrs struct {
	MTU    *int    `json:"mtu,omitempty"`
	MAC    *string `json:"mac,omitempty"`
	Master *string `json:"master,omitempty"`
	Up     *bool   `json:"up,omitempty"`
	STP    *bool   `json:"stp,omitempty"`
	Ageing *int    `json:"ageing_time,omitempty"`
	// VLANFiltering and DefaultPVID: bridge VLAN settings.
	VLANFiltering *bool `json:"vlan_filtering,omitempty"`
	DefaultPVID   *int  `json:"default_pvid,omitempty"`
}

// Target names the object a step acts on, for messages: "vm1/eth0".
func (s Step) Target() string {
	switch s.Op {
	case OpCreateNS, OpDeleteNS:
		return s.NS
	case OpSysctl:
		return s.NS + " " + s.Key
	case OpMark:
		return s.NS + " lo " + s.Key
	case OpAddRoute, OpDelRoute:
		return s.NS + " route " + s.Route.String()
	case OpFirewall:
		return s.NS + " nftables tables kvmnet"
	case OpQoS:
		return s.NS + "/" + s.Link.Name + " qos"
	case OpMirror:
		return s.NS + "/" + s.Link.Name + " mirror"
	}
	if s.Link != nil {
		return s.NS + "/" + s.Link.Name
	}
	return s.NS
}

// String renders a step for `kvmnet plan`.
func (s Step) String() string {
	switch s.Op {
	case OpCreateNS:
		return fmt.Sprintf("+ namespace %s", s.NS)
	case OpDeleteNS:
		return fmt.Sprintf("- namespace %s (and everything in it)", s.NS)
	case OpSysctl:
		return fmt.Sprintf("~ %s: sysctl %s = %s (was %s)", s.NS, s.Key, s.Value, orNone(s.OldValue))
	case OpMark:
		return fmt.Sprintf("~ %s: record applied %ss in the namespace mark (%s)", s.NS, s.Key, orNone(s.Value))
	case OpCreateLink:
		l := s.Link
		switch l.Kind {
		case model.KindVeth:
			extra := ""
			if l.Master != "" {
				extra = " master " + l.Master
			}
			return fmt.Sprintf("+ %s: veth %s <-> %s mac %s mtu %d%s", s.NS, l.Name, l.Peer, l.MAC, l.MTU, extra)
		case model.KindBridge:
			vf := ""
			if l.Bridge.VLANFiltering {
				vf = fmt.Sprintf(" vlan_filtering on default_pvid %d", l.Bridge.DefaultPVID)
			}
			return fmt.Sprintf("+ %s: bridge %s mac %s stp %s ageing %ds%s", s.NS, l.Name, l.MAC, onOff(l.Bridge.STP), l.Bridge.AgeingTime, vf)
		case model.KindVLAN:
			extra := ""
			if l.Master != "" {
				extra = " master " + l.Master
			}
			return fmt.Sprintf("+ %s: vlan %s (%s id %d)%s", s.NS, l.Name, l.Parent, l.VID, extra)
		}
		return fmt.Sprintf("+ %s: %s %s", s.NS, l.Kind, l.Name)
	case OpMoveDevice:
		return fmt.Sprintf("+ %s: move host NIC %s in as %s", s.NS, s.Link.Origin, s.Link.Name)
	case OpReturnDevice:
		return fmt.Sprintf("- %s: return host NIC %s to the root namespace as %s", s.NS, s.Link.Name, s.Link.Origin)
	case OpDeleteLink:
		return fmt.Sprintf("- %s: %s %s", s.NS, s.Link.Kind, s.Link.Name)
	case OpSetLink:
		return fmt.Sprintf("~ %s: link %s %s", s.NS, s.Link.Name, s.Set.describe(s.Old))
	case OpPortVLANs:
		return fmt.Sprintf("~ %s: port %s vlans %s (was %s)", s.NS, s.Link.Name, vlanList(s.VLANs), vlanList(s.OldVLANs))
	case OpAddAddr:
		return fmt.Sprintf("+ %s: address %s dev %s", s.NS, s.Addr, s.Link.Name)
	case OpDelAddr:
		return fmt.Sprintf("- %s: address %s dev %s", s.NS, s.Addr, s.Link.Name)
	case OpAddRoute:
		if s.OldRoute != nil {
			return fmt.Sprintf("~ %s: route %s (was %s)", s.NS, s.Route, s.OldRoute)
		}
		return fmt.Sprintf("+ %s: route %s", s.NS, s.Route)
	case OpDelRoute:
		return fmt.Sprintf("- %s: route %s", s.NS, s.Route)
	case OpFirewall:
		var parts []string
		if len(s.Masq) > 0 {
			ms := make([]string, len(s.Masq))
			for i, m := range s.Masq {
				ms[i] = m.Source.String() + " out " + m.OutIface
			}
			parts = append(parts, "masquerade "+strings.Join(ms, ", "))
		}
		if s.Firewall != nil {
			pol := make([]string, 0, 3)
			for _, h := range []string{"input", "forward", "output"} {
				pol = append(pol, h+" "+s.Firewall.Policy[h])
			}
			parts = append(parts, fmt.Sprintf("firewall (%s) %d rules", strings.Join(pol, ", "), len(s.Firewall.Rules)))
		}
		if len(s.Guards) > 0 {
			parts = append(parts, fmt.Sprintf("%d port guards", len(s.Guards)))
		}
		if len(parts) == 0 {
			return fmt.Sprintf("- %s: kvmnet's nftables tables", s.NS)
		}
		return fmt.Sprintf("~ %s: kvmnet's nftables tables: %s", s.NS, strings.Join(parts, "; "))
	case OpQoS:
		return fmt.Sprintf("~ %s: qos of %s: %s (was %s)", s.NS, s.Link.Name, s.QoS, s.OldQoS)
	case OpMirror:
		return fmt.Sprintf("~ %s: mirror of %s: %s (was %s)", s.NS, s.Link.Name, s.Mirror, s.OldMirror)
	}
	return string(s.Op)
}

func (a *LinkAttrs) describe(old *LinkAttrs) string {
	var parts []string
	if a.MTU != nil {
		parts = append(parts, fmt.Sprintf("mtu %d (was %d)", *a.MTU, *old.MTU))
	}
	if a.MAC != nil {
		parts = append(parts, fmt.Sprintf("mac %s (was %s)", *a.MAC, *old.MAC))
	}
	if a.Master != nil {
		parts = append(parts, fmt.Sprintf("master %s (was %s)", orNone(*a.Master), orNone(*old.Master)))
	}
	if a.STP != nil {
		parts = append(parts, fmt.Sprintf("stp %s (was %s)", onOff(*a.STP), onOff(*old.STP)))
	}
	if a.Ageing != nil {
		parts = append(parts, fmt.Sprintf("ageing %ds (was %ds)", *a.Ageing, *old.Ageing))
	}
	if a.VLANFiltering != nil {
		parts = append(parts, fmt.Sprintf("vlan_filtering %s (was %s)", onOff(*a.VLANFiltering), onOff(*old.VLANFiltering)))
	}
	if a.DefaultPVID != nil {
		parts = append(parts, fmt.Sprintf("default_pvid %d (was %d)", *a.DefaultPVID, *old.DefaultPVID))
	}
	if a.Up != nil {
		parts = append(parts, fmt.Sprintf("state %s (was %s)", upDown(*a.Up), upDown(*old.Up)))
	}
	return strings.Join(parts, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func upDown(b bool) string {
	if b {
		return "up"
	}
	return "down"
}

// ErrIrreversible is returned by Inverse for steps whose effect cannot be undone.
var ErrIrreversible = errors.New("step cannot be undone")

// Inverse returns the step that undoes s.
func (s Step) Inverse() (Step, error) {
	inv := Step{NS: s.NS, Network: s.Network, Link: s.Link, Peer: s.Peer}
	switch s.Op {
	case OpCreateNS:
		inv.Op = OpDeleteNS
	case OpSysctl:
		inv.Op, inv.Key, inv.Value, inv.OldValue = OpSysctl, s.Key, s.OldValue, s.Value
		if s.OldValue == "" {
			return Step{}, ErrIrreversible
		}
	case OpMark:
		inv.Op, inv.Key, inv.Value, inv.OldValue, inv.Marks, inv.OldMarks = OpMark, s.Key, s.OldValue, s.Value, s.OldMarks, s.Marks
	case OpCreateLink:
		inv.Op = OpDeleteLink
	case OpDeleteLink:
		if s.Link.Kind != model.KindVeth && s.Link.Kind != model.KindBridge {
			return Step{}, ErrIrreversible
		}
		inv.Op = OpCreateLink
	case OpMoveDevice:
		inv.Op = OpReturnDevice
	case OpReturnDevice:
		inv.Op = OpMoveDevice
	case OpSetLink:
		inv.Op, inv.Set, inv.Old = OpSetLink, s.Old, s.Set
	case OpPortVLANs:
		inv.Op, inv.VLANs, inv.OldVLANs = OpPortVLANs, s.OldVLANs, s.VLANs
	case OpAddAddr:
		inv.Op, inv.Addr = OpDelAddr, s.Addr
	case OpDelAddr:
		inv.Op, inv.Addr = OpAddAddr, s.Addr
	case OpAddRoute:
		if s.OldRoute != nil {
			inv.Op, inv.Route, inv.OldRoute = OpAddRoute, s.OldRoute, s.Route
		} else {
			inv.Op, inv.Route = OpDelRoute, s.Route
		}
	case OpDelRoute:
		inv.Op, inv.Route = OpAddRoute, s.Route
	case OpFirewall:
		// The previous tables are known only by their canonical form: a
		// rollback can remove new tables, not rebuild replaced ones.
		if s.OldNFT != "" {
			return Step{}, ErrIrreversible
		}
		inv.Op = OpFirewall
	case OpQoS:
		inv.Op, inv.QoS, inv.OldQoS = OpQoS, s.OldQoS, s.QoS
	case OpMirror:
		inv.Op, inv.Mirror, inv.OldMirror = OpMirror, s.OldMirror, s.Mirror
	default:
		return Step{}, ErrIrreversible
	}
	return inv, nil
}

// ConflictError says that a name kvmnet wants is held by an object kvmnet
// did not create. kvmnet never takes such an object over.
type ConflictError struct {
	NS, Name, What, Owner string
}

func (e *ConflictError) Error() string {
	owner := "was not created by kvmnet"
	if e.Owner != "" {
		owner = fmt.Sprintf("belongs to kvmnet network %q", e.Owner)
	}
	if e.Name == "" {
		return fmt.Sprintf("namespace %q already exists and %s; refusing to take it over (choose another name or prefix)", e.NS, owner)
	}
	return fmt.Sprintf("%s %q in namespace %q already exists and %s; refusing to take it over", e.What, e.Name, e.NS, owner)
}

// ErrConflict matches every *ConflictError with errors.Is.
var ErrConflict = errors.New("name held by an object kvmnet does not own")

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// sortedRoutes returns a namespace's routes in key order.
func sortedRoutes(m map[string]*model.Route) []*model.Route {
	out := make([]*model.Route, 0, len(m))
	for _, k := range model.SortedNames(m) {
		out = append(out, m[k])
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// containsPrefix reports whether ps holds p.
func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool { return slices.Contains(ps, p) }

func vlanList(es []model.VLANEntry) string {
	if len(es) == 0 {
		return "none"
	}
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.String()
	}
	return strings.Join(parts, ", ")
}
