package guest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func sampleArchive(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	steps := []error{
		w.Dir("/dev", 0o755),
		w.CharDev("dev/console", 0o600, 5, 1),
		w.CharDev("dev/null", 0o666, 1, 3),
		w.BlockDev("dev/vda", 0o660, 254, 0),
		w.File("/init", 0o755, []byte("#!fake init\n")),
		w.File("usr/lib/x86_64-linux-gnu/libfoo.so.1.2", 0o644, []byte("abc")), // parents made implicitly
		w.Symlink("usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2"),
		w.Symlink("lib", "usr/lib"),
		w.File("empty", 0o600, nil),
		w.Dir("tmp", 0o777),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCPIORoundTrip(t *testing.T) {
	b := sampleArchive(t)
	if len(b)%512 != 0 {
		t.Errorf("archive length %d is not a multiple of 512", len(b))
	}
	ents, err := ReadCPIO(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]CPIOEntry{}
	var order []string
	for _, e := range ents {
		got[e.Name] = e
		order = append(order, e.Name)
	}
	wantOrder := "dev dev/console dev/null dev/vda init usr usr/lib usr/lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu/libfoo.so.1.2 usr/lib/x86_64-linux-gnu/libfoo.so.1 lib empty tmp"
	if s := strings.Join(order, " "); s != wantOrder {
		t.Errorf("entries:\n got %s\nwant %s", s, wantOrder)
	}
	if e := got["dev/console"]; !e.IsCharDev() || e.Major != 5 || e.Minor != 1 || e.Perm() != 0o600 {
		t.Errorf("dev/console = %+v", e)
	}
	if e := got["dev/vda"]; e.Mode&modeType != modeBlk || e.Major != 254 {
		t.Errorf("dev/vda = %+v", e)
	}
	if e := got["init"]; !e.IsRegular() || e.Perm() != 0o755 || string(e.Data) != "#!fake init\n" {
		t.Errorf("init = %+v", e)
	}
	if e := got["usr/lib"]; !e.IsDir() || e.Perm() != 0o755 {
		t.Errorf("implicit parent usr/lib = %+v", e)
	}
	if e := got["lib"]; !e.IsSymlink() || string(e.Data) != "usr/lib" {
		t.Errorf("lib = %+v", e)
	}
	if e := got["empty"]; !e.IsRegular() || e.Size != 0 {
		t.Errorf("empty = %+v", e)
	}
}

// TestCPIOWithCpioTool checks the archive with GNU cpio, an independent
// reader, when it is installed.
func TestCPIOWithCpioTool(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio(1) not installed (apt-get install cpio); the round trip through ReadCPIO still runs")
	}
	p := filepath.Join(t.TempDir(), "a.cpio")
	if err := os.WriteFile(p, sampleArchive(t), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet", "-F", p)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{
		"crw-------", "dev/console", "brw-rw----", "dev/vda",
		"-rwxr-xr-x", "init",
		"lrwxrwxrwx", "lib -> usr/lib",
		"usr/lib/x86_64-linux-gnu/libfoo.so.1 -> libfoo.so.1.2",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("cpio -itv output lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "\n") != 13 {
		t.Errorf("cpio -itv listed %d entries, want 13:\n%s", strings.Count(s, "\n"), s)
	}
	// Extract it too: data and symlinks come back as written.
	dir := t.TempDir()
	x := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames", "-F", p)
	x.Dir = dir
	if out, err := x.CombinedOutput(); err != nil && !strings.Contains(string(out), "dev/") {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lib", "x86_64-linux-gnu", "libfoo.so.1")); err != nil || string(b) != "abc" {
		t.Errorf("extracted lib/x86_64-linux-gnu/libfoo.so.1 = %q, %v", b, err)
	}
}

func TestCPIOErrors(t *testing.T) {
	w := NewCPIOWriter(&bytes.Buffer{})
	if err := w.File("a", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.File("/a", 0o644, nil); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate file: %v, want ErrDuplicate", err)
	}
	if err := w.Dir("a", 0o755); !errors.Is(err, ErrDuplicate) {
		t.Errorf("dir over file: %v, want ErrDuplicate", err)
	}
	if err := w.Dir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := w.Dir("d", 0o700); err != nil {
		t.Errorf("second Dir of the same directory: %v", err)
	}
	if err := w.Symlink("l", "d"); err != nil {
		t.Fatal(err)
	}
	if err := w.File("l/x", 0o644, nil); err == nil {
		t.Error("file under a symlink parent: no error")
	}
	if err := w.File("TRAILER!!!", 0o644, nil); err == nil {
		t.Error("file named like the trailer: no error")
	}
	if err := w.FileFrom("short", 0o644, strings.NewReader("ab"), 3); err == nil {
		t.Error("short reader: no error")
	}
	if err := w.Symlink("s", ""); err == nil {
		t.Error("empty symlink target: no error")
	}
}

func TestReadCPIORejectsGarbage(t *testing.T) {
	if _, err := ReadCPIO(strings.NewReader(strings.Repeat("x", 200))); err == nil {
		t.Error("no error for a non-cpio input")
	}
	b := sampleArchive(t)
	if _, err := ReadCPIO(bytes.NewReader(b[:300])); err == nil {
		t.Error("no error for a truncated archive")
	}
}
