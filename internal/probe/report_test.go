package probe

import (
	"errors"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sample() []Result {
	return []Result{
		{Probe: Probe{Name: "web from vm1", FromNS: "vm1", To: "192.168.1.1:80", Proto: "tcp", Expect: "reachable"}, Reachable: true, OK: true, Detail: "connected", Elapsed: 2 * time.Millisecond},
		{Probe: Probe{FromNS: "vm1", To: "192.168.1.1:22", Proto: "tcp", Expect: "blocked"}, OK: true, Detail: "timeout", Elapsed: time.Second},
		{Probe: Probe{FromNS: "vm2", To: "192.168.1.1:22", Proto: "tcp", Expect: "reachable"}, OK: false, Detail: "refused", Elapsed: time.Millisecond},
		{Probe: Probe{FromNS: "vm2", To: "192.168.1.1", Proto: "icmp"}, Reachable: true, OK: true, Detail: "echo reply", Elapsed: 500 * time.Microsecond},
		{Probe: Probe{FromNS: "gone", To: "192.168.1.1", Proto: "icmp"}, Detail: `open namespace "gone": namespace not found`, Err: errors.New(`open namespace "gone": namespace not found`)},
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		os.WriteFile(path, got, 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s (-want +got):\n%s", path, d)
	}
}

func TestMatrixGolden(t *testing.T) {
	golden(t, "testdata/matrix.golden", []byte(Matrix(sample())))
}

func TestJUnitGolden(t *testing.T) {
	x, err := JUnit(sample())
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/junit.golden.xml", x)
	if total, failed := Summary(sample()); total != 5 || failed != 2 {
		t.Errorf("summary %d %d", total, failed)
	}
}
