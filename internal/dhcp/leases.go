package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Lease states.
const (
	StateOffered = "offered" // reserved for a client between OFFER and REQUEST
	StateBound   = "bound"   // acknowledged
)

// Lease is one address held by one MAC.
type Lease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Hostname string     `json:"hostname,omitempty"`
	// ClientID is the client identifier option (61) in hex, when sent.
	ClientID string    `json:"client_id,omitempty"`
	State    string    `json:"state"`
	Static   bool      `json:"static,omitempty"`
	Expires  time.Time `json:"expires"`
}

// leaseFile is the on-disk format.
type leaseFile struct {
	Interface string  `json:"interface"`
	Subnet    string  `json:"subnet"`
	Leases    []Lease `json:"leases"`
}

// pool is the lease database of one server. It is safe for concurrent use.
type pool struct {
	mu       sync.Mutex
	cfg      *Config
	now      func() time.Time
	byMAC    map[string]*Lease
	byIP     map[netip.Addr]*Lease
	static   map[string]StaticLease // by normalized MAC
	staticIP map[netip.Addr]string  // address -> MAC
	declined map[netip.Addr]time.Time
}

func newPool(cfg *Config, now func() time.Time) *pool {
	p := &pool{
		cfg: cfg, now: now,
		byMAC: map[string]*Lease{}, byIP: map[netip.Addr]*Lease{},
		static: map[string]StaticLease{}, staticIP: map[netip.Addr]string{},
		declined: map[netip.Addr]time.Time{},
	}
	for _, s := range cfg.Static {
		m, _ := normMAC(s.MAC) // validated
		s.MAC = m
		p.static[m] = s
		p.staticIP[s.IP] = m
	}
	return p
}

// expire drops offers and leases whose time is up. Caller holds mu.
func (p *pool) expire() {
	now := p.now()
	for mac, l := range p.byMAC {
		if now.After(l.Expires) {
			delete(p.byMAC, mac)
			if p.byIP[l.IP] == l {
				delete(p.byIP, l.IP)
			}
		}
	}
	for ip, t := range p.declined {
		if now.After(t) {
			delete(p.declined, ip)
		}
	}
}

func (p *pool) reserved(ip netip.Addr) bool {
	sub := p.cfg.Subnet.Masked()
	return ip == p.cfg.ServerIP || ip == p.cfg.Router || ip == sub.Addr() || ip == broadcast(sub)
}

// free reports whether ip may be given to mac. Caller holds mu.
func (p *pool) free(ip netip.Addr, mac string) bool {
	if !p.cfg.Subnet.Masked().Contains(ip) || p.reserved(ip) {
		return false
	}
	if owner, ok := p.staticIP[ip]; ok && owner != mac {
		return false
	}
	if _, ok := p.declined[ip]; ok {
		return false
	}
	if l, ok := p.byIP[ip]; ok && l.MAC != mac {
		return false
	}
	return true
}

func (p *pool) inPool(ip netip.Addr) bool {
	return !ip.Less(p.cfg.PoolStart) && !p.cfg.PoolEnd.Less(ip)
}

// conflict returns ErrDuplicateMAC when mac holds a live lease under
// another client identifier. Caller holds mu.
func (p *pool) conflict(mac, clientID string) error {
	l, ok := p.byMAC[mac]
	if !ok || l.ClientID == "" || clientID == "" || l.ClientID == clientID {
		return nil
	}
	return fmt.Errorf("%w %s: it holds %v for client %s, and client %s asks too", ErrDuplicateMAC, mac, l.IP, l.ClientID, clientID)
}

// choose picks the address to offer mac. Caller holds mu.
func (p *pool) choose(mac string, requested netip.Addr) (netip.Addr, bool, error) {
	if s, ok := p.static[mac]; ok {
		return s.IP, true, nil
	}
	if l, ok := p.byMAC[mac]; ok && p.free(l.IP, mac) {
		return l.IP, false, nil
	}
	if requested.IsValid() && p.inPool(requested) && p.free(requested, mac) {
		return requested, false, nil
	}
	for ip := p.cfg.PoolStart; ; ip = ip.Next() {
		if p.free(ip, mac) {
			return ip, false, nil
		}
		if ip == p.cfg.PoolEnd {
			break
		}
	}
	size, used := 0, 0
	for ip := p.cfg.PoolStart; ; ip = ip.Next() {
		size++
		if !p.free(ip, "") {
			used++
		}
		if ip == p.cfg.PoolEnd {
			break
		}
	}
	return netip.Addr{}, false, fmt.Errorf("%w: pool %v-%v on %q has %d addresses, %d in use; no address for %s",
		ErrPoolExhausted, p.cfg.PoolStart, p.cfg.PoolEnd, p.cfg.Interface, size, used, mac)
}

// Offer reserves an address for mac (DHCPDISCOVER).
func (p *pool) Offer(mac, clientID string, requested netip.Addr, hostname string) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	if err := p.conflict(mac, clientID); err != nil {
		return Lease{}, err
	}
	ip, static, err := p.choose(mac, requested)
	if err != nil {
		return Lease{}, err
	}
	if l, ok := p.byMAC[mac]; ok && l.State == StateBound && l.IP == ip {
		return *l, nil // a bound client rebooting: keep its lease as it is
	}
	l := p.set(Lease{MAC: mac, IP: ip, ClientID: clientID, Hostname: hostname, State: StateOffered, Static: static, Expires: p.now().Add(OfferHold)})
	return *l, nil
}

// set installs l as mac's lease. Caller holds mu.
func (p *pool) set(l Lease) *Lease {
	if old, ok := p.byMAC[l.MAC]; ok && p.byIP[old.IP] == old {
		delete(p.byIP, old.IP)
	}
	if s, ok := p.static[l.MAC]; ok && s.Hostname != "" {
		l.Hostname = s.Hostname
	}
	nl := &l
	p.byMAC[l.MAC] = nl
	p.byIP[l.IP] = nl
	return nl
}

// errWrongAddress is a REQUEST for an address the server will not give
// that client: the server answers DHCPNAK.
var errWrongAddress = errors.New("address not available to this client")

// Request binds ip to mac (DHCPREQUEST, in any state: selecting, init-reboot,
// renewing, rebinding).
func (p *pool) Request(mac, clientID string, ip netip.Addr, hostname string) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	if err := p.conflict(mac, clientID); err != nil {
		return Lease{}, err
	}
	want, static, err := p.choose(mac, ip)
	if err != nil {
		return Lease{}, err
	}
	if want != ip {
		return Lease{}, fmt.Errorf("%w: %s asked for %v, its address is %v", errWrongAddress, mac, ip, want)
	}
	if hostname == "" {
		if l, ok := p.byMAC[mac]; ok {
			hostname = l.Hostname
		}
	}
	l := p.set(Lease{MAC: mac, IP: ip, ClientID: clientID, Hostname: hostname, State: StateBound, Static: static, Expires: p.now().Add(p.cfg.leaseTime())})
	return *l, nil
}

// Release frees mac's lease if it holds ip (any ip when ip is invalid);
// it reports whether a lease was removed.
func (p *pool) Release(mac string, ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.byMAC[mac]
	if !ok || (ip.IsValid() && l.IP != ip) {
		return false
	}
	delete(p.byMAC, mac)
	if p.byIP[l.IP] == l {
		delete(p.byIP, l.IP)
	}
	return true
}

// Decline marks ip as in use by someone else (a client found it taken) for
// one lease time.
func (p *pool) Decline(mac string, ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.byMAC[mac]; ok && l.IP == ip {
		delete(p.byMAC, mac)
		delete(p.byIP, ip)
	}
	p.declined[ip] = p.now().Add(p.cfg.leaseTime())
}

// List returns the live leases sorted by address.
func (p *pool) List() []Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	return p.listLocked()
}

func (p *pool) listLocked() []Lease {
	out := make([]Lease, 0, len(p.byMAC))
	for _, l := range p.byMAC {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// restore loads bound, unexpired leases that still fit the configuration.
func (p *pool) restore(leases []Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, l := range leases {
		mac, err := normMAC(l.MAC)
		if err != nil || l.State != StateBound || now.After(l.Expires) {
			continue
		}
		l.MAC = mac
		if !p.free(l.IP, mac) {
			continue
		}
		if s, ok := p.static[mac]; ok && s.IP != l.IP {
			continue
		}
		if _, ok := p.static[mac]; !ok && !p.inPool(l.IP) {
			continue
		}
		p.set(l)
	}
}

// save writes the bound leases to path atomically.
func (p *pool) save(path string) error {
	p.mu.Lock()
	var bound []Lease
	for _, l := range p.listLocked() {
		if l.State == StateBound {
			bound = append(bound, l)
		}
	}
	p.mu.Unlock()
	if bound == nil {
		bound = []Lease{}
	}
	b, err := json.MarshalIndent(leaseFile{Interface: p.cfg.Interface, Subnet: p.cfg.Subnet.String(), Leases: bound}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write leases %q: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".leases-")
	if err != nil {
		return fmt.Errorf("write leases %q: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write leases %q: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write leases %q: %w", path, err)
	}
	return nil
}

// ReadLeases reads a lease file written by a Server (from this process or
// another), returning the leases that have not expired, sorted by address.
// A missing file means no leases.
func ReadLeases(path string) ([]Lease, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("read leases %q: %w", path, err)
	}
	now := time.Now()
	out := f.Leases[:0]
	for _, l := range f.Leases {
		if now.Before(l.Expires) {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}
