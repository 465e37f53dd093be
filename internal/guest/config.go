package guest

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// ConfigPath is where the guest /init reads its Config inside the initramfs.
const ConfigPath = "/kvmnet/config.json"

// Verdict codes the guest /init writes to isa-debug-exit. QEMU then exits
// with status code<<1|1. The codes start at 0x10 so that no verdict maps to
// a status QEMU uses for itself: 0 (a reboot, a panic with panic=-1, or a
// poweroff) and 1 (QEMU's own startup errors) both mean "no report".
const (
	CodePass    = 0x10 // every test binary exited 0 (QEMU status 33)
	CodeFail    = 0x11 // a test binary failed (QEMU status 35)
	CodeInitErr = 0x12 // /init could not set the guest up: mount, module, config (37)
	CodeTimeout = 0x13 // the in-guest deadline passed (39)
)

// CodeFromStatus maps a QEMU exit status to the guest's verdict code; ok is
// false when the status is not one a guest verdict produces.
func CodeFromStatus(status int) (code int, ok bool) {
	if status&1 == 0 {
		return 0, false
	}
	code = status >> 1
	switch code {
	case CodePass, CodeFail, CodeInitErr, CodeTimeout:
		return code, true
	}
	return 0, false
}

// Console markers /init prints around each test binary and at the end; the
// host parses them (see Report).
const (
	MarkerPrefix  = "kvmnet-guest: "
	markerRun     = MarkerPrefix + "run "
	markerEnd     = MarkerPrefix + "end "
	markerVerdict = MarkerPrefix + "verdict "
)

// Config is what the host tells the guest /init to do.
type Config struct {
	// Modules are loaded in order with finit_module; an EEXIST is fine.
	Modules []ModuleLoad `json:"modules"`
	// Tests are run one after another with -test.v.
	Tests []TestBinary `json:"tests"`
	// Env is the environment of every test binary (KEY=VALUE), on top of
	// PATH, HOME and TMPDIR.
	Env []string `json:"env"`
	// Run is passed as -test.run when not empty.
	Run string `json:"run,omitempty"`
	// Short passes -test.short (tests that boot VMs skip: nested QEMU
	// under TCG inside a TCG guest is far too slow for the lane).
	Short bool `json:"short,omitempty"`
	// Timeout bounds all test binaries together, inside the guest.
	Timeout Duration `json:"timeout"`
	// Probe makes /init report CodePass at once: used to check that an
	// accelerator can boot the kernel.
	Probe bool `json:"probe,omitempty"`
}

// ModuleLoad is one module file inside the initramfs.
type ModuleLoad struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	Compressed bool   `json:"compressed,omitempty"` // load with MODULE_INIT_COMPRESSED_FILE
}

// TestBinary is one compiled test binary inside the initramfs.
type TestBinary struct {
	Package string   `json:"package"` // import path, for the report
	Path    string   `json:"path"`
	Dir     string   `json:"dir"` // working directory (holds testdata/ when present)
	Args    []string `json:"args,omitempty"`
}

// Duration is a time.Duration that marshals as a string ("5m0s").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// RunMarker is the console line /init prints before running a test binary.
func RunMarker(pkg string) string { return markerRun + pkg }

// EndMarker is the console line /init prints after a test binary exits.
func EndMarker(pkg string, exit int, elapsed time.Duration) string {
	return fmt.Sprintf("%s%s exit=%d elapsed=%s", markerEnd, pkg, exit, elapsed.Round(time.Millisecond))
}

// VerdictMarker is the last line /init prints before it reports code.
func VerdictMarker(code int) string {
	word := map[int]string{CodePass: "pass", CodeFail: "fail", CodeInitErr: "init-error", CodeTimeout: "timeout"}[code]
	if word == "" {
		word = "unknown"
	}
	return fmt.Sprintf("%s%s code=%d", markerVerdict, word, code)
}

// parseEnd parses the rest of an end marker: "pkg exit=N elapsed=D".
func parseEnd(rest string) (pkg string, exit int, ok bool) {
	f := strings.Fields(rest)
	if len(f) < 2 || !strings.HasPrefix(f[1], "exit=") {
		return "", 0, false
	}
	if _, err := fmt.Sscanf(f[1], "exit=%d", &exit); err != nil {
		return "", 0, false
	}
	return f[0], exit, true
}

// parseVerdict finds a verdict marker in a console line.
func parseVerdict(line string) (code int, ok bool) {
	i := strings.Index(line, markerVerdict)
	if i < 0 {
		return 0, false
	}
	var word string
	if _, err := fmt.Sscanf(line[i+len(markerVerdict):], "%s code=%d", &word, &code); err != nil {
		return 0, false
	}
	return code, true
}
