package topology

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/goccy/go-yaml/token"
)

// fastCorpus is every topology file of the repository plus generated ones
// in the shapes the fast path is for.
func fastCorpus(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{DefaultFile: DefaultYAML()}
	for _, pattern := range []string{
		filepath.Join(examplesDir, "*.yaml"),
		filepath.Join("testdata", "invalid", "*.yaml"),
		filepath.Join("testdata", "fuzz", "FuzzParse", "*"),
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(f, "fuzz") {
				data = fuzzInput(data)
			}
			out[f] = data
		}
	}
	for _, n := range []int{1, 3, 40} {
		out[fmt.Sprintf("bench-%d", n)] = benchTopology(n)
	}
	for name, data := range fastCases {
		out["case-"+name] = []byte(data)
	}
	return out
}

// fuzzInput extracts the []byte of a "go test fuzz v1" corpus file.
func fuzzInput(data []byte) []byte {
	s := string(data)
	i := strings.Index(s, "[]byte(")
	if i < 0 {
		return data
	}
	s = strings.TrimSuffix(strings.TrimSpace(s[i+len("[]byte("):]), ")")
	var v string
	if _, err := fmt.Sscanf(s, "%q", &v); err != nil {
		return data
	}
	return []byte(v)
}

// benchTopology is what internal/bench/gen writes.
func benchTopology(n int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "name: bench\nnamespaces:\n  - {name: host, role: host}\n  - {name: bridge, role: bridge}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  - {name: ep%d, role: endpoint, routes: [{to: default, via: 10.64.0.1}]}\n", i)
	}
	b.WriteString("bridges:\n  - {name: br0, namespace: bridge}\nlinks:\n")
	b.WriteString("  - endpoints:\n      - {namespace: host, name: eth0, addresses: [10.64.0.1/16]}\n      - {namespace: bridge, name: host, bridge: br0}\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  - endpoints:\n      - {namespace: ep%d, name: eth0, addresses: [10.64.%d.%d/16]}\n      - {namespace: bridge, name: ep%d, bridge: br0}\n",
			i, (i+1)/250, (i+1)%250+2, i)
	}
	return []byte(b.String())
}

// fastCases are shapes at the edges of the fast path's subset.
var fastCases = map[string]string{
	"quoted":           "name: 'it''s'\nnamespaces:\n  - name: \"a\"\n    role: 'host'\n    sysctls: {net.ipv4.ip_forward: '1', net.ipv6.conf.all.forwarding: \"0\"}\n",
	"quoted-key":       "name: x\nnamespaces:\n  - name: a\n    sysctls: {\"net.ipv4.ip_forward\": 1}\n",
	"sysctls":          "name: x\nnamespaces:\n  - name: a\n    sysctls:\n      net.ipv4.ip_forward: 1\n      net.ipv4.conf.all.rp_filter: \"2\"\n",
	"seq-same-indent":  "name: x\nnamespaces:\n- name: a\n  routes:\n  - to: default\n    via: 10.0.0.1\n- name: b\n",
	"doc-start":        "--- # a comment\nname: x # another\n\n# only a comment\nnamespaces: [{name: a}]\n",
	"numbers":          "name: 100\nnamespaces:\n  - name: true\n    mtu: 1500\n  - name: -1\n    mtu: 0x10\n  - name: 1.5\n  - name: null\n  - name: 010\n",
	"null-value":       "name: x\nnamespaces:\n  - name:\n",
	"empty-flow":       "name: x\nnamespaces: []\n",
	"multiline-scalar": "name: a\n  b\nnamespaces: [{name: a}]\n",
	"anchor":           "name: &n x\nnamespaces: [{name: *n}]\n",
	"tag":              "name: !!str x\nnamespaces: [{name: a}]\n",
	"unknown":          "name: x\nnamespace: [{name: a}]\n",
	"duplicate":        "name: x\nname: y\nnamespaces: [{name: a}]\n",
	"tab":              "name: x\nnamespaces:\n\t- name: a\n",
	"crlf":             "name: x\r\nnamespaces: [{name: a}]\r\n",
	"second-doc":       "name: x\nnamespaces: [{name: a}]\n---\nname: y\n",
	"list-scalar":      "name: x\nnamespaces:\n  - name: a\n    firewall:\n      rules:\n        - {action: accept, dport: 22, proto: tcp, ct_state: new}\n        - {action: accept, dport: [80, \"8000-8080\", '443'], proto: tcp, saddr: [10.0.0.0/8]}\n",
	"colon-values":     "name: x\nnamespaces:\n  - name: a\nlinks:\n  - endpoints:\n      - namespace: a\n        name: eth0\n        mac: aa:bb:cc:dd:ee:ff\n        addresses: [2001:db8::1/64, 10.0.0.1/24]\n",
	"comment-in-quote": "name: 'a # b'\nnamespaces: [{name: a}]\n",
	"hash-in-plain":    "name: a#b\nnamespaces: [{name: a}]\n",
	"utf8-comment":     "# réseau — test\nname: x\nnamespaces: [{name: a}]\n",
	"utf8-value":       "name: réseau\nnamespaces: [{name: a}]\n",
	"top-list":         "- name: x\n",
	"bad-indent":       "name: x\nnamespaces:\n  - name: a\n   role: host\n",
	"trailing-comma":   "name: x\nnamespaces: [{name: a},]\n",
	"spaces-in-flow":   "name: x\nnamespaces: [ { name: a , role: host } ]\n",
	"escape":           "name: \"a\\tb\"\nnamespaces: [{name: a}]\n",
	"key-no-space":     "name: x\nnamespaces: [{name:a}]\n",
	"cr-in-comment":    "#\r\nname: x\nnamespaces: [{name: a}]\n",
	"trailing-space":   "name: x\nnamespaces:\n  - name: a \n",
	"deep-uplink":      "name: x\nnamespaces:\n  - {name: host, role: host}\nuplink:\n  mode: nat\n  name: up0\n  addresses: [203.0.113.2/24]\n",
	"dns":              "name: x\nnamespaces:\n  - {name: host, role: host}\ndns:\n  domain: lab\n  servers:\n    - namespace: host\n      interface: eth0\n      forward: [192.0.2.53, \"192.0.2.54:5353\", \"[2001:db8::53]:53\", 2001:db8::54]\n  hosts:\n    - {name: nas, addresses: [192.168.1.5, \"fd00::5\"]}\n    - name: files.nas\n      addresses:\n        - 192.168.1.5\n",
}

// TestFastDecodeMatches checks that whatever the fast path accepts, it reads
// exactly as go-yaml does: the same topology and the same field positions.
func TestFastDecodeMatches(t *testing.T) {
	fast := 0
	corpus := fastCorpus(t)
	for name, data := range corpus {
		if checkFastDecode(t, name, data) {
			fast++
		}
	}
	t.Logf("%d of %d files took the fast path", fast, len(corpus))
	for _, name := range []string{"bench-40", DefaultFile, filepath.Join(examplesDir, "reference.yaml"), "case-sysctls", "case-seq-same-indent", "case-quoted", "case-list-scalar", "case-dns", filepath.Join(examplesDir, "dns.yaml")} {
		if _, ok := fastDecode(name, corpus[name]); !ok {
			t.Errorf("%s did not take the fast path", name)
		}
	}
	for _, name := range []string{"case-numbers", "case-null-value", "case-empty-flow", "case-multiline-scalar", "case-anchor", "case-tag", "case-unknown", "case-duplicate", "case-tab", "case-crlf", "case-second-doc", "case-hash-in-plain", "case-utf8-value", "case-top-list", "case-bad-indent", "case-escape", "case-key-no-space", "case-quoted-key", "case-trailing-space", "case-cr-in-comment"} {
		if _, ok := fastDecode(name, corpus[name]); ok {
			t.Errorf("%s took the fast path", name)
		}
	}
}

// checkFastDecode compares the two paths on data; it reports whether the
// fast one took it.
func checkFastDecode(t *testing.T, name string, data []byte) bool {
	t.Helper()
	got, ok := fastDecode(name, data)
	if !ok {
		return false
	}
	want, err := slowDecode(name, data)
	if err != nil {
		t.Errorf("%s: the fast path accepted what go-yaml refuses: %v\n%s", name, err, data)
		return true
	}
	gs, ws := got.src, want.src
	got.src, want.src = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: the fast path read\n%#v\ngo-yaml read\n%#v", name, got, want)
	}
	if !reflect.DeepEqual(gs.at, ws.at) {
		for k, v := range ws.at {
			if gs.at[k] != v {
				t.Errorf("%s: %q is at %v, go-yaml says %v", name, k, gs.at[k], v)
			}
		}
		for k, v := range gs.at {
			if _, ok := ws.at[k]; !ok {
				t.Errorf("%s: %q at %v is not known to go-yaml", name, k, v)
			}
		}
	}
	return true
}

// FuzzFastDecode: any input the fast path takes reads as go-yaml reads it.
//
//	go test -run X -fuzz FuzzFastDecode -fuzztime 60s ./topology/
func FuzzFastDecode(f *testing.F) {
	for _, data := range fastCorpus(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFastDecode(t, "fuzz.yaml", data)
	})
}

func BenchmarkDecode1000(b *testing.B) {
	data := benchTopology(1000)
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, ok := fastDecode("b.yaml", data); !ok {
				b.Fatal("not fast")
			}
		}
	})
	b.Run("go-yaml", func(b *testing.B) {
		for b.Loop() {
			if _, err := slowDecode("b.yaml", data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := Parse("b.yaml", data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPlainString checks plainString's shortcut against go-yaml's own rule.
func TestPlainString(t *testing.T) {
	words := []string{"null", "Null", "NULL", "nULL", "true", "True", "TRUE", "tRUE", "false", "False", "FALSE",
		"y", "Y", "yes", "no", "on", "off", "OFF", "inf", "Inf", "infinity", "nan", "NaN", "e5", "E5", "e.5", "x1.5",
		"_1", "_", "/x", "/1.5", "a.b", "a", "ep1", "default", "x0", "i", "n", "nil", "None", "undefined"}
	for _, w := range words {
		want := token.New(w, w, &token.Position{}).Type == token.StringType
		if got := plainString(w); got != want {
			t.Errorf("plainString(%q) = %v, go-yaml: %v", w, got, want)
		}
	}
}
