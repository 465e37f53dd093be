package guest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const consoleSample = `SeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from ROM..kvmnet-guest: run example.com/m/a
=== RUN   TestOK
--- PASS: TestOK (0.01s)
=== RUN   TestSkip
    a_test.go:10: kernel lacks 802.1Q VLAN support (CONFIG_VLAN_8021Q)
--- SKIP: TestSkip (0.00s)
=== RUN   TestParent
=== RUN   TestParent/child_one
=== RUN   TestParent/child_two
    a_test.go:20: boom
--- FAIL: TestParent (0.20s)
    --- PASS: TestParent/child_one (0.10s)
    --- FAIL: TestParent/child_two (0.10s)
FAIL
kvmnet-guest: end example.com/m/a exit=1 elapsed=250ms
[    3.1] some kernel message
kvmnet-guest: run example.com/m/b
=== RUN   TestFine
--- PASS: TestFine (0.00s)
PASS
kvmnet-guest: end example.com/m/b exit=0 elapsed=10ms
kvmnet-guest: run example.com/m/c
=== RUN   TestCrash
panic: runtime error
kvmnet-guest: end example.com/m/c exit=2 elapsed=5ms
kvmnet-guest: run example.com/m/d
PASS
kvmnet-guest: end example.com/m/d exit=3 elapsed=5ms
kvmnet-guest: run example.com/m/e
=== RUN   TestHang
`

func TestReport(t *testing.T) {
	r := &Report{}
	// Feed in awkward chunks: the parser must reassemble lines.
	for _, chunk := range strings.SplitAfter(consoleSample, "u") {
		r.Write([]byte(chunk))
	}
	r.Finish()
	if len(r.Packages) != 5 {
		t.Fatalf("packages = %d, want 5", len(r.Packages))
	}
	a, b, c, d, e := r.Packages[0], r.Packages[1], r.Packages[2], r.Packages[3], r.Packages[4]
	if a.Package != "example.com/m/a" || !a.Ended || a.Exit != 1 || !a.Failed() {
		t.Errorf("a = %+v", a)
	}
	if b.Failed() || b.Elapsed != "10ms" {
		t.Errorf("b = %+v", b)
	}
	if !c.Failed() || len(c.Tests) != 1 || c.Tests[0].Name != "TestCrash" || c.Tests[0].Note != "no result line" {
		t.Errorf("c (crashed in a test) = %+v", c.Tests)
	}
	if !d.Failed() || len(d.Tests) != 1 || d.Tests[0].Name != "(package)" || !strings.Contains(d.Tests[0].Note, "exited 3") {
		t.Errorf("d (non-zero exit, no failing test) = %+v", d.Tests)
	}
	if e.Ended || !e.Failed() || len(e.Tests) != 1 || e.Tests[0].Name != "TestHang" {
		t.Errorf("e (guest died mid-test) = %+v", e)
	}
	pass, fail, skip := r.Counts()
	// Top level: a: OK, Skip, Parent(F); b: Fine; c: Crash(F); d: (package)(F);
	// e: Hang(F), which already is a failure, so no extra (package) entry.
	if pass != 2 || fail != 4 || skip != 1 {
		t.Errorf("counts = %d passed, %d failed, %d skipped; want 2, 4, 1", pass, fail, skip)
	}
	if !r.Failed() {
		t.Error("Failed() = false")
	}
	var out bytes.Buffer
	r.WriteSummary(&out)
	s := out.String()
	for _, want := range []string{
		"FAIL example.com/m/a (exit 1, 250ms)",
		"    SKIP TestSkip (0.00s)",
		"        FAIL TestParent/child_two (0.10s)",
		"ok   example.com/m/b",
		"FAIL TestHang [no result line]",
		"\nguest: 2 passed, 4 failed, 1 skipped\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}

func TestReportAllPass(t *testing.T) {
	r := &Report{}
	r.Write([]byte(RunMarker("p") + "\n--- PASS: TestA (0.00s)\n" + EndMarker("p", 0, 3*time.Millisecond) + "\n" + VerdictMarker(CodePass) + "\n"))
	r.Finish()
	if r.Failed() {
		t.Errorf("Failed() = true: %+v", r.Packages[0])
	}
	if p, f, s := r.Counts(); p != 1 || f != 0 || s != 0 {
		t.Errorf("counts %d %d %d", p, f, s)
	}
}

func TestCodesAndMarkers(t *testing.T) {
	for status, want := range map[int]int{33: CodePass, 35: CodeFail, 37: CodeInitErr, 39: CodeTimeout} {
		if got, ok := CodeFromStatus(status); !ok || got != want {
			t.Errorf("CodeFromStatus(%d) = %#x, %v", status, got, ok)
		}
	}
	for _, status := range []int{0, 1, 2, 3, 34, 41, 255, -1} {
		if code, ok := CodeFromStatus(status); ok {
			t.Errorf("CodeFromStatus(%d) = %#x, want no verdict", status, code)
		}
	}
	if code, ok := parseVerdict("garbage" + VerdictMarker(CodeTimeout)); !ok || code != CodeTimeout {
		t.Errorf("parseVerdict = %#x, %v", code, ok)
	}
	if pkg, exit, ok := parseEnd(strings.TrimPrefix(EndMarker("x/y", -1, time.Second), markerEnd)); !ok || pkg != "x/y" || exit != -1 {
		t.Errorf("parseEnd = %q %d %v", pkg, exit, ok)
	}
	var c Config
	if err := json.Unmarshal([]byte(`{"timeout":"90s","tests":[{"package":"p","path":"/t","dir":"/d"}]}`), &c); err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Timeout) != 90*time.Second || c.Tests[0].Path != "/t" {
		t.Errorf("config = %+v", c)
	}
	b, _ := json.Marshal(Config{Timeout: Duration(time.Minute)})
	if !strings.Contains(string(b), `"timeout":"1m0s"`) {
		t.Errorf("marshal: %s", b)
	}
}
