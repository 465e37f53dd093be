package topology

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic, every error
// must be an *Error or ErrorList positioned at a line and column, and a
// topology it accepts must survive another Normalize and Validate unchanged.
//
//	go test -run X -fuzz FuzzParse -fuzztime 60s ./topology/
//
// Crashers found go to testdata/fuzz/FuzzParse and are replayed by go test.
func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	var seeds []string
	for _, pattern := range []string{
		filepath.Join(examplesDir, "*.yaml"),
		filepath.Join("testdata", "invalid", "*.yaml"),
	} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, files...)
	}
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := Parse("fuzz.yaml", data)
		if err != nil {
			if topo != nil {
				t.Errorf("Parse returned both a topology and an error: %v", err)
			}
			if msg := positionProblem(err); msg != "" {
				t.Fatalf("%s\ninput:\n%s", msg, data)
			}
			return
		}
		if topo == nil {
			t.Fatal("Parse returned neither a topology nor an error")
		}
		if err := topo.Normalize(); err != nil {
			t.Fatalf("second Normalize: %v", err)
		}
		if err := topo.Validate(); err != nil {
			t.Fatalf("a parsed topology no longer validates after a second Normalize: %v\ninput:\n%s", err, data)
		}
	})
}
