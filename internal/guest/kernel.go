package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultCacheDir is where fetched guest kernels are kept, one directory per
// kernel release. KVMNET_GUEST_CACHE overrides it.
const DefaultCacheDir = "/var/cache/kvmnet/guest"

// metaPackage is the Debian package whose dependency names the current
// cloud kernel ABI.
const metaPackage = "linux-image-cloud-amd64"

// CacheDir returns the cache root: KVMNET_GUEST_CACHE or DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv("KVMNET_GUEST_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Kernel is a Debian cloud kernel unpacked (never installed) in the cache.
type Kernel struct {
	Release string // "6.1.0-56-cloud-amd64", the directory under lib/modules
	Dir     string // the versioned cache directory
	Vmlinuz string
	ModDir  string            // .../lib/modules/<release>
	Config  map[string]string // CONFIG_X -> "y", "m", "\"str\""; unset options are absent
}

// FetchOptions configures FetchKernel.
type FetchOptions struct {
	CacheDir string       // default CacheDir()
	Release  string       // a fixed ABI such as "6.1.0-56-cloud-amd64"; default: ask apt-cache
	Log      *slog.Logger // default: discard
}

var verPartRe = regexp.MustCompile(`\d+|\D+`)

var abiRe = regexp.MustCompile(`linux-image-(\d[^\s|]*-cloud-amd64)\b`)

// parseABI finds the kernel release in `apt-cache depends` output.
func parseABI(out string) (string, bool) {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "Depends:") && !strings.HasPrefix(line, "|Depends:") {
			continue
		}
		if m := abiRe.FindStringSubmatch(line); m != nil {
			return m[1], true
		}
	}
	return "", false
}

// FetchKernel returns the guest kernel, downloading and unpacking it into the
// versioned cache directory the first time. A second call with the same
// release reuses the cache without touching apt beyond `apt-cache depends`.
// If apt knows no cloud kernel (no package lists) it runs `apt-get update`
// once; if apt cannot answer at all, the newest cached release is used.
func FetchKernel(ctx context.Context, o FetchOptions) (*Kernel, error) {
	log := o.Log
	if log == nil {
		log = discard
	}
	root := o.CacheDir
	if root == "" {
		root = CacheDir()
	}
	release := o.Release
	if release == "" {
		var err error
		release, err = currentABI(ctx, log)
		if err != nil {
			cached := cachedReleases(root)
			if len(cached) == 0 {
				return nil, err
			}
			release = cached[len(cached)-1]
			log.Warn("apt cannot name the cloud kernel; using the cached one", "release", release, "err", err)
		}
	}
	dir := filepath.Join(root, release)
	if k, err := loadKernel(dir, release); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create guest cache %q: %w", root, err)
	}
	unlock, err := lockDir(root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if k, err := loadKernel(dir, release); err == nil {
		return k, nil // another process fetched it while we waited
	}
	log.Info("fetching guest kernel", "release", release, "cache", dir)
	if err := fetchInto(ctx, root, dir, release, log); err != nil {
		return nil, err
	}
	return loadKernel(dir, release)
}

func currentABI(ctx context.Context, log *slog.Logger) (string, error) {
	ask := func() (string, error) {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", metaPackage).CombinedOutput()
		if abi, ok := parseABI(string(out)); ok {
			return abi, nil
		}
		return "", fmt.Errorf("apt-cache depends %s: no kernel ABI in output (%v): %s", metaPackage, err, bytes.TrimSpace(out))
	}
	abi, err := ask()
	if err == nil {
		return abi, nil
	}
	log.Info("apt-cache knows no cloud kernel; running apt-get update", "err", err)
	if err := aptUpdate(ctx); err != nil {
		return "", err
	}
	return ask()
}

func aptUpdate(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput()
	if err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, tail(out, 20))
	}
	return nil
}

// cachedReleases lists complete cached kernels, sorted by version.
func cachedReleases(root string) []string {
	ents, _ := os.ReadDir(root)
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			if _, err := loadKernel(filepath.Join(root, e.Name()), e.Name()); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return versionLess(out[i], out[j]) })
	return out
}

// versionLess orders "6.1.0-9-..." before "6.1.0-56-..." by comparing digit
// runs numerically.
func versionLess(a, b string) bool {
	pa, pb := verPartRe.FindAllString(a, -1), verPartRe.FindAllString(b, -1)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		if isDigits(pa[i]) && isDigits(pb[i]) {
			if len(pa[i]) != len(pb[i]) {
				return len(pa[i]) < len(pb[i])
			}
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

func isDigits(s string) bool { return strings.Trim(s, "0123456789") == "" }

func fetchInto(ctx context.Context, root, dir, release string, log *slog.Logger) error {
	tmp, err := os.MkdirTemp(root, ".fetch-")
	if err != nil {
		return fmt.Errorf("create fetch dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt's _apt sandbox user must be able to write the download directory.
	_ = os.Chmod(tmp, 0o777)
	pkg := "linux-image-" + release + "-unsigned"
	download := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
		cmd.Dir = tmp
		return cmd.CombinedOutput()
	}
	out, err := download()
	if err != nil {
		log.Info("apt-get download failed; running apt-get update and retrying", "package", pkg, "err", err)
		if uerr := aptUpdate(ctx); uerr != nil {
			return errors.Join(fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, tail(out, 10)), uerr)
		}
		if out, err = download(); err != nil {
			return fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, tail(out, 10))
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", pkg, tmp, len(debs))
	}
	unpacked := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], unpacked).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg -x %s: %w\n%s", filepath.Base(debs[0]), err, tail(out, 10))
	}
	// Keep only what the lane uses: the kernel image, its config and the
	// modules tree (docs and System.map are dropped).
	stage := filepath.Join(tmp, "stage")
	for _, p := range []string{"boot/vmlinuz-" + release, "boot/config-" + release, "lib/modules/" + release} {
		src := filepath.Join(unpacked, p)
		if _, err := os.Lstat(src); err != nil {
			// Merged-/usr packages may ship usr/lib/modules instead.
			alt := filepath.Join(unpacked, "usr", p)
			if _, aerr := os.Lstat(alt); aerr != nil {
				return fmt.Errorf("unpacked %s lacks %s: %w", pkg, p, err)
			}
			src = alt
		}
		dst := filepath.Join(stage, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Rename(src, dst); err != nil {
			return fmt.Errorf("stage %s: %w", p, err)
		}
	}
	meta := fmt.Sprintf("release=%s\npackage=%s\ndeb=%s\n", release, pkg, filepath.Base(debs[0]))
	if err := os.WriteFile(filepath.Join(stage, "SOURCE"), []byte(meta), 0o644); err != nil {
		return err
	}
	_ = os.RemoveAll(dir) // a stale partial directory from an older layout
	if err := os.Rename(stage, dir); err != nil {
		return fmt.Errorf("publish guest kernel %q: %w", dir, err)
	}
	log.Info("guest kernel cached", "dir", dir, "deb", filepath.Base(debs[0]))
	return nil
}

// loadKernel opens a cached kernel; it fails unless the directory is
// complete (the fetch publishes it with one rename).
func loadKernel(dir, release string) (*Kernel, error) {
	k := &Kernel{
		Release: release,
		Dir:     dir,
		Vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+release),
		ModDir:  filepath.Join(dir, "lib", "modules", release),
	}
	for _, p := range []string{k.Vmlinuz, k.ModDir, filepath.Join(dir, "SOURCE")} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	cfg, err := readKernelConfig(filepath.Join(dir, "boot", "config-"+release))
	if err != nil {
		return nil, err
	}
	k.Config = cfg
	return k, nil
}

func readKernelConfig(p string) (map[string]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = v
		}
	}
	return cfg, sc.Err()
}

// LockDir takes an exclusive flock on dir/.lock (waiting for it) and returns
// the unlock function. The lane uses it so concurrent runs do not fetch into
// the same cache or build into the same work directory at once.
func LockDir(dir string) (func(), error) { return lockDir(dir) }

func lockDir(root string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(root, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock guest cache %q: %w", root, err)
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

func tail(b []byte, lines int) string {
	s := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(s) > lines {
		s = s[len(s)-lines:]
	}
	return strings.Join(s, "\n")
}

var discard = slog.New(slog.DiscardHandler)
