// Command lane runs Go test packages inside a QEMU guest booted with
// Debian's cloud kernel: the guest-kernel test lane.
//
//	go run ./internal/guest/lane [flags] PKG...
//
// For each package with tests it builds the test binary with
// `CGO_ENABLED=0 go test -c`, packs all of them into one initramfs with the
// guest /init, the kernel modules and the host's witness tools, boots the
// guest once, streams its console, prints a per-test summary and exits 1 if
// any test failed in the guest or the guest did not report (2 for a usage or
// setup error). See docs/guest-lane.md.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kvmnet/kvmnet/internal/guest"
)

const initPkg = "github.com/kvmnet/kvmnet/internal/guest/guestinit"

type options struct {
	run      string
	short    bool
	timeout  time.Duration
	verbose  bool
	accel    string
	memory   int
	cpus     int
	modules  string
	skipMods string
	tools    string
	env      multiFlag
	gzip     bool
	workDir  string
	cacheDir string
	release  string
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// passEnv are host variables handed to the tests when set.
var passEnv = []string{"CI", "KVMNET_REQUIRE_PRIV_TESTS"}

func main() {
	var o options
	fs := flag.NewFlagSet("lane", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./internal/guest/lane [flags] PKG...\n\nRuns the packages' tests inside a QEMU guest with Debian's cloud kernel.\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.run, "run", "", "run only tests matching `regex` (passed as -test.run)")
	fs.BoolVar(&o.short, "short", false, "pass -test.short (tests that boot VMs skip)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "deadline for all tests inside the guest; QEMU is killed 90s after it")
	fs.BoolVar(&o.verbose, "v", false, "log the lane's steps and show the guest kernel's boot messages")
	fs.StringVar(&o.accel, "accel", "auto", "QEMU accelerator: auto (KVM if a probe guest boots under it, else TCG), kvm or tcg")
	fs.IntVar(&o.memory, "mem", 512, "guest memory in MiB")
	fs.IntVar(&o.cpus, "smp", 2, "guest vCPUs")
	fs.StringVar(&o.modules, "modules", "", "extra guest kernel modules to load, comma-separated (added to the default set)")
	fs.StringVar(&o.skipMods, "skip-modules", "", "default modules not to load, comma-separated (to check that a test fails without its feature; a module another one depends on is still loaded)")
	fs.StringVar(&o.tools, "tools", "", "extra host binaries to copy into the guest with their libraries, comma-separated (added to ip, bridge, tc, ping, nft, sh, cat)")
	fs.Var(&o.env, "env", "extra KEY=VALUE for the tests (repeatable); CI and KVMNET_REQUIRE_PRIV_TESTS pass through, KVMNET_IN_GUEST=1 is always set")
	fs.BoolVar(&o.gzip, "gzip", false, "gzip the initramfs (half the size; measured no faster under TCG)")
	fs.StringVar(&o.workDir, "work", "", "build directory (default: CACHE/lane/<module hash>, reused between runs)")
	fs.StringVar(&o.cacheDir, "cache", "", "guest cache root (default $KVMNET_GUEST_CACHE or "+guest.DefaultCacheDir+")")
	fs.StringVar(&o.release, "kernel", "", "guest kernel release, e.g. 6.1.0-56-cloud-amd64 (default: what linux-image-cloud-amd64 depends on)")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() == 0 {
		fs.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, o, fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest-lane: %v\n", err)
	}
	os.Exit(code)
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "guest-lane: "+format+"\n", args...)
}

// pkgInfo is a package with tests.
type pkgInfo struct {
	importPath, dir, name string
}

func run(ctx context.Context, o options, patterns []string) (int, error) {
	t0 := time.Now()
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cacheRoot := o.cacheDir
	if cacheRoot == "" {
		cacheRoot = guest.CacheDir()
	}

	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return 2, fmt.Errorf("qemu-system-x86_64 not found (apt-get install qemu-system-x86): %w", err)
	}

	// 1. Which packages have tests.
	pkgs, modDir, err := listPackages(ctx, patterns)
	if err != nil {
		return 2, err
	}
	if len(pkgs) == 0 {
		step("no test files in %s: nothing to run", strings.Join(patterns, " "))
		fmt.Println("guest: 0 passed, 0 failed, 0 skipped")
		return 0, nil
	}
	work := o.workDir
	if work == "" {
		sum := sha256.Sum256([]byte(modDir))
		work = filepath.Join(cacheRoot, "lane", hex.EncodeToString(sum[:6]))
	}
	if err := os.MkdirAll(filepath.Join(work, "tests"), 0o755); err != nil {
		return 2, fmt.Errorf("create work dir: %w", err)
	}
	unlock, err := guest.LockDir(work)
	if err != nil {
		return 2, err
	}
	defer unlock()

	// 2. The guest kernel (cached after the first run).
	tk := time.Now()
	k, err := guest.FetchKernel(ctx, guest.FetchOptions{CacheDir: cacheRoot, Release: o.release, Log: log})
	if err != nil {
		return 2, err
	}
	step("guest kernel %s (%s)", k.Release, time.Since(tk).Round(time.Millisecond))

	// 3. Binaries: /init and one test binary per package. The Go build
	// cache makes the warm path a relink at most.
	tb := time.Now()
	initBin := filepath.Join(work, "init")
	if err := goBuild(ctx, modDir, log, "build", "-o", initBin, initPkg); err != nil {
		return 2, err
	}
	var tests []guest.HostTest
	for _, p := range pkgs {
		bin := filepath.Join(work, "tests", p.name+".test")
		_ = os.Remove(bin) // never pack a stale binary
		if err := goBuild(ctx, modDir, log, "test", "-c", "-o", bin, p.importPath); err != nil {
			return 2, err
		}
		if _, err := os.Stat(bin); err != nil {
			step("%s: no test binary (no tests?), skipped", p.importPath)
			continue
		}
		rel, err := filepath.Rel(modDir, p.dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return 2, fmt.Errorf("package %s is outside the module at %s", p.importPath, modDir)
		}
		tests = append(tests, guest.HostTest{Package: p.importPath, Name: p.name, Binary: bin, Dir: rel})
	}
	step("built %d test binaries and /init (%s)", len(tests), time.Since(tb).Round(time.Millisecond))

	// 4. Modules and tools.
	skip := map[string]bool{}
	for _, m := range splitList(o.skipMods) {
		skip[strings.ReplaceAll(m, "-", "_")] = true
	}
	var names []string
	for _, m := range append(append([]string{}, guest.DefaultModules...), splitList(o.modules)...) {
		if !skip[strings.ReplaceAll(m, "-", "_")] {
			names = append(names, m)
		}
	}
	plan, err := guest.ResolveModules(k.ModDir, names)
	if err != nil {
		return 2, err
	}
	want := append([]guest.Tool{}, guest.DefaultTools...)
	for _, t := range splitList(o.tools) {
		want = append(want, guest.Tool{Name: t, Package: "the package that provides " + t})
	}
	tools, err := guest.FindTools(want)
	if err != nil {
		return 2, fmt.Errorf("the guest gets the host's witness tools: %w", err)
	}
	files, err := guest.ToolClosure(tools)
	if err != nil {
		return 2, err
	}
	files = append(files, guest.DefaultDataFiles...)

	// 5. The initramfs.
	env := []string{}
	for _, k := range passEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, o.env...)
	ti := time.Now()
	img := filepath.Join(work, "initramfs.cpio")
	if o.gzip {
		img += ".gz"
	}
	cfg, err := guest.WriteImage(img, guest.ImageSpec{
		Init:         initBin,
		Config:       guest.Config{Env: env, Run: o.run, Short: o.short, Timeout: guest.Duration(o.timeout)},
		Modules:      plan.Load,
		KernelConfig: k.Config,
		Tests:        tests,
		HostFiles:    files,
		SourceRoot:   modDir,
		Gzip:         o.gzip,
	})
	if err != nil {
		return 2, err
	}
	fi, _ := os.Stat(img)
	step("initramfs %s: %.1f MiB written in %s (%d modules; tools: %s)",
		img, float64(fi.Size())/(1<<20), time.Since(ti).Round(time.Millisecond), len(cfg.Modules), strings.Join(baseNames(tools), " "))
	log.Info("modules", "load", strings.Join(plan.Names(), " "), "builtin", strings.Join(plan.Builtin, " "))

	// 6. Boot once.
	choice, err := guest.ChooseAccel(ctx, guest.Accel(o.accel), k, initBin, cacheRoot, log)
	if err != nil {
		return 2, err
	}
	step("booting guest: accel %s (%s), %d MiB, %d vCPU", choice.Accel, choice.Reason, o.memory, o.cpus)
	rep := &guest.Report{}
	vm := &guest.VM{
		Kernel: k.Vmlinuz, Initrd: img, Quiet: !o.verbose,
		MemoryMB: o.memory, CPUs: o.cpus, Accel: choice.Accel,
		Timeout: o.timeout + 90*time.Second,
		Console: io.MultiWriter(os.Stdout, rep),
		Log:     log,
	}
	res, verr := vm.Run(ctx)
	rep.Finish()

	fmt.Println()
	fmt.Printf("=== guest-lane summary: kernel %s, accel %s", k.Release, choice.Accel)
	if res != nil {
		fmt.Printf(", guest ran %s", res.Elapsed.Round(100*time.Millisecond))
	}
	fmt.Printf(", lane total %s\n", time.Since(t0).Round(100*time.Millisecond))
	rep.WriteSummary(os.Stdout)
	switch {
	case verr != nil && !errors.Is(verr, guest.ErrGuestFailed):
		return 1, fmt.Errorf("guest did not report: %w", verr)
	case verr != nil:
		return 1, verr
	case rep.Failed():
		return 1, errors.New("a test failed in the guest")
	case len(rep.Packages) != len(tests):
		return 1, fmt.Errorf("guest ran %d of %d test binaries", len(rep.Packages), len(tests))
	}
	return 0, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// listPackages expands the patterns and keeps packages that have test files.
func listPackages(ctx context.Context, patterns []string) ([]pkgInfo, string, error) {
	args := append([]string{"list", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{len .TestGoFiles}}\t{{len .XTestGoFiles}}\t{{if .Module}}{{.Module.Path}}\t{{.Module.Dir}}{{end}}"}, patterns...)
	out, err := exec.CommandContext(ctx, "go", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, "", fmt.Errorf("go list %s: %w\n%s", strings.Join(patterns, " "), err, ee.Stderr)
		}
		return nil, "", fmt.Errorf("go list: %w", err)
	}
	var pkgs []pkgInfo
	modDir := ""
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) < 6 {
			continue
		}
		if modDir == "" {
			modDir = f[5]
		}
		if f[2] == "0" && f[3] == "0" {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(f[0], f[4]), "/")
		if rel == "" {
			rel = filepath.Base(f[0])
		}
		pkgs = append(pkgs, pkgInfo{importPath: f[0], dir: f[1], name: strings.ReplaceAll(rel, "/", "_")})
	}
	if modDir == "" {
		wd, _ := os.Getwd()
		modDir = wd
	}
	return pkgs, modDir, nil
}

// goBuild runs the go command with CGO_ENABLED=0 in the module directory.
func goBuild(ctx context.Context, modDir string, log *slog.Logger, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	log.Info("go", "args", strings.Join(args, " "))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" && !strings.Contains(s, "no test files") {
		log.Info("go output", "out", s)
	}
	return nil
}
