// Package lab runs kvmnet's one pipeline on a topology: observe the kernel,
// diff against the desired state, apply the plan with rollback, and verify
// by observing again. Up, Down, Plan and Status are views of that walk.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kvmnet/kvmnet/internal/apply"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/observe"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/state"
	"github.com/kvmnet/kvmnet/topology"
)

// Option configures a call.
type Option func(*options)

type options struct {
	log         *slog.Logger
	stateDir    string
	moveHostNIC bool
	force       bool
	deep        bool
	beforeStep  func(plan.Step) error
	vm          vmOptions // VMs and DHCP (vms_linux.go)
	early       *Early
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStateDir sets the state directory (default /var/lib/kvmnet).
func WithStateDir(dir string) Option { return func(o *options) { o.stateDir = dir } }

// WithMoveHostNIC allows moving a real NIC named by the uplink into the
// network (and back on down). Without it such a plan is refused.
func WithMoveHostNIC(allow bool) Option { return func(o *options) { o.moveHostNIC = allow } }

// WithForce lets Down delete namespaces that hold interfaces kvmnet did not
// create (they are destroyed with the namespace).
func WithForce(force bool) Option { return func(o *options) { o.force = force } }

// WithDeep makes Up and Plan read every sysctl back from /proc/sys instead of
// trusting the namespace mark that records the sysctls kvmnet applied (a
// sysctl changed by hand behind kvmnet's back is then found and reset).
// Status always reads deeply.
func WithDeep(deep bool) Option { return func(o *options) { o.deep = deep } }

func build(opts []Option) *options {
	o := &options{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, f := range opts {
		f(o)
	}
	return o
}

// Early is an observation of the kernel begun before the topology is loaded
// (StartEarly): kvmnet up reads the namespaces while it parses and validates
// the file, on the core that would otherwise idle.
type Early struct {
	obs *observe.Early
	gen uint64 // the state directory's generation before the first read
}

// StartEarly begins observing the namespaces whose names start with prefix
// (all of them when it is empty), for a network whose state is kept in
// stateDir. Give it to Up with WithEarly, or Cancel it.
func StartEarly(stateDir, prefix string) *Early {
	gen := state.Generation(stateDir)
	return &Early{obs: observe.Start(prefix), gen: gen}
}

// Cancel abandons the observation (a no-op once Up has used it).
func (e *Early) Cancel() {
	if e != nil {
		e.obs.Cancel()
	}
}

// WithEarly gives Up or Plan an observation begun by StartEarly. Up uses
// what it read only if no kvmnet command held a network's lock in the state
// directory since it began (state.Generation is unchanged once Up holds
// its own lock): otherwise it observes afresh.
func WithEarly(e *Early) Option { return func(o *options) { o.early = e } }

// Result reports what a command did.
type Result struct {
	Network string      `json:"network"`
	Steps   []plan.Step `json:"steps"`
	// Writes counts kernel writes (0 for an up-to-date network).
	Writes   int           `json:"writes"`
	Duration time.Duration `json:"duration_ns"`
	// VMs is what up and down did to the VMs and the supervisor (vms_linux.go).
	VMs *VMReport `json:"vms,omitempty"`
}

// Summary is a one-line account of a result.
func (r *Result) Summary(verb string) string {
	if len(r.Steps) == 0 {
		return fmt.Sprintf("%s %s: up to date, 0 changes, %d kernel writes (%s)", verb, r.Network, r.Writes, r.Duration.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s %s: %d changes, %d kernel writes (%s)", verb, r.Network, len(r.Steps), r.Writes, r.Duration.Round(time.Millisecond))
}

// Plan returns the steps Up would take, without changing anything.
//
// Plan takes no lock: an early observation (WithEarly) is as current as its
// own would be, and is used as it is.
func Plan(ctx context.Context, t *topology.Topology, opts ...Option) ([]plan.Step, error) {
	o := build(opts)
	desired := desiredState(t)
	observed, err := o.observe(desired, t.Prefix, false)
	if err != nil {
		return nil, err
	}
	return plan.Diff(desired, observed)
}

// Up makes the kernel match t: it plans, refuses plans that would move a real
// NIC without the opt-in, applies with rollback, then observes again and
// rolls back if the network does not match (verify).
func Up(ctx context.Context, t *topology.Topology, opts ...Option) (*Result, error) {
	o := build(opts)
	defer o.early.Cancel()
	start := time.Now()
	// VMs and DHCP (vms_linux.go): the per-VM bridges are part of the
	// network; VMs no longer declared stop first; the supervisor and the
	// VMs follow a successful build.
	desired := desiredState(t)
	rep, err := vmsBeforeUp(ctx, o, t)
	if err != nil {
		return nil, err
	}
	res, err := run(ctx, o, "up", t.ID(), desired, t.Prefix, start)
	if err == nil {
		err = vmsAfterUp(ctx, o, t, res, rep)
	}
	return res, err
}

// Down removes everything network t owns and nothing else.
func Down(ctx context.Context, t *topology.Topology, opts ...Option) (*Result, error) {
	return DownID(ctx, t.ID(), t.Prefix, opts...)
}

// DownID removes everything owned by network id, looking for its namespaces
// among those whose names start with prefix.
func DownID(ctx context.Context, id, prefix string, opts ...Option) (*Result, error) {
	o := build(opts)
	empty := &model.State{Network: id, Namespaces: map[string]*model.Namespace{}}
	// VMs and the supervisor stop before the namespaces go (vms_linux.go).
	rep, err := vmsDown(ctx, o, id)
	if err != nil {
		return &Result{Network: id, VMs: rep}, err
	}
	res, err := run(ctx, o, "down", id, empty, prefix, time.Now())
	if res != nil {
		res.VMs = rep
	}
	return res, err
}

func run(ctx context.Context, o *options, verb, id string, desired *model.State, prefix string, start time.Time) (*Result, error) {
	store, err := state.Open(o.stateDir, id)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if err := store.Lock(30 * time.Second); err != nil {
		return nil, err
	}
	// Injected faults (kvmnet link, kvmnet qos) may hide behind the aspect
	// marks: an up after them reads everything back.
	if faults, _ := readFaults(store); len(faults) > 0 && verb == "up" {
		o.deep = true
	}
	observed, err := o.observe(desired, prefix, true)
	if err != nil {
		return nil, err
	}
	if verb == "down" && !o.force {
		if err := foreignInside(observed, id); err != nil {
			return nil, err
		}
	}
	steps, err := plan.Diff(desired, observed)
	if err != nil {
		return nil, err
	}
	res := &Result{Network: id, Steps: steps}
	if len(steps) == 0 {
		res.Duration = time.Since(start)
		return res, nil
	}
	for _, s := range steps {
		if (s.Op == plan.OpMoveDevice || s.Op == plan.OpReturnDevice) && !o.moveHostNIC && verb == "up" && s.Op == plan.OpMoveDevice {
			return nil, fmt.Errorf("%s: %w", s.String(), apply.ErrDeviceMoveRefused)
		}
	}
	if verb == "up" {
		if err := preflight(steps); err != nil {
			return nil, err
		}
	}
	ex := &apply.Executor{
		Network:    id,
		BeforeStep: o.beforeStep,
		AfterStep: func(s plan.Step, err error) {
			e := state.Entry{Command: verb, Op: string(s.Op), Target: s.Target(), Change: s.String()}
			if err != nil {
				e.Error = err.Error()
				o.log.Error("step failed", "step", s.String(), "err", err)
			} else {
				o.log.Debug("step", "step", s.String())
			}
			_ = store.Record(e)
		},
	}
	ex.Tables = tableStore{dir: filepath.Join(store.Dir, "nft")}
	if o.moveHostNIC || verb == "down" {
		ex.Devices = hostDevices{dir: filepath.Join(store.Dir, "devices")}
	}
	defer ex.Close()
	if err := ex.Apply(steps); err != nil {
		res.Writes = ex.Writes()
		return res, err
	}
	// Verify: the kernel must now match exactly.
	again, err := observe.Network(desired, prefix, observe.Deep(o.deep))
	if err == nil {
		var rest []plan.Step
		rest, err = plan.Diff(desired, again)
		if err == nil && len(rest) > 0 {
			lines := make([]string, len(rest))
			for i, s := range rest {
				lines[i] = s.String()
			}
			err = fmt.Errorf("verify: after applying, the kernel still differs:\n  %s", strings.Join(lines, "\n  "))
		}
	}
	res.Writes = ex.Writes()
	res.Duration = time.Since(start)
	if err == nil && verb == "up" {
		_ = writeFaults(store, nil) // up repaired every injected fault
	}
	if err == nil && verb == "down" {
		_ = os.RemoveAll(filepath.Join(store.Dir, "nft")) // no tables left
	}
	if err != nil && verb == "up" {
		created := map[string]bool{}
		for _, s := range steps {
			if s.Op == plan.OpCreateNS {
				created[s.NS] = true
			}
		}
		if rb := ex.Undo(steps, created); rb != nil {
			err = errors.Join(err, fmt.Errorf("rollback: %w", rb))
		}
		return res, err
	}
	return res, err
}

// observe reads the network: through the early observation when the call
// has one (WithEarly) and, for a caller that holds the network's lock, no
// kvmnet command has held a lock in the state directory since it began (a
// caller without the lock, Plan, is as exposed to such a command as its own
// reads would be); afresh otherwise. The early observation is used up.
func (o *options) observe(desired *model.State, prefix string, locked bool) (*model.State, error) {
	e := o.early
	o.early = nil
	if e != nil && (!locked || state.Generation(o.stateDir) == e.gen) {
		return e.obs.Finish(desired, prefix, observe.Deep(o.deep))
	}
	e.Cancel()
	return observe.Network(desired, prefix, observe.Deep(o.deep))
}

// ForeignError says a namespace about to be deleted holds interfaces kvmnet
// did not create.
type ForeignError struct {
	NS     string
	Ifaces []string
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("namespace %q holds interfaces kvmnet did not create (%s); deleting the namespace would destroy them: move them out, or pass --force",
		e.NS, strings.Join(e.Ifaces, ", "))
}

func foreignInside(observed *model.State, id string) error {
	var errs []error
	for _, name := range model.SortedNames(observed.Namespaces) {
		ns := observed.Namespaces[name]
		if ns.Owner != id {
			continue
		}
		var foreign []string
		for _, l := range ns.Links {
			if l.Owner == "" {
				foreign = append(foreign, l.Name)
			}
		}
		if len(foreign) > 0 {
			sort.Strings(foreign)
			errs = append(errs, &ForeignError{NS: name, Ifaces: foreign})
		}
	}
	return errors.Join(errs...)
}

// Observe returns the kernel's view of network t (what kvmnet owns plus any
// conflicting namespaces), for status and diagnose.
func Observe(ctx context.Context, t *topology.Topology) (*model.State, error) {
	return observe.Network(desiredState(t), t.Prefix, true)
}

// withBeforeStep injects a hook run before every kernel step (tests use it
// to fail a chosen step and check the rollback).
func withBeforeStep(f func(plan.Step) error) Option { return func(o *options) { o.beforeStep = f } }

// desiredState is the whole state t asks for: the model, the per-VM
// bridges, and the canonical form of each namespace's nftables tables (the
// form observation reads back, to compare them).
func desiredState(t *topology.Topology) *model.State {
	desired := model.Desired(t)
	addVMWiring(t, desired)
	for _, ns := range desired.Namespaces {
		ns.NFT = nft.Canonical(nft.Table{Masquerade: ns.Masquerade, Firewall: ns.Firewall, Guards: ns.Guards})
	}
	return desired
}
