// Package cli is kvmnet's command line: one file per verb, one options struct,
// data on stdout (table or -o json), logs and errors on stderr.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitError   = 1
	ExitInvalid = 2 // the topology file is invalid
)

type globals struct {
	file     string
	prefix   string
	stateDir string
	output   string
	verbose  bool
	stdout   io.Writer
	stderr   io.Writer
}

// Main runs the CLI with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	// KVMNET_CPUPROFILE=FILE writes a CPU profile of the command (for
	// docs/benchmarks.md investigations).
	if p := os.Getenv("KVMNET_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	// KVMNET_MEMPROFILE=FILE writes a heap profile (all allocations) at exit.
	if p := os.Getenv("KVMNET_MEMPROFILE"); p != "" {
		runtime.MemProfileRate = 4096
		defer func() {
			if f, err := os.Create(p); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	root, g := Entrypoint(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(g.stderr, "kvmnet:", err)
	var te *topology.Error
	var tl topology.ErrorList
	if errors.As(err, &tl) || errors.As(err, &te) {
		return ExitInvalid
	}
	var ex *exitError
	if errors.As(err, &ex) {
		return ex.code
	}
	return ExitError
}

type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Entrypoint builds the root command (testable without a process).
func Entrypoint(stdout, stderr io.Writer) (*cobra.Command, *globals) {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "kvmnet",
		Short: "Wire KVM virtual machines into layer-2 networks of Linux namespaces, declaratively",
		Long: `kvmnet builds a network of Linux network namespaces, bridges and veth pairs from a
YAML topology (or, with no file, the built-in reference design: namespaces host,
bridge and vm1), keeps it in the declared state, and removes exactly what it made.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVarP(&g.file, "file", "f", "", "topology file (default: the built-in reference design)")
	pf.StringVar(&g.prefix, "prefix", "", "namespace name prefix, overriding the file's (keeps several networks apart)")
	pf.StringVar(&g.stateDir, "state-dir", "", "state directory (default /var/lib/kvmnet)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log every kernel step to stderr")
	for _, c := range []func(*globals) *cobra.Command{newInit, newUp, newDown, newPlan, newStatus, newExec, newValidate, newLink, newQoS, newVerify, newDiagnose, newTrace, newEvents, newTop, newServe, newGraph, newCapture, newVM, newDHCP, newDNS, newSupervise} {
		root.AddCommand(c(g))
	}
	return root, g
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
}

// load reads the topology named by -f, or the reference design.
// Warnings (valid but probably mistaken, topology.Lint) go to stderr.
func (g *globals) load() (*topology.Topology, error) {
	var t *topology.Topology
	var err error
	if g.file == "" {
		t, err = topology.Default(topology.WithPrefix(g.prefix))
	} else {
		t, err = topology.Load(g.file, topology.WithPrefix(g.prefix))
	}
	if err != nil {
		return nil, err
	}
	for _, w := range t.Lint() {
		fmt.Fprintln(g.stderr, "kvmnet:", w)
	}
	return t, nil
}

// loadObserving is load with the kernel read meanwhile (lab.StartEarly):
// the returned observation goes to lab.Up or lab.Plan (WithEarly).
func (g *globals) loadObserving() (*topology.Topology, *lab.Early, error) {
	early := lab.StartEarly(g.stateDir, g.prefix)
	t, err := g.load()
	if err != nil {
		early.Cancel()
		return nil, nil, err
	}
	return t, early, nil
}

func (g *globals) opts() []lab.Option {
	return []lab.Option{lab.WithLogger(g.logger()), lab.WithStateDir(g.stateDir)}
}

func requireRoot(cmd *cobra.Command, _ []string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to change namespaces and links", cmd.CommandPath())
	}
	return nil
}

func (g *globals) json(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (g *globals) outputFlag(cmd *cobra.Command, def string, allowed ...string) {
	v := cmd.Flags().StringP("output", "o", def, fmt.Sprintf("output format: %v", allowed))
	cmd.PreRunE = chain(cmd.PreRunE, func(*cobra.Command, []string) error {
		for _, a := range allowed {
			if *v == a {
				g.output = *v
				return nil
			}
		}
		return fmt.Errorf("unknown output format %q; want one of %v", *v, allowed)
	})
}

func chain(fs ...func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, a []string) error {
		for _, f := range fs {
			if f == nil {
				continue
			}
			if err := f(c, a); err != nil {
				return err
			}
		}
		return nil
	}
}
