package lab

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kvmnet/kvmnet/internal/plan"
	"github.com/kvmnet/kvmnet/internal/testutil"
	"github.com/kvmnet/kvmnet/topology"
)

// policyNet is the reference design with a second VM, the reference design's
// hardened firewall on vm1 and a security group on vm2.
const policyNet = `
name: policy
namespaces:
  - {name: host, role: host}
  - {name: bridge, role: bridge}
  - name: vm1
    role: vm
    routes: [{to: default, via: 192.168.1.1}]
    firewall:
      input: drop
      rules:
        - {action: accept, ct_state: [established, related]}
        - {action: accept, proto: tcp, dport: 22}
        - {action: accept, saddr_set: admins}
        - {hook: output, action: accept, daddr: 192.168.1.0/24}
  - {name: vm2, role: vm, routes: [{to: default, via: 192.168.1.1}]}
sets:
  - {name: admins, type: ipv4_addr, elements: [192.168.1.1]}
security_groups:
  - name: web
    ingress:
      - {proto: tcp, port: [80, 443], from: 0.0.0.0/0}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - {namespace: host, name: eth0, addresses: [192.168.1.1/24]}
      - {namespace: bridge, name: host, bridge: br0}
  - endpoints:
      - {namespace: vm1, name: eth0, mac: "00:11:22:33:44:55", addresses: [192.168.1.100/24], guard: {anti_spoof: true}}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [192.168.1.102/24], security_groups: [web]}
      - {namespace: bridge, name: vm2, bridge: br0}
expect:
  - {from: host, to: vm1, proto: tcp, port: 22}
  - {from: vm2, to: vm1, proto: tcp, port: 22}
  - {from: host, to: vm1}
  - {from: vm2, to: vm1, expect: blocked}
  - {from: vm1, to: vm2, proto: tcp, port: 80}
  - {from: vm1, to: vm2, proto: tcp, port: 8080, expect: blocked}
  - {from: vm1, to: vm2, expect: blocked}
`

func TestFirewallSecurityGroupsAndGuards(t *testing.T) {
	testutil.RequireTool(t, "nft")
	topo := fixture(t, policyNet)
	up(t, topo)
	for _, l := range []struct{ ns, addr string }{{"vm1", "192.168.1.100:22"}, {"vm2", "192.168.1.102:80"}, {"vm2", "192.168.1.102:8080"}} {
		tcpEcho(t, topo, l.ns, l.addr)
	}

	// The hardened policy: ssh from anywhere on the segment, everything from
	// the admins set (the host), nothing else in; replies come back.
	tcpRoundTrip(t, topo, "host", "192.168.1.100:22")
	tcpRoundTrip(t, topo, "vm2", "192.168.1.100:22")
	ping(t, topo, "host", "192.168.1.100")
	noPing(t, topo, "vm2", "192.168.1.100")
	ping(t, topo, "vm1", "192.168.1.1") // output to the segment, replies accepted
	// The security group: web ports in, nothing else; vm2's own traffic out.
	tcpRoundTrip(t, topo, "vm1", "192.168.1.102:80")
	noPing(t, topo, "vm1", "192.168.1.102")
	if c, err := dialErr(topo, "vm1", "192.168.1.102:8080"); err == nil {
		c.Close()
		t.Fatal("TCP 8080 reached vm2 through its security group")
	}
	ping(t, topo, "vm2", "192.168.1.1")

	// The same matrix as kvmnet verify sees it.
	results, err := Verify(context.Background(), topo)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("verify: %s: got %s (%s), want %s", r.Probe.Label(), r.Got(), r.Detail, r.Probe.Expect)
		}
	}

	// Dropped traffic is counted, and the ruleset parses again (nft as oracle).
	rules := inNS(t, topo, "vm1", "nft", "list", "ruleset")
	if !strings.Contains(rules, "policy drop") || !strings.Contains(rules, "tcp dport 22") {
		t.Fatalf("vm1 ruleset:\n%s", rules)
	}

	// Anti-spoofing at vm1's bridge port: a second, undeclared source
	// address and a changed MAC are both dropped; the real ones pass.
	testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "addr", "add", "192.168.1.150/24", "dev", "eth0")
	if out, err := testutil.Try("ip", "netns", "exec", topo.NSName("vm1"), "ping", "-c", "1", "-W", "1", "-I", "192.168.1.150", "192.168.1.1"); err == nil {
		t.Fatalf("spoofed source address passed the guard:\n%s", out)
	}
	testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "addr", "del", "192.168.1.150/24", "dev", "eth0")
	ping(t, topo, "vm1", "192.168.1.1")
	testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "link", "set", "eth0", "address", "02:de:ad:be:ef:01")
	testutil.Run(t, "ip", "-n", topo.NSName("vm1"), "neigh", "flush", "all")
	noPing(t, topo, "vm1", "192.168.1.1")
	guards := inNS(t, topo, "bridge", "nft", "list", "table", "bridge", "kvmnet")
	if !strings.Contains(guards, "00:11:22:33:44:55") {
		t.Fatalf("bridge guard table:\n%s", guards)
	}

	// up repairs the MAC (drift) and writes nothing to an unchanged policy.
	res := up(t, topo)
	for _, s := range res.Steps {
		if s.Op == plan.OpFirewall {
			t.Errorf("an unchanged policy was rewritten: %s", s)
		}
	}
	ping(t, topo, "vm1", "192.168.1.1")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("re-applying an unchanged policy wrote %d: %v", again.Writes, again.Steps)
	}

	// A table removed by hand is drift that status (deep) finds and up --deep repairs.
	testutil.Run(t, "ip", "netns", "exec", topo.NSName("vm2"), "nft", "delete", "table", "inet", "kvmnet")
	steps, err := Plan(context.Background(), topo, WithDeep(true))
	if err != nil || len(steps) == 0 || steps[0].Op != plan.OpFirewall {
		t.Fatalf("deep plan after a hand-deleted table: %v %v", err, steps)
	}
	if _, err := Up(context.Background(), topo, testOpts(t, WithDeep(true))...); err != nil {
		t.Fatal(err)
	}
	noPing(t, topo, "vm1", "192.168.1.102")
}

func TestQoSShapes(t *testing.T) {
	testutil.RequireTool(t, "tc")
	topo := fixture(t, `
name: shaped
namespaces:
  - {name: bridge, role: bridge}
  - {name: vm1, role: vm}
  - {name: vm2, role: vm}
bridges:
  - {name: br0, namespace: bridge}
links:
  - endpoints:
      - namespace: vm1
        name: eth0
        addresses: [10.9.0.1/24]
        qos: {egress: {rate: 10mbit, ceil: 20mbit}, ingress: {rate: 5mbit}}
      - {namespace: bridge, name: vm1, bridge: br0}
  - endpoints:
      - {namespace: vm2, name: eth0, addresses: [10.9.0.2/24]}
      - {namespace: bridge, name: vm2, bridge: br0}
`)
	up(t, topo)
	out := testutil.Run(t, "tc", "-n", topo.NSName("vm1"), "class", "show", "dev", "eth0")
	if !strings.Contains(out, "rate 10Mbit ceil 20Mbit") {
		t.Fatalf("vm1/eth0 egress classes:\n%s", out)
	}
	// vm1's ingress is the egress of its link's other end, the bridge port.
	out = testutil.Run(t, "tc", "-n", topo.NSName("bridge"), "class", "show", "dev", "vm1")
	if !strings.Contains(out, "rate 5Mbit") {
		t.Fatalf("bridge/vm1 egress (vm1's ingress) classes:\n%s", out)
	}
	ping(t, topo, "vm1", "10.9.0.2")
	if again := up(t, topo); again.Writes != 0 {
		t.Fatalf("re-applying unchanged QoS wrote %d: %v", again.Writes, again.Steps)
	}
	// Changing the rate is an in-place change of the qdisc alone.
	topo.Links[0].Endpoints[0].QoS.Egress.Rate = "15mbit"
	res := up(t, topo)
	for _, s := range res.Steps {
		if s.Op != plan.OpQoS && s.Op != plan.OpMark {
			t.Errorf("a rate change did more than reshape: %s", s)
		}
	}
	if out := testutil.Run(t, "tc", "-n", topo.NSName("vm1"), "class", "show", "dev", "eth0"); !strings.Contains(out, "rate 15Mbit") {
		t.Fatalf("rate not updated:\n%s", out)
	}
	// Removing QoS removes kvmnet's qdiscs only.
	topo.Links[0].Endpoints[0].QoS = nil
	up(t, topo)
	if out := testutil.Run(t, "tc", "-n", topo.NSName("vm1"), "qdisc", "show", "dev", "eth0"); strings.Contains(out, "htb") {
		t.Fatalf("htb left after removing QoS:\n%s", out)
	}
}

func TestPolicyLint(t *testing.T) {
	topo, err := topology.Parse("lint.yaml", []byte(`
name: lint
namespaces:
  - name: vm1
    firewall:
      input: drop
      rules:
        - {action: accept, ct_state: [new], proto: tcp, dport: 22}
`))
	if err != nil {
		t.Fatal(err)
	}
	w := topo.Lint()
	if len(w) != 1 || !strings.Contains(w[0].Error(), "lint.yaml:8:") || !strings.Contains(w[0].Error(), "established,related") {
		t.Fatalf("lint: %v", w)
	}
}

func TestFirewallEditRollsBack(t *testing.T) {
	testutil.RequireTool(t, "nft")
	topo := fixture(t, policyNet)
	up(t, topo)
	before := inNS(t, topo, "vm1", "nft", "list", "table", "inet", "kvmnet")

	// Edit vm1's firewall (ssh moves to 2222), and make the step right after
	// the table is written fail: the rollback must rebuild the old table.
	edited, err := topology.Parse("test.yaml", []byte(strings.Replace(policyNet, "dport: 22}", "dport: 2222}", 1)), topology.WithPrefix(topo.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	boom := fmt.Errorf("injected after the firewall")
	wrote := false
	_, err = Up(context.Background(), edited, testOpts(t, withBeforeStep(func(s plan.Step) error {
		if s.Op == plan.OpFirewall {
			wrote = true
		}
		if wrote && s.Op == plan.OpMark {
			return boom
		}
		return nil
	}))...)
	if !errors.Is(err, boom) || !wrote {
		t.Fatalf("edit with an injected failure: %v (firewall step seen: %v)", err, wrote)
	}
	if !strings.Contains(err.Error(), "everything this run changed was rolled back") {
		t.Fatalf("rollback incomplete: %v", err)
	}
	if after := inNS(t, topo, "vm1", "nft", "list", "table", "inet", "kvmnet"); after != before {
		t.Fatalf("the old table was not rebuilt:\nbefore\n%s\nafter\n%s", before, after)
	}
	tcpEcho(t, topo, "vm1", "192.168.1.100:22")
	tcpRoundTrip(t, topo, "vm2", "192.168.1.100:22")
	steps, err := Plan(context.Background(), topo, WithDeep(true))
	if err != nil || len(steps) != 0 {
		t.Fatalf("after the rollback the network differs from the original: %v %v", err, steps)
	}
}
