// Package probe checks reachability from inside network namespaces with real
// traffic: ICMP echo, TCP connect, UDP request/reply and ARP resolution. The
// sockets are opened inside the source namespace (netns.Do) and used from
// outside it; nothing is executed (no ping, no nc).
//
// What "reachable" means, per protocol:
//
//   - tcp: the three-way handshake completed: something accepted the port.
//     Everything else is "blocked", with the cause in Detail: "refused" (a
//     TCP reset or an ICMP port unreachable: no listener, or a firewall's
//     reject), "timeout" (dropped on the way), "ICMP host unreachable" (no
//     neighbour answered, or a router's reject), "network unreachable" (no
//     route), "blocked locally (output filter)" (the source namespace's own
//     output hook dropped it).
//   - icmp: an echo reply came back from the address. Blocked: timeout, or an
//     ICMP error about our echo request (Detail names it).
//   - udp: a datagram came back from the address:port (the target must answer,
//     like an echo service). Blocked: an ICMP port unreachable (Detail
//     "refused (ICMP port unreachable)") or timeout (dropped, or a silent
//     service: UDP cannot tell those apart).
//   - arp: the IPv4 address (on-link from the source namespace) answered an
//     ARP request; Detail has its MAC. Blocked: no reply before the timeout.
//
// A probe that cannot run at all (no such namespace, a bad address) has Err
// set and counts as failed whatever it expected.
package probe

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Expectations.
const (
	Reachable = "reachable"
	Blocked   = "blocked"
)

// DefaultTimeout applies to a probe without a Timeout.
const DefaultTimeout = time.Second

// Parallel is how many probes Run runs at once.
var Parallel = 8

// Probe is one reachability check.
type Probe struct {
	Name   string `json:"name,omitempty"`
	FromNS string `json:"from"` // the namespace the traffic starts in
	// To is an address for icmp and arp, address:port for tcp and udp
	// ("10.0.0.2:22", "[fd00::2]:22").
	To     string `json:"to"`
	Proto  string `json:"proto"`  // icmp, tcp, udp, arp
	Expect string `json:"expect"` // reachable (default) or blocked
	// Source, when set, is the source address to send from (it must be an
	// address of FromNS).
	Source  string        `json:"source,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Label names the probe: its Name, or "FROM -> proto TO".
func (p Probe) Label() string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("%s -> %s %s", p.FromNS, p.Proto, p.To)
}

func (p Probe) expect() string {
	if p.Expect == "" {
		return Reachable
	}
	return p.Expect
}

// Result is what a probe found.
type Result struct {
	Probe     Probe         `json:"probe"`
	Reachable bool          `json:"reachable"`
	OK        bool          `json:"ok"`     // the result is what the probe expected
	Detail    string        `json:"detail"` // how it ended: "connected", "timeout", ...
	Elapsed   time.Duration `json:"elapsed"`
	Err       error         `json:"-"` // the probe could not run
}

// Got is "reachable" or "blocked" ("error" when the probe could not run).
func (r Result) Got() string {
	switch {
	case r.Err != nil:
		return "error"
	case r.Reachable:
		return Reachable
	}
	return Blocked
}

// Run runs the probes, Parallel at a time, and returns their results in
// the same order. Cancelling ctx ends the waiting probes as blocked
// ("cancelled").
func Run(ctx context.Context, probes []Probe) []Result {
	out := make([]Result, len(probes))
	sem := make(chan struct{}, max(Parallel, 1))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = One(ctx, p)
		}()
	}
	wg.Wait()
	return out
}

// One runs a single probe.
func One(ctx context.Context, p Probe) Result {
	r := Result{Probe: p}
	start := time.Now()
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if e := p.expect(); e != Reachable && e != Blocked {
		r.Err = fmt.Errorf("probe %q: expect %q (want reachable or blocked)", p.Label(), e)
	} else {
		r.Reachable, r.Detail, r.Err = run(ctx, p)
	}
	r.Elapsed = time.Since(start)
	if r.Err != nil {
		r.Detail = r.Err.Error()
	}
	r.OK = r.Err == nil && r.Reachable == (p.expect() == Reachable)
	return r
}

// target parses To for proto: the address and (tcp, udp) port.
func target(p Probe) (netip.Addr, uint16, error) {
	switch p.Proto {
	case "tcp", "udp":
		ap, err := netip.ParseAddrPort(p.To)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("probe %q: %s needs address:port, got %q", p.Label(), p.Proto, p.To)
		}
		return ap.Addr().Unmap(), ap.Port(), nil
	case "icmp", "arp":
		a, err := netip.ParseAddr(p.To)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("probe %q: %s needs an address, got %q", p.Label(), p.Proto, p.To)
		}
		a = a.Unmap()
		if p.Proto == "arp" && !a.Is4() {
			return netip.Addr{}, 0, fmt.Errorf("probe %q: ARP resolves IPv4 addresses, got %q", p.Label(), p.To)
		}
		return a, 0, nil
	}
	return netip.Addr{}, 0, fmt.Errorf("probe %q: unknown protocol %q (want icmp, tcp, udp or arp)", p.Label(), p.Proto)
}

func source(p Probe, dst netip.Addr) (netip.Addr, error) {
	if p.Source == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(p.Source)
	if err != nil {
		return a, fmt.Errorf("probe %q: bad source address %q", p.Label(), p.Source)
	}
	if a.Unmap().Is4() != dst.Is4() {
		return a, fmt.Errorf("probe %q: source %s and target %s are of different families", p.Label(), a, dst)
	}
	return a.Unmap(), nil
}

// Summary counts results: total and those not OK.
func Summary(results []Result) (total, failed int) {
	for _, r := range results {
		if !r.OK {
			failed++
		}
	}
	return len(results), failed
}

func column(p Probe) string { return p.Proto + " " + p.To }

// Matrix renders results as a table: one row per source namespace, one
// column per target (protocol and address), each cell the result, marked
// FAIL when it is not what the probe expected; then the failures with
// their details and a summary line.
func Matrix(results []Result) string {
	var rows, cols []string
	cells := map[[2]string][]string{}
	for _, r := range results {
		row, col := r.Probe.FromNS, column(r.Probe)
		if !contains(rows, row) {
			rows = append(rows, row)
		}
		if !contains(cols, col) {
			cols = append(cols, col)
		}
		cell := r.Got()
		if !r.OK {
			cell += " FAIL"
		} else {
			cell += " ok"
		}
		cells[[2]string{row, col}] = append(cells[[2]string{row, col}], cell)
	}
	table := [][]string{append([]string{"from \\ to"}, cols...)}
	for _, row := range rows {
		line := []string{row}
		for _, col := range cols {
			c := strings.Join(cells[[2]string{row, col}], ", ")
			if c == "" {
				c = "-"
			}
			line = append(line, c)
		}
		table = append(table, line)
	}
	widths := make([]int, len(table[0]))
	for _, line := range table {
		for i, c := range line {
			widths[i] = max(widths[i], len(c))
		}
	}
	var b strings.Builder
	for _, line := range table {
		for i, c := range line {
			if i == len(line)-1 {
				b.WriteString(c)
			} else {
				b.WriteString(c + strings.Repeat(" ", widths[i]-len(c)+2))
			}
		}
		b.WriteString("\n")
	}
	total, failed := Summary(results)
	for _, r := range results {
		if !r.OK {
			fmt.Fprintf(&b, "FAIL %s: want %s, got %s (%s)\n", r.Probe.Label(), r.Probe.expect(), r.Got(), r.Detail)
		}
	}
	fmt.Fprintf(&b, "%d probes, %d passed, %d failed\n", total, total-failed, failed)
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }
