package guest

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffc8b5f2000)
	libmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f2b1b0e0000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b1aeff000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f2b1b121000)
`
	libs, err := parseLdd(out)
	if err != nil {
		t.Fatal(err)
	}
	want := "/lib/x86_64-linux-gnu/libmnl.so.0 /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2"
	if got := strings.Join(libs, " "); got != want {
		t.Errorf("libs = %s", got)
	}
	if _, err := parseLdd("\tlibgone.so.1 => not found\n"); err == nil {
		t.Error("missing library: no error")
	}
	if libs, err := parseLdd("\tstatically linked\n"); err != nil || len(libs) != 0 {
		t.Errorf("static: %v %v", libs, err)
	}
}

// archiveFS is an unpacked archive, with symlink resolution like the
// guest's.
type archiveFS map[string]CPIOEntry

func (a archiveFS) resolve(t *testing.T, p string) CPIOEntry {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	cur := ""
	for hops := 0; len(parts) > 0; hops++ {
		if hops > 40 {
			t.Fatalf("resolve %s: symlink loop", p)
		}
		next := path.Join(cur, parts[0])
		e, ok := a[next]
		if !ok {
			t.Fatalf("resolve %s: %s not in the archive", p, next)
		}
		if e.IsSymlink() {
			target := string(e.Data)
			if !strings.HasPrefix(target, "/") {
				target = path.Join("/", cur, target)
			}
			parts = append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts[1:]...)
			cur = ""
			continue
		}
		if len(parts) == 1 {
			return e
		}
		cur, parts = next, parts[1:]
	}
	t.Fatalf("resolve %s: empty path", p)
	return CPIOEntry{}
}

func TestWriteImage(t *testing.T) {
	hostOnly(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o700)
	testBin := filepath.Join(dir, "x.test")
	os.WriteFile(testBin, []byte("TEST"), 0o755)
	src := filepath.Join(dir, "src")
	td := filepath.Join(src, "pkg", "x", "testdata")
	os.MkdirAll(filepath.Join(td, "sub"), 0o755)
	os.WriteFile(filepath.Join(td, "sub", "a.yaml"), []byte("a: 1\n"), 0o644)
	os.MkdirAll(filepath.Join(src, "examples"), 0o755)
	os.WriteFile(filepath.Join(src, "examples", "e.yaml"), []byte("e: 1\n"), 0o644)
	os.MkdirAll(filepath.Join(src, ".git"), 0o755)
	os.WriteFile(filepath.Join(src, ".git", "HEAD"), []byte("ref\n"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg", "x", "x.test"), []byte("stale"), 0o755)
	os.WriteFile(filepath.Join(src, "big.bin"), make([]byte, MaxSourceFile+1), 0o644)
	modDir := fakeModTree(t, map[string]string{"8021q": "garp", "garp": "", "gzmod": ""})
	plan, err := ResolveModules(modDir, []string{"8021q", "gzmod"})
	if err != nil {
		t.Fatal(err)
	}
	// A real dynamically linked host tool, to check the library closure.
	tool, err := lookPath("ls")
	if err != nil {
		t.Skip("no ls on the host")
	}
	files, err := ToolClosure([]string{tool})
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, DefaultDataFiles...)

	for _, gz := range []bool{false, true} {
		img := filepath.Join(dir, "img.cpio")
		cfg, err := WriteImage(img, ImageSpec{
			Init:       initBin,
			Config:     Config{Env: []string{"CI=true"}, Run: "TestX"},
			Modules:    plan.Load,
			Tests:      []HostTest{{Package: "example.com/m/x", Name: "x", Binary: testBin, Dir: "pkg/x"}},
			HostFiles:  files,
			SourceRoot: src,
			Gzip:       gz,
		})
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if gz {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("gzip: %v", err)
			}
			r = zr
		}
		ents, err := ReadCPIO(r)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		a := archiveFS{}
		for _, e := range ents {
			a[e.Name] = e
		}
		if e := a["init"]; !e.IsRegular() || e.Perm() != 0o755 || string(e.Data) != "INIT" {
			t.Errorf("init = %+v", e)
		}
		if e := a["dev/console"]; !e.IsCharDev() || e.Major != 5 || e.Minor != 1 {
			t.Errorf("dev/console = %+v", e)
		}
		if e := a["dev/null"]; !e.IsCharDev() || e.Major != 1 || e.Minor != 3 {
			t.Errorf("dev/null = %+v", e)
		}
		var got Config
		if err := json.Unmarshal(a[strings.TrimPrefix(ConfigPath, "/")].Data, &got); err != nil {
			t.Fatalf("config: %v", err)
		}
		if names := []string{got.Modules[0].Name, got.Modules[1].Name, got.Modules[2].Name}; strings.Join(names, " ") != "garp 8021q gzmod" {
			t.Errorf("config modules = %+v", got.Modules)
		}
		if got.Run != "TestX" || got.Env[0] != "CI=true" || got.Tests[0].Dir != "/kvmnet/src/pkg/x" || got.Tests[0].Package != "example.com/m/x" {
			t.Errorf("config = %+v", got)
		}
		if got.Modules[2].Path != "/kvmnet/modules/gzmod.ko" || got.Modules[2].Compressed {
			t.Errorf("gz module not decompressed for a kernel without MODULE_DECOMPRESS: %+v", got.Modules[2])
		}
		if e := a["kvmnet/modules/gzmod.ko"]; !strings.HasPrefix(string(e.Data), "\x7fELF") {
			t.Errorf("gzmod.ko is not a plain ELF")
		}
		for _, m := range got.Modules {
			if _, ok := a[strings.TrimPrefix(m.Path, "/")]; !ok {
				t.Errorf("module %s missing at %s", m.Name, m.Path)
			}
		}
		if e := a["kvmnet/tests/x.test"]; string(e.Data) != "TEST" || e.Perm() != 0o755 {
			t.Errorf("test binary = %+v", e)
		}
		if e := a["kvmnet/src/pkg/x/testdata/sub/a.yaml"]; string(e.Data) != "a: 1\n" {
			t.Errorf("testdata = %+v", e)
		}
		if e := a["kvmnet/src/examples/e.yaml"]; string(e.Data) != "e: 1\n" {
			t.Errorf("a file outside the package = %+v", e)
		}
		for _, skipped := range []string{"kvmnet/src/.git/HEAD", "kvmnet/src/.git", "kvmnet/src/pkg/x/x.test", "kvmnet/src/big.bin"} {
			if _, ok := a[skipped]; ok {
				t.Errorf("%s was copied", skipped)
			}
		}
		if !reflectEqual(cfg, got) {
			t.Errorf("returned config differs from the embedded one")
		}
		// Every file the tool needs resolves to a regular file through the
		// archive's own symlinks, as the guest's loader will see it.
		for _, p := range files {
			if _, err := os.Stat(p); err != nil {
				continue // optional data files
			}
			if fi, _ := os.Stat(p); fi.IsDir() {
				continue
			}
			if e := a.resolve(t, p); !e.IsRegular() || e.Size == 0 {
				t.Errorf("%s resolves to %+v", p, e)
			}
		}
	}
}

func reflectEqual(a, b Config) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func TestMirrorRejectsRelative(t *testing.T) {
	w := NewCPIOWriter(io.Discard)
	if err := mirror(w, "relative/path", 0); err == nil {
		t.Error("relative path: no error")
	}
	if err := mirror(w, "/nonexistent/kvmnet/file", 0); err == nil {
		t.Error("missing file: no error")
	}
}
