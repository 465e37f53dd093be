package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/netns"
)

// ClientConfig configures Acquire.
type ClientConfig struct {
	Interface string
	MAC       net.HardwareAddr
	// ClientID is sent as option 61 when set. The built-in guest sends
	// 0x00 followed by the VM name, so the server can tell two VMs that
	// share a MAC apart (and refuse the second: ErrDuplicateMAC).
	ClientID []byte
	Hostname string // option 12
	// NS, when set, is the namespace the client's socket is opened in
	// (the interface is looked up there); default: the caller's.
	NS *netns.NS
}

// Acquired is a lease the client holds.
type Acquired struct {
	Addr      netip.Prefix // address with the subnet's length
	Router    netip.Addr
	DNS       []netip.Addr
	Server    netip.Addr
	LeaseTime time.Duration
	Renew     time.Duration // T1
	cfg       ClientConfig
	ack       *dhcpv4.DHCPv4
}

// clientConn is a UDP socket on port 68 bound to one interface, in ns (or
// the calling thread's namespace when ns is nil).
func clientConn(ns *netns.NS, iface string) (*net.UDPConn, error) {
	var fd int
	open := func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		return err
	}
	var err error
	if ns != nil {
		err = netns.Do(ns, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	for _, o := range [][2]int{{unix.SO_BROADCAST, 1}, {unix.SO_REUSEADDR, 1}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], o[1]); err != nil {
			return nil, err
		}
	}
	if err := unix.BindToDevice(fd, iface); err != nil {
		return nil, fmt.Errorf("bind to %q: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: ClientPort}); err != nil {
		return nil, fmt.Errorf("bind port %d: %w", ClientPort, err)
	}
	f := os.NewFile(uintptr(fd), "dhcp-client")
	ok = true
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func (c ClientConfig) mods() []dhcpv4.Modifier {
	m := []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName),
	}
	if len(c.ClientID) > 0 {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(c.ClientID)))
	}
	if c.Hostname != "" {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptHostName(c.Hostname)))
	}
	return m
}

// exchange sends msg to dst until a reply of one of the wanted types with
// msg's transaction ID arrives, retransmitting with backoff (1 s, 2 s, 4 s).
func exchange(ctx context.Context, conn *net.UDPConn, msg *dhcpv4.DHCPv4, dst *net.UDPAddr, want ...dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	buf := make([]byte, 1500)
	wait := time.Second
	for {
		if _, err := conn.WriteTo(msg.ToBytes(), dst); err != nil {
			return nil, fmt.Errorf("send %s: %w", msg.MessageType(), err)
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return nil, err
			}
			r, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != msg.TransactionID ||
				r.ClientHWAddr.String() != msg.ClientHWAddr.String() {
				continue
			}
			for _, w := range want {
				if r.MessageType() == w {
					return r, nil
				}
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: no answer to %s on %v: %w", ErrNoLease, msg.MessageType(), dst, ctx.Err())
		}
		wait = min(wait*2, 4*time.Second)
	}
}

// Acquire gets a lease on cfg.Interface (DISCOVER, OFFER, REQUEST, ACK),
// retrying until ctx ends. The interface must be up; its address is not
// set here.
func Acquire(ctx context.Context, cfg ClientConfig) (*Acquired, error) {
	conn, err := clientConn(cfg.NS, cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("dhcp client on %q: %w", cfg.Interface, err)
	}
	defer conn.Close()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}
	for {
		disc, err := dhcpv4.NewDiscovery(cfg.MAC, cfg.mods()...)
		if err != nil {
			return nil, err
		}
		offer, err := exchange(ctx, conn, disc, bcast, dhcpv4.MessageTypeOffer)
		if err != nil {
			return nil, fmt.Errorf("dhcp on %q: %w", cfg.Interface, err)
		}
		req, err := dhcpv4.NewRequestFromOffer(offer, cfg.mods()...)
		if err != nil {
			return nil, err
		}
		ack, err := exchange(ctx, conn, req, bcast, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)
		if err != nil {
			return nil, fmt.Errorf("dhcp on %q: %w", cfg.Interface, err)
		}
		if ack.MessageType() == dhcpv4.MessageTypeNak {
			// Start over, a little later (RFC 2131 3.1.4).
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("dhcp on %q: %w: refused: %s", cfg.Interface, ErrNoLease, ack.Message())
			case <-time.After(time.Second):
			}
			continue
		}
		return acquired(cfg, ack)
	}
}

func acquired(cfg ClientConfig, ack *dhcpv4.DHCPv4) (*Acquired, error) {
	ip := addr4(ack.YourIPAddr)
	if !ip.IsValid() {
		return nil, fmt.Errorf("dhcp on %q: %w: ACK without an address", cfg.Interface, ErrNoLease)
	}
	bits := 24
	if m := ack.SubnetMask(); m != nil {
		bits, _ = m.Size()
	}
	a := &Acquired{Addr: netip.PrefixFrom(ip, bits), Server: addr4(ack.ServerIdentifier()), cfg: cfg, ack: ack}
	a.LeaseTime = ack.IPAddressLeaseTime(DefaultLeaseTime)
	a.Renew = ack.IPAddressRenewalTime(a.LeaseTime / 2)
	if r := ack.Router(); len(r) > 0 {
		a.Router = addr4(r[0])
	}
	for _, d := range ack.DNS() {
		if v := addr4(d); v.IsValid() {
			a.DNS = append(a.DNS, v)
		}
	}
	return a, nil
}

// RenewLease renews the lease with its server (a unicast REQUEST from the
// leased address); the interface must have the address.
func (a *Acquired) RenewLease(ctx context.Context) error {
	conn, err := clientConn(a.cfg.NS, a.cfg.Interface)
	if err != nil {
		return fmt.Errorf("dhcp renew on %q: %w", a.cfg.Interface, err)
	}
	defer conn.Close()
	req, err := dhcpv4.NewRenewFromAck(a.ack, a.cfg.mods()...)
	if err != nil {
		return err
	}
	req.SetUnicast()
	ack, err := exchange(ctx, conn, req, &net.UDPAddr{IP: a.Server.AsSlice(), Port: ServerPort}, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)
	if err != nil {
		return fmt.Errorf("dhcp renew on %q: %w", a.cfg.Interface, err)
	}
	if ack.MessageType() == dhcpv4.MessageTypeNak {
		return fmt.Errorf("dhcp renew on %q: %w: refused: %s", a.cfg.Interface, ErrNoLease, ack.Message())
	}
	n, err := acquired(a.cfg, ack)
	if err != nil {
		return err
	}
	*a = *n
	return nil
}

// Release gives the lease back (DHCPRELEASE, unicast to the server).
func (a *Acquired) Release() error {
	conn, err := clientConn(a.cfg.NS, a.cfg.Interface)
	if err != nil {
		return fmt.Errorf("dhcp release on %q: %w", a.cfg.Interface, err)
	}
	defer conn.Close()
	rel, err := dhcpv4.NewReleaseFromACK(a.ack)
	if err != nil {
		return err
	}
	if _, err := conn.WriteTo(rel.ToBytes(), &net.UDPAddr{IP: a.Server.AsSlice(), Port: ServerPort}); err != nil {
		return fmt.Errorf("dhcp release on %q: %w", a.cfg.Interface, err)
	}
	return nil
}
