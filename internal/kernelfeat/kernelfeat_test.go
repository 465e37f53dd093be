package kernelfeat

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheckAndMissing(t *testing.T) {
	tests := []struct {
		name    string
		f       Feature
		err     error
		want    string // "" = not a missing feature
		wantErr bool
	}{
		{"nil stays nil", VLAN, nil, "", false},
		{"vlan EOPNOTSUPP", VLAN, unix.EOPNOTSUPP, "kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)", true},
		{"wrapped errno", VLAN, fmt.Errorf("create vlan %q: %w", "v.100", unix.EOPNOTSUPP), "kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)", true},
		{"bridge vlan filtering", BridgeVLANFiltering, unix.EOPNOTSUPP, "kernel lacks bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)", true},
		{"netem ENOENT", Netem, unix.ENOENT, "kernel lacks the netem qdisc (CONFIG_NET_SCH_NETEM)", true},
		{"netem EINVAL with extack", Netem, fmt.Errorf("%w: Specified qdisc kind is unknown", unix.EINVAL), "kernel lacks the netem qdisc (CONFIG_NET_SCH_NETEM)", true},
		{"netem bare EINVAL is a bad request", Netem, unix.EINVAL, "", true},
		{"link EEXIST is not missing", VLAN, unix.EEXIST, "", true},
		{"qdisc EOPNOTSUPP is not a missing kind", Netem, unix.EOPNOTSUPP, "", true},
		{"link ENOENT is not a missing kind", VLAN, unix.ENOENT, "", true},
		{"dummy kind", LinkKind("dummy"), unix.EOPNOTSUPP, "kernel lacks dummy links (CONFIG_DUMMY)", true},
		{"fq_codel kind", Qdisc("fq_codel"), unix.ENOENT, "kernel lacks the fq_codel qdisc (CONFIG_NET_SCH_FQ_CODEL)", true},
		{"vlan kind is VLAN", LinkKind("vlan"), unix.EOPNOTSUPP, "kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.f, tt.err)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Check() = %v, want error %v", err, tt.wantErr)
			}
			if tt.err != nil && !errors.Is(err, tt.err) {
				t.Errorf("Check() = %v: lost the kernel's errno %v", err, tt.err)
			}
			got, ok := Missing(err)
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("Missing() = %q, %v; want %q", got, ok, tt.want)
			}
			if tt.want != "" {
				if !errors.Is(err, ErrMissing) {
					t.Errorf("errors.Is(%v, ErrMissing) = false", err)
				}
				// Wrapping again keeps the feature.
				if got, _ := Missing(fmt.Errorf("apply: %w", err)); got != tt.want {
					t.Errorf("Missing(wrapped) = %q", got)
				}
				if Check(Netem, err) != err {
					t.Errorf("Check re-wrapped an already classified error")
				}
			}
		})
	}
}

func TestUnknownKindsNameTheirOption(t *testing.T) {
	if got := LinkKind("frob").String(); got != "frob links (the kernel option for link kind frob)" {
		t.Errorf("LinkKind(frob) = %q", got)
	}
	if got := Qdisc("frob").String(); got != "the frob qdisc (the kernel option for qdisc frob)" {
		t.Errorf("Qdisc(frob) = %q", got)
	}
}
