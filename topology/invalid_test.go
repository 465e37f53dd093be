package topology

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/invalid/*.err from the errors Parse returns now")

// minInvalidCases keeps the catalogue from shrinking unnoticed.
const minInvalidCases = 45

// invalidCases lists the catalogue: testdata/invalid/NAME.yaml, each with the
// exact expected error text in NAME.err.
func invalidCases(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestInvalid parses every topology of the invalid catalogue and compares the
// error with the golden .err file. Run with -update to rewrite the .err files,
// then review every one of them by eye.
func TestInvalid(t *testing.T) {
	files := invalidCases(t)
	if len(files) < minInvalidCases {
		t.Fatalf("the invalid catalogue has %d cases, want at least %d", len(files), minInvalidCases)
	}
	for _, path := range files {
		path = filepath.ToSlash(path)
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			topo, err := Parse(path, data)
			if err == nil {
				t.Fatalf("Parse accepted an invalid topology: %+v", topo)
			}
			checkPositioned(t, err)
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(path, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestInvalid -update ./topology/ and review the result)", err)
			}
			if got != string(want) {
				t.Errorf("error mismatch\n--- got\n%s--- want (%s)\n%s", got, golden, want)
			}
		})
	}
}

// TestInvalidGoldenHaveCases catches .err files whose topology was removed.
func TestInvalidGoldenHaveCases(t *testing.T) {
	errs, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.err"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		if _, err := os.Stat(strings.TrimSuffix(e, ".err") + ".yaml"); err != nil {
			t.Errorf("%s has no topology: %v", e, err)
		}
	}
}

// checkPositioned asserts that err is an *Error or an ErrorList and that
// every entry points at a line and column of the file.
func checkPositioned(t testing.TB, err error) {
	t.Helper()
	if msg := positionProblem(err); msg != "" {
		t.Errorf("%s", msg)
	}
}

// positionProblem returns why err is not a fully positioned topology error, or "".
func positionProblem(err error) string {
	var list ErrorList
	var one *Error
	switch {
	case errors.As(err, &list):
		if len(list) == 0 {
			return "empty ErrorList returned as an error"
		}
	case errors.As(err, &one):
		list = ErrorList{one}
	default:
		return "error is neither *topology.Error nor topology.ErrorList: " + err.Error()
	}
	for _, e := range list {
		if e == nil {
			return "nil *Error in ErrorList"
		}
		if e.Line <= 0 || e.Column <= 0 {
			return fmt.Sprintf("error without a position (line %d, column %d): %s", e.Line, e.Column, e.Error())
		}
		if e.Msg == "" {
			return "error without a message: " + e.Error()
		}
	}
	return ""
}
