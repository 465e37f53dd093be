// Package nft manages the one nftables table kvmnet owns in a namespace
// ("kvmnet", family ip). The table is always written whole, in one atomic
// batch (add, delete, add, chains, rules), so it never holds stale rules and
// other tables (a host's Docker or libvirt rules) are never touched. Each
// rule carries a comment that says what it is for; observation reads the
// table back from those comments.
package nft

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
)

// TableName is the name of kvmnet's table in every namespace.
const TableName = "kvmnet"

const commentPrefix = "kvmnet masquerade "

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

// Apply replaces kvmnet's table in ns with one that masquerades masq, or
// removes the table when masq is empty. It is one atomic batch.
func Apply(ns *netns.NS, masq []model.Masquerade) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
	}
	t := table()
	c.AddTable(t) // so that the delete below always has something to delete
	c.DelTable(t)
	if len(masq) > 0 {
		c.AddTable(t)
		ch := c.AddChain(&nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		})
		for _, m := range masq {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: masqExprs(m),
				UserData: userdata.AppendString(nil, userdata.TypeComment, commentPrefix+m.String())})
		}
	}
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("write nftables table %q in namespace %q: kernel lacks nftables NAT (CONFIG_NFT_NAT, CONFIG_NFT_MASQ): %w", TableName, ns.Name, err)
		}
		return fmt.Errorf("write nftables table %q in namespace %q: %w", TableName, ns.Name, err)
	}
	return nil
}

func masqExprs(m model.Masquerade) []expr.Any {
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, m.OutIface)
	src := m.Source.Masked()
	mask := net.CIDRMask(src.Bits(), 32)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: src.Addr().AsSlice()},
		&expr.Counter{},
		&expr.Masq{},
	}
}

// Observe reads kvmnet's table in ns back into masquerade rules (nil when
// the table does not exist).
func Observe(ns *netns.NS) ([]model.Masquerade, error) {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return nil, fmt.Errorf("nftables in namespace %q: %w", ns.Name, err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables in namespace %q: %w", ns.Name, err)
	}
	found := false
	for _, t := range tables {
		found = found || t.Name == TableName
	}
	if !found {
		return nil, nil
	}
	rules, err := c.GetRules(table(), &nftables.Chain{Name: "postrouting", Table: table()})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return []model.Masquerade{}, nil
		}
		return nil, fmt.Errorf("read nftables table %q in namespace %q: %w", TableName, ns.Name, err)
	}
	out := []model.Masquerade{}
	for _, r := range rules {
		s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
		m, perr := model.ParseMasquerade(strings.TrimPrefix(s, commentPrefix))
		if !ok || !strings.HasPrefix(s, commentPrefix) || perr != nil {
			// A rule kvmnet did not write: report it so the diff rewrites the table.
			out = append(out, model.Masquerade{OutIface: "?"})
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, model.CompareMasquerade)
	return out, nil
}
