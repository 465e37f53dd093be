package dns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// Answer is what a name server said to Query.
type Answer struct {
	// RCode is the response code ("Success", "NameError", ...).
	RCode string `json:"rcode"`
	// Addrs are the A and AAAA records of the answer.
	Addrs []netip.Addr `json:"addrs,omitempty"`
}

// Query asks server (from inside namespace nsName, over UDP) for name's
// records of type typ (A or AAAA), waiting up to timeout in all for an
// answer; the question is sent again halfway, as resolvers do. diagnose
// uses it to check that the network's name server answers.
func Query(nsName string, server netip.AddrPort, name string, typ dnsmessage.Type, timeout time.Duration) (Answer, error) {
	ns, err := netns.Open(nsName)
	if err != nil {
		return Answer{}, err
	}
	defer ns.Close()
	var c net.Conn
	if err := netns.Do(ns, func() (err error) { c, err = net.Dial("udp", server.String()); return err }); err != nil {
		return Answer{}, err
	}
	defer c.Close()
	id := uint16(rand.Uint32())
	qn, err := dnsmessage.NewName(strings.TrimSuffix(name, ".") + ".")
	if err != nil {
		return Answer{}, err
	}
	q, err := (&dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: qn, Type: typ, Class: dnsmessage.ClassINET}}}).Pack()
	if err != nil {
		return Answer{}, err
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65535)
	for try := 0; try < 2; try++ {
		if _, err := c.Write(q); err != nil {
			return Answer{}, err
		}
		wait := deadline
		if try == 0 {
			wait = time.Now().Add(timeout / 2)
		}
		for {
			_ = c.SetReadDeadline(wait)
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) || !isTimeout(err) {
					return Answer{}, err // e.g. connection refused: nothing listens
				}
				break
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || m.ID != id || !m.Response {
				continue
			}
			a := Answer{RCode: strings.TrimPrefix(m.RCode.String(), "RCode")}
			for _, r := range m.Answers {
				switch b := r.Body.(type) {
				case *dnsmessage.AResource:
					a.Addrs = append(a.Addrs, netip.AddrFrom4(b.A))
				case *dnsmessage.AAAAResource:
					a.Addrs = append(a.Addrs, netip.AddrFrom16(b.AAAA))
				}
			}
			return a, nil
		}
	}
	return Answer{}, fmt.Errorf("no answer from %s within %s", server, timeout)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
