package lab

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/observe"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// kvmnet up reads the kernel while the topology loads (StartEarly): a
// first build and a no-op through it, the same observation as a plain one,
// nothing held after Cancel.
func TestEarlyObservation(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	dir := stateDir(t)

	// Before the network exists: Start lists none of its namespaces, Finish
	// finds them missing and up builds them.
	res := up(t, topo, WithEarly(StartEarly(dir, topo.Prefix)))
	if len(res.Steps) == 0 {
		t.Fatal("first build through an early observation planned nothing")
	}
	ping(t, topo, "vm1", "192.168.1.1")

	// On the built network: no change, no write.
	if res := up(t, topo, WithEarly(StartEarly(dir, topo.Prefix))); res.Writes != 0 || len(res.Steps) != 0 {
		t.Fatalf("no-op through an early observation: %d writes, steps %v", res.Writes, res.Steps)
	}

	// It observes what a plain observation does.
	desired := desiredState(topo)
	plain, err := observe.Network(desired, topo.Prefix, false)
	if err != nil {
		t.Fatal(err)
	}
	e := observe.Start(topo.Prefix)
	e.Wait()
	early, err := e.Finish(desired, topo.Prefix, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(early.Namespaces) != 3 || !reflect.DeepEqual(plain, early) {
		t.Fatalf("early observation differs from a plain one:\nplain %+v\nearly %+v", plain.Namespaces, early.Namespaces)
	}
	if steps, err := plan.Diff(desired, early); err != nil || len(steps) != 0 {
		t.Fatalf("diff against the early observation: %v %v", steps, err)
	}

	// Cancelled after its reads, it closes every namespace and socket it held.
	fds := openFDs(t)
	e = observe.Start(topo.Prefix)
	e.Wait()
	held := openFDs(t)
	e.Cancel()
	if after := openFDs(t); after != fds || held < fds+6 {
		t.Fatalf("descriptors: %d before, %d while 3 namespaces waited, %d after Cancel", fds, held, after)
	}
}

// What an early observation read is not used when another kvmnet command
// held a lock in the state directory after it began: that command may have
// changed the network, and a plan from the old reads would say "up to date".
func TestEarlyObservationStale(t *testing.T) {
	topo := fixture(t, string(topology.DefaultYAML()))
	dir := stateDir(t)
	up(t, topo)

	early := StartEarly(dir, topo.Prefix)
	early.obs.Wait() // vm1 read with 192.168.1.100

	// Another command moves vm1 to .101 meanwhile.
	edited := fixtureWithPrefix(t, string(topology.DefaultYAML()), topo.Prefix)
	edited.Links[1].Endpoints[0].Addresses = []string{"192.168.1.101/24"}
	up(t, edited)

	res := up(t, topo, WithEarly(early))
	if len(res.Steps) == 0 {
		t.Fatal("up planned nothing from reads that predate another command's change")
	}
	addr := inNS(t, topo, "vm1", "ip", "-o", "-4", "addr", "show", "eth0")
	if !strings.Contains(addr, "192.168.1.100/24") || strings.Contains(addr, "192.168.1.101/") {
		t.Fatalf("vm1 not back on 192.168.1.100:\n%s", addr)
	}
}

// fixtureWithPrefix loads src under an existing test prefix (a second
// topology of the same network).
func fixtureWithPrefix(t *testing.T, src, prefix string) *topology.Topology {
	t.Helper()
	topo, err := topology.Parse("test.yaml", []byte(src), topology.WithPrefix(prefix))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return topo
}

func openFDs(t *testing.T) int {
	t.Helper()
	testutil.RequireRoot(t)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
