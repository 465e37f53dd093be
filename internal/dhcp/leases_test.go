package dhcp

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testConfig() Config {
	return Config{
		Interface: "eth0",
		ServerIP:  netip.MustParseAddr("10.9.0.1"),
		Router:    netip.MustParseAddr("10.9.0.1"),
		Subnet:    netip.MustParsePrefix("10.9.0.0/24"),
		PoolStart: netip.MustParseAddr("10.9.0.100"),
		PoolEnd:   netip.MustParseAddr("10.9.0.101"),
		Static:    []StaticLease{{MAC: "52:54:00:00:00:99", IP: netip.MustParseAddr("10.9.0.50"), Hostname: "db"}},
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want error
		msg  string
	}{
		{"ok", func(*Config) {}, nil, ""},
		{"duplicate static MAC", func(c *Config) {
			c.Static = append(c.Static, StaticLease{MAC: "52:54:00:00:00:99", IP: netip.MustParseAddr("10.9.0.51")})
		}, ErrDuplicateMAC, "static leases 1 and 2: duplicate MAC 52:54:00:00:00:99"},
		{"duplicate static MAC spelled differently", func(c *Config) {
			c.Static = append(c.Static, StaticLease{MAC: "52-54-00-00-00-99", IP: netip.MustParseAddr("10.9.0.51")})
		}, ErrDuplicateMAC, "duplicate MAC"},
		{"duplicate static IP", func(c *Config) {
			c.Static = append(c.Static, StaticLease{MAC: "52:54:00:00:00:98", IP: netip.MustParseAddr("10.9.0.50")})
		}, ErrDuplicateIP, "duplicate address 10.9.0.50"},
		{"pool outside subnet", func(c *Config) { c.PoolEnd = netip.MustParseAddr("10.9.1.5") }, ErrInvalidConfig, "not inside subnet"},
		{"pool reversed", func(c *Config) { c.PoolStart = netip.MustParseAddr("10.9.0.200") }, ErrInvalidConfig, "ends before it starts"},
		{"server outside", func(c *Config) { c.ServerIP = netip.MustParseAddr("10.8.0.1") }, ErrInvalidConfig, "server address"},
		{"static on router", func(c *Config) { c.Static[0].IP = c.Router }, ErrInvalidConfig, "router"},
		{"bad MAC", func(c *Config) { c.Static[0].MAC = "zz" }, ErrInvalidConfig, "not an Ethernet MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			tc.edit(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Validate = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestPoolExhaustionStaticRelease(t *testing.T) {
	cfg := testConfig()
	now := time.Unix(1000, 0)
	p := newPool(&cfg, func() time.Time { return now })
	bind := func(mac string) (Lease, error) {
		o, err := p.Offer(mac, "", netip.Addr{}, "")
		if err != nil {
			return o, err
		}
		return p.Request(mac, "", o.IP, "")
	}
	a, err := bind("52:54:00:00:00:01")
	if err != nil || a.IP != netip.MustParseAddr("10.9.0.100") {
		t.Fatalf("first lease = %+v, %v", a, err)
	}
	b, err := bind("52:54:00:00:00:02")
	if err != nil || b.IP != netip.MustParseAddr("10.9.0.101") {
		t.Fatalf("second lease = %+v, %v", b, err)
	}
	_, err = bind("52:54:00:00:00:03")
	if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "pool 10.9.0.100-10.9.0.101 on \"eth0\" has 2 addresses, 2 in use; no address for 52:54:00:00:00:03") {
		t.Fatalf("third lease: %v", err)
	}
	// A static MAC gets its address even when the pool is full.
	s, err := bind("52:54:00:00:00:99")
	if err != nil || s.IP != netip.MustParseAddr("10.9.0.50") || !s.Static || s.Hostname != "db" {
		t.Fatalf("static lease = %+v, %v", s, err)
	}
	// The same client asking again keeps its address.
	if again, err := bind("52:54:00:00:00:01"); err != nil || again.IP != a.IP {
		t.Fatalf("renewal = %+v, %v", again, err)
	}
	// Asking for someone else's address is refused (NAK).
	if _, err := p.Request("52:54:00:00:00:01", "", b.IP, ""); !errors.Is(err, errWrongAddress) {
		t.Fatalf("request for another's address: %v", err)
	}
	if !p.Release("52:54:00:00:00:02", b.IP) {
		t.Fatal("release reported no lease")
	}
	if c, err := bind("52:54:00:00:00:03"); err != nil || c.IP != b.IP {
		t.Fatalf("after release = %+v, %v", c, err)
	}
	// Leases expire.
	now = now.Add(2 * DefaultLeaseTime)
	if l := p.List(); len(l) != 0 {
		t.Fatalf("after expiry: %+v", l)
	}
}

func TestPoolDuplicateMACAtRuntime(t *testing.T) {
	cfg := testConfig()
	p := newPool(&cfg, time.Now)
	o, err := p.Offer("52:54:00:00:00:01", "00766d31", netip.Addr{}, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Request("52:54:00:00:00:01", "00766d31", o.IP, "vm1"); err != nil {
		t.Fatal(err)
	}
	_, err = p.Offer("52:54:00:00:00:01", "00766d32", netip.Addr{}, "vm2")
	if !errors.Is(err, ErrDuplicateMAC) || !strings.Contains(err.Error(), "duplicate MAC 52:54:00:00:00:01: it holds 10.9.0.100 for client 00766d31, and client 00766d32 asks too") {
		t.Fatalf("second client with the same MAC: %v", err)
	}
}

func TestLeaseFilePersistence(t *testing.T) {
	cfg := testConfig()
	cfg.LeaseFile = filepath.Join(t.TempDir(), "leases.json")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Allocate("52:54:00:AA:00:01", "", "web")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadLeases(cfg.LeaseFile)
	if err != nil || len(got) != 1 || got[0].MAC != "52:54:00:aa:00:01" || got[0].IP != l.IP || got[0].Hostname != "web" || got[0].State != StateBound {
		t.Fatalf("ReadLeases = %+v, %v", got, err)
	}
	// A new server on the same file keeps the lease: another MAC gets the
	// next address.
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := s2.Allocate("52:54:00:aa:00:02", "", ""); err != nil || l2.IP == l.IP {
		t.Fatalf("after restart: %+v, %v", l2, err)
	}
	if ok, err := s2.Release("52:54:00:aa:00:01"); !ok || err != nil {
		t.Fatalf("Release = %v, %v", ok, err)
	}
	got, _ = ReadLeases(cfg.LeaseFile)
	if len(got) != 1 || got[0].MAC != "52:54:00:aa:00:02" {
		t.Fatalf("after release: %+v", got)
	}
}

func TestBroadcast(t *testing.T) {
	for in, want := range map[string]string{"10.9.0.0/24": "10.9.0.255", "192.168.1.16/28": "192.168.1.31", "10.0.0.0/8": "10.255.255.255", "10.1.2.3/30": "10.1.2.3"} {
		if got := broadcast(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("broadcast(%s) = %v, want %s", in, got, want)
		}
	}
}
