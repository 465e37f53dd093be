package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// Ports of DHCPv4.
const (
	ServerPort = 67
	ClientPort = 68
)

// Stats counts what a server has seen and done.
type Stats struct {
	Received  int `json:"received"`
	Offers    int `json:"offers"`
	Acks      int `json:"acks"`
	Naks      int `json:"naks"`
	Releases  int `json:"releases"`
	Declines  int `json:"declines"`
	Exhausted int `json:"exhausted"` // DISCOVERs or REQUESTs refused for lack of addresses
	Conflicts int `json:"conflicts"` // duplicate-MAC refusals
	// LastError is the last refusal or failure, for status displays.
	LastError string `json:"last_error,omitempty"`
}

// Server is a DHCPv4 server for one segment.
type Server struct {
	cfg  Config
	log  *slog.Logger
	pool *pool

	mu    sync.Mutex
	stats Stats
	conn  net.PacketConn
	done  chan struct{}
}

// New validates cfg and loads the lease file, if any. It does not open a
// socket: call Serve or Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("dhcp", cfg.Interface), done: make(chan struct{})}
	s.pool = newPool(&s.cfg, time.Now)
	if cfg.LeaseFile != "" {
		leases, err := ReadLeases(cfg.LeaseFile)
		if err != nil {
			return nil, err
		}
		s.pool.restore(leases)
	}
	return s, nil
}

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

// Leases returns the live leases (offers included), sorted by address.
func (s *Server) Leases() []Lease { return s.pool.List() }

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Release drops mac's lease (for a VM that is removed without releasing it
// itself) and persists the change. It reports whether there was one.
func (s *Server) Release(mac string) (bool, error) {
	m, err := normMAC(mac)
	if err != nil {
		return false, fmt.Errorf("release %q: %w", mac, err)
	}
	if !s.pool.Release(m, netip.Addr{}) {
		return false, nil
	}
	return true, s.persist()
}

// Allocate runs the DISCOVER/REQUEST logic for mac without the network,
// binding a lease as an ACK would. It serves tests and tools that
// pre-assign addresses; it returns an error wrapping ErrPoolExhausted or
// ErrDuplicateMAC when the server would refuse.
func (s *Server) Allocate(mac, clientID, hostname string) (Lease, error) {
	m, err := normMAC(mac)
	if err != nil {
		return Lease{}, fmt.Errorf("allocate for %q: %w", mac, err)
	}
	off, err := s.pool.Offer(m, clientID, netip.Addr{}, hostname)
	if err != nil {
		return Lease{}, err
	}
	l, err := s.pool.Request(m, clientID, off.IP, hostname)
	if err != nil {
		return Lease{}, err
	}
	return l, s.persist()
}

func (s *Server) persist() error {
	if s.cfg.LeaseFile == "" {
		return nil
	}
	return s.pool.save(s.cfg.LeaseFile)
}

// Listen opens the server's socket inside ns, bound to the configured
// interface and port 67, with broadcast allowed. Several servers may listen
// in one namespace on different interfaces.
func Listen(ns *netns.NS, iface string) (net.PacketConn, error) {
	var fd int
	err := netns.Do(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			return err
		}
		for _, o := range [][2]int{{unix.SO_BROADCAST, 1}, {unix.SO_REUSEADDR, 1}} {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], o[1]); err != nil {
				unix.Close(fd)
				return err
			}
		}
		if err := unix.BindToDevice(fd, iface); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to interface: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: ServerPort}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind port %d: %w", ServerPort, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dhcp server on %q in namespace %q: %w", iface, ns.Name, err)
	}
	f := os.NewFile(uintptr(fd), "dhcp-"+iface)
	defer f.Close() // FilePacketConn dups it
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("dhcp server on %q in namespace %q: %w", iface, ns.Name, err)
	}
	return c, nil
}

// Start opens the socket in ns and serves in a goroutine until Close.
func (s *Server) Start(ns *netns.NS) error {
	c, err := Listen(ns, s.cfg.Interface)
	if err != nil {
		return err
	}
	if err := s.persist(); err != nil { // the file exists from the start
		c.Close()
		return err
	}
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	s.log.Info("dhcp server listening", "namespace", ns.Name, "pool", fmt.Sprintf("%v-%v", s.cfg.PoolStart, s.cfg.PoolEnd))
	go func() {
		defer close(s.done)
		_ = s.serve(c)
	}()
	return nil
}

// Serve opens the socket in ns and serves until ctx ends or Close.
func (s *Server) Serve(ctx context.Context, ns *netns.NS) error {
	if err := s.Start(ns); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return errors.Join(ctx.Err(), s.Close())
	case <-s.done:
		return nil
	}
}

// Close stops serving and waits for the loop to end. The lease file stays.
func (s *Server) Close() error {
	s.mu.Lock()
	c := s.conn
	s.conn = nil
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	err := c.Close()
	<-s.done
	return err
}

func (s *Server) serve(c net.PacketConn) error {
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("dhcp read", "err", err)
			return err
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest {
			continue
		}
		s.count(func(st *Stats) { st.Received++ })
		reply, dst := s.handle(req, peer)
		if reply == nil {
			continue
		}
		if _, err := c.WriteTo(reply.ToBytes(), dst); err != nil {
			s.log.Warn("dhcp send", "to", dst, "err", err)
		}
	}
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Server) refuse(err error) {
	s.count(func(st *Stats) {
		st.LastError = err.Error()
		switch {
		case errors.Is(err, ErrPoolExhausted):
			st.Exhausted++
		case errors.Is(err, ErrDuplicateMAC):
			st.Conflicts++
		}
	})
	s.log.Warn("dhcp refused", "err", err)
}

func addr4(ip net.IP) netip.Addr {
	if v4 := ip.To4(); v4 != nil && !v4.Equal(net.IPv4zero) {
		a, _ := netip.AddrFromSlice(v4)
		return a
	}
	return netip.Addr{}
}

// handle answers one request; it returns the reply and where to send it,
// or nil for no answer.
func (s *Server) handle(req *dhcpv4.DHCPv4, peer net.Addr) (*dhcpv4.DHCPv4, net.Addr) {
	if len(req.ClientHWAddr) != 6 {
		return nil, nil
	}
	mac := req.ClientHWAddr.String()
	clientID := ""
	if id := req.GetOneOption(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		clientID = hex.EncodeToString(id)
	}
	hostname := req.HostName()
	sid := addr4(req.ServerIdentifier())
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		l, err := s.pool.Offer(mac, clientID, addr4(req.RequestedIPAddress()), hostname)
		if err != nil {
			s.refuse(err)
			return nil, nil
		}
		s.count(func(st *Stats) { st.Offers++ })
		s.log.Info("dhcp offer", "mac", mac, "ip", l.IP)
		return s.reply(req, dhcpv4.MessageTypeOffer, l), s.dest(req, false)
	case dhcpv4.MessageTypeRequest:
		if sid.IsValid() && sid != s.cfg.ServerIP {
			// The client chose another server's offer: drop ours.
			s.pool.Release(mac, netip.Addr{})
			return nil, nil
		}
		ip := addr4(req.RequestedIPAddress())
		if !ip.IsValid() {
			ip = addr4(req.ClientIPAddr)
		}
		l, err := s.pool.Request(mac, clientID, ip, hostname)
		if err != nil {
			if !errors.Is(err, errWrongAddress) {
				s.refuse(err)
			} else {
				s.log.Info("dhcp nak", "mac", mac, "err", err)
			}
			s.count(func(st *Stats) { st.Naks++ })
			nak, _ := dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
				dhcpv4.WithOption(dhcpv4.OptMessage(err.Error())))
			return nak, s.dest(req, true)
		}
		if err := s.persist(); err != nil {
			s.log.Warn("dhcp persist", "err", err)
		}
		s.count(func(st *Stats) { st.Acks++ })
		s.log.Info("dhcp ack", "mac", mac, "ip", l.IP, "hostname", l.Hostname)
		return s.reply(req, dhcpv4.MessageTypeAck, l), s.dest(req, false)
	case dhcpv4.MessageTypeRelease:
		if s.pool.Release(mac, addr4(req.ClientIPAddr)) {
			s.count(func(st *Stats) { st.Releases++ })
			s.log.Info("dhcp release", "mac", mac, "ip", addr4(req.ClientIPAddr))
			if err := s.persist(); err != nil {
				s.log.Warn("dhcp persist", "err", err)
			}
		}
		return nil, nil
	case dhcpv4.MessageTypeDecline:
		ip := addr4(req.RequestedIPAddress())
		if ip.IsValid() {
			s.pool.Decline(mac, ip)
			s.count(func(st *Stats) { st.Declines++ })
			s.log.Warn("dhcp decline: address in use on the segment", "mac", mac, "ip", ip)
			_ = s.persist()
		}
		return nil, nil
	case dhcpv4.MessageTypeInform:
		r := s.reply(req, dhcpv4.MessageTypeAck, Lease{})
		r.YourIPAddr = net.IPv4zero
		r.DeleteOption(dhcpv4.OptionIPAddressLeaseTime)
		r.DeleteOption(dhcpv4.OptionRenewTimeValue)
		r.DeleteOption(dhcpv4.OptionRebindingTimeValue)
		return r, s.dest(req, false)
	}
	return nil, nil
}

// reply builds an OFFER or ACK for l.
func (s *Server) reply(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, l Lease) *dhcpv4.DHCPv4 {
	lt := s.cfg.leaseTime()
	sub := s.cfg.Subnet.Masked()
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(mask(sub))),
		dhcpv4.WithOption(dhcpv4.OptBroadcastAddress(broadcast(sub).AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lt)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(lt / 2)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(lt * 7 / 8)),
	}
	if l.IP.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(l.IP.AsSlice()))
	}
	if s.cfg.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice())))
	}
	if len(s.cfg.DNS) > 0 {
		var dns []net.IP
		for _, d := range s.cfg.DNS {
			dns = append(dns, d.AsSlice())
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
	}
	if s.cfg.Domain != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(s.cfg.Domain)))
	}
	if l.Static && l.Hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(l.Hostname)))
	}
	r, _ := dhcpv4.NewReplyFromRequest(req, mods...)
	return r
}

// dest is where a reply goes (RFC 2131 4.1): to the relay, to a client that
// has an address, else broadcast on the interface. A client without an
// address gets a broadcast whether or not it set the broadcast flag: every
// client accepts one, and it needs no ARP entry for an address the client
// does not have yet.
func (s *Server) dest(req *dhcpv4.DHCPv4, nak bool) net.Addr {
	if gi := addr4(req.GatewayIPAddr); gi.IsValid() {
		return &net.UDPAddr{IP: gi.AsSlice(), Port: ServerPort}
	}
	if ci := addr4(req.ClientIPAddr); ci.IsValid() && !nak {
		return &net.UDPAddr{IP: ci.AsSlice(), Port: ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
}
