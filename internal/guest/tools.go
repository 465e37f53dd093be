package guest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Tool is a host binary the guest gets, with the Debian package that
// provides it (for the error when it is missing).
type Tool struct {
	Name    string
	Package string
}

// DefaultTools are the independent witnesses tests use: iproute2, ping and
// nft, the same binaries as on the host; plus sh, cat and sysctl, which tests
// run through `ip netns exec` (and the scripts `kvmnet plan -o sh` writes),
// and tcpdump, which reads the captures `kvmnet capture` writes.
var DefaultTools = []Tool{
	{"ip", "iproute2"}, {"bridge", "iproute2"}, {"tc", "iproute2"},
	{"ping", "iputils-ping"}, {"nft", "nftables"},
	{"sh", "dash"}, {"cat", "coreutils"}, {"sysctl", "procps"}, {"tcpdump", "tcpdump"},
}

// DefaultDataFiles are host data files the tools read; missing ones are
// skipped.
var DefaultDataFiles = []string{
	"/etc/iproute2", "/usr/share/iproute2", "/usr/lib/iproute2",
	"/etc/protocols", "/etc/services", "/etc/ethertypes",
	"/etc/passwd", "/etc/group", "/etc/nsswitch.conf", // tcpdump drops privileges to its own user
}

// GuestPath is PATH inside the guest (Debian's default for root).
const GuestPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ErrToolMissing is returned when a witness tool is not installed on the host.
var ErrToolMissing = errors.New("host tool not installed")

// FindTools locates each tool on the host, looking in GuestPath as well as
// PATH (a non-root PATH often lacks the sbin directories).
func FindTools(tools []Tool) ([]string, error) {
	var out []string
	var errs []error
	for _, t := range tools {
		p, err := lookPath(t.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%q (apt-get install %s): %w", t.Name, t.Package, ErrToolMissing))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, d := range filepath.SplitList(GuestPath) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// SharedLibs returns the shared libraries and the dynamic loader that ldd
// reports for a binary (none for a static one).
func SharedLibs(binary string) ([]string, error) {
	out, err := exec.Command("ldd", binary).CombinedOutput()
	s := string(out)
	if err != nil {
		if strings.Contains(s, "not a dynamic executable") || strings.Contains(s, "statically linked") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", binary, err, strings.TrimSpace(s))
	}
	return parseLdd(s)
}

// parseLdd reads ldd output:
//
//	linux-vdso.so.1 (0x...)
//	libmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x...)
//	/lib64/ld-linux-x86-64.so.2 (0x...)
func parseLdd(s string) ([]string, error) {
	var libs []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.Contains(line, "statically linked") {
			continue
		}
		if _, rhs, ok := strings.Cut(line, "=>"); ok {
			rhs = strings.TrimSpace(rhs)
			if strings.HasPrefix(rhs, "not found") {
				return nil, fmt.Errorf("ldd: %s", line)
			}
			if p, _, _ := strings.Cut(rhs, " ("); strings.HasPrefix(p, "/") {
				libs = append(libs, p)
			}
			continue
		}
		if p, _, _ := strings.Cut(line, " ("); strings.HasPrefix(p, "/") {
			libs = append(libs, p) // the loader
		}
	}
	return libs, nil
}

// ToolClosure returns the binaries with every shared library and loader they
// need, without duplicates, in a stable order.
func ToolClosure(binaries []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, b := range binaries {
		add(b)
		libs, err := SharedLibs(b)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			add(l)
		}
	}
	return out, nil
}
