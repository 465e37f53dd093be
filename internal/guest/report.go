package guest

import (
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
)

// Test outcomes as `go test -v` prints them.
const (
	StatusPass = "PASS"
	StatusFail = "FAIL"
	StatusSkip = "SKIP"
)

// TestResult is one test or subtest as the guest ran it.
type TestResult struct {
	Name    string // "TestX" or "TestX/sub"
	Status  string // StatusPass, StatusFail or StatusSkip
	Elapsed string // "0.12s", as printed
	Note    string // why a synthetic result was made up ("no result line")
}

// TopLevel reports whether the result is a top-level test, not a subtest.
func (t TestResult) TopLevel() bool { return !strings.Contains(t.Name, "/") }

// PackageResult is one test binary's run in the guest.
type PackageResult struct {
	Package string
	Exit    int
	Ended   bool // the end marker was seen
	Elapsed string
	Tests   []TestResult
	running []string // "=== RUN" names with no result yet
}

// Failed reports whether the package failed: a failing test, a non-zero
// exit, or no end marker.
func (p *PackageResult) Failed() bool {
	if !p.Ended || p.Exit != 0 {
		return true
	}
	for _, t := range p.Tests {
		if t.Status == StatusFail {
			return true
		}
	}
	return false
}

// Report collects test results from the guest console. It is an io.Writer
// fed with console lines (VM.Console); it tolerates unrelated lines
// (kernel messages) in between.
type Report struct {
	mu       sync.Mutex
	Packages []*PackageResult
	partial  string
	cur      *PackageResult
}

var resultRe = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+s)\)`)
var runRe = regexp.MustCompile(`^=== RUN\s+(\S+)`)

// Write implements io.Writer; it splits p into lines.
func (r *Report) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.partial + string(p)
	lines := strings.Split(s, "\n")
	r.partial = lines[len(lines)-1]
	for _, l := range lines[:len(lines)-1] {
		r.line(strings.TrimRight(l, "\r"))
	}
	return len(p), nil
}

func (r *Report) line(l string) {
	t := strings.TrimSpace(l)
	// A marker may follow garbage the firmware left on the same line.
	if i := strings.Index(t, MarkerPrefix); i > 0 {
		t = t[i:]
	}
	if rest, ok := strings.CutPrefix(t, markerRun); ok {
		r.cur = &PackageResult{Package: strings.TrimSpace(rest)}
		r.Packages = append(r.Packages, r.cur)
		return
	}
	if rest, ok := strings.CutPrefix(t, markerEnd); ok {
		pkg, exit, ok := parseEnd(rest)
		if ok && r.cur != nil && r.cur.Package == pkg {
			r.cur.Exit, r.cur.Ended = exit, true
			if _, el, ok := strings.Cut(rest, "elapsed="); ok {
				r.cur.Elapsed = strings.TrimSpace(el)
			}
			r.close(r.cur)
			r.cur = nil
		}
		return
	}
	if r.cur == nil {
		return
	}
	if m := runRe.FindStringSubmatch(l); m != nil {
		r.cur.running = append(r.cur.running, m[1])
		return
	}
	if m := resultRe.FindStringSubmatch(l); m != nil {
		r.cur.Tests = append(r.cur.Tests, TestResult{Name: m[2], Status: m[1], Elapsed: m[3]})
		for i, n := range r.cur.running {
			if n == m[2] {
				r.cur.running = append(r.cur.running[:i], r.cur.running[i+1:]...)
				break
			}
		}
	}
}

// close turns tests that started but printed no result into failures (the
// binary crashed or was killed) and a failing binary with no failing test
// into a package-level failure.
func (r *Report) close(p *PackageResult) {
	for _, n := range p.running {
		p.Tests = append(p.Tests, TestResult{Name: n, Status: StatusFail, Note: "no result line"})
	}
	p.running = nil
	if p.Exit != 0 || !p.Ended {
		for _, t := range p.Tests {
			if t.Status == StatusFail {
				return
			}
		}
		note := fmt.Sprintf("test binary exited %d", p.Exit)
		if !p.Ended {
			note = "test binary did not finish"
		}
		p.Tests = append(p.Tests, TestResult{Name: "(package)", Status: StatusFail, Note: note})
	}
}

// Finish closes a package whose end marker never came (the guest died).
func (r *Report) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.partial != "" {
		r.line(r.partial)
		r.partial = ""
	}
	if r.cur != nil {
		r.close(r.cur)
		r.cur = nil
	}
}

// Counts returns the top-level tests by outcome; package-level failures
// count as failures.
func (r *Report) Counts() (pass, fail, skip int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.Packages {
		for _, t := range p.Tests {
			if !t.TopLevel() {
				continue
			}
			switch t.Status {
			case StatusPass:
				pass++
			case StatusFail:
				fail++
			case StatusSkip:
				skip++
			}
		}
	}
	return pass, fail, skip
}

// Failed reports whether any package failed.
func (r *Report) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.Packages {
		if p.Failed() {
			return true
		}
	}
	return false
}

// WriteSummary prints one line per test (subtests indented) and the closing
// "guest: N passed, N failed, N skipped" line.
func (r *Report) WriteSummary(w io.Writer) {
	r.mu.Lock()
	for _, p := range r.Packages {
		state := "ok  "
		if p.Failed() {
			state = "FAIL"
		}
		fmt.Fprintf(w, "%s %s (exit %d, %s)\n", state, p.Package, p.Exit, p.Elapsed)
		for _, t := range p.Tests {
			indent := strings.Repeat("    ", strings.Count(t.Name, "/"))
			line := fmt.Sprintf("    %s%-4s %s", indent, t.Status, t.Name)
			if t.Elapsed != "" {
				line += " (" + t.Elapsed + ")"
			}
			if t.Note != "" {
				line += " [" + t.Note + "]"
			}
			fmt.Fprintln(w, line)
		}
	}
	r.mu.Unlock()
	pass, fail, skip := r.Counts()
	fmt.Fprintf(w, "guest: %d passed, %d failed, %d skipped\n", pass, fail, skip)
}
