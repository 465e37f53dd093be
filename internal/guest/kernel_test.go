package guest

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func TestParseABI(t *testing.T) {
	tests := map[string]string{
		"linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n":                                         "6.1.0-56-cloud-amd64",
		"linux-image-cloud-amd64\n |Depends: linux-image-6.12.9-cloud-amd64\n  Depends: linux-image-6.1.0-1-cloud-amd64": "6.12.9-cloud-amd64",
		"linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64-unsigned\n":                                "6.1.0-56-cloud-amd64",
		"W: Unable to locate package linux-image-cloud-amd64\n":                                                          "",
		"": "",
	}
	for in, want := range tests {
		got, ok := parseABI(in)
		if got != want || ok != (want != "") {
			t.Errorf("parseABI(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestVersionLess(t *testing.T) {
	vs := []string{"6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64", "6.12.1-cloud-amd64", "6.1.0-10-cloud-amd64"}
	sort.Slice(vs, func(i, j int) bool { return versionLess(vs[i], vs[j]) })
	want := "6.1.0-9-cloud-amd64 6.1.0-10-cloud-amd64 6.1.0-56-cloud-amd64 6.12.1-cloud-amd64"
	if got := strings.Join(vs, " "); got != want {
		t.Errorf("sorted = %s", got)
	}
}

// fakeKernelDir lays out what fetchInto publishes.
func fakeKernelDir(t *testing.T, root, release string) {
	t.Helper()
	dir := filepath.Join(root, release)
	for p, data := range map[string]string{
		"boot/vmlinuz-" + release:                     "kernel",
		"boot/config-" + release:                      "# comment\nCONFIG_VLAN_8021Q=m\nCONFIG_BRIDGE_VLAN_FILTERING=y\n# CONFIG_FOO is not set\n",
		"lib/modules/" + release + "/modules.builtin": "",
		"SOURCE": "release=" + release + "\n",
	} {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFetchKernelUsesCache(t *testing.T) {
	root := t.TempDir()
	fakeKernelDir(t, root, "6.1.0-9-cloud-amd64")
	fakeKernelDir(t, root, "6.1.0-56-cloud-amd64")
	if err := os.MkdirAll(filepath.Join(root, "6.1.0-99-cloud-amd64", "boot"), 0o755); err != nil { // incomplete
		t.Fatal(err)
	}
	// PATH without apt: a cached release must not need it.
	t.Setenv("PATH", t.TempDir())
	k, err := FetchKernel(context.Background(), FetchOptions{CacheDir: root, Release: "6.1.0-56-cloud-amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Config["CONFIG_VLAN_8021Q"] != "m" || k.Config["CONFIG_BRIDGE_VLAN_FILTERING"] != "y" || k.Config["CONFIG_FOO"] != "" {
		t.Errorf("config = %v", k.Config)
	}
	if !strings.HasSuffix(k.Vmlinuz, "6.1.0-56-cloud-amd64/boot/vmlinuz-6.1.0-56-cloud-amd64") {
		t.Errorf("vmlinuz = %s", k.Vmlinuz)
	}
	// No release given and no apt: fall back to the newest complete one.
	k, err = FetchKernel(context.Background(), FetchOptions{CacheDir: root})
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != "6.1.0-56-cloud-amd64" {
		t.Errorf("fallback release = %s", k.Release)
	}
	if got := cachedReleases(root); strings.Join(got, " ") != "6.1.0-9-cloud-amd64 6.1.0-56-cloud-amd64" {
		t.Errorf("cachedReleases = %v", got)
	}
}

func TestCacheDirEnv(t *testing.T) {
	t.Setenv("KVMNET_GUEST_CACHE", "/x/y")
	if CacheDir() != "/x/y" {
		t.Errorf("CacheDir() = %s", CacheDir())
	}
	t.Setenv("KVMNET_GUEST_CACHE", "")
	if CacheDir() != DefaultCacheDir {
		t.Errorf("CacheDir() = %s", CacheDir())
	}
}
