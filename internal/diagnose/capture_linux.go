package diagnose

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// CaptureStats says what a capture saw.
type CaptureStats struct {
	Packets int `json:"packets"`
	Bytes   int `json:"bytes"`
}

// Capture writes the frames crossing iface in namespace nsName (both
// directions) to w as a pcap file (LINKTYPE_ETHERNET) until ctx ends or count
// frames were written (count 0: no limit). The AF_PACKET socket is opened
// inside the namespace (netns.Do) and read from this goroutine.
func Capture(ctx context.Context, nsName, iface string, w io.Writer, count, snaplen int) (CaptureStats, error) {
	var st CaptureStats
	if snaplen <= 0 {
		snaplen = 65535
	}
	ns, err := netns.Open(nsName)
	if err != nil {
		return st, err
	}
	defer ns.Close()
	var fd int
	var ifi *net.Interface
	err = netns.Do(ns, func() error {
		var err error
		if ifi, err = net.InterfaceByName(iface); err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return st, fmt.Errorf("capture on %s/%s: %w", nsName, iface, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return st, fmt.Errorf("capture on %s/%s: %w", nsName, iface, err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return st, err
	}
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4) // microsecond timestamps
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(hdr[20:], 1) // LINKTYPE_ETHERNET
	if _, err := w.Write(hdr); err != nil {
		return st, err
	}
	buf := make([]byte, 65536+14)
	rec := make([]byte, 16)
	for ctx.Err() == nil && (count == 0 || st.Packets < count) {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return st, fmt.Errorf("capture on %s/%s: %w", nsName, iface, err)
		}
		now := time.Now()
		caplen := min(n, snaplen, len(buf))
		binary.LittleEndian.PutUint32(rec[0:], uint32(now.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(now.Nanosecond()/1000))
		binary.LittleEndian.PutUint32(rec[8:], uint32(caplen))
		binary.LittleEndian.PutUint32(rec[12:], uint32(n))
		if _, err := w.Write(rec); err != nil {
			return st, err
		}
		if _, err := w.Write(buf[:caplen]); err != nil {
			return st, err
		}
		st.Packets++
		st.Bytes += n
	}
	return st, nil
}
