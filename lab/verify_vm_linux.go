package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/probe"
	"github.com/kvmnet/kvmnet/topology"
)

// vmProbe runs probe p from inside built-in guest vmName, through its
// agent's /ping and /connect endpoints. The agent is reached over HTTP from
// a namespace that has an address on the VM's segment (the probe's "from"
// namespace is the VM's, which holds no address: the guest does).
func vmProbe(ctx context.Context, t *topology.Topology, vmName string, p probe.Probe, addrs map[string]netip.Addr, opts ...Option) probe.Result {
	r := probe.Result{Probe: p}
	start := time.Now()
	defer func() { r.Elapsed = time.Since(start) }()
	guestIP, vantage, err := vmVantage(ctx, t, vmName, opts...)
	if err != nil {
		r.Err, r.Detail = err, "error: "+err.Error()
		r.OK = false
		return r
	}
	path := "/ping?c=2&to=" + url.QueryEscape(p.To)
	if p.Proto == "tcp" {
		path = "/connect?to=" + url.QueryEscape(p.To)
	}
	ns, err := netns.Open(vantage)
	if err != nil {
		r.Err, r.Detail = err, "error: "+err.Error()
		return r
	}
	defer ns.Close()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(ns, func() error {
				var err error
				c, err = net.DialTimeout(network, addr, 3*time.Second)
				return err
			})
			return c, err
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + net.JoinHostPort(guestIP.String(), "80") + path)
	if err != nil {
		r.Err, r.Detail = err, "error: the VM's agent did not answer: "+err.Error()
		return r
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	r.Detail = "from the guest: " + strings.TrimSpace(string(body))
	switch resp.StatusCode {
	case http.StatusOK:
		r.Reachable = true
	case http.StatusBadGateway:
	default:
		r.Err = fmt.Errorf("agent answered %s", resp.Status)
	}
	want := p.Expect
	if want == "" {
		want = probe.Reachable
	}
	r.OK = r.Err == nil && (r.Reachable == (want == probe.Reachable))
	return r
}

// vmVantage finds the running guest's address and a namespace of t with an
// address in the same subnet, to talk to its agent from.
func vmVantage(ctx context.Context, t *topology.Topology, vmName string, opts ...Option) (netip.Addr, string, error) {
	st, err := VMStatus(ctx, t, opts...)
	if err != nil {
		return netip.Addr{}, "", err
	}
	var guest netip.Prefix
	for _, v := range st.VMs {
		if v.Name == vmName {
			for _, a := range v.Addresses {
				if a.Addr.Addr().Is4() {
					guest = a.Addr
					break
				}
			}
		}
	}
	if !guest.IsValid() {
		return netip.Addr{}, "", fmt.Errorf("VM %q is not running or has no IPv4 address yet", vmName)
	}
	found := ""
	t.EachAddress(func(ns, a string) {
		if p, err := netip.ParsePrefix(a); err == nil && found == "" && p.Masked() == guest.Masked() && p.Addr() != guest.Addr() {
			found = t.NSName(ns)
		}
	})
	if found == "" {
		return netip.Addr{}, "", fmt.Errorf("no namespace has an address in %s to reach VM %q's agent from", guest.Masked(), vmName)
	}
	return guest.Addr(), found, nil
}
