package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// InGuest reports whether the test runs inside the guest-kernel lane's VM
// (internal/guest/lane sets KVMNET_IN_GUEST=1). That guest's kernel must
// have every feature the tests need.
func InGuest() bool { return os.Getenv("KVMNET_IN_GUEST") == "1" }

// KernelLacks handles a kernel feature that the running kernel turned out
// to lack (as the kernel itself answered, e.g. kernelfeat.Missing): it skips
// t with reason, which names the feature and its CONFIG_ option; inside the
// guest lane, where the kernel is chosen to have it, it fails t instead.
func KernelLacks(t testing.TB, reason string) {
	t.Helper()
	if InGuest() {
		t.Fatalf("%s: the guest-kernel lane's kernel must have it", reason)
	}
	t.Skip(reason)
}

// NewNSPrefix creates a scratch namespace named prefix plus 8 random hex
// digits (for example "kvmg-3f9a1c0b") and deletes it when the test ends.
// Suites use their own prefix so a leak is easy to attribute.
func NewNSPrefix(t testing.TB, prefix string) *netns.NS {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := prefix + hex.EncodeToString(b)
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatalf("create scratch namespace: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.Delete(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ns
}
