// Package dhcp is kvmnet's DHCPv4 server and a small client.
//
// A Server serves one segment: it is bound to one interface inside one
// network namespace (the gateway's side of the segment), hands out addresses
// from a pool, gives fixed addresses to known MACs (static leases), and
// announces the router and DNS servers. Leases are kept in memory and, when
// Config.LeaseFile is set, written to that file (JSON, atomically) after
// every change, so another process can list them (ReadLeases) and a
// restarted server keeps its clients' addresses.
//
// The messages are encoded and decoded with github.com/insomniacslk/dhcp's
// dhcpv4 package; the sockets, the lease logic and persistence are ours.
// Replies to a client that has no address yet are broadcast (255.255.255.255
// on the bound interface), which every client accepts, whether or not it set
// the broadcast flag (busybox udhcpc and ISC dhclient read raw frames; the
// built-in guest's client, Client here, reads a UDP socket).
//
// The Client is what the built-in guest agent runs: DISCOVER, OFFER,
// REQUEST, ACK over a UDP socket bound to the interface, and RELEASE.
package dhcp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Sentinel errors. Errors returned by this package wrap one of these where
// a caller may want to tell them apart.
var (
	// ErrPoolExhausted: every address of the pool is leased (or offered).
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrDuplicateMAC: two static leases name the same MAC, or a MAC
	// holding a lease is used by a second client at the same time.
	ErrDuplicateMAC = errors.New("duplicate MAC")
	// ErrDuplicateIP: two static leases name the same address.
	ErrDuplicateIP = errors.New("duplicate address")
	// ErrInvalidConfig: the server configuration is inconsistent.
	ErrInvalidConfig = errors.New("invalid DHCP configuration")
	// ErrNoLease: the client got no lease (no server answered, or the
	// server refused).
	ErrNoLease = errors.New("no DHCP lease")
)

// DefaultLeaseTime is the lease time when Config.LeaseTime is zero.
const DefaultLeaseTime = time.Hour

// OfferHold is how long an offered address stays reserved for the client
// that was offered it, waiting for its REQUEST.
const OfferHold = 30 * time.Second

// StaticLease pins an address (and optionally a host name) to a MAC.
type StaticLease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Hostname string     `json:"hostname,omitempty"`
}

// Config is one segment's DHCP service.
type Config struct {
	// Interface is the interface the server binds to, inside the namespace
	// given to Serve (for example the gateway's veth, or a bridge with
	// the gateway address).
	Interface string `json:"interface"`
	// ServerIP is the server identifier: an address of Interface, in Subnet.
	ServerIP netip.Addr `json:"server_ip"`
	// Subnet is the segment's prefix; the subnet mask and broadcast
	// address options come from it.
	Subnet netip.Prefix `json:"subnet"`
	// PoolStart and PoolEnd bound the dynamic pool (inclusive). The
	// server address, the router, the network and broadcast addresses
	// and the static leases' addresses are never handed out from it.
	PoolStart netip.Addr `json:"pool_start"`
	PoolEnd   netip.Addr `json:"pool_end"`
	// Router is sent as option 3 when valid.
	Router netip.Addr `json:"router,omitzero"`
	// DNS servers, option 6.
	DNS []netip.Addr `json:"dns,omitempty"`
	// Domain name, option 15.
	Domain string `json:"domain,omitempty"`
	// LeaseTime, default DefaultLeaseTime.
	LeaseTime time.Duration `json:"lease_time,omitempty"`
	// Static leases, by MAC.
	Static []StaticLease `json:"static,omitempty"`
	// LeaseFile, when set, is where the leases are persisted.
	LeaseFile string `json:"lease_file,omitempty"`
	// Log receives one line per lease event; default: discard.
	Log *slog.Logger `json:"-"`
}

// Validate checks the configuration without touching the kernel.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.Interface == "" {
		bad("no interface")
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		bad("subnet %v is not an IPv4 prefix", c.Subnet)
		return errors.Join(errs...)
	}
	sub := c.Subnet.Masked()
	if sub.Bits() > 30 {
		bad("subnet %v is too small for DHCP (at most /30)", c.Subnet)
	}
	if !c.ServerIP.IsValid() || !sub.Contains(c.ServerIP) {
		bad("server address %v is not in subnet %v", c.ServerIP, sub)
	}
	if c.Router.IsValid() && !sub.Contains(c.Router) {
		bad("router %v is not in subnet %v", c.Router, sub)
	}
	for _, d := range c.DNS {
		if !d.Is4() {
			bad("DNS server %v is not IPv4", d)
		}
	}
	if !c.PoolStart.IsValid() || !c.PoolEnd.IsValid() {
		bad("pool start and end are required")
	} else {
		if !sub.Contains(c.PoolStart) || !sub.Contains(c.PoolEnd) {
			bad("pool %v-%v is not inside subnet %v", c.PoolStart, c.PoolEnd, sub)
		}
		if c.PoolEnd.Less(c.PoolStart) {
			bad("pool %v-%v ends before it starts", c.PoolStart, c.PoolEnd)
		}
	}
	if c.LeaseTime < 0 || (c.LeaseTime > 0 && c.LeaseTime < 10*time.Second) {
		bad("lease time %s is shorter than 10s", c.LeaseTime)
	}
	macs := map[string]int{}
	ips := map[netip.Addr]int{}
	for i, s := range c.Static {
		hw, err := net.ParseMAC(s.MAC)
		if err != nil || len(hw) != 6 {
			bad("static lease %d: MAC %q is not an Ethernet MAC", i+1, s.MAC)
			continue
		}
		m := hw.String()
		if j, dup := macs[m]; dup {
			errs = append(errs, fmt.Errorf("static leases %d and %d: %w %s", j+1, i+1, ErrDuplicateMAC, m))
		}
		macs[m] = i
		if !s.IP.IsValid() || !sub.Contains(s.IP) {
			bad("static lease %d (%s): address %v is not in subnet %v", i+1, m, s.IP, sub)
			continue
		}
		if s.IP == c.ServerIP || s.IP == c.Router || s.IP == sub.Addr() || s.IP == broadcast(sub) {
			bad("static lease %d (%s): address %v is the server, router, network or broadcast address", i+1, m, s.IP)
		}
		if j, dup := ips[s.IP]; dup {
			errs = append(errs, fmt.Errorf("static leases %d and %d: %w %v", j+1, i+1, ErrDuplicateIP, s.IP))
		}
		ips[s.IP] = i
	}
	return errors.Join(errs...)
}

func (c *Config) leaseTime() time.Duration {
	if c.LeaseTime == 0 {
		return DefaultLeaseTime
	}
	return c.LeaseTime
}

// broadcast returns the last address of p.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := 0; i < 4; i++ {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}

func mask(p netip.Prefix) net.IPMask { return net.CIDRMask(p.Bits(), 32) }

// normMAC spells a MAC the way leases store it (lowercase, colons).
func normMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil {
		return "", err
	}
	return hw.String(), nil
}
