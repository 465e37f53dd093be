package plan_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/topology"
)

var update = flag.Bool("update", false, "rewrite golden files")

func reference(t *testing.T) *model.State {
	t.Helper()
	topo, err := topology.Default()
	if err != nil {
		t.Fatal(err)
	}
	return model.Desired(topo)
}

func empty(id string) *model.State {
	return &model.State{Network: id, Namespaces: map[string]*model.Namespace{}}
}

// clone deep-copies a state the way observing a perfect kernel would return it.
func clone(s *model.State) *model.State {
	out := empty(s.Network)
	for name, ns := range s.Namespaces {
		c := &model.Namespace{Name: name, Owner: ns.Owner, Marks: model.Marks{model.AspectSysctl: model.SysctlHash(ns.Sysctls)}, Sysctls: map[string]string{}, Links: map[string]*model.Link{}, Routes: map[string]*model.Route{}}
		for k, v := range ns.Sysctls {
			c.Sysctls[k] = v
		}
		for k, l := range ns.Links {
			cl := *l
			cl.Addrs = append(cl.Addrs[:0:0], l.Addrs...)
			if l.Bridge != nil {
				b := *l.Bridge
				cl.Bridge = &b
			}
			c.Links[k] = &cl
		}
		for k, r := range ns.Routes {
			cr := *r
			c.Routes[k] = &cr
		}
		if ns.Masquerade != nil {
			c.Masquerade = append([]model.Masquerade{}, ns.Masquerade...)
		}
		out.Namespaces[name] = c
	}
	return out
}

func render(steps []plan.Step) string {
	var b strings.Builder
	for _, s := range steps {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got):\n%s", name, diff)
	}
}

func TestBuildFromNothing(t *testing.T) {
	want := reference(t)
	steps, err := plan.Diff(want, empty(want.Network))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "reference-up.golden", render(steps))
	// Ordering invariants: namespaces first, sysctls before links, bridges
	// before the veths that join them, addresses and routes after links.
	rank := map[plan.Op]int{plan.OpCreateNS: 0, plan.OpSysctl: 1, plan.OpMark: 1, plan.OpCreateLink: 2, plan.OpAddAddr: 3, plan.OpAddRoute: 4}
	last := -1
	for _, s := range steps {
		r := rank[s.Op]
		if r < last {
			t.Fatalf("step %q out of order", s)
		}
		last = r
	}
}

func TestNoChangesWhenInSync(t *testing.T) {
	want := reference(t)
	steps, err := plan.Diff(want, clone(want))
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 0 {
		t.Fatalf("in-sync network planned %d steps:\n%s", len(steps), render(steps))
	}
}

func TestDownDeletesOnlyNamespaces(t *testing.T) {
	want := reference(t)
	steps, err := plan.Diff(empty(want.Network), clone(want))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "reference-down.golden", render(steps))
	for _, s := range steps {
		if s.Op != plan.OpDeleteNS {
			t.Errorf("down planned %q; deleting the namespaces removes everything in them", s)
		}
	}
}

func TestEdits(t *testing.T) {
	want := reference(t)
	have := clone(want)
	vm := want.Namespaces["vm1"]
	vm.Links["eth0"].MTU = 9000
	vm.Links["eth0"].MAC = "02:00:00:00:00:01"
	vm.Links["eth0"].Addrs[0] = netipMust("192.168.1.101/24")
	delete(vm.Routes, "10.0.0.0/24 metric 0")
	want.Namespaces["bridge"].Links["br0"].Bridge.STP = true
	steps, err := plan.Diff(want, have)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "reference-edit.golden", render(steps))
	for _, s := range steps {
		if s.Op == plan.OpCreateLink || s.Op == plan.OpDeleteLink {
			t.Errorf("an attribute edit recreates a link: %q", s)
		}
	}
}

func TestRemovedNamespaceDeletesItsBridgePort(t *testing.T) {
	have := clone(reference(t))
	want := clone(have)
	delete(want.Namespaces, "vm1")
	delete(want.Namespaces["bridge"].Links, "vm1")
	steps, err := plan.Diff(want, have)
	if err != nil {
		t.Fatal(err)
	}
	if got := render(steps); got != "- bridge: veth vm1\n- namespace vm1 (and everything in it)\n" {
		t.Fatalf("got:\n%s", got)
	}
}

func TestBrokenVethIsRecreated(t *testing.T) {
	want := reference(t)
	have := clone(want)
	delete(have.Namespaces["vm1"].Links, "eth0") // someone deleted one end
	steps, err := plan.Diff(want, have)
	if err != nil {
		t.Fatal(err)
	}
	if got := render(steps); !strings.Contains(got, "- bridge: veth vm1") || !strings.Contains(got, "+ bridge: veth vm1 <-> vm1/eth0") {
		t.Fatalf("a half-deleted pair is not replaced:\n%s", got)
	}
}

func TestConflicts(t *testing.T) {
	want := reference(t)
	have := clone(want)
	have.Namespaces["vm1"] = &model.Namespace{Name: "vm1"} // not ours
	have.Namespaces["host"].Links["eth0"].Owner = ""       // a foreign link with our name
	_, err := plan.Diff(want, have)
	var ce *plan.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, plan.ErrConflict) {
		t.Fatalf("got %v, want conflicts", err)
	}
	for _, want := range []string{`namespace "vm1" already exists and was not created by kvmnet`, `interface "eth0" in namespace "host" already exists`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// A namespace owned by another kvmnet network is a conflict too, and named.
	have = clone(want)
	have.Namespaces["vm1"].Owner = "other"
	if _, err := plan.Diff(want, have); err == nil || !strings.Contains(err.Error(), `network "other"`) {
		t.Fatalf("got %v", err)
	}
}

func TestForeignLinksAreLeftAlone(t *testing.T) {
	want := reference(t)
	have := clone(want)
	have.Namespaces["vm1"].Links["dummy0"] = &model.Link{Name: "dummy0", Kind: model.KindOther}
	steps, err := plan.Diff(want, have)
	if err != nil || len(steps) != 0 {
		t.Fatalf("foreign link caused %v %v", err, steps)
	}
	// and down does not delete it one by one either (lab refuses down then).
	steps, _ = plan.Diff(empty(want.Network), have)
	for _, s := range steps {
		if s.Link != nil && s.Link.Name == "dummy0" {
			t.Fatalf("down touches a foreign link: %q", s)
		}
	}
}

func TestInverses(t *testing.T) {
	want := reference(t)
	steps, err := plan.Diff(want, empty(want.Network))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		inv, err := s.Inverse()
		if s.Op == plan.OpSysctl {
			if !errors.Is(err, plan.ErrIrreversible) {
				t.Errorf("sysctl with no old value: inverse %v, %v", inv, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if s.Op == plan.OpCreateNS {
			if inv.Op != plan.OpDeleteNS {
				t.Errorf("inverse of %q is %q", s, inv)
			}
			continue // a deleted namespace cannot be restored with its contents
		}
		back, err := inv.Inverse()
		if err != nil {
			t.Fatalf("inverse of %q: %v", inv, err)
		}
		if back.String() != s.String() {
			t.Errorf("inverse of inverse of %q is %q", s, back)
		}
	}
}
