package guest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are loaded in every guest: the features the host kernel
// lacks (8021q, bridge with vlan_filtering, sch_netem) plus the modules that
// give the guest the networking the host kernel has built in, so any
// privileged test behaves in the guest as on the host. Names use the
// kernel's spelling; '-' and '_' are interchangeable.
var DefaultModules = []string{
	"virtio_pci", "virtio_net",
	"veth", "bridge", "8021q", "macvlan", "macvtap", "vxlan", "tun", "ifb",
	"sch_netem", "sch_htb", "sch_tbf", "sch_ingress", "cls_u32", "cls_bpf", "act_mirred",
	"nf_tables", "nft_ct", "nft_nat", "nft_chain_nat", "nft_masq",
	"nft_reject_inet", "nft_fib_inet", "nft_meta_bridge", "nft_reject_bridge",
	// built in or on by default on the host: br_netfilter (bridged traffic through
	// the inet hooks, which diagnose checks), and the nft expressions the
	// firewall and port guards use.
	"br_netfilter", "nft_limit", "nft_log", "nf_log_syslog", "nft_numgen",
}

// ErrUnknownModule is returned for a module the guest kernel neither builds
// in nor ships.
var ErrUnknownModule = errors.New("no such module in the guest kernel")

// Module is one loadable module file of the guest kernel.
type Module struct {
	Name     string   // normalized (underscores)
	Path     string   // host path: .ko, .ko.gz, .ko.xz or .ko.zst
	Depends  []string // from .modinfo depends=
	Compress string   // "", "gz", "xz" or "zst"
}

// ModulePlan is the result of ResolveModules.
type ModulePlan struct {
	Load    []Module // dependencies first: load in this order
	Builtin []string // requested or needed names that are built into the kernel
}

// normName spells a module name as the kernel does.
func normName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// modBase splits "x.ko.zst" into ("x", "zst"); ok is false for non-modules.
func modBase(file string) (name, comp string, ok bool) {
	for _, c := range []string{"", "gz", "xz", "zst"} {
		suf := ".ko"
		if c != "" {
			suf += "." + c
		}
		if strings.HasSuffix(file, suf) {
			return normName(strings.TrimSuffix(file, suf)), c, true
		}
	}
	return "", "", false
}

// ResolveModules collects names and their dependencies (from each module's
// .modinfo depends= and softdep pre:, so no depmod output is needed) from the
// kernel's module tree, in load order. Built-in modules are listed in
// Builtin and not loaded.
func ResolveModules(modDir string, names []string) (*ModulePlan, error) {
	index := map[string]Module{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if n, c, ok := modBase(d.Name()); ok {
			if _, dup := index[n]; !dup {
				index[n] = Module{Name: n, Path: p, Compress: c}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %q: %w", modDir, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			if n, _, ok := modBase(filepath.Base(l)); ok {
				builtin[n] = true
			}
		}
	}

	plan := &ModulePlan{}
	done := map[string]bool{}
	builtinSeen := map[string]bool{}
	var visit func(name string, stack []string, optional bool) error
	visit = func(name string, stack []string, optional bool) error {
		name = normName(name)
		if done[name] {
			return nil
		}
		for _, s := range stack {
			if s == name {
				return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(stack, " -> "), name)
			}
		}
		m, ok := index[name]
		if !ok {
			if builtin[name] {
				if !builtinSeen[name] {
					builtinSeen[name] = true
					plan.Builtin = append(plan.Builtin, name)
				}
				return nil
			}
			if optional {
				return nil
			}
			if len(stack) > 0 {
				return fmt.Errorf("module %q (needed by %q): %w", name, stack[len(stack)-1], ErrUnknownModule)
			}
			return fmt.Errorf("module %q: %w", name, ErrUnknownModule)
		}
		info, err := ModInfo(m.Path)
		if err != nil {
			return err
		}
		for _, d := range info["depends"] {
			m.Depends = append(m.Depends, splitList(d)...)
		}
		stack = append(stack, name)
		for _, d := range m.Depends {
			if err := visit(d, stack, false); err != nil {
				return err
			}
		}
		for _, sd := range info["softdep"] {
			for _, d := range softPre(sd) {
				if err := visit(d, stack, true); err != nil {
					return err
				}
			}
		}
		done[name] = true
		plan.Load = append(plan.Load, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil, false); err != nil {
			return nil, err
		}
	}
	return plan, nil
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

// softPre returns the "pre:" names of a softdep= value such as
// "pre: crc32c post: foo".
func softPre(s string) []string {
	var out []string
	pre := false
	for _, f := range strings.Fields(s) {
		switch f {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, f)
			}
		}
	}
	return out
}

// ModInfo reads the key=value pairs of a module's .modinfo section (a key
// may repeat, as alias= does).
func ModInfo(path string) (map[string][]string, error) {
	b, err := ModuleBytes(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("module %q: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %q: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %q: read .modinfo: %w", path, err)
	}
	return parseModInfo(data), nil
}

func parseModInfo(data []byte) map[string][]string {
	info := map[string][]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			info[k] = append(info[k], v)
		}
	}
	return info
}

// ModuleBytes returns a module file's contents, decompressed.
func ModuleBytes(path string) ([]byte, error) {
	_, comp, _ := modBase(filepath.Base(path))
	switch comp {
	case "":
		return os.ReadFile(path)
	case "gz":
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %q: %w", path, err)
		}
		return io.ReadAll(zr)
	case "xz", "zst":
		tool := map[string]string{"xz": "xz", "zst": "zstd"}[comp]
		out, err := exec.Command(tool, "-dc", path).Output()
		if err != nil {
			return nil, fmt.Errorf("decompress module %q with %s (apt-get install %s): %w", path, tool, map[string]string{"xz": "xz-utils", "zst": "zstd"}[comp], err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("module %q: unknown compression", path)
}

// KernelDecompresses reports whether the kernel can load modules compressed
// with comp itself (finit_module with MODULE_INIT_COMPRESSED_FILE).
func KernelDecompresses(config map[string]string, comp string) bool {
	if comp == "" || config["CONFIG_MODULE_DECOMPRESS"] != "y" {
		return false
	}
	key := map[string]string{"gz": "CONFIG_MODULE_COMPRESS_GZIP", "xz": "CONFIG_MODULE_COMPRESS_XZ", "zst": "CONFIG_MODULE_COMPRESS_ZSTD"}[comp]
	return config[key] == "y"
}

// Names returns the plan's module names in load order.
func (p *ModulePlan) Names() []string {
	out := make([]string, len(p.Load))
	for i, m := range p.Load {
		out[i] = m.Name
	}
	return out
}

// sortedKeys is a small helper for deterministic output.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
