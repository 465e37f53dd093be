package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/qos"
)

// preflight proves, before the first write, that the kernel has every
// feature the plan needs, by building one of each kind of object in a
// throwaway namespace that it deletes again. A kernel that lacks one gets an
// error naming it ("kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)")
// and nothing of the network is built.
func preflight(steps []plan.Step) error {
	var bridge, filtering, veth, vlan, mirror bool
	var tables []nft.Table
	var shaped []*model.QoS
	seen := map[string]bool{}
	for _, s := range steps {
		switch {
		case s.Op == plan.OpCreateLink && s.Link.Kind == model.KindBridge:
			bridge = true
			filtering = filtering || s.Link.Bridge.VLANFiltering
		case s.Op == plan.OpSetLink && s.Set.VLANFiltering != nil && *s.Set.VLANFiltering:
			filtering = true
		case s.Op == plan.OpCreateLink && s.Link.Kind == model.KindVLAN:
			vlan = true
		case s.Op == plan.OpCreateLink && s.Link.Kind == model.KindVeth:
			veth = true
		case s.Op == plan.OpFirewall && (len(s.Masq) > 0 || s.Firewall != nil || len(s.Guards) > 0):
			t := nft.Table{Masquerade: s.Masq, Firewall: s.Firewall, Guards: s.Guards}
			if c := nft.Canonical(t); !seen[c] { // one probe per distinct table
				seen[c] = true
				tables = append(tables, t)
			}
		case s.Op == plan.OpMirror && s.Mirror != nil:
			mirror = true
		case s.Op == plan.OpQoS && s.QoS != nil:
			if c := s.QoS.String(); !seen[c] {
				seen[c] = true
				shaped = append(shaped, s.QoS)
			}
		}
	}
	nat := len(tables) > 0
	if !bridge && !filtering && !veth && !vlan && !nat && !mirror && len(shaped) == 0 {
		return nil
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "kvmnet-probe-" + hex.EncodeToString(b)
	ns, err := netns.Create(name)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	defer func() {
		ns.Close()
		netns.Delete(name)
	}()
	c, err := link.Dial(ns)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	defer c.Close()
	var errs []error
	if bridge {
		errs = append(errs, c.CreateBridge(&model.Link{Name: "probe-br", Kind: model.KindBridge, Bridge: &model.BridgeOpts{AgeingTime: 300}}, "kvmnet-probe"))
	}
	if filtering {
		errs = append(errs, c.CreateBridge(&model.Link{Name: "probe-vbr", Kind: model.KindBridge, Bridge: &model.BridgeOpts{AgeingTime: 300, VLANFiltering: true, DefaultPVID: 1}}, "kvmnet-probe"))
	}
	if veth || vlan || nat || mirror || len(shaped) > 0 {
		errs = append(errs, c.CreateVeth(&model.Link{Name: "probe-a", Kind: model.KindVeth}, &model.Link{Name: "probe-b", Kind: model.KindVeth}, c, "kvmnet-probe", "kvmnet-probe"))
	}
	if vlan {
		errs = append(errs, c.CreateVLAN(&model.Link{Name: "probe-a.7", Kind: model.KindVLAN, Parent: "probe-a", VID: 7}, "kvmnet-probe"))
	}
	// Every nftables table and every shaping the plan writes, for real, in
	// the throwaway namespace: whatever the kernel lacks shows now.
	for _, t := range tables {
		errs = append(errs, nft.Apply(ns, t))
	}
	for _, q := range shaped {
		errs = append(errs, qos.Apply(ns, "probe-a", q))
	}
	if mirror {
		errs = append(errs, qos.ApplyMirror(ns, "probe-a", &model.Mirror{To: "probe-b", Ingress: true, Egress: true}))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("preflight (nothing was built): %w", err)
	}
	return nil
}
