package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/topology"
)

// Probes turns the topology's expect section into probes: a `to` that names
// a namespace probes that namespace's first declared address (a VM: its
// guest's address, as VMStatus reports it).
func Probes(t *topology.Topology) ([]probe.Probe, error) {
	return probes(context.Background(), t)
}

func probes(ctx context.Context, t *topology.Topology, opts ...Option) ([]probe.Probe, error) {
	first := map[string]netip.Addr{}
	visit := func(ns string, addrs []string) {
		if _, ok := first[ns]; ok {
			return
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a); err == nil {
				first[ns] = p.Addr()
				return
			}
		}
	}
	for _, l := range t.Links {
		for _, e := range l.Endpoints {
			visit(e.Namespace, e.Addresses)
		}
	}
	for _, b := range t.Bridges {
		visit(b.Namespace, b.Addresses)
	}
	for _, v := range t.VLANs {
		visit(v.Namespace, v.Addresses)
	}
	if u := t.Uplink; u != nil {
		visit(u.Namespace, u.Addresses)
		if u.Peer != nil {
			visit(u.Peer.Namespace, u.Peer.Addresses)
		}
	}
	if len(t.VMs) > 0 {
		if st, err := VMStatus(ctx, t, opts...); err == nil {
			for _, v := range st.VMs {
				for _, a := range v.Addresses {
					if a.Addr.Addr().Is4() {
						if _, ok := first[v.Name]; !ok {
							first[v.Name] = a.Addr.Addr()
						}
					}
				}
			}
		}
	}
	var out []probe.Probe
	for i, x := range t.Expect {
		to := x.To
		if a, ok := first[x.To]; ok && t.VM(x.To) != nil {
			to = a.String()
		} else if t.Namespace(x.To) != nil {
			a, ok := first[x.To]
			if !ok {
				return nil, fmt.Errorf("expect[%d]: namespace %q has no address to probe", i, x.To)
			}
			to = a.String()
		}
		proto := x.Proto
		if proto == "" {
			proto = "icmp"
		}
		if proto == "tcp" || proto == "udp" {
			to = net.JoinHostPort(to, strconv.Itoa(x.Port))
		}
		name := x.Name
		if name == "" {
			name = fmt.Sprintf("%s -> %s %s", x.From, proto, x.To)
			if x.Port != 0 {
				name += ":" + strconv.Itoa(x.Port)
			}
		}
		out = append(out, probe.Probe{Name: name, FromNS: t.NSName(x.From), To: to, Proto: proto, Expect: x.Expect})
	}
	return out, nil
}

// Verify runs the topology's expectations as real probes from inside the
// namespaces (or, for a probe from a built-in VM, from inside its guest
// through the agent) and returns the results (OK false where the network
// differs).
func Verify(ctx context.Context, t *topology.Topology, opts ...Option) ([]probe.Result, error) {
	ps, err := probes(ctx, t, opts...)
	if err != nil {
		return nil, err
	}
	var plain []probe.Probe
	var at []int
	results := make([]probe.Result, len(ps))
	for i, x := range t.Expect {
		if v := t.VM(x.From); v != nil && v.Boot == nil {
			results[i] = vmProbe(ctx, t, x.From, ps[i], nil, opts...)
			continue
		}
		plain, at = append(plain, ps[i]), append(at, i)
	}
	for k, r := range probe.Run(ctx, plain) {
		results[at[k]] = r
	}
	return results, nil
}
