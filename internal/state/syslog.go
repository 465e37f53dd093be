package state

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// The journal is kvmnet's own audit trail; the system log gets a copy of
// what matters to an administrator reading it: one line per command that
// changed something (the command, the network, how many steps, how many
// failed, where the journal is) and one per failed step. They go to the
// local syslog socket (/dev/log: journald or rsyslog) in the format
// logger(1) uses, facility daemon, tag kvmnet. KVMNET_SYSLOG names another
// socket, or "off"; a missing socket (a container without a syslog daemon)
// is silently skipped, never an error.

// syslogSocket is where the lines go ("" when off).
func syslogSocket() string {
	switch v := os.Getenv("KVMNET_SYSLOG"); v {
	case "off":
		return ""
	case "":
		return "/dev/log"
	default:
		return v
	}
}

// Severities of RFC 3164 (facility daemon, 3).
const (
	sysErr    = 3*8 + 3
	sysNotice = 3*8 + 5
)

// maxSyslog bounds one line (syslog daemons take 1-2 KiB datagrams), and
// maxSyslogFailures the failed steps told one by one (a rollback of a large
// build may fail thousands of times for one cause).
const (
	maxSyslog         = 1024
	maxSyslogFailures = 20
)

// syslog sends lines to the system log, best effort.
func syslog(lines []sysLine) {
	path := syslogSocket()
	if path == "" || len(lines) == 0 {
		return
	}
	conn, err := net.Dial("unixgram", path)
	if err != nil {
		if conn, err = net.Dial("unix", path); err != nil {
			return
		}
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	pid := os.Getpid()
	for _, l := range lines {
		msg := strings.ReplaceAll(l.msg, "\n", " ")
		if len(msg) > maxSyslog {
			msg = msg[:maxSyslog] + "..."
		}
		if _, err := fmt.Fprintf(conn, "<%d>%s kvmnet[%d]: %s", l.pri, time.Now().Format(time.Stamp), pid, msg); err != nil {
			return
		}
	}
}

type sysLine struct {
	pri int
	msg string
}
