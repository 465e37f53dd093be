package vm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmp is a minimal QEMU Machine Protocol client: one unix-socket
// connection, commands executed one at a time, asynchronous events read and
// dropped (so they can never block a command, the trap of go-qemu's events
// channel). QEMU's QMP chardev serves one client at a time, so callers hold
// a connection only for the commands they send.
type qmp struct {
	c net.Conn
	r *bufio.Reader
}

// QMPError is an error answer from QEMU.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

func dialQMP(path string, timeout time.Duration) (*qmp, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	q := &qmp{c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(timeout))
	var greet struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := q.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greet)
	}
	if err == nil && greet.QMP == nil {
		err = fmt.Errorf("no QMP greeting: %q", line)
	}
	if err == nil {
		_, err = q.execute("qmp_capabilities", nil, timeout)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return q, nil
}

func (q *qmp) Close() error { return q.c.Close() }

// execute runs one command and returns its "return" value.
func (q *qmp) execute(cmd string, args any, timeout time.Duration) (json.RawMessage, error) {
	_ = q.c.SetDeadline(time.Now().Add(timeout))
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *QMPError       `json:"error"`
			Event  string          `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w: %q", cmd, err, line)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			resp.Error.Command = cmd
			return nil, resp.Error
		case resp.Return != nil:
			return resp.Return, nil
		}
	}
}

// queryStatus returns QEMU's run state ("running", "paused", "shutdown",
// "guest-panicked", "internal-error", ...).
func (q *qmp) queryStatus(timeout time.Duration) (string, error) {
	raw, err := q.execute("query-status", nil, timeout)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}
