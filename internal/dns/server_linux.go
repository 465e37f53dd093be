package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// Server answers DNS questions on UDP and TCP inside one namespace.
type Server struct {
	cfg  Config
	zone *zone
	log  *slog.Logger
	ns   *netns.NS // held open while serving: forwarding dials from it

	mu    sync.Mutex
	stats Stats
	udp   []net.PacketConn
	tcp   []net.Listener
	wg    sync.WaitGroup

	inFlight chan struct{} // one token per question being handled
	tcpConns chan struct{} // one token per open TCP connection

	lastWarn time.Time // the last log line about unanswered forwards
	unlogged int       // forwards that failed since
}

// upstreamTimeout bounds one upstream exchange.
const upstreamTimeout = 2 * time.Second

// Bounds on the work a server takes on at once: questions being answered
// or forwarded (a UDP question over the bound is dropped, as an overloaded
// resolver drops, and the client asks again), and TCP connections (one
// over the bound is closed at once). The server answers the network's own
// namespaces and VMs; the bounds keep a misbehaving guest from making it
// spawn without limit.
const (
	maxInFlight = 256
	maxTCPConns = 64
)

// New checks cfg; names gives the zone's names at each question.
func New(cfg Config, names Names, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		cfg.Port = 53
	}
	if cfg.TTL == 0 {
		cfg.TTL = 60
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log.With("dns", cfg.Domain),
		zone:     &zone{domain: cfg.Domain, ttl: cfg.TTL, forward: len(cfg.Forward) > 0, names: names},
		inFlight: make(chan struct{}, maxInFlight), tcpConns: make(chan struct{}, maxTCPConns)}, nil
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Start opens the sockets inside ns (bound with IP_FREEBIND, so an IPv6
// address still in duplicate address detection can be listened on) and
// serves from goroutines until Close.
func (s *Server) Start(ns *netns.NS) error {
	own, err := netns.Open(ns.Name)
	if err != nil {
		return err
	}
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if network == "udp6" || network == "tcp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	var udp []net.PacketConn
	var tcp []net.Listener
	err = netns.Do(own, func() error {
		for _, a := range s.cfg.Listen {
			at := netip.AddrPortFrom(a, s.cfg.Port).String()
			u, err := lc.ListenPacket(context.Background(), "udp", at)
			if err != nil {
				return err
			}
			udp = append(udp, u)
			l, err := lc.Listen(context.Background(), "tcp", at)
			if err != nil {
				return err
			}
			tcp = append(tcp, l)
		}
		return nil
	})
	if err != nil {
		for _, u := range udp {
			u.Close()
		}
		for _, l := range tcp {
			l.Close()
		}
		own.Close()
		return fmt.Errorf("dns server for %s in namespace %q: %w", s.cfg.Domain, ns.Name, err)
	}
	s.mu.Lock()
	s.ns, s.udp, s.tcp = own, udp, tcp
	s.mu.Unlock()
	for _, u := range udp {
		s.wg.Add(1)
		go s.serveUDP(u)
	}
	for _, l := range tcp {
		s.wg.Add(1)
		go s.serveTCP(l)
	}
	s.log.Info("dns server listening", "namespace", ns.Name, "addresses", s.cfg.Listen, "forward", s.cfg.Forward)
	return nil
}

// Close stops serving and waits for the loops to end.
func (s *Server) Close() error {
	s.mu.Lock()
	udp, tcp, ns := s.udp, s.tcp, s.ns
	s.udp, s.tcp, s.ns = nil, nil, nil
	s.mu.Unlock()
	var errs []error
	for _, u := range udp {
		errs = append(errs, u.Close())
	}
	for _, l := range tcp {
		errs = append(errs, l.Close())
	}
	s.wg.Wait()
	if ns != nil {
		ns.Close()
	}
	return errors.Join(errs...)
}

func (s *Server) serveUDP(c net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case s.inFlight <- struct{}{}:
		default:
			s.count(func(st *Stats) { st.Queries++; st.Dropped++ })
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { <-s.inFlight }()
			if r := s.handle(q, "udp"); r != nil {
				_, _ = c.WriteTo(r, peer)
			}
		}()
	}
}

func (s *Server) serveTCP(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case s.tcpConns <- struct{}{}:
		default:
			c.Close()
			s.count(func(st *Stats) { st.Dropped++ })
			continue
		}
		go func() {
			defer func() { <-s.tcpConns }()
			defer c.Close()
			for {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				q, err := readTCP(c)
				if err != nil {
					return
				}
				r := s.handle(q, "tcp")
				if r == nil || writeTCP(c, r) != nil {
					return
				}
			}
		}()
	}
}

// handle answers q from the zone or an upstream resolver; nil: no reply.
func (s *Server) handle(q []byte, network string) []byte {
	r, out := s.zone.answer(q)
	if out == outForward {
		var err error
		if r, err = s.forward(q, network); err != nil {
			s.warnUpstream(err)
			r, out = s.zone.serverFailure(q), outFailed
		}
	}
	s.count(func(st *Stats) { st.Queries++; st.add(out) })
	return r
}

// upstreamLogEvery spaces the log lines about unanswered forwards: a guest
// that asks again and again while the upstream is away would fill the
// supervisor's log.
const upstreamLogEvery = time.Minute

// warnUpstream logs a forward no upstream answered: the first at once,
// then at most one line per upstreamLogEvery, saying how many failed since.
func (s *Server) warnUpstream(err error) {
	s.mu.Lock()
	s.unlogged++
	now := time.Now()
	if !s.lastWarn.IsZero() && now.Sub(s.lastWarn) < upstreamLogEvery {
		s.mu.Unlock()
		return
	}
	n := s.unlogged
	s.unlogged, s.lastWarn = 0, now
	s.mu.Unlock()
	s.log.Warn("dns: no upstream answered", "err", err, "failed_since_last_line", n)
}

// count updates the counters.
func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

// add counts one outcome.
func (st *Stats) add(out outcome) {
	switch out {
	case outAnswered:
		st.Answered++
	case outNoData:
		st.NoData++
	case outNXDomain:
		st.NXDomain++
	case outForward:
		st.Forwarded++
	case outRefused:
		st.Refused++
	case outFailed:
		st.Failed++
	}
}

// forward relays q to the upstream resolvers in turn, from the server's
// namespace (where its routes reach them), over the question's transport.
func (s *Server) forward(q []byte, network string) ([]byte, error) {
	s.mu.Lock()
	ns := s.ns
	s.mu.Unlock()
	if ns == nil {
		return nil, net.ErrClosed
	}
	var errs []error
	for _, up := range s.cfg.Forward {
		var c net.Conn
		err := netns.Do(ns, func() (err error) {
			c, err = net.DialTimeout(network, up.String(), upstreamTimeout)
			return err
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, err := exchange(c, q, network)
		c.Close()
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	return nil, errors.Join(errs...)
}

func exchange(c net.Conn, q []byte, network string) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(upstreamTimeout))
	if network == "tcp" {
		if err := writeTCP(c, q); err != nil {
			return nil, err
		}
		return readTCP(c)
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= 12 && buf[0] == q[0] && buf[1] == q[1] {
			return buf[:n], nil
		}
	}
}

// readTCP and writeTCP frame DNS messages over TCP (a 2-byte length).
func readTCP(c net.Conn) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err := io.ReadFull(c, b)
	return b, err
}

func writeTCP(c net.Conn, b []byte) error {
	_, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
	return err
}
