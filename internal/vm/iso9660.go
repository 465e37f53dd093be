package vm

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// A small ISO 9660 writer: one root directory of regular files, with Rock
// Ridge names (SUSP SP and ER in the root's "." record, PX and NM in every
// record), enough for a cloud-init NoCloud seed (volume label "cidata",
// files meta-data, user-data, network-config), which is what cloud-localds
// makes with genisoimage -rock. Linux reads the Rock Ridge names; the ISO
// names are upper-case 8.3 renderings.

const isoSector = 2048

// isoFile is one file of the image.
type isoFile struct {
	Name string // the Rock Ridge (real) name
	Data []byte
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

// isoName renders name as an ISO 9660 level-1 identifier: "META_DAT.;1".
func isoName(name string) string {
	base, ext, _ := strings.Cut(strings.ToUpper(name), ".")
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, r := range s {
			if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				b.WriteRune(r)
			} else {
				b.WriteByte('_')
			}
			if b.Len() == n {
				break
			}
		}
		return b.String()
	}
	return clean(base, 8) + "." + clean(ext, 3) + ";1"
}

func isoDate7(t time.Time) []byte {
	t = t.UTC()
	return []byte{byte(t.Year() - 1900), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
}

func isoDate17(t time.Time) []byte {
	t = t.UTC()
	return append([]byte(t.Format("20060102150405")+"00"), 0)
}

// susp entries.
func suspPX(mode uint32, links uint32) []byte {
	e := make([]byte, 36)
	copy(e, "PX")
	e[2], e[3] = 36, 1
	both32(e[4:], mode)
	both32(e[12:], links)
	// uid, gid 0
	return e
}

func suspNM(name string) []byte {
	e := []byte{'N', 'M', byte(5 + len(name)), 1, 0}
	return append(e, name...)
}

func suspSP() []byte { return []byte{'S', 'P', 7, 1, 0xBE, 0xEF, 0} }

func suspER() []byte {
	id, des, src := "RRIP_1991A", "ROCK RIDGE", "KVMNET"
	e := []byte{'E', 'R', byte(8 + len(id) + len(des) + len(src)), 1, byte(len(id)), byte(len(des)), byte(len(src)), 1}
	e = append(e, id...)
	e = append(e, des...)
	return append(e, src...)
}

// dirRecord builds one directory record.
func dirRecord(ident []byte, extent, size uint32, dir bool, t time.Time, su []byte) []byte {
	n := 33 + len(ident)
	if len(ident)%2 == 0 {
		n++ // padding after an even-length identifier
	}
	n += len(su)
	if n%2 == 1 {
		n++
	}
	r := make([]byte, n)
	r[0] = byte(n)
	both32(r[2:], extent)
	both32(r[10:], size)
	copy(r[18:], isoDate7(t))
	if dir {
		r[25] = 2
	}
	both16(r[28:], 1)
	r[32] = byte(len(ident))
	copy(r[33:], ident)
	off := 33 + len(ident)
	if len(ident)%2 == 0 {
		off++
	}
	copy(r[off:], su)
	return r
}

// writeISO writes an ISO 9660 image with the given volume label and files
// (all in the root directory) to w. t stamps every record, so the output
// is reproducible.
func writeISO(w io.Writer, label string, files []isoFile, t time.Time) error {
	files = append([]isoFile(nil), files...)
	sort.Slice(files, func(i, j int) bool { return isoName(files[i].Name) < isoName(files[j].Name) })
	seen := map[string]string{}
	for _, f := range files {
		n := isoName(f.Name)
		if other, dup := seen[n]; dup {
			return fmt.Errorf("iso9660: %q and %q have the same ISO name %s", other, f.Name, n)
		}
		seen[n] = f.Name
		if len(f.Name) > 200 {
			return fmt.Errorf("iso9660: name %q too long", f.Name)
		}
	}
	const (
		pvdSector  = 16
		termSector = 17
		lPathSec   = 18
		mPathSec   = 19
		rootSec    = 20
	)
	// The root directory: ".", "..", then the files.
	dirMode := uint32(0o040555)
	fileMode := uint32(0o100444)
	var root []byte
	records := [][]byte{
		nil, nil, // "." and ".." once the root's size is known
	}
	next := uint32(rootSec + 1)
	extents := make([]uint32, len(files))
	for i, f := range files {
		extents[i] = next
		next += uint32((len(f.Data) + isoSector - 1) / isoSector)
		if len(f.Data) == 0 {
			extents[i] = 0
		}
		records = append(records, dirRecord([]byte(isoName(f.Name)), extents[i], uint32(len(f.Data)), false, t,
			append(suspPX(fileMode, 1), suspNM(f.Name)...)))
	}
	rootSize := uint32(isoSector)
	records[0] = dirRecord([]byte{0}, rootSec, rootSize, true, t, append(append(suspSP(), suspPX(dirMode, 2)...), suspER()...))
	records[1] = dirRecord([]byte{1}, rootSec, rootSize, true, t, suspPX(dirMode, 2))
	for _, r := range records {
		root = append(root, r...)
	}
	if len(root) > isoSector {
		return fmt.Errorf("iso9660: root directory needs more than one sector (%d bytes)", len(root))
	}
	total := next

	img := make([]byte, rootSec*isoSector+isoSector)
	// Primary volume descriptor.
	pvd := img[pvdSector*isoSector : (pvdSector+1)*isoSector]
	pvd[0] = 1
	copy(pvd[1:], "CD001")
	pvd[6] = 1
	pad := func(b []byte, s string) {
		for i := range b {
			b[i] = ' '
		}
		copy(b, s)
	}
	pad(pvd[8:40], "LINUX")
	pad(pvd[40:72], label)
	both32(pvd[80:], total)
	both16(pvd[120:], 1)
	both16(pvd[124:], 1)
	both16(pvd[128:], isoSector)
	both32(pvd[132:], 10) // path table: one 10-byte entry
	binary.LittleEndian.PutUint32(pvd[140:], lPathSec)
	binary.BigEndian.PutUint32(pvd[148:], mPathSec)
	copy(pvd[156:190], dirRecord([]byte{0}, rootSec, rootSize, true, t, nil))
	pad(pvd[190:318], "")
	pad(pvd[318:446], "")
	pad(pvd[446:574], "KVMNET")
	pad(pvd[574:702], "KVMNET CLOUD-INIT SEED")
	pad(pvd[702:739], "")
	pad(pvd[739:776], "")
	pad(pvd[776:813], "")
	copy(pvd[813:], isoDate17(t))
	copy(pvd[830:], isoDate17(t))
	copy(pvd[847:], "0000000000000000\x00")
	copy(pvd[864:], isoDate17(t))
	pvd[881] = 1
	// Terminator.
	term := img[termSector*isoSector:]
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1
	// Path tables: the root only.
	lp := img[lPathSec*isoSector:]
	lp[0] = 1
	binary.LittleEndian.PutUint32(lp[2:], rootSec)
	binary.LittleEndian.PutUint16(lp[6:], 1)
	mp := img[mPathSec*isoSector:]
	mp[0] = 1
	binary.BigEndian.PutUint32(mp[2:], rootSec)
	binary.BigEndian.PutUint16(mp[6:], 1)
	copy(img[rootSec*isoSector:], root)
	if _, err := w.Write(img); err != nil {
		return err
	}
	for _, f := range files {
		if len(f.Data) == 0 {
			continue
		}
		padded := make([]byte, (len(f.Data)+isoSector-1)/isoSector*isoSector)
		copy(padded, f.Data)
		if _, err := w.Write(padded); err != nil {
			return err
		}
	}
	return nil
}
