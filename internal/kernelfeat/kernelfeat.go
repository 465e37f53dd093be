// Package kernelfeat names the kernel features kvmnet relies on and turns
// the kernel's terse answer for a feature it was built without into an error
// that says so: "kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)".
//
// Detection is by the kernel's own answer to the real request, never by
// guessing from the environment: an unknown link kind or bridge VLAN
// operation fails with EOPNOTSUPP, an unknown qdisc kind with ENOENT. The
// errno alone does not say which feature is missing, so the caller, who
// knows what it asked for, passes the Feature to Check:
//
//	err := kernelfeat.Check(kernelfeat.VLAN, h.LinkAdd(vlan))
//	if msg, ok := kernelfeat.Missing(err); ok { ... msg ... }
//
// The tests of this package exercise those features; on a kernel that lacks
// them they skip, and in the guest-kernel lane (docs/guest-lane.md) they
// must pass.
package kernelfeat

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrMissing matches (errors.Is) every *MissingError.
var ErrMissing = errors.New("kernel lacks a feature")

// Class says how the kernel reports the feature's absence.
type Class int

// Classes of features.
const (
	// ClassLink is a link kind (rtnetlink RTM_NEWLINK with IFLA_INFO_KIND),
	// or an option of one, such as bridge vlan_filtering: EOPNOTSUPP.
	ClassLink Class = iota
	// ClassQdisc is a qdisc kind: ENOENT ("Specified qdisc kind is
	// unknown"), or EINVAL with an extack message naming an unknown kind.
	ClassQdisc
)

// Feature is a kernel feature and the build option that provides it.
type Feature struct {
	Name   string // "802.1Q VLAN support"
	Config string // "CONFIG_VLAN_8021Q"
	Class  Class
}

// String returns "802.1Q VLAN support (CONFIG_VLAN_8021Q)".
func (f Feature) String() string { return fmt.Sprintf("%s (%s)", f.Name, f.Config) }

// The features the host kernel is known to lack (see the platform notes).
var (
	VLAN                = Feature{"802.1Q VLAN support", "CONFIG_VLAN_8021Q", ClassLink}
	BridgeVLANFiltering = Feature{"bridge VLAN filtering", "CONFIG_BRIDGE_VLAN_FILTERING", ClassLink}
	Netem               = Feature{"the netem qdisc", "CONFIG_NET_SCH_NETEM", ClassQdisc}
	// Mirror is what a port mirror's filter needs; the kernel answers
	// ENOENT for an unknown classifier or action, like for a qdisc.
	Mirror = Feature{"the u32 classifier with the mirred action", "CONFIG_NET_CLS_U32, CONFIG_NET_ACT_MIRRED", ClassQdisc}
)

var linkKinds = map[string]string{
	"vlan": "CONFIG_VLAN_8021Q", "bridge": "CONFIG_BRIDGE", "veth": "CONFIG_VETH",
	"dummy": "CONFIG_DUMMY", "bond": "CONFIG_BONDING", "ipvlan": "CONFIG_IPVLAN",
	"macvlan": "CONFIG_MACVLAN", "macvtap": "CONFIG_MACVTAP", "vxlan": "CONFIG_VXLAN",
	"vrf": "CONFIG_NET_VRF", "gre": "CONFIG_NET_IPGRE", "gretap": "CONFIG_NET_IPGRE",
	"wireguard": "CONFIG_WIREGUARD", "ifb": "CONFIG_IFB", "geneve": "CONFIG_GENEVE",
}

var qdiscKinds = map[string]string{
	"netem": "CONFIG_NET_SCH_NETEM", "fq_codel": "CONFIG_NET_SCH_FQ_CODEL",
	"htb": "CONFIG_NET_SCH_HTB", "tbf": "CONFIG_NET_SCH_TBF", "prio": "CONFIG_NET_SCH_PRIO",
	"ingress": "CONFIG_NET_SCH_INGRESS", "clsact": "CONFIG_NET_SCH_INGRESS",
	"fq": "CONFIG_NET_SCH_FQ", "sfq": "CONFIG_NET_SCH_SFQ", "cake": "CONFIG_NET_SCH_CAKE",
}

// LinkKind returns the feature behind a link kind ("vlan", "dummy", ...).
func LinkKind(kind string) Feature {
	if kind == "vlan" {
		return VLAN
	}
	cfg, ok := linkKinds[kind]
	if !ok {
		cfg = "the kernel option for link kind " + kind
	}
	return Feature{fmt.Sprintf("%s links", kind), cfg, ClassLink}
}

// Qdisc returns the feature behind a qdisc kind ("netem", "fq_codel", ...).
func Qdisc(kind string) Feature {
	if kind == "netem" {
		return Netem
	}
	cfg, ok := qdiscKinds[kind]
	if !ok {
		cfg = "the kernel option for qdisc " + kind
	}
	return Feature{fmt.Sprintf("the %s qdisc", kind), cfg, ClassQdisc}
}

// MissingError says the kernel lacks Feature; Err is the kernel's answer.
type MissingError struct {
	Feature Feature
	Err     error
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("kernel lacks %s: %v", e.Feature, e.Err)
}

// Unwrap returns both ErrMissing and the kernel's errno, so errors.Is works
// with either.
func (e *MissingError) Unwrap() []error { return []error{ErrMissing, e.Err} }

// Check returns err wrapped in a *MissingError when it is the kernel's way
// of saying it lacks f, and err unchanged otherwise (including nil).
func Check(f Feature, err error) error {
	if err == nil {
		return nil
	}
	var me *MissingError
	if errors.As(err, &me) {
		return err
	}
	if lacks(f.Class, err) {
		return &MissingError{Feature: f, Err: err}
	}
	return err
}

func lacks(c Class, err error) bool {
	switch c {
	case ClassLink:
		return errors.Is(err, unix.EOPNOTSUPP)
	case ClassQdisc:
		if errors.Is(err, unix.ENOENT) {
			return true
		}
		// Some paths answer EINVAL; only trust it with the extack text.
		return errors.Is(err, unix.EINVAL) && strings.Contains(strings.ToLower(err.Error()), "unknown")
	}
	return false
}

// Missing reports whether err says the kernel lacks a feature and returns
// the message to show: "kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)".
func Missing(err error) (feature string, ok bool) {
	var me *MissingError
	if errors.As(err, &me) {
		return "kernel lacks " + me.Feature.String(), true
	}
	return "", false
}
