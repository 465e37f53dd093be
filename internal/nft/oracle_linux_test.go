package nft

import (
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/testutil"
)

// TestOracle: what Apply writes over netlink and what nft builds from
// Render's script are the same tables, both ways: the same Observe, the
// same `nft list ruleset`, and that listing parses again with nft -f.
func TestOracle(t *testing.T) {
	testutil.RequireTool(t, "nft")
	for name, tb := range map[string]Table{
		"everything": everything(),
		"masquerade": {Masquerade: everything().Masquerade},
		"guards":     {Guards: everything().Guards},
		"permissive": {Firewall: permissive()},
		"hardened":   {Firewall: hardened()},
		"sets only":  {Firewall: &model.Firewall{Sets: everything().Firewall.Sets}},
		"v6 masquerade": {Masquerade: []model.Masquerade{
			{OutIface: "up0", Source: netip.MustParsePrefix("fd00::/64")},
			{OutIface: "up0", Source: netip.MustParsePrefix("10.0.0.0/8")}}},
	} {
		t.Run(name, func(t *testing.T) {
			viaNetlink, viaNft := newNS(t), newNS(t)
			apply(t, viaNetlink, tb)
			script := writeFile(t, "render.nft", Render(tb))
			nftIn(t, viaNft, "-f", script)
			fromNft, err := Observe(viaNft)
			if err != nil {
				t.Fatal(err)
			}
			if want := Canonical(tb); fromNft != want {
				t.Errorf("Observe after nft -f Render:\n%s\nwant (Canonical):\n%s", fromNft, want)
			}
			a, b := rawHex(listing(t, viaNetlink)), listing(t, viaNft)
			if d := cmp.Diff(b, a); d != "" {
				t.Errorf("nft list ruleset differs (-nft -f Render +Apply):\n%s", d)
			}
			if d := cmp.Diff(bytecode(t, viaNft), rawHex(bytecode(t, viaNetlink))); d != "" {
				t.Errorf("kernel bytecode differs (-nft -f Render +Apply):\n%s", d)
			}
			// The listing of what Apply wrote is readable nft: it parses.
			nftIn(t, viaNetlink, "-c", "-f", writeFile(t, "listed.nft", a))
			// And Apply over what nft built changes nothing observable.
			apply(t, viaNft, tb)
			if again := rawHex(listing(t, viaNft)); again != a {
				t.Errorf("Apply over the nft-built table:\n%s\nwant:\n%s", again, a)
			}
		})
	}
}

// TestIdempotentAndHandEdits: Apply twice gives the same tables; deleting,
// adding or moving a rule by hand, or changing a set or a policy, changes
// what Observe reports; Apply puts it back.
func TestIdempotentAndHandEdits(t *testing.T) {
	testutil.RequireTool(t, "nft")
	ns := newNS(t)
	tb := everything()
	apply(t, ns, tb)
	first := listing(t, ns)
	apply(t, ns, tb)
	if again := listing(t, ns); again != first {
		t.Fatalf("second Apply changed the ruleset:\n%s\nfirst:\n%s", again, first)
	}
	want := Canonical(tb)
	handle := func(chain, comment string) string {
		for _, l := range strings.Split(nftIn(t, ns, "-a", "list", "chain", "inet", "kvmnet", chain), "\n") {
			if strings.Contains(l, comment) {
				return l[strings.LastIndex(l, "# handle ")+len("# handle "):]
			}
		}
		t.Fatalf("no rule %q in chain %s", comment, chain)
		return ""
	}
	ssh := "kvmnet " + model.Fingerprint(tb.Firewall.Rules[3].String())
	// The whole comment of the ssh rule, digest included, as a hand edit
	// that keeps it would copy it.
	full := regexp.MustCompile(`comment "(` + ssh + ` [0-9a-f]+)"`).FindStringSubmatch(first)
	if full == nil {
		t.Fatalf("no comment %q... in:\n%s", ssh, first)
	}
	for name, edit := range map[string][]string{
		// Edits in place that keep kvmnet's comment: the bytecode no longer
		// has the digest the comment records.
		"rule edited in place": {"replace", "rule", "inet", "kvmnet", "input", "handle", "HANDLE", "tcp", "dport", "2222", "counter", "accept", "comment", `"` + full[1] + `"`},
		"verdict edited":       {"replace", "rule", "inet", "kvmnet", "input", "handle", "HANDLE", "tcp", "dport", "22", "counter", "drop", "comment", `"` + full[1] + `"`},
		"rule deleted":         {"delete", "rule", "inet", "kvmnet", "input", "handle", "HANDLE"},
		"rule added":           {"add", "rule", "inet", "kvmnet", "input", "tcp", "dport", "9999", "accept"},
		"rule moved":           {"insert", "rule", "inet", "kvmnet", "input", "tcp", "dport", "22", "counter", "accept", "comment", `"` + full[1] + `"`},
		"policy":               {"add", "chain", "inet", "kvmnet", "output", "{", "type", "filter", "hook", "output", "priority", "0", ";", "policy", "drop", ";", "}"},
		"set element":          {"add", "element", "inet", "kvmnet", "web", "{", "9090", "}"},
		"chain added":          {"add", "chain", "inet", "kvmnet", "extra"},
		"old ip table":         {"add", "table", "ip", "kvmnet"},
	} {
		t.Run(name, func(t *testing.T) {
			for i, a := range edit {
				if a == "HANDLE" {
					edit[i] = handle("input", ssh)
				}
			}
			nftIn(t, ns, edit...)
			got, err := Observe(ns)
			if err != nil {
				t.Fatal(err)
			}
			if got == want {
				t.Fatalf("Observe did not notice %s:\n%s", name, got)
			}
			apply(t, ns, tb)
			if again := listing(t, ns); again != first {
				t.Fatalf("Apply after %s:\n%s\nwant:\n%s", name, again, first)
			}
		})
	}
}

// TestOtherTablesUntouched: a host's own tables (and a leftover ip kvmnet
// table, which Apply replaces) around kvmnet's.
func TestOtherTablesUntouched(t *testing.T) {
	testutil.RequireTool(t, "nft")
	ns := newNS(t)
	foreign := `table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 22 counter accept comment "not kvmnet"
	}
}
table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth9" masquerade
	}
}
table bridge other {
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
}
`
	nftIn(t, ns, "-f", writeFile(t, "foreign.nft", foreign+"table ip kvmnet {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n"))
	if got, _ := Observe(ns); !strings.Contains(got, "table ip kvmnet") {
		t.Fatalf("the leftover ip kvmnet table is not observed:\n%s", got)
	}
	apply(t, ns, everything())
	all := nftIn(t, ns, "list", "ruleset")
	for _, want := range []string{"table inet filter", `comment "not kvmnet"`, "table ip nat", "table bridge other", "table inet kvmnet", "table bridge kvmnet"} {
		if !strings.Contains(all, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "table ip kvmnet") {
		t.Errorf("the leftover ip kvmnet table is still there:\n%s", all)
	}
	// An empty table removes kvmnet's tables, and only them.
	apply(t, ns, Table{})
	if got, _ := Observe(ns); got != "" {
		t.Fatalf("Observe after removal: %q", got)
	}
	if left := nftIn(t, ns, "list", "ruleset"); counterRe.ReplaceAllString(left, "counter packets 0 bytes 0") != strings.ReplaceAll(foreign, "counter accept", "counter packets 0 bytes 0 accept") {
		t.Errorf("what is left:\n%s\nwant the foreign tables:\n%s", left, foreign)
	}
	// Removing twice is fine.
	apply(t, ns, Table{})
}

var rawSet = regexp.MustCompile(`(@th,\d+,128 != \{ )([0-9, ]+)( \})`)

// rawHex prints the elements of a set matched against a raw 128-bit field
// (the guard's ND target check) in hex. nft records, in the set's user
// data, the expression a set was made for ("typeof"), and prints integers
// of a raw payload in hex by it; the nftables library cannot write that
// record, so nft lists the same set, with the same elements and the same
// bytecode, in decimal. Only the printing differs.
func rawHex(listing string) string {
	return rawSet.ReplaceAllStringFunc(listing, func(m string) string {
		p := rawSet.FindStringSubmatch(m)
		var out []string
		for _, d := range strings.Split(p[2], ", ") {
			n, ok := new(big.Int).SetString(d, 10)
			if !ok {
				return m
			}
			out = append(out, fmt.Sprintf("0x%032x", n))
		}
		return p[1] + strings.Join(out, ", ") + p[3]
	})
}
