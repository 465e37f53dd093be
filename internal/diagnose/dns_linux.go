package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kvmnet/kvmnet/internal/dns"
	"github.com/kvmnet/kvmnet/internal/supervise"
)

// askDNS asks the name server srv at address at, from namespace kname, for
// the A records of node's own name in the zone.
func (d *diag) askDNS(kname, node string, srv *supervise.DNSHealth, at netip.Addr) *DNSProbe {
	q := &DNSProbe{Server: netip.AddrPortFrom(at, 53), Name: strings.ToLower(node) + "." + srv.Domain, Of: srv, Want: []netip.Addr{}}
	for _, a := range d.t.DNSNames()[strings.ToLower(node)] {
		if a.Is4() {
			q.Want = append(q.Want, a)
		}
	}
	slices.SortFunc(q.Want, func(a, b netip.Addr) int { return a.Compare(b) })
	ans, err := dns.Query(kname, q.Server, q.Name, dnsmessage.TypeA, time.Second)
	if err != nil {
		q.Error = err.Error()
		return q
	}
	q.RCode, q.Addrs = ans.RCode, ans.Addrs
	return q
}
