// Command phases times the stages of a no-op `kvmnet up` in one process,
// each repeated -n times (median and minimum wall time, median CPU time of
// the process): load (read, decode, validate the topology), desired (the
// model with nftables canonical forms, as lab builds it, without VM wiring),
// observe (every namespace of the network), diff (must plan nothing),
// nsdo (netns.Open and an empty netns.Do per namespace of the prefix: the cost
// of the namespace switches alone) and lab.Plan (desired, observe and diff
// through the public API). Used for docs/benchmarks.md; run it as root on a
// network that is up:
//
//	go run ./internal/bench/gen -n 500 > /tmp/b500.yaml
//	kvmnet -f /tmp/b500.yaml --prefix kvp- up
//	go run ./internal/bench/phases -f /tmp/b500.yaml -prefix kvp- -n 10 [-only observe] [-workers 2] [-cpuprofile F]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/observe"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/lab"
	"github.com/kvmnet/kvmnet/topology"
)

func main() {
	file := flag.String("f", "", "topology file")
	prefix := flag.String("prefix", "", "namespace prefix")
	n := flag.Int("n", 5, "repetitions")
	only := flag.String("only", "", "time only this stage (and those it needs)")
	workers := flag.Int("workers", observe.Workers, "observation workers")
	prof := flag.String("cpuprofile", "", "write a CPU profile")
	flag.Parse()
	observe.Workers = *workers
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	times := map[string][]time.Duration{}
	cpus := map[string][]time.Duration{}
	timed := func(name string, f func() error) {
		needs := map[string]bool{"load": true, "desired": true, *only: true, "observe": *only == "diff" || *only == "observe"}
		if *only != "" && !needs[name] {
			return
		}
		t0, c0 := time.Now(), cpuTime()
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, name+":", err)
			os.Exit(1)
		}
		times[name] = append(times[name], time.Since(t0))
		cpus[name] = append(cpus[name], cpuTime()-c0)
	}
	for range *n {
		var t *topology.Topology
		timed("load", func() (err error) { t, err = topology.Load(*file, topology.WithPrefix(*prefix)); return err })
		var desired *model.State
		timed("desired", func() error {
			desired = model.Desired(t)
			for _, ns := range desired.Namespaces {
				ns.NFT = nft.Canonical(nft.Table{Masquerade: ns.Masquerade, Firewall: ns.Firewall, Guards: ns.Guards})
			}
			return nil
		})
		var obs *model.State
		timed("observe", func() (err error) { obs, err = observe.Network(desired, t.Prefix, false); return err })
		timed("diff", func() error {
			steps, err := plan.Diff(desired, obs)
			if err == nil && len(steps) > 0 {
				err = fmt.Errorf("%d steps", len(steps))
			}
			return err
		})
		timed("nsdo", func() error {
			names, err := netns.List()
			if err != nil {
				return err
			}
			for _, n := range names {
				if !strings.HasPrefix(n, t.Prefix) {
					continue
				}
				ns, err := netns.Open(n)
				if err != nil {
					return err
				}
				err = netns.Do(ns, func() error { return nil })
				ns.Close()
				if err != nil {
					return err
				}
			}
			return nil
		})
		timed("lab.Plan", func() error { _, err := lab.Plan(context.Background(), t); return err })
	}
	for _, k := range []string{"load", "desired", "observe", "diff", "nsdo", "lab.Plan"} {
		d := times[k]
		if len(d) == 0 {
			continue
		}
		c := cpus[k]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
		fmt.Printf("%-9s median %7.1f ms  min %7.1f ms  (CPU median %7.1f ms)\n", k, ms(d[len(d)/2]), ms(d[0]), ms(c[len(c)/2]))
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
