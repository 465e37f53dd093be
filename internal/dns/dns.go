// Package dns is the network's name server: it answers for the network's
// zone (the names of its namespaces, VMs and declared hosts, A, AAAA and
// PTR) and forwards other questions to upstream resolvers, as libvirt's
// dnsmasq does for its networks. The supervisor runs one per declared
// server, inside the server's namespace (server_linux.go); this file is the
// message logic, which needs no network.
package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// Names returns the zone's names at the time of a question: relative
// lowercase names ("vm1", "files.nas") and their addresses. The supervisor
// merges the topology's static names with the VMs' DHCP leases.
type Names func() map[string][]netip.Addr

// Stats counts what a server has answered.
type Stats struct {
	Queries   uint64 `json:"queries"`
	Answered  uint64 `json:"answered"`  // from the zone, with records
	NoData    uint64 `json:"no_data"`   // a zone name without records of the type asked
	NXDomain  uint64 `json:"nxdomain"`  // a zone name that does not exist
	Forwarded uint64 `json:"forwarded"` // relayed to an upstream resolver
	Refused   uint64 `json:"refused"`   // outside the zone, no upstream
	Failed    uint64 `json:"failed"`    // malformed, or no upstream answered
	Dropped   uint64 `json:"dropped"`   // over the server's bounds (questions, TCP connections)
}

// outcome is what answer decided for a question.
type outcome int

const (
	outAnswered outcome = iota
	outNoData
	outNXDomain
	outForward
	outRefused
	outFailed
)

// zone is what answer needs to know.
type zone struct {
	domain  string // "lab", lowercase, no trailing dot
	ttl     uint32
	forward bool // upstream resolvers are configured
	names   Names
}

// answer builds the reply to the DNS message q, or says to forward it.
func (z *zone) answer(q []byte) ([]byte, outcome) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil, outFailed // not even a header: drop
	}
	reply := func(rcode dnsmessage.RCode, auth bool) dnsmessage.Header {
		return dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, Authoritative: auth,
			RecursionDesired: h.RecursionDesired, RecursionAvailable: z.forward, RCode: rcode}
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return build(reply(dnsmessage.RCodeFormatError, false), qs, nil, nil), outFailed
	}
	question := qs[0]
	if h.OpCode != 0 {
		return build(reply(dnsmessage.RCodeNotImplemented, false), qs, nil, nil), outFailed
	}
	name := strings.TrimSuffix(strings.ToLower(question.Name.String()), ".")
	names := z.names()
	// Reverse lookups of the zone's addresses.
	if addr, ok := reverseAddr(name); ok && question.Type == dnsmessage.TypePTR {
		var owners []string
		for n, addrs := range names {
			if slices.Contains(addrs, addr) {
				owners = append(owners, n)
			}
		}
		if len(owners) > 0 {
			slices.Sort(owners)
			var rrs []dnsmessage.Resource
			for _, o := range owners {
				rrs = append(rrs, dnsmessage.Resource{
					Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: z.ttl},
					Body:   &dnsmessage.PTRResource{PTR: mustName(o + "." + z.domain + ".")}})
			}
			return build(reply(dnsmessage.RCodeSuccess, true), qs, rrs, nil), outAnswered
		}
	}
	rel, inZone := strings.CutSuffix(name, "."+z.domain)
	if name == z.domain {
		rel, inZone = "", true
	}
	if !inZone {
		if z.forward {
			return nil, outForward
		}
		return build(reply(dnsmessage.RCodeRefused, false), qs, nil, nil), outRefused
	}
	soa := []dnsmessage.Resource{z.soa()}
	if rel == "" {
		if question.Type == dnsmessage.TypeSOA {
			return build(reply(dnsmessage.RCodeSuccess, true), qs, soa, nil), outAnswered
		}
		return build(reply(dnsmessage.RCodeSuccess, true), qs, nil, soa), outNoData
	}
	addrs, ok := names[rel]
	if !ok {
		return build(reply(dnsmessage.RCodeNameError, true), qs, nil, soa), outNXDomain
	}
	var rrs []dnsmessage.Resource
	for _, a := range addrs {
		hdr := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: z.ttl}
		switch {
		case a.Is4() && (question.Type == dnsmessage.TypeA || question.Type == dnsmessage.TypeALL):
			hdr.Type = dnsmessage.TypeA
			rrs = append(rrs, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: a.As4()}})
		case a.Is6() && !a.Is4In6() && (question.Type == dnsmessage.TypeAAAA || question.Type == dnsmessage.TypeALL):
			hdr.Type = dnsmessage.TypeAAAA
			rrs = append(rrs, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		}
	}
	if len(rrs) == 0 {
		return build(reply(dnsmessage.RCodeSuccess, true), qs, nil, soa), outNoData
	}
	return build(reply(dnsmessage.RCodeSuccess, true), qs, rrs, nil), outAnswered
}

// serverFailure is the reply to q when no upstream answered it: SERVFAIL,
// so that the client gives up (or asks its next server) at once instead of
// waiting out its timeout. nil when q cannot be parsed.
func (z *zone) serverFailure(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil
	}
	return build(dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: z.forward, RCode: dnsmessage.RCodeServerFailure}, qs, nil, nil)
}

// soa is the zone's start of authority, for negative answers (its minimum
// is the TTL of a negative answer).
func (z *zone) soa() dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: mustName(z.domain + "."), Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: z.ttl},
		Body: &dnsmessage.SOAResource{NS: mustName("ns." + z.domain + "."), MBox: mustName("hostmaster." + z.domain + "."),
			Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, MinTTL: z.ttl}}
}

func build(h dnsmessage.Header, qs []dnsmessage.Question, answers, authority []dnsmessage.Resource) []byte {
	m := dnsmessage.Message{Header: h, Questions: qs, Answers: answers, Authorities: authority}
	b, err := m.Pack()
	if err != nil {
		// Only a name over 255 bytes fails to pack; answer without records.
		m.Answers, m.Authorities = nil, nil
		m.Header.RCode = dnsmessage.RCodeServerFailure
		b, _ = m.Pack()
	}
	return b
}

func mustName(s string) dnsmessage.Name {
	n, err := dnsmessage.NewName(s)
	if err != nil {
		n, _ = dnsmessage.NewName(".")
	}
	return n
}

// reverseAddr reads a reverse-lookup name (4.3.2.1.in-addr.arpa, or the 32
// nibbles of ip6.arpa) as an address.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		slices.Reverse(parts)
		a, err := netip.ParseAddr(strings.Join(parts, "."))
		return a, err == nil && a.Is4()
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		nib := strings.Split(rest, ".")
		if len(nib) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, n := range nib {
			if len(n) != 1 {
				return netip.Addr{}, false
			}
			var v byte
			switch c := n[0]; {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			default:
				return netip.Addr{}, false
			}
			pos := 31 - i // nibbles are least significant first
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// Config configures a Server.
type Config struct {
	// Domain is the zone (lowercase, no trailing dot).
	Domain string
	// Listen are the addresses the server answers on (UDP and TCP), Port
	// their port (default 53).
	Listen []netip.Addr
	Port   uint16
	// Forward are the upstream resolvers for names outside the zone, asked
	// in order; none: such questions are refused.
	Forward []netip.AddrPort
	// TTL of the answers (default 60 s: leases change).
	TTL uint32
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Domain == "" {
		return errors.New("dns: no domain")
	}
	if _, err := dnsmessage.NewName(c.Domain + "."); err != nil {
		return fmt.Errorf("dns: domain %q: %w", c.Domain, err)
	}
	if len(c.Listen) == 0 {
		return errors.New("dns: no address to listen on")
	}
	return nil
}
