package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateBadFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nnamespaces:\n  - name: a\n    role: nope\n"), 0o644)
	code, _, stderr := run(t, "validate", "-f", bad)
	if code != ExitInvalid {
		t.Fatalf("exit %d, want %d; stderr %s", code, ExitInvalid, stderr)
	}
	if !strings.Contains(stderr, bad+":4:11: namespaces[0].role: unknown role \"nope\"") {
		t.Fatalf("stderr does not position the error:\n%s", stderr)
	}
}

func TestInitWritesReferenceDesign(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.yaml")
	if code, _, stderr := run(t, "init", path); code != 0 {
		t.Fatalf("init: %d %s", code, stderr)
	}
	got, _ := os.ReadFile(path)
	if string(got) != string(topology.DefaultYAML()) {
		t.Fatal("init wrote something other than the reference design")
	}
	if code, _, stderr := run(t, "init", path); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("init over an existing file: %d %s", code, stderr)
	}
	if code, out, _ := run(t, "validate", "-f", path); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("validate of init output: %d %s", code, out)
	}
}

func TestUnknownOutputFormat(t *testing.T) {
	code, _, stderr := run(t, "plan", "-o", "yaml")
	if code == 0 || !strings.Contains(stderr, `unknown output format "yaml"`) && !strings.Contains(stderr, "needs root") {
		t.Fatalf("%d %s", code, stderr)
	}
}

func TestUpStatusPlanDown(t *testing.T) {
	testutil.RequireRoot(t)
	prefix := testutil.UniquePrefix(t)
	state := t.TempDir()
	common := []string{"--prefix", prefix, "--state-dir", state}
	code, out, stderr := run(t, append([]string{"up"}, common...)...)
	if code != 0 || !strings.Contains(out, "up "+prefix+"reference: ") {
		t.Fatalf("up: %d\n%s\n%s", code, out, stderr)
	}
	code, out, _ = run(t, append([]string{"up", "-o", "json"}, common...)...)
	var res struct{ Writes int }
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Writes != 0 {
		t.Fatalf("second up -o json: %d %s", code, out)
	}
	code, out, _ = run(t, append([]string{"status", "-o", "json"}, common...)...)
	var st struct {
		InSync     bool `json:"in_sync"`
		Namespaces []struct{ Name string }
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.InSync || len(st.Namespaces) != 3 {
		t.Fatalf("status -o json: %d %s", code, out)
	}
	code, out, _ = run(t, append([]string{"status"}, common...)...)
	if code != 0 || !strings.Contains(out, "00:11:22:33:44:55") || !strings.Contains(out, "in sync") {
		t.Fatalf("status: %s", out)
	}
	// Drift made by hand shows in status and plan.
	testutil.Run(t, "ip", "-n", prefix+"vm1", "link", "set", "eth0", "mtu", "1400")
	_, out, _ = run(t, append([]string{"status"}, common...)...)
	if !strings.Contains(out, "DRIFT") || !strings.Contains(out, "mtu 1500 (was 1400)") {
		t.Fatalf("status does not show drift:\n%s", out)
	}
	_, out, _ = run(t, append([]string{"plan", "-o", "sh"}, common...)...)
	if !strings.Contains(out, "link set dev eth0 mtu 1500") {
		t.Fatalf("plan -o sh:\n%s", out)
	}
	if code, out, stderr = run(t, append([]string{"down"}, common...)...); code != 0 {
		t.Fatalf("down: %d %s %s", code, out, stderr)
	}
	journal, err := os.ReadFile(filepath.Join(state, prefix+"reference", "journal.jsonl"))
	if err != nil || !strings.Contains(string(journal), `"command":"down"`) {
		t.Fatalf("journal: %v\n%s", err, journal)
	}
}

func TestLinkFaultInjection(t *testing.T) {
	testutil.RequireRoot(t)
	prefix := testutil.UniquePrefix(t)
	state := t.TempDir()
	common := []string{"--prefix", prefix, "--state-dir", state}
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 {
		t.Fatalf("up: %s %s", out, stderr)
	}
	code, out, stderr := run(t, append([]string{"link", "vm1/eth0", "down"}, common...)...)
	if code != 0 || !strings.Contains(out, "vm1/eth0 is down") {
		t.Fatalf("link down: %d %s %s", code, out, stderr)
	}
	if out, err := testutil.Try("ip", "netns", "exec", prefix+"vm1", "ping", "-c1", "-W1", "192.168.1.1"); err == nil {
		t.Fatalf("ping works with vm1/eth0 down:\n%s", out)
	}
	faults, err := os.ReadFile(filepath.Join(state, prefix+"reference", "faults.json"))
	if err != nil || !strings.Contains(string(faults), `"target": "vm1/eth0"`) {
		t.Fatalf("fault not recorded: %v %s", err, faults)
	}
	_, out, _ = run(t, append([]string{"plan"}, common...)...)
	if !strings.Contains(out, "link eth0 state up (was down)") {
		t.Fatalf("plan does not show the drift:\n%s", out)
	}
	_, out, _ = run(t, append([]string{"status"}, common...)...)
	if !strings.Contains(out, "DELIBERATE: link vm1/eth0 set down") || !strings.Contains(out, "DRIFT") {
		t.Fatalf("status does not show the deliberate fault:\n%s", out)
	}
	// Only kvmnet's interfaces: lo is the kernel's.
	if code, _, stderr := run(t, append([]string{"link", "vm1/lo", "down"}, common...)...); code == 0 || !strings.Contains(stderr, "not created by kvmnet") {
		t.Fatalf("link on lo: %d %s", code, stderr)
	}
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 {
		t.Fatalf("up: %s %s", out, stderr)
	}
	testutil.Run(t, "ip", "netns", "exec", prefix+"vm1", "ping", "-c1", "-W2", "192.168.1.1")
	if _, err := os.Stat(filepath.Join(state, prefix+"reference", "faults.json")); !os.IsNotExist(err) {
		t.Fatalf("up did not clear the repaired fault: %v", err)
	}
}

func TestQoSFaultInjection(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "tc")
	prefix := testutil.UniquePrefix(t)
	state := t.TempDir()
	common := []string{"--prefix", prefix, "--state-dir", state}
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 {
		t.Fatalf("up: %s %s", out, stderr)
	}
	if code, out, stderr := run(t, append([]string{"qos", "vm1/eth0", "set", "--rate", "2mbit"}, common...)...); code != 0 {
		t.Fatalf("qos set: %d %s %s", code, out, stderr)
	}
	if out := testutil.Run(t, "tc", "-n", prefix+"vm1", "class", "show", "dev", "eth0"); !strings.Contains(out, "rate 2Mbit") {
		t.Fatalf("shaping not applied:\n%s", out)
	}
	_, out, _ := run(t, append([]string{"status"}, common...)...)
	if !strings.Contains(out, "DELIBERATE: qos vm1/eth0") || !strings.Contains(out, "qos of eth0") {
		t.Fatalf("status does not show the injected shaping:\n%s", out)
	}
	if code, _, stderr := run(t, append([]string{"qos", "vm1/eth0", "set", "--rate", "10mbps"}, common...)...); code == 0 || !strings.Contains(stderr, "is not a rate") {
		t.Fatalf("bad rate accepted: %d %s", code, stderr)
	}
	// up restores the declared state (no shaping) and forgets the fault.
	if code, out, stderr := run(t, append([]string{"up"}, common...)...); code != 0 || !strings.Contains(out, "qos of eth0") {
		t.Fatalf("up after injection: %d %s %s", code, out, stderr)
	}
	if out := testutil.Run(t, "tc", "-n", prefix+"vm1", "qdisc", "show", "dev", "eth0"); strings.Contains(out, "htb") {
		t.Fatalf("up left the injected shaping:\n%s", out)
	}
	// reset does the same without up.
	run(t, append([]string{"qos", "vm1/eth0", "set", "--rate", "3mbit"}, common...)...)
	if code, out, stderr := run(t, append([]string{"qos", "vm1/eth0", "reset"}, common...)...); code != 0 || !strings.Contains(out, "restored") {
		t.Fatalf("reset: %d %s %s", code, out, stderr)
	}
	if out := testutil.Run(t, "tc", "-n", prefix+"vm1", "qdisc", "show", "dev", "eth0"); strings.Contains(out, "htb") {
		t.Fatalf("reset left the shaping:\n%s", out)
	}
}

func TestValidateWarnsAboutCTStateNew(t *testing.T) {
	f := filepath.Join(t.TempDir(), "hardened.yaml")
	os.WriteFile(f, []byte("name: h\nnamespaces:\n  - name: vm1\n    firewall:\n      input: drop\n      rules:\n        - {action: accept, ct_state: [new]}\n"), 0o644)
	code, out, stderr := run(t, "validate", "-f", f)
	if code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("a warning must not fail validation: %d %s %s", code, out, stderr)
	}
	if !strings.Contains(stderr, f+":7:") || !strings.Contains(stderr, "warning: input accepts ct state new") {
		t.Fatalf("no positioned warning:\n%s", stderr)
	}
}
