// Package testutil holds the helpers kvmnet's kernel tests share: the root
// gate and scratch namespaces with unique names that t.Cleanup removes.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// Privileged reports whether a missing privilege must fail tests instead of
// skipping them: in CI (CI=true) or when KVMNET_REQUIRE_PRIV_TESTS=1.
func Privileged() bool {
	return os.Getenv("CI") == "true" || os.Getenv("KVMNET_REQUIRE_PRIV_TESTS") == "1"
}

// RequireRoot skips t unless it runs as root; in CI it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if Privileged() {
		t.Fatal("this test needs root (CI=true: a missing privilege is a failure)")
	}
	t.Skip("needs root")
}

// RequireTool skips t when an external witness tool is missing; in CI it fails.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if Privileged() {
		t.Fatalf("test tool %q is not installed (run scripts/setup.sh)", name)
	}
	t.Skipf("test tool %q is not installed", name)
	return ""
}

// UniquePrefix returns a namespace-name prefix no other test uses, like
// "kt3f9a1c-", and registers a cleanup that deletes every namespace whose name
// starts with it (only this test can have made those).
func UniquePrefix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := "kt" + hex.EncodeToString(b) + "-"
	t.Cleanup(func() { DeletePrefixed(t, p) })
	return p
}

// DeletePrefixed removes every named namespace starting with prefix and waits
// until they are gone from /run/netns.
func DeletePrefixed(t testing.TB, prefix string) {
	t.Helper()
	names, err := netns.List()
	if err != nil {
		t.Errorf("list namespaces: %v", err)
		return
	}
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			if err := netns.Delete(n); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	}
}

// NewNS creates a scratch namespace with a unique name ("kvmt-<hex>") and
// deletes it when the test ends.
func NewNS(t testing.TB) *netns.NS {
	t.Helper()
	return NewNSPrefix(t, "kvmt-")
}

// Run runs a witness command (iproute2, ping, nft) and returns its combined
// output; it fails the test on a non-zero exit.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := Try(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command with a 30 s limit and returns its output and error.
func Try(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	return string(out), err
}
