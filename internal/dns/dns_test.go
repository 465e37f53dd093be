package dns

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	m := dnsmessage.Message{Header: dnsmessage.Header{ID: 0x4b56, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unpack(t *testing.T, b []byte) dnsmessage.Message {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack reply: %v", err)
	}
	return m
}

var testNames = map[string][]netip.Addr{
	"vm1":       {netip.MustParseAddr("192.168.1.100"), netip.MustParseAddr("fd00::100")},
	"host":      {netip.MustParseAddr("192.168.1.1")},
	"files.nas": {netip.MustParseAddr("192.168.1.5")},
}

// The zone's answers: A and AAAA for its names (any case), no data for a
// type a name lacks, NXDOMAIN for a missing name (with the SOA), PTR for
// the zone's addresses (IPv4 and IPv6), and outside the zone REFUSED
// without upstreams or "forward" with them.
func TestAnswer(t *testing.T) {
	z := &zone{domain: "lab", ttl: 60, names: func() map[string][]netip.Addr { return testNames }}
	for _, tc := range []struct {
		name    string
		typ     dnsmessage.Type
		out     outcome
		rcode   dnsmessage.RCode
		answers []string
	}{
		{"vm1.lab.", dnsmessage.TypeA, outAnswered, dnsmessage.RCodeSuccess, []string{"192.168.1.100"}},
		{"VM1.Lab.", dnsmessage.TypeAAAA, outAnswered, dnsmessage.RCodeSuccess, []string{"fd00::100"}},
		{"files.nas.lab.", dnsmessage.TypeA, outAnswered, dnsmessage.RCodeSuccess, []string{"192.168.1.5"}},
		{"host.lab.", dnsmessage.TypeAAAA, outNoData, dnsmessage.RCodeSuccess, nil},
		{"host.lab.", dnsmessage.TypeMX, outNoData, dnsmessage.RCodeSuccess, nil},
		{"nope.lab.", dnsmessage.TypeA, outNXDomain, dnsmessage.RCodeNameError, nil},
		{"lab.", dnsmessage.TypeSOA, outAnswered, dnsmessage.RCodeSuccess, []string{"soa"}},
		{"100.1.168.192.in-addr.arpa.", dnsmessage.TypePTR, outAnswered, dnsmessage.RCodeSuccess, []string{"vm1.lab."}},
		{"0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", dnsmessage.TypePTR, outAnswered, dnsmessage.RCodeSuccess, []string{"vm1.lab."}},
		{"9.9.9.10.in-addr.arpa.", dnsmessage.TypePTR, outRefused, dnsmessage.RCodeRefused, nil},
		{"example.org.", dnsmessage.TypeA, outRefused, dnsmessage.RCodeRefused, nil},
	} {
		r, out := z.answer(query(t, tc.name, tc.typ))
		if out != tc.out {
			t.Errorf("%s %v: outcome %d, want %d", tc.name, tc.typ, out, tc.out)
			continue
		}
		m := unpack(t, r)
		if m.ID != 0x4b56 || !m.Response || m.RCode != tc.rcode || !m.RecursionDesired {
			t.Errorf("%s %v: header %+v, want rcode %v", tc.name, tc.typ, m.Header, tc.rcode)
		}
		if inZone := tc.out != outRefused; m.Authoritative != inZone {
			t.Errorf("%s %v: authoritative %v", tc.name, tc.typ, m.Authoritative)
		}
		var got []string
		for _, a := range m.Answers {
			switch b := a.Body.(type) {
			case *dnsmessage.AResource:
				got = append(got, netip.AddrFrom4(b.A).String())
			case *dnsmessage.AAAAResource:
				got = append(got, netip.AddrFrom16(b.AAAA).String())
			case *dnsmessage.PTRResource:
				got = append(got, b.PTR.String())
			case *dnsmessage.SOAResource:
				got = append(got, "soa")
			}
		}
		if len(got) != len(tc.answers) || len(got) > 0 && got[0] != tc.answers[0] {
			t.Errorf("%s %v: answers %v, want %v", tc.name, tc.typ, got, tc.answers)
		}
		if (tc.out == outNXDomain || tc.out == outNoData) && (len(m.Authorities) != 1 || m.Authorities[0].Header.Type != dnsmessage.TypeSOA) {
			t.Errorf("%s %v: a negative answer without the SOA: %+v", tc.name, tc.typ, m.Authorities)
		}
	}
	z.forward = true
	if _, out := z.answer(query(t, "example.org.", dnsmessage.TypeA)); out != outForward {
		t.Errorf("with upstreams, a name outside the zone: outcome %d, want forward", out)
	}
	if r, out := z.answer([]byte{1, 2, 3}); r != nil || out != outFailed {
		t.Errorf("a runt message: %v %d", r, out)
	}
}
