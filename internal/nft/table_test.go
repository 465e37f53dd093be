package nft

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/model"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs (-want +got):\n%s", path, d)
	}
}

func TestRenderGolden(t *testing.T) {
	golden(t, "testdata/everything.nft", Render(everything()))
	golden(t, "testdata/everything.canonical", Canonical(everything()))
	golden(t, "testdata/masquerade.nft", Render(Table{Masquerade: everything().Masquerade}))
	golden(t, "testdata/empty.nft", Render(Table{}))
}

func TestCanonicalShape(t *testing.T) {
	if got := Canonical(Table{}); got != "" {
		t.Errorf("empty table: %q, want \"\"", got)
	}
	if got := Canonical(Table{Firewall: &model.Firewall{}}); got != "" {
		t.Errorf("empty firewall: %q, want \"\"", got)
	}
	if !(Table{}).IsEmpty() || (Table{Guards: everything().Guards}).IsEmpty() {
		t.Error("IsEmpty")
	}
	// Only masquerade: one inet table with the postrouting chain.
	c := Canonical(Table{Masquerade: everything().Masquerade})
	if !strings.HasPrefix(c, "table inet kvmnet\n  chain postrouting type nat hook postrouting priority 100 policy accept\n    rule ") || strings.Contains(c, "bridge") {
		t.Errorf("masquerade only:\n%s", c)
	}
	// Only guards: one bridge table.
	c = Canonical(Table{Guards: everything().Guards})
	if !strings.HasPrefix(c, "table bridge kvmnet\n  chain prerouting type filter hook prerouting priority -200 policy accept\n") || strings.Contains(c, "inet") {
		t.Errorf("guards only:\n%s", c)
	}
	// A rule's fingerprint is model.Fingerprint of its canonical form.
	fw := hardened()
	c = Canonical(Table{Firewall: fw})
	if fp := model.Fingerprint(fw.Rules[1].String()); !strings.Contains(c, "rule "+fp+"\n") {
		t.Errorf("fingerprint %s of %q missing:\n%s", fp, fw.Rules[1].String(), c)
	}
	// Changing, adding, removing or reordering rules changes the form.
	base := Canonical(Table{Firewall: hardened()})
	variants := map[string]func(*model.Firewall){
		"policy":  func(f *model.Firewall) { f.Policy["input"] = "accept" },
		"port":    func(f *model.Firewall) { f.Rules[1].DPorts = ports(p1(23)) },
		"removed": func(f *model.Firewall) { f.Rules = f.Rules[1:] },
		"added":   func(f *model.Firewall) { f.Rules = append(f.Rules, model.Rule{Hook: "input", Action: "drop"}) },
		"order":   func(f *model.Firewall) { f.Rules[1], f.Rules[2] = f.Rules[2], f.Rules[1] },
		"set": func(f *model.Firewall) {
			f.Sets = []model.Set{{Name: "s", Type: "inet_service", Elements: []string{"1"}}}
		},
	}
	for name, change := range variants {
		fw := hardened()
		change(fw)
		if Canonical(Table{Firewall: fw}) == base {
			t.Errorf("%s: canonical form unchanged", name)
		}
	}
	// The origin is for people: it does not change what is written.
	fw = hardened()
	fw.Rules[0].Origin = "elsewhere"
	if Canonical(Table{Firewall: fw}) != base {
		t.Error("origin changed the canonical form")
	}
}

func TestCheck(t *testing.T) {
	bad := map[string]model.Rule{
		"set \"nope\" is not declared":         {Hook: "input", Action: "accept", SAddrSet: "nope"},
		"dport needs proto tcp or udp":         {Hook: "input", Action: "accept", DPorts: ports(p1(22))},
		"unknown protocol":                     {Hook: "input", Action: "accept", Proto: "sctp"},
		"unknown icmp type":                    {Hook: "input", Action: "accept", Proto: "icmp", ICMPTypes: []string{"nope"}},
		"is ip6 but the rule is ip":            {Hook: "input", Action: "accept", Family: "ip", SAddr: pfx("fd00::/8")},
		"unknown action":                       {Hook: "input", Action: "allow"},
		"unknown hook":                         {Hook: "prerouting", Action: "accept"},
		"unknown ct state":                     {Hook: "input", Action: "accept", CTState: []string{"fresh"}},
		"holds inet_service, not addresses":    {Hook: "input", Action: "accept", SAddrSet: "ports"},
		"proto icmpv6 in an IPv4 rule":         {Hook: "input", Action: "accept", Family: "ip", Proto: "icmpv6"},
		"bad interface name":                   {Hook: "input", Action: "accept", IIf: "a-very-long-interface-name"},
		"matches everything: leave it out":     {Hook: "input", Action: "accept", SAddr: pfx("0.0.0.0/0")},
		"log prefix":                           {Hook: "input", Action: "accept", Log: `say "hi"`},
		"icmp types need proto icmp or icmpv6": {Hook: "input", Action: "accept", Proto: "tcp", ICMPTypes: []string{"echo-request"}},
	}
	for want, r := range bad {
		fw := &model.Firewall{Policy: map[string]string{"input": "drop"}, Rules: []model.Rule{r},
			Sets: []model.Set{{Name: "ports", Type: "inet_service", Elements: []string{"1"}}}}
		err := Check(Table{Firewall: fw})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("rule %s: error %v, want one containing %q", r.String(), err, want)
		}
		if c := Canonical(Table{Firewall: fw}); !strings.HasPrefix(c, "error: ") {
			t.Errorf("canonical form of a bad table: %q", c)
		}
	}
	if err := Check(everything()); err != nil {
		t.Fatal(err)
	}
	for want, tb := range map[string]Table{
		"unknown type":         {Firewall: &model.Firewall{Sets: []model.Set{{Name: "s", Type: "mac"}}}},
		"is not ipv4_addr":     {Firewall: &model.Firewall{Sets: []model.Set{{Name: "s", Type: "ipv4_addr", Elements: []string{"fd00::1"}}}}},
		"bad port":             {Firewall: &model.Firewall{Sets: []model.Set{{Name: "s", Type: "inet_service", Elements: []string{"70000"}}}}},
		"declared twice":       {Firewall: &model.Firewall{Sets: []model.Set{{Name: "s", Type: "inet_service"}, {Name: "s", Type: "inet_service"}}}},
		"policy \"reject\"":    {Firewall: &model.Firewall{Policy: map[string]string{"input": "reject"}}},
		"bad MAC":              {Guards: []model.PortGuard{{Port: "p", MACs: []string{"nope"}}}},
		"guarded twice":        {Guards: []model.PortGuard{{Port: "p", BroadcastPPS: 1}, {Port: "p", BroadcastPPS: 2}}},
		"no source prefix":     {Masquerade: []model.Masquerade{{OutIface: "x"}}},
		"unknown hook \"prero": {Firewall: &model.Firewall{Policy: map[string]string{"prerouting": "accept"}}},
	} {
		if err := Check(tb); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one containing %q", err, want)
		}
	}
}

func TestIntervals(t *testing.T) {
	for _, c := range []struct {
		typ  string
		in   []string
		want []string
	}{
		{"ipv4_addr", []string{"10.0.0.0/25", "10.0.0.128/25"}, []string{"10.0.0.0/24"}},
		{"ipv4_addr", []string{"192.168.1.11", "192.168.1.10", "10.0.0.0/8"}, []string{"10.0.0.0/8", "192.168.1.10/31"}},
		{"ipv4_addr", []string{"192.168.1.11", "192.168.1.12"}, []string{"192.168.1.11-192.168.1.12"}},
		{"ipv4_addr", []string{"10.0.0.5", "10.0.0.0/24"}, []string{"10.0.0.0/24"}},
		{"ipv4_addr", []string{"10.1.2.3/16"}, []string{"10.1.0.0/16"}},
		{"ipv4_addr", []string{"255.255.255.255", "0.0.0.0"}, []string{"0.0.0.0", "255.255.255.255"}},
		{"ipv4_addr", []string{"0.0.0.0/1", "128.0.0.0/1"}, []string{"0.0.0.0/0"}},
		{"ipv6_addr", []string{"fd00::/64", "fd00::1", "fe80::/10", "::"}, []string{"::", "fd00::/64", "fe80::/10"}},
		{"inet_service", []string{"443", "80", "8000-8080", "8081", "79"}, []string{"79-80", "443", "8000-8081"}},
		{"inet_service", []string{"65535", "0"}, []string{"0", "65535"}},
	} {
		ivs, err := parseIntervals(c.typ, c.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := intervalStrings(c.typ, ivs); !cmp.Equal(got, c.want) {
			t.Errorf("%v: %v, want %v", c.in, got, c.want)
		}
		// Laid out for the kernel and read back, the intervals are the same.
		for _, interval := range []bool{true, false} {
			if !interval && len(ivs) > 0 {
				single := true
				for _, iv := range ivs {
					single = single && string(iv.lo) == string(iv.hi)
				}
				if !single {
					continue
				}
			}
			back := intervalsFromKernel(kernelElements(ivs, interval), interval)
			if got := intervalStrings(c.typ, back); !cmp.Equal(got, c.want) {
				t.Errorf("%v through the kernel layout (interval %v): %v, want %v", c.in, interval, got, c.want)
			}
		}
	}
	// nft's layout: a leading interval end at zero, no end after the maximum.
	ivs, _ := parseIntervals("inet_service", []string{"22", "65000-65535"})
	els := kernelElements(ivs, true)
	want := []nftables.SetElement{{Key: []byte{0, 0}, IntervalEnd: true}, {Key: []byte{0, 22}}, {Key: []byte{0, 23}, IntervalEnd: true}, {Key: []byte{0xfd, 0xe8}}}
	if !cmp.Equal(els, want) {
		t.Errorf("kernel layout %v, want %v", els, want)
	}
}

func TestMissingFeatureNamed(t *testing.T) {
	c, err := compile(everything())
	if err != nil {
		t.Fatal(err)
	}
	ps := needs(c)
	var names []string
	for _, p := range ps {
		names = append(names, p.feature.Config)
	}
	for _, want := range []string{"CONFIG_NF_TABLES_INET", "CONFIG_NFT_CT", "CONFIG_NFT_REJECT_INET", "CONFIG_NFT_LOG", "CONFIG_NFT_NAT", "CONFIG_NFT_MASQ", "CONFIG_NF_TABLES_BRIDGE", "CONFIG_NFT_LIMIT"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("probes %v lack %s", names, want)
		}
	}
	// The first probe the kernel refuses names the feature.
	f, ok := diagnose(ps, func(p featureProbe) error {
		if p.feature.Config == "CONFIG_NFT_NAT" {
			return os.ErrNotExist
		}
		return nil
	})
	if !ok || f.Config != "CONFIG_NFT_NAT" {
		t.Fatalf("diagnose: %v %v", f, ok)
	}
	msg, ok := kernelfeat.Missing(&kernelfeat.MissingError{Feature: f, Err: os.ErrNotExist})
	if !ok || msg != "kernel lacks nftables NAT (CONFIG_NFT_NAT)" {
		t.Errorf("message %q", msg)
	}
	if _, ok := diagnose(ps, func(featureProbe) error { return nil }); ok {
		t.Error("diagnose blamed a feature the kernel has")
	}
}
