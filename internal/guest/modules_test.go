package guest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeKO builds a minimal ELF64 relocatable object whose only content is a
// .modinfo section, which is all ResolveModules reads.
func fakeKO(t *testing.T, modinfo ...string) []byte {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var buf bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&buf, binary.LittleEndian, hdr))
	buf.Write(info)
	buf.Write(shstr)
	buf.Write(make([]byte, shOff-uint64(buf.Len())))
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstr)), Addralign: 1},
	}
	for _, s := range sections {
		must(binary.Write(&buf, binary.LittleEndian, s))
	}
	return buf.Bytes()
}

// fakeModTree writes a lib/modules/<release> tree: name -> depends.
func fakeModTree(t *testing.T, mods map[string]string, builtin ...string) string {
	t.Helper()
	dir := t.TempDir()
	for name, deps := range mods {
		file := name + ".ko"
		data := fakeKO(t, "license=GPL", "depends="+deps, "name="+name)
		if name == "gzmod" {
			file += ".gz"
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(data)
			zw.Close()
			data = b.Bytes()
		}
		if name == "softy" {
			data = fakeKO(t, "depends=", "softdep=pre: leaf post: nosuch")
		}
		p := filepath.Join(dir, "kernel", "net", strings.ReplaceAll(file, "_", "-"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var bl []string
	for _, b := range builtin {
		bl = append(bl, "kernel/net/"+b+".ko")
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(strings.Join(bl, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestResolveModules(t *testing.T) {
	dir := fakeModTree(t, map[string]string{
		"8021q":  "mrp,garp",
		"garp":   "stp,llc",
		"mrp":    "",
		"stp":    "llc",
		"llc":    "",
		"bridge": "stp,llc,ipv6",
		"gzmod":  "llc",
		"softy":  "",
		"leaf":   "",
		"loopa":  "loopb",
		"loopb":  "loopa",
		"needx":  "nosuchmod",
	}, "ipv6", "fq_codel")

	tests := []struct {
		names   []string
		load    string
		builtin string
		err     string
	}{
		{[]string{"8021q"}, "mrp llc stp garp 8021q", "", ""},
		// Files are named with '-', modinfo and requests with '_' or '-'.
		{[]string{"bridge", "8021q"}, "llc stp bridge mrp garp 8021q", "ipv6", ""},
		{[]string{"fq-codel", "llc"}, "llc", "fq_codel", ""},
		{[]string{"gzmod"}, "llc gzmod", "", ""},
		{[]string{"softy"}, "leaf softy", "", ""},
		{[]string{"nope"}, "", "", `module "nope": no such module`},
		{[]string{"needx"}, "", "", `module "nosuchmod" (needed by "needx")`},
		{[]string{"loopa"}, "", "", "dependency cycle"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.names, ","), func(t *testing.T) {
			plan, err := ResolveModules(dir, tt.names)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(plan.Names(), " "); got != tt.load {
				t.Errorf("load order = %q, want %q", got, tt.load)
			}
			if got := strings.Join(plan.Builtin, " "); got != tt.builtin {
				t.Errorf("builtin = %q, want %q", got, tt.builtin)
			}
		})
	}
	if _, err := ResolveModules(dir, []string{"nope"}); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("unknown module: %v, want ErrUnknownModule", err)
	}
	plan, err := ResolveModules(dir, []string{"gzmod"})
	if err != nil {
		t.Fatal(err)
	}
	if m := plan.Load[1]; m.Compress != "gz" || !strings.HasSuffix(m.Path, ".ko.gz") {
		t.Errorf("gzmod = %+v", m)
	}
}

func TestModInfoAndHelpers(t *testing.T) {
	got := parseModInfo([]byte("alias=a\x00alias=b\x00depends=x,y\x00\x00junk\x00"))
	want := map[string][]string{"alias": {"a", "b"}, "depends": {"x,y"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseModInfo = %v", got)
	}
	if got := softPre("pre: a b post: c pre: d"); !reflect.DeepEqual(got, []string{"a", "b", "d"}) {
		t.Errorf("softPre = %v", got)
	}
	for in, want := range map[string][2]string{
		"8021q.ko": {"8021q", ""}, "nf-tables.ko.zst": {"nf_tables", "zst"}, "x.ko.xz": {"x", "xz"}, "y.ko.gz": {"y", "gz"},
	} {
		n, c, ok := modBase(in)
		if !ok || n != want[0] || c != want[1] {
			t.Errorf("modBase(%q) = %q %q %v", in, n, c, ok)
		}
	}
	if _, _, ok := modBase("modules.order"); ok {
		t.Error("modBase accepted modules.order")
	}
	cfg := map[string]string{"CONFIG_MODULE_DECOMPRESS": "y", "CONFIG_MODULE_COMPRESS_XZ": "y"}
	if !KernelDecompresses(cfg, "xz") || KernelDecompresses(cfg, "zst") || KernelDecompresses(cfg, "") {
		t.Error("KernelDecompresses with xz support")
	}
	if KernelDecompresses(map[string]string{"CONFIG_MODULE_COMPRESS_XZ": "y"}, "xz") {
		t.Error("KernelDecompresses without CONFIG_MODULE_DECOMPRESS")
	}
}

// TestResolveRealKernel resolves the default module set against the cached
// guest kernel, when a lane run has fetched one.
func TestResolveRealKernel(t *testing.T) {
	rels := cachedReleases(CacheDir())
	if len(rels) == 0 {
		t.Skipf("no guest kernel cached in %s (run scripts/guest-lane.sh once)", CacheDir())
	}
	k, err := loadKernel(filepath.Join(CacheDir(), rels[len(rels)-1]), rels[len(rels)-1])
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ResolveModules(k.ModDir, DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, n := range plan.Names() {
		pos[n] = i
	}
	for _, m := range plan.Load {
		for _, d := range m.Depends {
			if _, ok := pos[d]; !ok {
				continue // built in
			}
			if pos[d] > pos[m.Name] {
				t.Errorf("%s is loaded before its dependency %s", m.Name, d)
			}
		}
	}
	for _, need := range []string{"8021q", "bridge", "sch_netem", "veth", "virtio_net", "virtio_pci"} {
		if _, ok := pos[need]; !ok {
			t.Errorf("%s is not in the load list %v", need, plan.Names())
		}
	}
	if k.Config["CONFIG_BRIDGE_VLAN_FILTERING"] != "y" {
		t.Errorf("guest kernel CONFIG_BRIDGE_VLAN_FILTERING = %q, want y", k.Config["CONFIG_BRIDGE_VLAN_FILTERING"])
	}
}
