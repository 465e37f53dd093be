package inspect

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// KvmnetTable is the name of the nftables table kvmnet owns (internal/nft).
const KvmnetTable = "kvmnet"

var families = map[nftables.TableFamily]string{
	nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyARP: "arp", nftables.TableFamilyNetdev: "netdev", nftables.TableFamilyBridge: "bridge",
}

// HookName names a base chain's hook in its family.
func HookName(family string, h uint32) string {
	if family == "netdev" {
		switch h {
		case unix.NF_NETDEV_INGRESS:
			return "ingress"
		case unix.NF_NETDEV_EGRESS:
			return "egress"
		}
	}
	if family == "arp" {
		switch h {
		case 0:
			return "input"
		case 1:
			return "output"
		}
	}
	return map[uint32]string{
		unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
		unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting", 5: "ingress",
	}[h]
}

// readFirewall lists every nftables table of the namespace with its chains
// and rules (counters included). kvmnet's own table is marked; the others
// are read because they can drop the network's traffic (Docker's filter
// table, a user's ruleset).
func readFirewall(c *nftables.Conn) ([]Table, error) {
	tables, err := c.ListTables()
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT) {
			return nil, nil
		}
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	out := make([]Table, 0, len(tables))
	for _, t := range tables {
		fam := families[t.Family]
		tb := Table{Family: fam, Name: t.Name, Kvmnet: t.Name == KvmnetTable && (t.Family == nftables.TableFamilyINet || t.Family == nftables.TableFamilyBridge), Chains: []Chain{}}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != t.Name || ch.Table.Family != t.Family {
				continue
			}
			cv := Chain{Name: ch.Name, Type: string(ch.Type), Rules: []Rule{}}
			if ch.Hooknum != nil {
				cv.Hook = HookName(fam, uint32(*ch.Hooknum))
			}
			if ch.Priority != nil {
				cv.Priority = int(*ch.Priority)
			}
			if ch.Policy != nil {
				cv.Policy = map[nftables.ChainPolicy]string{nftables.ChainPolicyAccept: "accept", nftables.ChainPolicyDrop: "drop"}[*ch.Policy]
			}
			rules, err := c.GetRules(t, ch)
			if err != nil && !errors.Is(err, unix.ENOENT) {
				return nil, fmt.Errorf("list rules of %s %s %s: %w", fam, t.Name, ch.Name, err)
			}
			for _, r := range rules {
				cv.Rules = append(cv.Rules, ruleView(r))
			}
			tb.Chains = append(tb.Chains, cv)
		}
		sort.Slice(tb.Chains, func(a, b int) bool { return tb.Chains[a].Name < tb.Chains[b].Name })
		out = append(out, tb)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Family != out[b].Family {
			return out[a].Family < out[b].Family
		}
		return out[a].Name < out[b].Name
	})
	return out, nil
}

func ruleView(r *nftables.Rule) Rule {
	rv := Rule{Handle: r.Handle}
	if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		rv.Comment = s
	}
	for _, e := range r.Exprs {
		switch x := e.(type) {
		case *expr.Counter:
			rv.Counter, rv.Packets, rv.Bytes = true, x.Packets, x.Bytes
		case *expr.Verdict:
			rv.Verdict = verdictName(x)
		case *expr.Masq:
			rv.Verdict = "masquerade"
		case *expr.NAT:
			if x.Type == expr.NATTypeSourceNAT {
				rv.Verdict = "snat"
			} else {
				rv.Verdict = "dnat"
			}
		case *expr.Reject:
			rv.Verdict = "reject"
		case *expr.Target:
			rv.Verdict = strings.ToLower(x.Name) // iptables-nft compat targets (REJECT, ...)
		}
	}
	return rv
}

func verdictName(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictQueue:
		return "queue"
	case expr.VerdictContinue:
		return "continue"
	}
	return fmt.Sprint(v.Kind)
}

// Drops reports whether a rule's verdict discards packets.
func (r Rule) Drops() bool { return r.Verdict == "drop" || r.Verdict == "reject" }
