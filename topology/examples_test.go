package topology

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// examplesDir holds the example topologies shipped with kvmnet.
const examplesDir = "../examples"

// wantExamples are the examples the documentation refers to.
var wantExamples = []string{
	"reference.yaml", "two-bridges.yaml", "routed.yaml", "nat.yaml",
	"bridged.yaml", "jumbo.yaml", "real-nic.yaml", "mirror.yaml", "dns.yaml",
}

func exampleFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestExamples parses every example: each must load with no error.
func TestExamples(t *testing.T) {
	files := exampleFiles(t)
	have := map[string]bool{}
	for _, path := range files {
		have[filepath.Base(path)] = true
		t.Run(filepath.Base(path), func(t *testing.T) {
			topo, err := Load(path)
			if err != nil {
				t.Fatalf("example does not load:\n%v", err)
			}
			// Normalize is idempotent, and a loaded example validates again.
			if err := topo.Normalize(); err != nil {
				t.Fatal(err)
			}
			if err := topo.Validate(); err != nil {
				t.Fatalf("validate after a second Normalize: %v", err)
			}
		})
	}
	for _, name := range wantExamples {
		if !have[name] {
			t.Errorf("examples/%s is missing", name)
		}
	}
}

// TestReferenceExampleIsDefault keeps examples/reference.yaml identical to
// the embedded default topology.
func TestReferenceExampleIsDefault(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(examplesDir, "reference.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, DefaultYAML()) {
		t.Error("examples/reference.yaml differs from topology/default.yaml; copy default.yaml over it")
	}
}

// TestExampleModes checks that each uplink example uses the mode it is named for.
func TestExampleModes(t *testing.T) {
	for file, want := range map[string]ForwardMode{
		"routed.yaml": ModeRouted, "nat.yaml": ModeNAT, "bridged.yaml": ModeBridge, "real-nic.yaml": ModeBridge,
	} {
		topo, err := Load(filepath.Join(examplesDir, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if topo.Uplink == nil || topo.Uplink.Mode != want {
			t.Errorf("%s: uplink = %+v, want mode %s", file, topo.Uplink, want)
		}
	}
	topo, err := Load(filepath.Join(examplesDir, "jumbo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range topo.Links {
		if l.MTU != 9000 {
			t.Errorf("jumbo.yaml: links[%d].mtu = %d, want 9000", i, l.MTU)
		}
	}
}
