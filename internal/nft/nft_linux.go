package nft

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/kernelfeat"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// families whose kvmnet table Apply replaces ("ip" and "ip6": leftovers of
// older kvmnet versions or of hand edits, deleted in the same batch).
var families = []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyBridge}

var familyNames = map[nftables.TableFamily]string{
	nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyBridge: "bridge",
}

var hookNums = map[string]nftables.ChainHook{"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}

func hookName(h nftables.ChainHook) string {
	for n, v := range hookNums {
		if v == h {
			return n
		}
	}
	return fmt.Sprintf("hook%d", h)
}

// setMu serialises AddSet: google/nftables numbers sets in a package-global
// counter that is not safe for concurrent use.
var setMu sync.Mutex

// Apply makes kvmnet's tables in ns exactly t, in one atomic batch: each
// kvmnet table (inet, bridge, and the ip/ip6 leftovers) is added and
// deleted, then the wanted ones are built whole. An empty t removes them.
// Other tables are never touched. A feature the kernel lacks is reported
// as a *kernelfeat.MissingError ("kernel lacks nftables NAT (CONFIG_NFT_NAT)").
func Apply(ns *netns.NS, t Table) error {
	c, err := compile(t)
	if err != nil {
		return fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()), nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
	}
	for _, f := range families {
		tb := &nftables.Table{Name: TableName, Family: f}
		conn.AddTable(tb) // so that the delete always has something to delete
		conn.DelTable(tb)
	}
	for _, ti := range []*tableIR{c.inet, c.bridge} {
		if ti != nil {
			if err := write(conn, ti); err != nil {
				return fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
			}
		}
	}
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
			if f, ok := diagnose(needs(c), func(p featureProbe) error { return runProbe(ns, p) }); ok {
				err = &kernelfeat.MissingError{Feature: f, Err: err}
			}
		}
		return fmt.Errorf("write nftables table %q in namespace %q: %w", TableName, ns.Name, err)
	}
	return nil
}

// batchBuffer is the socket buffer size for a batch: a 1,000-rule policy is
// about 1 MB of netlink messages, sent at once, and each message is
// acknowledged. nft sizes its socket the same way (SO_SNDBUFFORCE).
const batchBuffer = 32 << 20

func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], batchBuffer) != nil {
				// Without CAP_NET_ADMIN: as much as net.core.[rw]mem_max allows.
				serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], batchBuffer))
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

func write(conn *nftables.Conn, ti *tableIR) error {
	tb := conn.AddTable(&nftables.Table{Name: TableName, Family: ti.family})
	setMu.Lock()
	defer setMu.Unlock()
	for _, s := range ti.sets {
		if err := conn.AddSet(&nftables.Set{Table: tb, Name: s.name, KeyType: s.key, Interval: true}, s.kernel); err != nil {
			return fmt.Errorf("set %q: %w", s.name, err)
		}
	}
	for _, ch := range ti.chains {
		pol := nftables.ChainPolicyAccept
		if ch.policy == "drop" {
			pol = nftables.ChainPolicyDrop
		}
		chain := conn.AddChain(&nftables.Chain{
			Name: ch.name, Table: tb, Type: nftables.ChainType(ch.typ),
			Hooknum: nftables.ChainHookRef(hookNums[ch.hook]), Priority: nftables.ChainPriorityRef(nftables.ChainPriority(ch.prio)),
			Policy: &pol,
		})
		for _, r := range ch.rules {
			var exprs []expr.Any
			for _, s := range r.stmts {
				exprs = append(exprs, s.exprs...)
				if s.anon != nil {
					set := &nftables.Set{Table: tb, Anonymous: true, Constant: true, Interval: s.anon.interval, KeyType: s.anon.key}
					if err := conn.AddSet(set, s.anon.elems); err != nil {
						return fmt.Errorf("anonymous set of %q: %w", s.text, err)
					}
					exprs = append(exprs, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: s.invert})
				}
			}
			conn.AddRule(&nftables.Rule{Table: tb, Chain: chain, Exprs: exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment(byte(tb.Family)))})
		}
	}
	return nil
}

// Observe reads kvmnet's tables in ns back into the form Canonical gives:
// "" when ns has no kvmnet table.
func Observe(ns *netns.NS) (string, error) {
	conn, err := dialLasting(ns)
	if err != nil {
		return "", err
	}
	defer conn.CloseLasting()
	tables, err := kvmnetTables(conn)
	if err != nil {
		return "", fmt.Errorf("list nftables tables in namespace %q: %w", ns.Name, err)
	}
	var b strings.Builder
	for _, tb := range tables {
		fmt.Fprintf(&b, "table %s %s\n", familyNames[tb.Family], TableName)
		sets, err := conn.GetSets(tb)
		if err != nil {
			return "", fmt.Errorf("read sets of nftables table %s %s in namespace %q: %w", familyNames[tb.Family], TableName, ns.Name, err)
		}
		slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
		byName := map[string]*nftables.Set{}
		for _, s := range sets {
			byName[s.Name] = s
		}
		var keyErr error
		keys := func(l *expr.Lookup) ([][]byte, bool) {
			s := byName[l.SetName]
			if s == nil || !s.Anonymous {
				return nil, false
			}
			elems, err := conn.GetSetElements(s)
			if err != nil {
				keyErr = fmt.Errorf("read anonymous set %q in namespace %q: %w", s.Name, ns.Name, err)
			}
			out := make([][]byte, len(elems))
			for i, e := range elems {
				out[i] = anonKey(e.Key, e.IntervalEnd)
			}
			return out, true
		}
		for _, s := range sets {
			if s.Anonymous {
				continue
			}
			elems, err := conn.GetSetElements(s)
			if err != nil {
				return "", fmt.Errorf("read set %q in namespace %q: %w", s.Name, ns.Name, err)
			}
			b.WriteString(setLine(s.Name, s.KeyType.Name, intervalStrings(s.KeyType.Name, intervalsFromKernel(elems, s.Interval))))
		}
		chains, err := chainsOf(conn, tb)
		if err != nil {
			return "", fmt.Errorf("list chains of nftables table %s %s in namespace %q: %w", familyNames[tb.Family], TableName, ns.Name, err)
		}
		for _, ch := range chains {
			if ch.Hooknum == nil || ch.Priority == nil || ch.Policy == nil {
				fmt.Fprintf(&b, "  chain %s (not a base chain)\n", ch.Name)
			} else {
				pol := "accept"
				if *ch.Policy == nftables.ChainPolicyDrop {
					pol = "drop"
				}
				b.WriteString(chainLine(ch.Name, string(ch.Type), hookName(*ch.Hooknum), int32(*ch.Priority), pol))
			}
			rules, err := conn.GetRules(tb, ch)
			if err != nil {
				return "", fmt.Errorf("read chain %q in namespace %q: %w", ch.Name, ns.Name, err)
			}
			for _, r := range rules {
				s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				b.WriteString(observedRuleLine(s, digest(byte(tb.Family), r.Exprs, keys)))
				if keyErr != nil {
					return "", keyErr
				}
			}
		}
	}
	return b.String(), nil
}

// dialLasting opens one netlink socket in ns for all the reads that
// follow (opening a socket in another namespace switches a thread into it
// and back: once per Observe, not once per request).
func dialLasting(ns *netns.NS) (*nftables.Conn, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()), nftables.AsLasting(), nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return nil, fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
	}
	return conn, nil
}

// kvmnetTables lists the kvmnet tables Apply manages, inet first, then
// bridge, then the leftovers.
func kvmnetTables(conn *nftables.Conn) ([]*nftables.Table, error) {
	all, err := conn.ListTables()
	if err != nil {
		return nil, err
	}
	order := []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge, nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}
	var out []*nftables.Table
	for _, f := range order {
		for _, t := range all {
			if t.Name == TableName && t.Family == f {
				out = append(out, t)
			}
		}
	}
	return out, nil
}

func chainsOf(conn *nftables.Conn, tb *nftables.Table) ([]*nftables.Chain, error) {
	all, err := conn.ListChainsOfTableFamily(tb.Family)
	if err != nil {
		return nil, err
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == tb.Name {
			out = append(out, ch)
		}
	}
	slices.SortFunc(out, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Counters reads the packet and byte counters of every rule in kvmnet's
// tables in ns, in table and chain order, with each rule's fingerprint
// (Label adds where the rule comes from).
func Counters(ns *netns.NS) ([]RuleCounter, error) {
	conn, err := dialLasting(ns)
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	tables, err := kvmnetTables(conn)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables in namespace %q: %w", ns.Name, err)
	}
	var out []RuleCounter
	for _, tb := range tables {
		chains, err := chainsOf(conn, tb)
		if err != nil {
			return nil, fmt.Errorf("list chains in namespace %q: %w", ns.Name, err)
		}
		for _, ch := range chains {
			rules, err := conn.GetRules(tb, ch)
			if err != nil {
				return nil, fmt.Errorf("read chain %q in namespace %q: %w", ch.Name, ns.Name, err)
			}
			for i, r := range rules {
				rc := RuleCounter{Family: familyNames[tb.Family], Chain: ch.Name, Index: i}
				if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
					if fp, _, ok := parseComment(s); ok {
						rc.Fingerprint = fp
					}
				}
				for _, e := range r.Exprs {
					if c, ok := e.(*expr.Counter); ok {
						rc.Packets, rc.Bytes = c.Packets, c.Bytes
					}
				}
				out = append(out, rc)
			}
		}
	}
	return out, nil
}

// ---- missing kernel features --------------------------------------------------

// probe is a minimal batch that needs exactly one kernel feature.
type featureProbe struct {
	feature kernelfeat.Feature
	family  nftables.TableFamily
	chain   nftables.ChainType
	hook    string
	expr    expr.Any // nil: the chain alone
}

var (
	featInet   = kernelfeat.Feature{Name: "nftables inet family", Config: "CONFIG_NF_TABLES_INET"}
	featBridge = kernelfeat.Feature{Name: "nftables bridge family", Config: "CONFIG_NF_TABLES_BRIDGE"}
	featNAT    = kernelfeat.Feature{Name: "nftables NAT", Config: "CONFIG_NFT_NAT"}
	featMasq   = kernelfeat.Feature{Name: "nftables masquerade", Config: "CONFIG_NFT_MASQ"}
	featCt     = kernelfeat.Feature{Name: "nftables conntrack matching", Config: "CONFIG_NFT_CT"}
	featReject = kernelfeat.Feature{Name: "nftables reject", Config: "CONFIG_NFT_REJECT_INET"}
	featLog    = kernelfeat.Feature{Name: "nftables log", Config: "CONFIG_NFT_LOG"}
	featLimit  = kernelfeat.Feature{Name: "nftables limit", Config: "CONFIG_NFT_LIMIT"}
)

// needs lists the probes for what c uses, most basic first.
func needs(c *compiled) []featureProbe {
	var out []featureProbe
	seen := map[string]bool{}
	addp := func(p featureProbe) {
		if !seen[p.feature.Config] {
			seen[p.feature.Config] = true
			out = append(out, p)
		}
	}
	for _, ti := range []*tableIR{c.inet, c.bridge} {
		if ti == nil {
			continue
		}
		if ti.family == nftables.TableFamilyBridge {
			addp(featureProbe{feature: featBridge, family: ti.family, chain: nftables.ChainTypeFilter, hook: "prerouting"})
		} else {
			addp(featureProbe{feature: featInet, family: ti.family, chain: nftables.ChainTypeFilter, hook: "input"})
		}
		for _, ch := range ti.chains {
			if ch.typ == "nat" {
				addp(featureProbe{feature: featNAT, family: ti.family, chain: nftables.ChainTypeNAT, hook: "postrouting"})
			}
			for _, r := range ch.rules {
				for _, s := range r.stmts {
					for _, e := range s.exprs {
						switch e.(type) {
						case *expr.Masq:
							addp(featureProbe{feature: featMasq, family: ti.family, chain: nftables.ChainTypeNAT, hook: "postrouting", expr: &expr.Masq{}})
						case *expr.Ct:
							addp(featureProbe{feature: featCt, family: ti.family, chain: nftables.ChainTypeFilter, hook: "input", expr: &expr.Ct{Register: 1, Key: expr.CtKeySTATE}})
						case *expr.Reject:
							addp(featureProbe{feature: featReject, family: ti.family, chain: nftables.ChainTypeFilter, hook: "input", expr: &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})
						case *expr.Log:
							addp(featureProbe{feature: featLog, family: ti.family, chain: nftables.ChainTypeFilter, hook: ch.hook, expr: &expr.Log{}})
						case *expr.Limit:
							addp(featureProbe{feature: featLimit, family: ti.family, chain: nftables.ChainTypeFilter, hook: ch.hook, expr: &expr.Limit{Type: expr.LimitTypePkts, Rate: 1, Unit: expr.LimitTimeSecond, Burst: 5}})
						}
					}
				}
			}
		}
	}
	return out
}

// diagnose runs the probes in order and returns the feature of the first
// that fails.
func diagnose(ps []featureProbe, try func(featureProbe) error) (kernelfeat.Feature, bool) {
	for _, p := range ps {
		if try(p) != nil {
			return p.feature, true
		}
	}
	return kernelfeat.Feature{}, false
}

// runProbe writes one probe in its own batch, which also deletes its table:
// it leaves nothing behind whether it succeeds or not.
func runProbe(ns *netns.NS, p featureProbe) error {
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return err
	}
	tb := conn.AddTable(&nftables.Table{Name: TableName + "_probe", Family: p.family})
	prio := nftables.ChainPriorityFilter
	if p.chain == nftables.ChainTypeNAT {
		prio = nftables.ChainPriorityNATSource
	}
	ch := conn.AddChain(&nftables.Chain{Name: "probe", Table: tb, Type: p.chain, Hooknum: nftables.ChainHookRef(hookNums[p.hook]), Priority: prio})
	if p.expr != nil {
		conn.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{p.expr}})
	}
	conn.DelTable(tb)
	return conn.Flush()
}
