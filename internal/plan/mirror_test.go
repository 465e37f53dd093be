package plan_test

import (
	"testing"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/topology"
)

const mirrored = `
name: m
namespaces:
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: mon, role: endpoint}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: vm1, name: eth0, addresses: [10.0.0.1/24]}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: mon, name: eth0}
      - {namespace: bridge, name: mon0}
mirrors:
  - {name: ids, namespace: bridge, ports: [vm1], direction: ingress, to: mon0}
`

func mirrorSteps(steps []plan.Step) []plan.Step {
	var out []plan.Step
	for _, s := range steps {
		if s.Op == plan.OpMirror || (s.Op == plan.OpMark && s.Key == model.AspectMirror) {
			out = append(out, s)
		}
	}
	return out
}

func TestDiffMirror(t *testing.T) {
	topo, err := topology.Parse("m.yaml", []byte(mirrored))
	if err != nil {
		t.Fatal(err)
	}
	want := model.Desired(topo)
	if m := want.Namespaces["bridge"].Links["vm1"].Mirror; m == nil || *m != (model.Mirror{To: "mon0", Ingress: true}) {
		t.Fatalf("desired mirror of bridge/vm1 = %v", m)
	}

	// From nothing: the mirror is set after both links exist, then marked.
	steps, err := plan.Diff(want, empty("m"))
	if err != nil {
		t.Fatal(err)
	}
	ms := mirrorSteps(steps)
	if len(ms) != 2 || ms[0].Op != plan.OpMirror || ms[0].Link.Name != "vm1" || ms[0].OldMirror != nil || ms[1].Value != model.MirrorHash(want.Namespaces["bridge"]) {
		t.Fatalf("mirror steps from nothing: %v", ms)
	}
	last := -1
	for i, s := range steps {
		if s.Op == plan.OpCreateLink {
			last = i
		}
	}
	for i, s := range steps {
		if s.Op == plan.OpMirror && i < last {
			t.Fatalf("mirror step %d comes before the last link creation %d: %v", i, last, steps)
		}
	}

	// Unchanged: nothing.
	have := clone(want)
	for _, ns := range have.Namespaces {
		ns.Marks[model.AspectMirror] = model.MirrorHash(want.Namespaces[ns.Name])
	}
	if steps, err := plan.Diff(want, have); err != nil || len(steps) != 0 {
		t.Fatalf("unchanged mirror: %v %v", steps, err)
	}

	// The destination recreated (its peer changed): the mirror is rebuilt
	// even though the observed filter looks right.
	have.Namespaces["bridge"].Links["mon0"].Peer = model.PeerRef{NS: "mon", Name: "old0"}
	steps, err = plan.Diff(want, have)
	if err != nil {
		t.Fatal(err)
	}
	if ms := mirrorSteps(steps); len(ms) != 2 || ms[0].Mirror == nil {
		t.Fatalf("destination recreated, mirror steps: %v", ms)
	}

	// Changed direction: one step, its inverse restores the old one.
	have = clone(want)
	have.Namespaces["bridge"].Links["vm1"].Mirror = &model.Mirror{To: "mon0", Ingress: true, Egress: true}
	steps, err = plan.Diff(want, have)
	if err != nil {
		t.Fatal(err)
	}
	ms = mirrorSteps(steps)
	if len(ms) != 2 || ms[0].String() != "~ bridge: mirror of vm1: ingress to mon0 (was ingress+egress to mon0)" {
		t.Fatalf("direction change: %v", ms)
	}
	inv, err := ms[0].Inverse()
	if err != nil || !inv.Mirror.Equal(ms[0].OldMirror) || !inv.OldMirror.Equal(ms[0].Mirror) {
		t.Fatalf("inverse %v %v", inv, err)
	}
}

// A real NIC going back to the root namespace loses kvmnet's mirror first.
func TestDiffUnmirrorsReturnedDevice(t *testing.T) {
	have := empty("m")
	have.Namespaces["host"] = &model.Namespace{Name: "host", Owner: "m", Marks: model.Marks{model.AspectMirror: "x"}, Links: map[string]*model.Link{
		"eth9": {Name: "eth9", Kind: model.KindDevice, Owner: "m", Origin: "eth9", Mirror: &model.Mirror{To: "mon0", Egress: true}},
		"mon0": {Name: "mon0", Kind: model.KindOther, Owner: "m"},
	}}
	steps, err := plan.Diff(empty("m"), have)
	if err != nil {
		t.Fatal(err)
	}
	unmirror, ret := -1, -1
	for i, s := range steps {
		switch s.Op {
		case plan.OpMirror:
			unmirror = i
			if s.Mirror != nil || s.Link.Name != "eth9" {
				t.Fatalf("unmirror step %v", s)
			}
		case plan.OpReturnDevice:
			ret = i
		}
	}
	if unmirror < 0 || ret < 0 || unmirror > ret {
		t.Fatalf("want the mirror removed before the NIC returns: %v", steps)
	}
}
