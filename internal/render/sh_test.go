package render_test

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/render"
	"github.com/kvmnet/kvmnet/topology"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestShellGolden(t *testing.T) {
	topo, err := topology.Default()
	if err != nil {
		t.Fatal(err)
	}
	want := model.Desired(topo)
	steps, err := plan.Diff(want, &model.State{Network: want.Network, Namespaces: map[string]*model.Namespace{}})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := render.Shell(&b, topo.ID(), steps); err != nil {
		t.Fatal(err)
	}
	const path = "testdata/reference.sh.golden"
	if *update {
		os.WriteFile(path, b.Bytes(), 0o644)
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(golden), b.String()); d != "" {
		t.Errorf("shell export differs (-want +got):\n%s", d)
	}
	// Every step is rendered: no placeholder lines.
	if strings.Contains(b.String(), "unrenderable") {
		t.Fatalf("unrenderable step in:\n%s", b.String())
	}
}

func TestNFT(t *testing.T) {
	masq := []model.Masquerade{{OutIface: "uplink0", Source: mustPrefix("192.168.1.0/24")}}
	got := nft.Render(nft.Table{Masquerade: masq})
	fp := model.Fingerprint("masquerade " + masq[0].String())
	for _, want := range []string{
		"table inet kvmnet {", "type nat hook postrouting priority srcnat; policy accept;",
		`oifname "uplink0" meta nfproto ipv4 ip saddr 192.168.1.0/24 counter masquerade comment "kvmnet ` + fp + ` `, // + the bytecode digest
		// The table of kvmnet before the firewall (family ip) is deleted too.
		"table ip kvmnet\ndelete table ip kvmnet\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft script lacks %q:\n%s", want, got)
		}
	}
	if empty := nft.Render(nft.Table{}); strings.Contains(empty, "chain") || !strings.Contains(empty, "delete table inet kvmnet") || !strings.Contains(empty, "delete table bridge kvmnet") {
		t.Errorf("empty table script:\n%s", empty)
	}
}
