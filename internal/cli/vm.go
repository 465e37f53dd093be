package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/vm"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

// consoleEscape is Ctrl-], which leaves `kvmnet vm console`.
const consoleEscape = 0x1d

func newVM(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "The network's VMs: list, start, stop, restart, serial console, console log",
	}
	cmd.AddCommand(newVMList(g), newVMStart(g), newVMStop(g), newVMRestart(g), newVMConsole(g), newVMLogs(g))
	return cmd
}

func newVMList(g *globals) *cobra.Command {
	return vmReport(g, "list", "List the VMs: state (running, stopped, crashed), accelerator, pid, QEMU RSS, addresses",
		func(r *lab.VMStatusReport) any { return r.VMs }, printVMs)
}

// vmReport is a command that prints a part of lab.VMStatus's report: its
// JSON (part) with -o json, a table (print) otherwise.
func vmReport(g *globals, use, short string, part func(r *lab.VMStatusReport) any, print func(w io.Writer, r *lab.VMStatusReport)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			r, err := lab.VMStatus(cmd.Context(), t, g.opts()...)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.json(part(r))
			}
			print(g.stdout, r)
			return nil
		},
	}
	cmd.PreRunE = requireRoot
	g.outputFlag(cmd, "table", "table", "json")
	return cmd
}

func newVMStart(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Boot a VM (the network must be up); a stopped or crashed VM boots afresh, its last console kept as serial.log.1",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			return lab.VMStart(cmd.Context(), t, args[0], append(g.opts(), lab.WithProgress(g.stdout))...)
		},
	}
	cmd.PreRunE = requireRoot
	return cmd
}

func newVMStop(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Shut a VM down: the ACPI power button, then kill after --timeout; it stays stopped until vm start",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			if err := lab.VMStop(cmd.Context(), t, args[0], append(g.opts(), lab.WithVMStopTimeout(timeout))...); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "vm %s: stopped\n", args[0])
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", vm.DefaultStopTimeout*time.Second, "how long the guest gets to power off before it is killed")
	cmd.PreRunE = requireRoot
	return cmd
}

func newVMRestart(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Stop a VM (ACPI, then kill after --timeout) and boot it again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			return lab.VMRestart(cmd.Context(), t, args[0], append(g.opts(), lab.WithVMStopTimeout(timeout), lab.WithProgress(g.stdout))...)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", vm.DefaultStopTimeout*time.Second, "how long the guest gets to power off before it is killed")
	cmd.PreRunE = requireRoot
	return cmd
}

func newVMConsole(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a VM's serial console (interactive); Ctrl-] leaves",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			dir, err := lab.VMDir(t, args[0], g.opts()...)
			if err != nil {
				return err
			}
			return console(cmd.Context(), args[0], filepath.Join(dir, vm.ConsoleSock), cmd.InOrStdin(), g.stdout, g.stderr)
		},
	}
	cmd.PreRunE = requireRoot
	return cmd
}

func newVMLogs(g *globals) *cobra.Command {
	var follow, previous bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console output of this boot (--previous: of the boot before)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := g.load()
			if err != nil {
				return err
			}
			dir, err := lab.VMDir(t, args[0], g.opts()...)
			if err != nil {
				return err
			}
			path := filepath.Join(dir, vm.SerialLog)
			if previous {
				path += ".1"
			}
			return printLog(cmd.Context(), path, follow, g.stdout)
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing what the console prints (until interrupted)")
	cmd.Flags().BoolVar(&previous, "previous", false, "the previous boot's console (kept when a VM boots again, e.g. after a crash)")
	cmd.PreRunE = requireRoot
	return cmd
}

func newDHCP(g *globals) *cobra.Command {
	return group("dhcp", "The network's DHCP service", vmReport(g, "leases", "List the DHCP leases of every server of the network",
		func(r *lab.VMStatusReport) any { return r.DHCP }, printLeases))
}

func newDNS(g *globals) *cobra.Command {
	return group("dns", "The network's name service (the dns: section)", vmReport(g, "names",
		"List the names of the network's zone: the topology's, and the VMs' and DHCP clients' from their leases",
		func(r *lab.VMStatusReport) any { return r.Names }, printNames))
}

// hasServices reports whether t has what the supervisor runs or watches:
// VMs, DHCP or DNS servers.
func hasServices(t *topology.Topology) bool {
	return len(t.VMs) > 0 || len(t.DHCPServers()) > 0 || len(t.DNSServers()) > 0
}

// joinAddrs lists addresses separated by commas.
func joinAddrs(a []netip.Addr) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

// group is a command that only holds subcommands.
func group(use, short string, sub ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short}
	cmd.AddCommand(sub...)
	return cmd
}

// printNames lists the zone's names, then its servers.
func printNames(out io.Writer, r *lab.VMStatusReport) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tADDRESSES\tFROM")
	for _, n := range r.Names {
		fmt.Fprintf(w, "%s\t%s\t%s\n", n.Name, orDash(joinAddrs(n.Addresses)), n.Source)
	}
	w.Flush()
	if len(r.DNS) > 0 {
		fmt.Fprintln(out)
		printDNS(out, r)
	}
}

// vmStatusFor is the VM, DHCP and supervisor part of `kvmnet status`: nil
// when the network has none of them.
func vmStatusFor(cmd *cobra.Command, g *globals, t *topology.Topology) (*lab.VMStatusReport, error) {
	r, err := lab.VMStatus(cmd.Context(), t, g.opts()...)
	if err != nil || (len(r.VMs) == 0 && len(r.DHCP) == 0 && len(r.DNS) == 0 && r.Supervisor.State == "not running") {
		return nil, err
	}
	return r, nil
}

// printVMStatus prints the VM part of `kvmnet status` (nothing for nil).
func printVMStatus(out io.Writer, r *lab.VMStatusReport) {
	if r == nil {
		return
	}
	fmt.Fprintln(out)
	printVMs(out, r)
	if len(r.DHCP) > 0 {
		fmt.Fprintln(out)
		printLeases(out, r)
	}
	if len(r.DNS) > 0 {
		fmt.Fprintln(out)
		printDNS(out, r)
	}
}

// printDNS lists the name servers of the network's zone and their counters.
func printDNS(out io.Writer, r *lab.VMStatusReport) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DNS SERVER\tZONE\tADDRESSES\tSERVING\tQUERIES\tANSWERED\tNXDOMAIN\tFORWARDED\tREFUSED\tFAILED\tDROPPED\tERROR")
	for _, d := range r.DNS {
		st := d.Stats
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", d.Namespace, d.Domain, joinAddrs(d.Addresses),
			onOff(d.Listening, "yes", "no"), st.Queries, st.Answered, st.NXDomain, st.Forwarded, st.Refused, st.Failed, st.Dropped, orDash(d.Error))
	}
	w.Flush()
}

func printVMs(out io.Writer, r *lab.VMStatusReport) {
	s := r.Supervisor
	line := "SUPERVISOR " + s.State
	if s.PID != 0 {
		line += fmt.Sprintf(" (pid %d", s.PID)
		if !s.Heartbeat.IsZero() {
			line += fmt.Sprintf(", heartbeat %s ago", time.Since(s.Heartbeat).Round(time.Second))
		}
		line += ")"
	}
	if s.Reason != "" {
		line += ": " + s.Reason
	}
	fmt.Fprintln(out, line+"; log "+s.Log)
	if len(r.VMs) == 0 {
		fmt.Fprintln(out, "no VMs")
		return
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VM\tNAMESPACE\tSTATE\tACCEL\tPID\tRSS\tMAC\tADDRESSES\tSINCE\tREASON")
	for _, v := range r.VMs {
		rss, pid, since := "-", "-", "-"
		if v.RSSKiB > 0 {
			rss = fmt.Sprintf("%d MiB", v.RSSKiB/1024)
		}
		if v.PID > 0 {
			pid = fmt.Sprint(v.PID)
		}
		if !v.Started.IsZero() {
			since = v.Started.Format("15:04:05")
		}
		var addrs []string
		for _, a := range v.Addresses {
			addrs = append(addrs, a.Addr.String())
		}
		reason := v.Reason
		if !v.Declared {
			reason = strings.TrimSpace("not in the topology (the next up stops it) " + reason)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Namespace, v.State, orDash(v.Accel), pid, rss,
			strings.Join(v.MACs, ","), orDash(strings.Join(addrs, ",")), since, orDash(reason))
	}
	w.Flush()
	var crashes []string
	for _, e := range s.Events {
		if e.State == vm.StateCrashed {
			crashes = append(crashes, fmt.Sprintf("  %s vm %s crashed: %s", e.Time.Format("15:04:05"), e.VM, e.Reason))
		}
	}
	if len(crashes) > 0 {
		fmt.Fprintln(out, "CRASHES SEEN BY THE SUPERVISOR (it restarts none; kvmnet vm start NAME boots one again)")
		fmt.Fprintln(out, strings.Join(crashes, "\n"))
	}
}

func printLeases(out io.Writer, r *lab.VMStatusReport) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DHCP SERVER\tSUBNET\tPOOL\tSERVING\tOFFERS\tACKS\tLEASES\tLAST ERROR")
	for _, d := range r.DHCP {
		offers, acks := "-", "-"
		if d.Stats != nil {
			offers, acks = fmt.Sprint(d.Stats.Offers), fmt.Sprint(d.Stats.Acks)
		}
		last := d.Error
		if last == "" && d.Stats != nil {
			last = d.Stats.LastError
		}
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Namespace, d.Interface, d.Subnet, d.Pool,
			onOff(d.Listening, "yes", "no"), offers, acks, len(d.Leases), orDash(last))
	}
	w.Flush()
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  LEASE IP\tMAC\tHOSTNAME\tSTATE\tEXPIRES\tSERVER")
	for _, d := range r.DHCP {
		for _, l := range d.Leases {
			state := l.State
			if l.Static {
				state += " (static)"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s/%s\n", l.IP, l.MAC, orDash(l.Hostname), state,
				l.Expires.Format("2006-01-02 15:04:05"), d.Namespace, d.Interface)
		}
	}
	w.Flush()
}

// console connects the terminal to a VM's serial console socket. On a
// terminal, input is raw (keys go to the guest as typed) and Ctrl-] leaves;
// otherwise input is copied until it ends.
func console(ctx context.Context, name, sock string, in io.Reader, out, errOut io.Writer) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return fmt.Errorf("vm %q console: %w (is the VM running?)", name, err)
	}
	defer conn.Close()
	var restore func()
	if f, ok := in.(*os.File); ok {
		if old, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			raw := *old
			raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
			raw.Oflag &^= unix.OPOST
			raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
			raw.Cflag &^= unix.CSIZE | unix.PARENB
			raw.Cflag |= unix.CS8
			raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
			if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, &raw); err == nil {
				restore = func() { _ = unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, old) }
			}
		}
	}
	fmt.Fprintf(errOut, "connected to the serial console of vm %s; Ctrl-] leaves\r\n", name)
	if restore != nil {
		defer func() {
			restore()
			fmt.Fprintf(errOut, "\nleft the console of vm %s\n", name)
		}()
	}
	outDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, conn)
		outDone <- err
	}()
	inDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if i := bytes.IndexByte(chunk, consoleEscape); i >= 0 && restore != nil {
					_, _ = conn.Write(chunk[:i])
					inDone <- nil
					return
				}
				if _, werr := conn.Write(chunk); werr != nil {
					inDone <- werr
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				inDone <- err
				return
			}
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-outDone:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("vm %q console: %w", name, err)
		}
		fmt.Fprintf(errOut, "\r\nthe console of vm %s closed (the VM stopped?)\r\n", name)
		return nil
	case err := <-inDone:
		if restore == nil {
			// Piped input ended: give the guest a moment to answer.
			select {
			case <-outDone:
			case <-time.After(time.Second):
			}
		}
		return err
	}
}

// printLog prints the file at path; with follow, it keeps printing what is
// appended (and follows a new boot's log) until ctx ends.
func printLog(ctx context.Context, path string, follow bool, out io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	defer func() { f.Close() }()
	if _, err := io.Copy(out, f); err != nil || !follow {
		return err
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := io.Copy(out, f); err != nil {
			return err
		}
		// A new boot renames the log away and starts a fresh one.
		cur, err1 := f.Stat()
		now, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && !os.SameFile(cur, now) {
			if nf, err := os.Open(path); err == nil {
				f.Close()
				f = nf
			}
		}
	}
}
