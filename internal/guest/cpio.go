package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// The newc ("new ASCII", magic 070701) cpio format that the kernel unpacks
// into the initramfs: a 110-byte ASCII header of 13 eight-digit hex fields,
// the NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes.
// The archive ends with an entry named TRAILER!!!.

const (
	newcMagic   = "070701"
	newcHdrLen  = 110
	cpioTrailer = "TRAILER!!!"

	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLnk  = 0o120000
	modeChr  = 0o020000
	modeBlk  = 0o060000
	modeType = 0o170000
)

// ErrDuplicate is returned when an archive path is written twice.
var ErrDuplicate = errors.New("duplicate cpio entry")

// CPIOWriter writes a newc cpio archive. Entry names are archive paths
// ("usr/bin/ip"; a leading slash is dropped). Parent directories that were
// not written explicitly are created with mode 0755 before their first child,
// as the kernel's unpacker needs. It is not safe for concurrent use.
type CPIOWriter struct {
	w      *bufio.Writer
	n      int64
	ino    uint32
	kinds  map[string]uint32 // archive path -> type bits
	closed bool
}

// NewCPIOWriter returns a writer that writes the archive to w. Call Close to
// write the trailer and flush.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1, kinds: map[string]uint32{}}
}

func cleanName(name string) (string, error) {
	n := path.Clean("/" + name)[1:]
	if n == "" || n == cpioTrailer {
		return "", fmt.Errorf("cpio entry %q: invalid name", name)
	}
	return n, nil
}

// Dir writes a directory. Writing a directory that exists is a no-op.
func (c *CPIOWriter) Dir(name string, perm fs.FileMode) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if k, ok := c.kinds[n]; ok {
		if k == modeDir {
			return nil
		}
		return fmt.Errorf("cpio dir %q: %w (not a directory)", n, ErrDuplicate)
	}
	return c.entry(n, modeDir|uint32(perm.Perm()), 2, 0, 0, nil, 0)
}

// File writes a regular file with the given contents.
func (c *CPIOWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.FileFrom(name, perm, strings.NewReader(string(data)), int64(len(data)))
}

// FileFrom writes a regular file of exactly size bytes read from r.
func (c *CPIOWriter) FileFrom(name string, perm fs.FileMode, r io.Reader, size int64) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio file %q: size %d out of range for newc", n, size)
	}
	return c.entry(n, modeReg|uint32(perm&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)), 1, 0, 0, r, size)
}

// Symlink writes a symbolic link name -> target.
func (c *CPIOWriter) Symlink(name, target string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if target == "" {
		return fmt.Errorf("cpio symlink %q: empty target", n)
	}
	return c.entry(n, modeLnk|0o777, 1, 0, 0, strings.NewReader(target), int64(len(target)))
}

// CharDev writes a character device node, such as dev/console (5, 1) or
// dev/null (1, 3).
func (c *CPIOWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	return c.entry(n, modeChr|uint32(perm.Perm()), 1, major, minor, nil, 0)
}

// BlockDev writes a block device node.
func (c *CPIOWriter) BlockDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	return c.entry(n, modeBlk|uint32(perm.Perm()), 1, major, minor, nil, 0)
}

// Has reports whether name was written (or created as a parent).
func (c *CPIOWriter) Has(name string) bool {
	n, err := cleanName(name)
	if err != nil {
		return false
	}
	_, ok := c.kinds[n]
	return ok
}

func (c *CPIOWriter) parents(n string) error {
	dir := path.Dir(n)
	if dir == "." {
		return nil
	}
	if k, ok := c.kinds[dir]; ok {
		if k != modeDir {
			return fmt.Errorf("cpio entry %q: parent %q is not a directory", n, dir)
		}
		return nil
	}
	if err := c.parents(dir); err != nil {
		return err
	}
	return c.raw(dir, modeDir|0o755, 2, 0, 0, nil, 0)
}

func (c *CPIOWriter) entry(n string, mode, nlink, rmaj, rmin uint32, r io.Reader, size int64) error {
	if c.closed {
		return fmt.Errorf("cpio entry %q: writer closed", n)
	}
	if _, ok := c.kinds[n]; ok {
		return fmt.Errorf("cpio entry %q: %w", n, ErrDuplicate)
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.raw(n, mode, nlink, rmaj, rmin, r, size)
}

func (c *CPIOWriter) raw(n string, mode, nlink, rmaj, rmin uint32, r io.Reader, size int64) error {
	ino := uint32(0)
	if n != cpioTrailer {
		ino = c.ino
		c.ino++
		c.kinds[n] = mode & modeType
	}
	fields := [13]uint32{ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmaj, rmin, uint32(len(n) + 1), 0}
	var hdr [newcHdrLen]byte
	copy(hdr[:], newcMagic)
	for i, f := range fields {
		s := strconv.FormatUint(uint64(f), 16)
		b := hdr[6+8*i : 6+8*i+8]
		for j := range b {
			b[j] = '0'
		}
		copy(b[8-len(s):], strings.ToUpper(s))
	}
	if err := c.write(hdr[:]); err != nil {
		return err
	}
	if err := c.write(append([]byte(n), 0)); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if size > 0 {
		m, err := io.CopyN(c.w, r, size)
		c.n += m
		if err != nil {
			return fmt.Errorf("cpio entry %q: copy %d bytes: %w", n, size, err)
		}
	}
	return c.pad()
}

func (c *CPIOWriter) write(b []byte) error {
	m, err := c.w.Write(b)
	c.n += int64(m)
	return err
}

func (c *CPIOWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// Close writes the trailer, pads the archive to a multiple of 512 bytes (as
// cpio(1) does) and flushes. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return nil
	}
	if err := c.raw(cpioTrailer, 0, 1, 0, 0, nil, 0); err != nil {
		return err
	}
	c.closed = true
	if r := c.n % 512; r != 0 {
		if err := c.write(make([]byte, 512-r)); err != nil {
			return err
		}
	}
	return c.w.Flush()
}

// CPIOEntry is one entry read back from a newc archive.
type CPIOEntry struct {
	Name         string
	Mode         uint32 // type and permission bits, as in the header
	Size         int64
	Data         []byte // file contents, or the target of a symlink
	Major, Minor uint32 // device numbers of a device node
}

// IsDir, IsRegular, IsSymlink and IsCharDev report the entry's type.
func (e CPIOEntry) IsDir() bool     { return e.Mode&modeType == modeDir }
func (e CPIOEntry) IsRegular() bool { return e.Mode&modeType == modeReg }
func (e CPIOEntry) IsSymlink() bool { return e.Mode&modeType == modeLnk }
func (e CPIOEntry) IsCharDev() bool { return e.Mode&modeType == modeChr }

// Perm returns the permission bits.
func (e CPIOEntry) Perm() fs.FileMode { return fs.FileMode(e.Mode & 0o777) }

// ReadCPIO parses one newc archive (up to its trailer) from r. It is meant
// for tests and debugging, so it keeps every entry in memory.
func ReadCPIO(r io.Reader) ([]CPIOEntry, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		off += n
		return b, nil
	}
	skipPad := func() error {
		if p := (4 - off%4) % 4; p != 0 {
			_, err := read(p)
			return err
		}
		return nil
	}
	var out []CPIOEntry
	for {
		hdr, err := read(newcHdrLen)
		if err != nil {
			return out, fmt.Errorf("read cpio header at %d: %w", off, err)
		}
		if string(hdr[:6]) != newcMagic {
			return out, fmt.Errorf("cpio header at %d: bad magic %q", off-newcHdrLen, hdr[:6])
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return out, fmt.Errorf("cpio header at %d field %d: %w", off-newcHdrLen, i, err)
			}
			f[i] = uint32(v)
		}
		nb, err := read(int64(f[11]))
		if err != nil {
			return out, fmt.Errorf("read cpio name: %w", err)
		}
		name := strings.TrimRight(string(nb), "\x00")
		if err := skipPad(); err != nil {
			return out, err
		}
		if name == cpioTrailer {
			return out, nil
		}
		data, err := read(int64(f[6]))
		if err != nil {
			return out, fmt.Errorf("read cpio data of %q: %w", name, err)
		}
		if err := skipPad(); err != nil {
			return out, err
		}
		out = append(out, CPIOEntry{Name: name, Mode: f[1], Size: int64(f[6]), Data: data, Major: f[9], Minor: f[10]})
	}
}
