package topology

import (
	"errors"
	"net"
	"testing"
)

func TestDefaultIsValid(t *testing.T) {
	topo, err := Default()
	if err != nil {
		t.Fatalf("default topology: %v", err)
	}
	if got := topo.NamespacesWithRole(RoleVM); len(got) != 1 || got[0] != "vm1" {
		t.Errorf("vm namespaces = %v, want [vm1]", got)
	}
	if topo.Links[1].Endpoints[0].MAC != "00:11:22:33:44:55" {
		t.Errorf("vm1 MAC = %q", topo.Links[1].Endpoints[0].MAC)
	}
	// Derived MACs are filled in for the bridge-side ports and are unicast, local.
	port := topo.Links[1].Endpoints[1].MAC
	hw, err := net.ParseMAC(port)
	if err != nil || len(hw) != 6 || hw[0]&0x03 != 0x02 {
		t.Fatalf("bridge port MAC %q is not a derived (locally administered unicast) MAC", port)
	}
}

func TestPositionedError(t *testing.T) {
	src := `name: t
namespaces:
  - name: a
    role: vm
  - name: b
    role: bridge
bridges:
  - name: br0
    namespace: b
links:
  - endpoints:
      - namespace: a
        name: eth0
        mac: "01:00:5e:00:00:01"
      - namespace: b
        name: p0
        bridge: br0
`
	_, err := Parse("x.yaml", []byte(src))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Line != 14 || e.Column != 14 || e.Field != "links[0].endpoints[0].mac" {
		t.Fatalf("got %s (line %d col %d field %q)", err, e.Line, e.Column, e.Field)
	}
}

func TestPrefixChangesDerivedMACs(t *testing.T) {
	a, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Default(WithPrefix("lab2-"))
	if err != nil {
		t.Fatal(err)
	}
	if b.NSName("vm1") != "lab2-vm1" {
		t.Fatalf("prefix not applied: %s", b.NSName("vm1"))
	}
	// Explicit MACs stay, derived ones differ between the two networks.
	if a.Links[1].Endpoints[0].MAC != b.Links[1].Endpoints[0].MAC {
		t.Error("an explicit MAC changed with the prefix")
	}
	if a.Links[1].Endpoints[1].MAC == b.Links[1].Endpoints[1].MAC {
		t.Error("two networks under different prefixes derive the same MAC")
	}
}
