// Package bootcfg is the contract between the host and the built-in guest's
// agent: the per-VM configuration the host puts on the guest kernel's
// command line (so every VM boots the same cached initramfs), and the
// readiness line the agent prints on the serial console.
//
// Command-line parameters (the kernel passes unknown ones through to
// /proc/cmdline):
//
//	kvmnet.name=vm1                        host name, DHCP client identifier
//	kvmnet.nic=52:54:00:12:34:56,dhcp      one per NIC, matched by MAC
//	kvmnet.nic=52:54:00:12:34:57,10.0.0.5/24,10.0.0.1   static, gateway optional
//	kvmnet.dns=10.0.0.53                   static DNS (repeatable)
//
// Readiness line:
//
//	kvmnet-agent: ready name=vm1 uptime=3.21s nic=52:54:00:12:34:56/eth0/10.0.0.100/24
package bootcfg

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Ports the agent serves on every address.
const (
	EchoPort    = 7  // TCP echo
	DiscardPort = 9  // TCP discard: reads and drops (throughput sink)
	HTTPPort    = 80 // GET / (JSON: name, addresses), /bytes?n=N, /ping?to=IP, /connect?to=IP:PORT
)

// Console line prefixes of the agent.
const (
	Prefix      = "kvmnet-agent: "
	ReadyMarker = Prefix + "ready "
	// PowerOffMarker is printed when the agent powers the guest off
	// (ACPI power button).
	PowerOffMarker = Prefix + "powering off"
)

// NIC is one guest interface, found by its MAC.
type NIC struct {
	MAC     string       // lowercase, colons
	DHCP    bool         // else Addr is set
	Addr    netip.Prefix // static address
	Gateway netip.Addr   // static default route, optional
}

// Config is what the agent reads from /proc/cmdline.
type Config struct {
	Name string
	NICs []NIC
	DNS  []netip.Addr
}

// Params returns the kernel command-line parameters for c.
func (c Config) Params() string {
	var p []string
	if c.Name != "" {
		p = append(p, "kvmnet.name="+c.Name)
	}
	for _, n := range c.NICs {
		v := n.MAC
		if n.DHCP {
			v += ",dhcp"
		} else {
			v += "," + n.Addr.String()
			if n.Gateway.IsValid() {
				v += "," + n.Gateway.String()
			}
		}
		p = append(p, "kvmnet.nic="+v)
	}
	for _, d := range c.DNS {
		p = append(p, "kvmnet.dns="+d.String())
	}
	return strings.Join(p, " ")
}

// Parse reads the kvmnet.* parameters from a kernel command line.
func Parse(cmdline string) (Config, error) {
	var c Config
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(k, "kvmnet.") {
			continue
		}
		switch k {
		case "kvmnet.name":
			c.Name = v
		case "kvmnet.dns":
			a, err := netip.ParseAddr(v)
			if err != nil {
				return c, fmt.Errorf("kvmnet.dns=%s: %w", v, err)
			}
			c.DNS = append(c.DNS, a)
		case "kvmnet.nic":
			parts := strings.Split(v, ",")
			hw, err := net.ParseMAC(parts[0])
			if err != nil {
				return c, fmt.Errorf("kvmnet.nic=%s: %w", v, err)
			}
			n := NIC{MAC: hw.String()}
			switch {
			case len(parts) == 2 && parts[1] == "dhcp":
				n.DHCP = true
			case len(parts) == 2 || len(parts) == 3:
				if n.Addr, err = netip.ParsePrefix(parts[1]); err != nil {
					return c, fmt.Errorf("kvmnet.nic=%s: %w", v, err)
				}
				if len(parts) == 3 {
					if n.Gateway, err = netip.ParseAddr(parts[2]); err != nil {
						return c, fmt.Errorf("kvmnet.nic=%s: %w", v, err)
					}
				}
			default:
				return c, fmt.Errorf("kvmnet.nic=%s: want MAC,dhcp or MAC,ADDR/LEN[,GATEWAY]", v)
			}
			c.NICs = append(c.NICs, n)
		}
	}
	return c, nil
}

// Ready is what a readiness line says.
type Ready struct {
	Name   string
	Uptime time.Duration // guest uptime when it became ready
	NICs   []ReadyNIC
}

// ReadyNIC is one configured interface.
type ReadyNIC struct {
	MAC   string
	Iface string
	Addr  netip.Prefix
}

// Line formats r as the agent prints it.
func (r Ready) Line() string {
	s := fmt.Sprintf("%sname=%s uptime=%.2fs", ReadyMarker, r.Name, r.Uptime.Seconds())
	for _, n := range r.NICs {
		s += fmt.Sprintf(" nic=%s/%s/%s", n.MAC, n.Iface, n.Addr)
	}
	return s
}

// ParseReady parses a readiness line (anything before the marker is
// ignored); ok is false for other lines.
func ParseReady(line string) (r Ready, ok bool) {
	i := strings.Index(line, ReadyMarker)
	if i < 0 {
		return r, false
	}
	for _, f := range strings.Fields(line[i+len(ReadyMarker):]) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "name":
			r.Name = v
		case "uptime":
			s, err := strconv.ParseFloat(strings.TrimSuffix(v, "s"), 64)
			if err == nil {
				r.Uptime = time.Duration(s * float64(time.Second))
			}
		case "nic":
			p := strings.SplitN(v, "/", 3)
			if len(p) != 3 {
				return r, false
			}
			a, err := netip.ParsePrefix(p[2])
			if err != nil {
				return r, false
			}
			r.NICs = append(r.NICs, ReadyNIC{MAC: p[0], Iface: p[1], Addr: a})
		}
	}
	return r, r.Name != ""
}
