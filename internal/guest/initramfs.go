package guest

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Layout inside the initramfs.
const (
	guestModDir  = "/kvmnet/modules"
	guestTestDir = "/kvmnet/tests"
	guestPkgDir  = "/kvmnet/pkg"
	guestSrcDir  = "/kvmnet/src"
)

// MaxSourceFile is the largest file copied from the source tree; bigger
// ones (stray binaries, captures) are left out.
const MaxSourceFile = 4 << 20

// HostTest is a compiled test binary on the host.
type HostTest struct {
	Package string // import path
	Name    string // file-name-safe, unique: "internal_kernelfeat"
	Binary  string // host path of NAME.test
	// Dir is the package directory relative to ImageSpec.SourceRoot
	// ("internal/kernelfeat"); the test runs there, as under go test.
	Dir string
}

// ImageSpec describes a guest initramfs.
type ImageSpec struct {
	Init         string            // host path of the static /init binary
	Config       Config            // Modules and Tests are filled in by WriteImage
	Modules      []Module          // in load order
	KernelConfig map[string]string // decides whether compressed modules stay compressed
	Tests        []HostTest
	HostFiles    []string // host files and directories copied to the same path (tools, libraries, data)
	// SourceRoot, when set, is the module's directory on the host. Its
	// files (no dot-files, nothing over MaxSourceFile, no *.test) are
	// copied to /kvmnet/src, and each test runs in its package's directory
	// there, so testdata/ and paths like ../examples work as on the host.
	SourceRoot string
	Gzip       bool // gzip the archive (the kernel needs CONFIG_RD_GZIP)
}

// WriteImage writes the initramfs to dst (atomically, via a temporary file
// beside it) and returns the Config it embedded.
func WriteImage(dst string, spec ImageSpec) (Config, error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".initramfs-")
	if err != nil {
		return Config{}, fmt.Errorf("write initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	var w io.Writer = tmp
	var zw *gzip.Writer
	if spec.Gzip {
		zw, _ = gzip.NewWriterLevel(tmp, gzip.BestSpeed)
		w = zw
	}
	cw := NewCPIOWriter(w)
	cfg, err := writeImage(cw, spec)
	if err == nil {
		err = cw.Close()
	}
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Config{}, fmt.Errorf("write initramfs %q: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return Config{}, fmt.Errorf("write initramfs: %w", err)
	}
	return cfg, nil
}

func writeImage(cw *CPIOWriter, spec ImageSpec) (Config, error) {
	cfg := spec.Config
	cfg.Modules = nil
	cfg.Tests = nil

	// The skeleton. dev/console must exist in the archive: the kernel opens
	// it as /init's stdin, stdout and stderr before anything is mounted.
	for _, d := range []struct {
		name string
		perm fs.FileMode
	}{{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"tmp", 0o777 | fs.ModeSticky}, {"root", 0o700}, {"etc", 0o755}} {
		if err := cw.Dir(d.name, d.perm); err != nil {
			return cfg, err
		}
	}
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return cfg, err
	}
	if err := cw.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return cfg, err
	}
	etc := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":    "root:x:0:\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/hostname": "kvmnet-guest\n",
	}
	for _, name := range sortedKeys(etc) {
		if err := cw.File(name, 0o644, []byte(etc[name])); err != nil {
			return cfg, err
		}
	}
	// Merged-/usr hosts have /bin, /sbin, /lib, /lib64 as symlinks; mirror
	// them so paths that name them resolve in the guest as on the host.
	for _, top := range []string{"/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"} {
		if fi, err := os.Lstat(top); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(top)
			if err != nil {
				return cfg, err
			}
			if err := cw.Symlink(top, target); err != nil {
				return cfg, err
			}
		}
	}
	for _, p := range spec.HostFiles {
		if err := mirror(cw, p, 0); err != nil {
			return cfg, err
		}
	}

	if err := addHostFile(cw, "init", spec.Init, 0o755); err != nil {
		return cfg, err
	}
	for _, m := range spec.Modules {
		keep := KernelDecompresses(spec.KernelConfig, m.Compress)
		name := path.Join(guestModDir, m.Name+".ko")
		if keep {
			name += "." + m.Compress
			if err := addHostFile(cw, name, m.Path, 0o644); err != nil {
				return cfg, err
			}
		} else {
			b, err := ModuleBytes(m.Path)
			if err != nil {
				return cfg, err
			}
			if err := cw.File(name, 0o644, b); err != nil {
				return cfg, err
			}
		}
		cfg.Modules = append(cfg.Modules, ModuleLoad{Name: m.Name, Path: name, Compressed: keep})
	}
	if spec.SourceRoot != "" {
		if err := copySource(cw, spec.SourceRoot, guestSrcDir); err != nil {
			return cfg, err
		}
	}
	for _, t := range spec.Tests {
		bin := path.Join(guestTestDir, t.Name+".test")
		if err := addHostFile(cw, bin, t.Binary, 0o755); err != nil {
			return cfg, err
		}
		dir := path.Join(guestPkgDir, t.Name)
		if spec.SourceRoot != "" {
			dir = path.Join(guestSrcDir, filepath.ToSlash(t.Dir))
		}
		if err := cw.Dir(dir, 0o755); err != nil {
			return cfg, err
		}
		cfg.Tests = append(cfg.Tests, TestBinary{Package: t.Package, Path: bin, Dir: dir})
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return cfg, err
	}
	if err := cw.File(ConfigPath, 0o644, js); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func addHostFile(cw *CPIOWriter, name, host string, perm fs.FileMode) error {
	f, err := os.Open(host)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if perm == 0 {
		perm = fi.Mode().Perm()
	}
	return cw.FileFrom(name, perm, f, fi.Size())
}

// mirror copies the host path p into the archive at the same path, keeping
// every symlink met on the way (so /lib64/ld-linux-x86-64.so.2 resolves in
// the guest as on the host). Directories are copied recursively.
func mirror(cw *CPIOWriter, p string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("mirror %q: too many levels of symbolic links", p)
	}
	p = filepath.Clean(p)
	if !filepath.IsAbs(p) {
		return fmt.Errorf("mirror %q: not an absolute path", p)
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			if depth == 0 && i == len(parts)-1 && os.IsNotExist(err) && isOptionalData(p) {
				return nil
			}
			return fmt.Errorf("mirror %q: %w", p, err)
		}
		last := i == len(parts)-1
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if !cw.Has(next) {
				if err := cw.Symlink(next, target); err != nil {
					return err
				}
			}
			resolved := target
			if !filepath.IsAbs(target) {
				resolved = filepath.Join(cur, target)
			}
			return mirror(cw, filepath.Join(append([]string{resolved}, parts[i+1:]...)...), depth+1)
		case fi.IsDir():
			if !cw.Has(next) {
				if err := cw.Dir(next, fi.Mode().Perm()); err != nil {
					return err
				}
			}
			if last {
				return copyTree(cw, next, next)
			}
		case last && fi.Mode().IsRegular():
			if cw.Has(next) {
				return nil
			}
			return addHostFile(cw, next, next, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid))
		default:
			return fmt.Errorf("mirror %q: %s is neither a directory, a file nor a symlink", p, next)
		}
		cur = next
	}
	return nil
}

func isOptionalData(p string) bool {
	for _, d := range DefaultDataFiles {
		if d == p {
			return true
		}
	}
	return false
}

// copyTree copies the host directory src to dst in the archive: files,
// directories and symlinks as they are (symlinks are not followed).
func copyTree(cw *CPIOWriter, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		name := path.Join(dst, filepath.ToSlash(rel))
		if cw.Has(name) && !d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return cw.Dir(name, fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return cw.Symlink(name, t)
		case fi.Mode().IsRegular():
			return addHostFile(cw, name, p, fi.Mode().Perm())
		}
		return nil // sockets, fifos: nothing a test needs
	})
}

// copySource copies a source tree for the tests to read: regular files up
// to MaxSourceFile, directories and symlinks, skipping dot-files and
// dot-directories (.git) and compiled test binaries.
func copySource(cw *CPIOWriter, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != src && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		name := path.Join(dst, filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return cw.Dir(name, fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return cw.Symlink(name, t)
		case fi.Mode().IsRegular() && fi.Size() <= MaxSourceFile && !strings.HasSuffix(p, ".test"):
			return addHostFile(cw, name, p, fi.Mode().Perm())
		}
		return nil
	})
}
