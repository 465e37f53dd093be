package inspect

import (
	"encoding/binary"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LegacyChain is a built-in chain of the legacy (x_tables, not nftables)
// iptables filter table: what `iptables-legacy -L -v` shows of it.
type LegacyChain struct {
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	Policy string `json:"policy"`
	// PolicyPackets counts packets the policy decided (the chain's
	// "policy DROP N packets").
	PolicyPackets uint64 `json:"policy_packets"`
	Rules         int    `json:"rules"`
	// DropPackets counts packets that rules of the chain dropped.
	DropPackets uint64 `json:"drop_packets"`
}

const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES
	iptEntrySize    = 112
	xtTargetHdr     = 32
)

var legacyHooks = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// readLegacyFilter reads the legacy iptables filter table of the calling
// thread's namespace (it runs inside netns.Do). It only looks when the
// table exists (/proc/net/ip_tables_names): asking the kernel for it would
// create it.
func readLegacyFilter() []LegacyChain {
	names, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
	if err != nil || !strings.Contains("\n"+string(names), "\nfilter\n") {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
	info := make([]byte, 84)
	copy(info, "filter")
	if err := getsockopt(fd, iptSoGetInfo, info); err != nil {
		return nil
	}
	ne := binary.NativeEndian
	valid := ne.Uint32(info[32:])
	var hookEntry, underflow [5]uint32
	for h := 0; h < 5; h++ {
		hookEntry[h] = ne.Uint32(info[36+4*h:])
		underflow[h] = ne.Uint32(info[56+4*h:])
	}
	size := ne.Uint32(info[80:])
	// struct ipt_get_entries: name[32], size, then the entries (8-aligned).
	buf := make([]byte, 40+int(size))
	copy(buf, "filter")
	ne.PutUint32(buf[32:], size)
	if err := getsockopt(fd, iptSoGetEntries, buf); err != nil {
		return nil
	}
	entries := buf[40:]
	var out []LegacyChain
	for h := 0; h < 5; h++ {
		if valid&(1<<h) == 0 {
			continue
		}
		c := LegacyChain{Table: "filter", Chain: legacyHooks[h]}
		for off := hookEntry[h]; off <= underflow[h] && int(off)+iptEntrySize <= len(entries); {
			e := entries[off:]
			targetOff, next := ne.Uint16(e[88:]), ne.Uint16(e[90:])
			pcnt := ne.Uint64(e[96:])
			verdict := int32(0)
			name := ""
			if t := int(targetOff); t+xtTargetHdr+4 <= len(e) {
				name = strings.TrimRight(string(e[t+2:t+31]), "\x00")
				verdict = int32(ne.Uint32(e[t+xtTargetHdr:]))
			}
			drop := name == "" && verdict == -1 || name == "REJECT" || name == "DROP"
			if off == underflow[h] {
				c.Policy = map[bool]string{true: "drop", false: "accept"}[drop]
				c.PolicyPackets = pcnt
				break
			}
			c.Rules++
			if drop {
				c.DropPackets += pcnt
			}
			if next == 0 {
				break
			}
			off += uint32(next)
		}
		out = append(out, c)
	}
	return out
}

func getsockopt(fd, opt int, buf []byte) error {
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_IP, uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
