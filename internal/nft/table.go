// Package nft manages the nftables tables kvmnet owns in a namespace: one
// table named "kvmnet" per family it needs, "inet kvmnet" (masquerade NAT and
// the firewall: base chains input, forward, output, postrouting, named sets)
// and "bridge kvmnet" (the port guards of the bridges in that namespace).
//
// Principles:
//
//   - Every table is written whole, in ONE atomic batch: add table, delete
//     table, add table, sets, chains, rules, flush. It never holds stale
//     rules, and a failure leaves the previous tables as they were.
//   - Only tables named kvmnet are touched; a host's Docker or libvirt tables
//     stay intact. A leftover "ip kvmnet" table (kvmnet before the firewall)
//     is deleted in the same batch.
//   - Every rule counts (a counter expression) and carries the comment
//     "kvmnet <fingerprint>", a hash of the rule's canonical form. Observe
//     reads a table back as chain names, hooks, policies, set names and
//     elements, and those comments in order: Canonical(t) of the wanted
//     table is equal to Observe of the kernel exactly when nothing needs to
//     be written. A rule deleted, added or moved by hand changes Observe;
//     a rule edited in place under its kvmnet comment does not (documented
//     limitation).
//   - The same compiled form gives the netlink expressions (Apply) and the
//     `nft -f` text (Render), so both build the same tables.
package nft

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kvmnet/kvmnet/internal/model"
)

// TableName is the name of kvmnet's tables in every namespace and family.
const TableName = "kvmnet"

// CommentPrefix starts the comment of every rule kvmnet writes.
const CommentPrefix = "kvmnet "

// Table is everything kvmnet owns in one namespace's nftables: the
// masquerade rules and the firewall (table inet kvmnet) and the bridge port
// guards (table bridge kvmnet). An empty part means no chain for it; an
// entirely empty Table means no table at all.
type Table struct {
	Masquerade []model.Masquerade
	Firewall   *model.Firewall
	Guards     []model.PortGuard
}

// IsEmpty reports whether t asks for no table at all.
func (t Table) IsEmpty() bool {
	c, err := compile(t)
	return err == nil && c.inet == nil && c.bridge == nil
}

// Hooks of the firewall, in the order their chains are created.
var hooks = []string{"input", "forward", "output"}

// ---- compiled form -------------------------------------------------------

// stmt is one statement of a rule: its nft text and its expressions. A
// statement that looks a value up in an anonymous set carries the set; the
// lookup expression is added when the set exists (Apply).
type stmt struct {
	text   string
	exprs  []expr.Any
	anon   *anonSet
	invert bool
}

type anonSet struct {
	key      nftables.SetDatatype
	interval bool
	elems    []nftables.SetElement
}

type ruleIR struct {
	stmts  []stmt
	fp     string // fingerprint (the comment is CommentPrefix+fp+" "+digest)
	origin string
}

type chainIR struct {
	name, typ, hook string
	prio            int32
	policy          string
	rules           []ruleIR
}

type setIR struct {
	name, typ string
	key       nftables.SetDatatype
	elems     []string // canonical, merged intervals
	kernel    []nftables.SetElement
}

type tableIR struct {
	family nftables.TableFamily
	fname  string // inet, bridge
	sets   []setIR
	chains []chainIR
}

type compiled struct {
	inet, bridge *tableIR
}

// Check reports whether t can be written: sets referenced by rules exist
// and fit their use, protocols, ports, ICMP types, families and guard
// addresses make sense. Apply checks first; Canonical and Render of a table
// that fails Check describe the error instead of a table.
func Check(t Table) error {
	_, err := compile(t)
	return err
}

func compile(t Table) (*compiled, error) {
	var out compiled
	inet := &tableIR{family: nftables.TableFamilyINet, fname: "inet"}
	sets := map[string]*setIR{}
	if fw := t.Firewall; fw != nil {
		for _, s := range fw.Sets {
			if _, dup := sets[s.Name]; dup {
				return nil, fmt.Errorf("set %q declared twice", s.Name)
			}
			si, err := compileSet(s)
			if err != nil {
				return nil, err
			}
			sets[s.Name] = si
		}
		for _, name := range model.SortedNames(sets) {
			inet.sets = append(inet.sets, *sets[name])
		}
		for h := range fw.Policy {
			if !slices.Contains(hooks, h) {
				return nil, fmt.Errorf("firewall policy for unknown hook %q (want input, forward or output)", h)
			}
		}
		for _, h := range hooks {
			var rules []ruleIR
			for i, r := range fw.Rules {
				if r.Hook != h {
					continue
				}
				ri, err := compileRule(r, sets)
				if err != nil {
					return nil, fmt.Errorf("firewall rule %d (%s): %w", i, ruleName(r), err)
				}
				rules = append(rules, ri)
			}
			p, ok := fw.Policy[h]
			if !ok && len(rules) == 0 {
				continue
			}
			if p == "" {
				p = "accept" // rules for a hook without a policy: the chain accepts by default
			}
			if p != "accept" && p != "drop" {
				return nil, fmt.Errorf("firewall %s policy %q (want accept or drop)", h, p)
			}
			inet.chains = append(inet.chains, chainIR{name: h, typ: "filter", hook: h, prio: 0, policy: p, rules: rules})
		}
		for i, r := range fw.Rules {
			if !slices.Contains(hooks, r.Hook) {
				return nil, fmt.Errorf("firewall rule %d (%s): unknown hook %q (want input, forward or output)", i, ruleName(r), r.Hook)
			}
		}
	}
	if len(t.Masquerade) > 0 {
		ch := chainIR{name: "postrouting", typ: "nat", hook: "postrouting", prio: 100, policy: "accept"}
		for _, m := range t.Masquerade {
			ri, err := compileMasq(m)
			if err != nil {
				return nil, err
			}
			ch.rules = append(ch.rules, ri)
		}
		inet.chains = append(inet.chains, ch)
	}
	if len(inet.chains) > 0 || len(inet.sets) > 0 {
		out.inet = inet
	}
	if len(t.Guards) > 0 {
		br := &tableIR{family: nftables.TableFamilyBridge, fname: "bridge"}
		ch := chainIR{name: "prerouting", typ: "filter", hook: "prerouting", prio: -200, policy: "accept"}
		seen := map[string]bool{}
		for _, g := range t.Guards {
			if seen[g.Port] {
				return nil, fmt.Errorf("port %q guarded twice", g.Port)
			}
			seen[g.Port] = true
			rs, err := compileGuard(g)
			if err != nil {
				return nil, fmt.Errorf("guard of port %q: %w", g.Port, err)
			}
			ch.rules = append(ch.rules, rs...)
		}
		if len(ch.rules) > 0 {
			br.chains = append(br.chains, ch)
			out.bridge = br
		}
	}
	return &out, nil
}

func ruleName(r model.Rule) string {
	if r.Origin != "" {
		return r.Origin
	}
	return r.String()
}

// ---- canonical form --------------------------------------------------------

// Canonical is the canonical description of the tables Apply(t) writes:
// chain names, types, hooks, priorities and policies, set names, types and
// elements, and the rule comments in order. Observe of a namespace whose
// kvmnet tables were written from t returns the same string. It is "" when
// t asks for no table.
func Canonical(t Table) string {
	c, err := compile(t)
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	var b strings.Builder
	for _, ti := range []*tableIR{c.inet, c.bridge} {
		if ti == nil {
			continue
		}
		fmt.Fprintf(&b, "table %s %s\n", ti.fname, TableName)
		for _, s := range ti.sets {
			b.WriteString(setLine(s.name, s.typ, s.elems))
		}
		chains := slices.Clone(ti.chains)
		slices.SortFunc(chains, func(a, b chainIR) int { return strings.Compare(a.name, b.name) })
		for _, ch := range chains {
			b.WriteString(chainLine(ch.name, ch.typ, ch.hook, ch.prio, ch.policy))
			for _, r := range ch.rules {
				b.WriteString(ruleLine(r.fp))
			}
		}
	}
	return b.String()
}

func setLine(name, typ string, elems []string) string {
	return fmt.Sprintf("  set %s type %s elements {%s}\n", name, typ, strings.Join(elems, ","))
}

func chainLine(name, typ, hook string, prio int32, policy string) string {
	return fmt.Sprintf("  chain %s type %s hook %s priority %d policy %s\n", name, typ, hook, prio, policy)
}

func ruleLine(fp string) string { return "    rule " + fp + "\n" }

// observedRuleLine is the canonical line of a rule read from the kernel:
// its fingerprint when its comment is kvmnet's and its bytecode has the
// digest the comment records (kernelDigest), a line that matches no
// desired rule otherwise.
func observedRuleLine(comment, kernelDigest string) string {
	fp, dg, ok := parseComment(comment)
	switch {
	case !ok:
		return fmt.Sprintf("    rule not-kvmnet %q\n", comment)
	case dg != kernelDigest:
		return fmt.Sprintf("    rule %s edited (bytecode digest %s, written as %s)\n", fp, kernelDigest, dg)
	}
	return ruleLine(fp)
}

// Origins maps the fingerprint of every rule of t to where it comes from
// (the firewall rule's Origin, "masquerade ...", "guard PORT ..."), to label
// Counters.
func Origins(t Table) map[string]string {
	out := map[string]string{}
	c, err := compile(t)
	if err != nil {
		return out
	}
	for _, ti := range []*tableIR{c.inet, c.bridge} {
		if ti == nil {
			continue
		}
		for _, ch := range ti.chains {
			for _, r := range ch.rules {
				if _, dup := out[r.fp]; !dup {
					out[r.fp] = r.origin
				}
			}
		}
	}
	return out
}

// RuleCounter is what one rule of kvmnet's tables has counted.
type RuleCounter struct {
	Family      string `json:"family"` // inet, bridge
	Chain       string `json:"chain"`
	Index       int    `json:"index"` // position in the chain, from 0
	Fingerprint string `json:"fingerprint"`
	// Origin is filled by Label from the table the rules were written from.
	Origin  string `json:"origin,omitempty"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Label fills the Origin of each counter from t (see Origins).
func Label(cs []RuleCounter, t Table) {
	o := Origins(t)
	for i := range cs {
		cs[i].Origin = o[cs[i].Fingerprint]
	}
}

// ---- render ----------------------------------------------------------------

// Render is the `nft -f` script that replaces kvmnet's tables with the ones
// Apply(t) writes: it declares and deletes each kvmnet table (so the script
// works whether they exist or not), then builds the wanted ones, all in the
// one transaction nft -f makes of a file.
func Render(t Table) string {
	var b strings.Builder
	for _, f := range []string{"inet", "ip", "ip6", "bridge"} {
		fmt.Fprintf(&b, "table %s %s\ndelete table %s %s\n", f, TableName, f, TableName)
	}
	c, err := compile(t)
	if err != nil {
		fmt.Fprintf(&b, "# kvmnet cannot write this table: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return b.String()
	}
	for _, ti := range []*tableIR{c.inet, c.bridge} {
		if ti == nil {
			continue
		}
		fmt.Fprintf(&b, "table %s %s {\n", ti.fname, TableName)
		for _, s := range ti.sets {
			fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\tflags interval\n", s.name, s.typ)
			if len(s.elems) > 0 {
				fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(s.elems, ", "))
			}
			b.WriteString("\t}\n")
		}
		for _, ch := range ti.chains {
			prio := map[int32]string{0: "filter", 100: "srcnat", -200: "filter"}[ch.prio]
			fmt.Fprintf(&b, "\tchain %s {\n\t\ttype %s hook %s priority %s; policy %s;\n", ch.name, ch.typ, ch.hook, prio, ch.policy)
			for _, r := range ch.rules {
				parts := make([]string, 0, len(r.stmts)+1)
				for _, s := range r.stmts {
					parts = append(parts, s.text)
				}
				fmt.Fprintf(&b, "\t\t%s comment %q\n", strings.Join(parts, " "), r.comment(byte(ti.family)))
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// ---- rule compilation --------------------------------------------------------

const (
	nfproto4 = unix.NFPROTO_IPV4
	nfproto6 = unix.NFPROTO_IPV6
)

var ctStates = map[string]uint32{"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}

var protos = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": unix.IPPROTO_ICMP, "icmpv6": unix.IPPROTO_ICMPV6}

// ICMP and ICMPv6 type names as nft knows them.
var icmpTypes = map[string]byte{
	"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
	"echo-request": 8, "router-advertisement": 9, "router-solicitation": 10,
	"time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
	"timestamp-reply": 14, "info-request": 15, "info-reply": 16,
	"address-mask-request": 17, "address-mask-reply": 18,
}

var icmpv6Types = map[string]byte{
	"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
	"parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
	"mld-listener-query": 130, "mld-listener-report": 131, "mld-listener-done": 132,
	"nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
	"nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
	"ind-neighbor-solicit": 141, "ind-neighbor-advert": 142, "mld2-listener-report": 143,
}

func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func metaCmp(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}
}

func payload(base expr.PayloadBase, off, n uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: base, Offset: off, Len: n}
}

func ifStmt(key expr.MetaKey, word, name string) (stmt, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "\"\\ \t\n*") {
		return stmt{}, fmt.Errorf("bad interface name %q", name)
	}
	return stmt{text: fmt.Sprintf("%s %q", word, name), exprs: metaCmp(key, ifnameData(name))}, nil
}

type family struct {
	name    string // ip, ip6
	nfproto byte
	text    string // ipv4, ipv6
	addrLen uint32
	saddr   uint32 // offsets in the network header
	daddr   uint32
	setType string
}

var (
	fam4 = &family{"ip", nfproto4, "ipv4", 4, 12, 16, "ipv4_addr"}
	fam6 = &family{"ip6", nfproto6, "ipv6", 16, 8, 24, "ipv6_addr"}
)

func famOf(a netip.Addr) *family {
	if a.Is4() {
		return fam4
	}
	return fam6
}

func compileRule(r model.Rule, sets map[string]*setIR) (ruleIR, error) {
	ri := ruleIR{fp: model.Fingerprint(r.String()), origin: r.Origin}
	add := func(s stmt) { ri.stmts = append(ri.stmts, s) }
	if r.Mark != 0 {
		op, word := expr.CmpOpEq, ""
		if r.MarkNot {
			op, word = expr.CmpOpNeq, "!= "
		}
		add(stmt{text: fmt.Sprintf("meta mark %s%#08x", word, r.Mark), exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.Mark)},
		}})
	}

	// The rule's address family: declared, or implied by its addresses and sets.
	var fam *family
	setFam := func(f *family, what string) error {
		if fam != nil && fam != f {
			return fmt.Errorf("%s is %s but the rule is %s", what, f.name, fam.name)
		}
		fam = f
		return nil
	}
	switch r.Family {
	case "":
	case "ip":
		fam = fam4
	case "ip6":
		fam = fam6
	default:
		return ri, fmt.Errorf("unknown family %q (want ip or ip6)", r.Family)
	}
	for _, p := range append(slices.Clone(r.SAddr), r.DAddr...) {
		if !p.IsValid() {
			return ri, fmt.Errorf("invalid address prefix")
		}
		if err := setFam(famOf(p.Addr()), "address "+p.String()); err != nil {
			return ri, err
		}
	}
	for _, name := range []string{r.SAddrSet, r.DAddrSet} {
		if name == "" {
			continue
		}
		s := sets[name]
		if s == nil {
			return ri, fmt.Errorf("set %q is not declared", name)
		}
		switch s.typ {
		case "ipv4_addr":
			if err := setFam(fam4, "set "+name); err != nil {
				return ri, err
			}
		case "ipv6_addr":
			if err := setFam(fam6, "set "+name); err != nil {
				return ri, err
			}
		default:
			return ri, fmt.Errorf("set %q holds %s, not addresses", name, s.typ)
		}
	}
	switch r.Proto {
	case "", "tcp", "udp":
	case "icmp":
		if fam == fam6 {
			return ri, fmt.Errorf("proto icmp in an IPv6 rule (use icmpv6)")
		}
	case "icmpv6":
		if fam == fam4 {
			return ri, fmt.Errorf("proto icmpv6 in an IPv4 rule (use icmp)")
		}
	default:
		return ri, fmt.Errorf("unknown protocol %q (want tcp, udp, icmp or icmpv6)", r.Proto)
	}

	if r.IIf != "" {
		s, err := ifStmt(expr.MetaKeyIIFNAME, "iifname", r.IIf)
		if err != nil {
			return ri, err
		}
		add(s)
	}
	if r.OIf != "" {
		s, err := ifStmt(expr.MetaKeyOIFNAME, "oifname", r.OIf)
		if err != nil {
			return ri, err
		}
		add(s)
	}
	if fam != nil {
		add(stmt{text: "meta nfproto " + fam.text, exprs: metaCmp(expr.MetaKeyNFPROTO, []byte{fam.nfproto})})
	}
	if len(r.CTState) > 0 {
		var mask uint32
		for _, st := range r.CTState {
			v, ok := ctStates[st]
			if !ok {
				return ri, fmt.Errorf("unknown ct state %q", st)
			}
			mask |= v
		}
		add(stmt{text: "ct state " + strings.Join(r.CTState, ","), exprs: []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		}})
	}
	addrs := func(dir string, ps []netip.Prefix, set string, off func(*family) uint32) error {
		if len(ps) > 0 {
			s, err := matchValues(payload(expr.PayloadBaseNetworkHeader, off(fam), fam.addrLen), fam.name+" "+dir, addrType(fam), prefixStrings(ps), false)
			if err != nil {
				return err
			}
			add(s)
		}
		if set != "" {
			add(stmt{text: fmt.Sprintf("%s %s @%s", fam.name, dir, set), exprs: []expr.Any{
				payload(expr.PayloadBaseNetworkHeader, off(fam), fam.addrLen),
				&expr.Lookup{SourceRegister: 1, SetName: set},
			}})
		}
		return nil
	}
	if err := addrs("saddr", r.SAddr, r.SAddrSet, func(f *family) uint32 { return f.saddr }); err != nil {
		return ri, err
	}
	if err := addrs("daddr", r.DAddr, r.DAddrSet, func(f *family) uint32 { return f.daddr }); err != nil {
		return ri, err
	}
	if r.Proto != "" {
		add(stmt{text: "meta l4proto " + r.Proto, exprs: metaCmp(expr.MetaKeyL4PROTO, []byte{protos[r.Proto]})})
	}
	ports := func(dir string, prs []model.PortRange, set string, off uint32) error {
		if len(prs) == 0 && set == "" {
			return nil
		}
		if r.Proto != "tcp" && r.Proto != "udp" {
			return fmt.Errorf("%s needs proto tcp or udp", dir)
		}
		if len(prs) > 0 {
			vals := make([]string, len(prs))
			for i, p := range prs {
				if p.From > p.To {
					return fmt.Errorf("port range %d-%d is empty", p.From, p.To)
				}
				vals[i] = p.String()
			}
			s, err := matchValues(payload(expr.PayloadBaseTransportHeader, off, 2), r.Proto+" "+dir, "inet_service", vals, false)
			if err != nil {
				return err
			}
			add(s)
		}
		if set != "" {
			s := sets[set]
			if s == nil {
				return fmt.Errorf("set %q is not declared", set)
			}
			if s.typ != "inet_service" {
				return fmt.Errorf("set %q holds %s, not ports", set, s.typ)
			}
			add(stmt{text: fmt.Sprintf("%s %s @%s", r.Proto, dir, set), exprs: []expr.Any{
				payload(expr.PayloadBaseTransportHeader, off, 2),
				&expr.Lookup{SourceRegister: 1, SetName: set},
			}})
		}
		return nil
	}
	if err := ports("sport", r.SPorts, "", 0); err != nil {
		return ri, err
	}
	if err := ports("dport", r.DPorts, r.DPortSet, 2); err != nil {
		return ri, err
	}
	if len(r.ICMPTypes) > 0 {
		names, key := icmpTypes, nftables.TypeICMPType
		if r.Proto == "icmpv6" {
			names, key = icmpv6Types, nftables.TypeICMP6Type
		} else if r.Proto != "icmp" {
			return ri, fmt.Errorf("icmp types need proto icmp or icmpv6")
		}
		var vals []byte
		for _, n := range r.ICMPTypes {
			v, ok := names[n]
			if !ok {
				if i, err := strconv.ParseUint(n, 10, 8); err == nil {
					v, ok = byte(i), true
				}
			}
			if !ok {
				return ri, fmt.Errorf("unknown %s type %q", r.Proto, n)
			}
			if !slices.Contains(vals, v) {
				vals = append(vals, v)
			}
		}
		slices.Sort(vals)
		load := payload(expr.PayloadBaseTransportHeader, 0, 1)
		text := r.Proto + " type "
		if len(vals) == 1 {
			add(stmt{text: text + icmpName(names, vals[0]), exprs: []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{vals[0]}}}})
		} else {
			t := make([]string, len(vals))
			elems := make([]nftables.SetElement, len(vals))
			for i, v := range vals {
				t[i] = icmpName(names, v)
				elems[i] = nftables.SetElement{Key: []byte{v}}
			}
			add(stmt{text: text + "{ " + strings.Join(t, ", ") + " }", exprs: []expr.Any{load}, anon: &anonSet{key: key, elems: elems}})
		}
	}
	add(stmt{text: "counter", exprs: []expr.Any{&expr.Counter{}}})
	if r.Log != "" {
		if len(r.Log) > 127 || strings.ContainsAny(r.Log, "\"\\\n") {
			return ri, fmt.Errorf("log prefix %q: at most 127 characters, no quotes, backslashes or newlines", r.Log)
		}
		add(stmt{text: fmt.Sprintf("log prefix %q", r.Log), exprs: []expr.Any{&expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(r.Log)}}})
	}
	switch r.Action {
	case "accept":
		add(stmt{text: "accept", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
	case "drop":
		add(stmt{text: "drop", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
	case "reject":
		// TCP is refused with a reset (the client sees "connection
		// refused" at once); anything else with ICMP(v6) port unreachable.
		if r.Proto == "tcp" {
			add(stmt{text: "reject with tcp reset", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}})
		} else {
			add(stmt{text: "reject with icmpx port-unreachable", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}})
		}
	default:
		return ri, fmt.Errorf("unknown action %q (want accept, drop or reject)", r.Action)
	}
	return ri, nil
}

func icmpName(names map[string]byte, v byte) string {
	best := ""
	for n, x := range names {
		if x == v && (best == "" || n < best) {
			best = n
		}
	}
	if best == "" {
		return strconv.Itoa(int(v))
	}
	return best
}

func addrType(f *family) string { return f.setType }

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Masked().String()
	}
	return out
}

// matchValues matches the value loaded by load against values (addresses,
// prefixes, ranges or ports) the way nft compiles `word values`: one value
// or prefix with cmp (a byte-aligned prefix loads only its bytes), one range
// with two cmps, several with an anonymous set (with the interval flag when
// one of them is a range). Values are merged into disjoint intervals first,
// so Apply and Render agree whatever order they came in.
func matchValues(load *expr.Payload, word, typ string, values []string, invert bool) (stmt, error) {
	ivs, err := parseIntervals(typ, values)
	if err != nil {
		return stmt{}, err
	}
	neg := ""
	op := expr.CmpOpEq
	if invert {
		neg, op = "!= ", expr.CmpOpNeq
	}
	texts := intervalStrings(typ, ivs)
	if len(ivs) == 1 {
		iv := ivs[0]
		if bytes.Equal(iv.lo, iv.hi) {
			return stmt{text: word + " " + neg + texts[0], exprs: []expr.Any{load, &expr.Cmp{Op: op, Register: 1, Data: iv.lo}}}, nil
		}
		if bits, ok := iv.prefixLen(); ok && !invert {
			n := len(iv.lo)
			if bits == 0 {
				return stmt{}, fmt.Errorf("%s %s matches everything: leave it out", word, texts[0])
			}
			if bits%8 == 0 {
				l := *load
				l.Len = uint32(bits / 8)
				return stmt{text: word + " " + texts[0], exprs: []expr.Any{&l, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: iv.lo[:bits/8]}}}, nil
			}
			mask := net.CIDRMask(bits, n*8)
			return stmt{text: word + " " + texts[0], exprs: []expr.Any{load,
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(n), Mask: mask, Xor: make([]byte, n)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: iv.lo}}}, nil
		}
		if !invert {
			return stmt{text: word + " " + texts[0], exprs: []expr.Any{load,
				&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: iv.lo},
				&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: iv.hi}}}, nil
		}
	}
	interval := false
	for _, iv := range ivs {
		interval = interval || !bytes.Equal(iv.lo, iv.hi)
	}
	return stmt{
		text:   word + " " + neg + "{ " + strings.Join(texts, ", ") + " }",
		exprs:  []expr.Any{load},
		anon:   &anonSet{key: datatype(typ), interval: interval, elems: kernelElements(ivs, interval)},
		invert: invert,
	}, nil
}

func datatype(typ string) nftables.SetDatatype {
	switch typ {
	case "ipv4_addr":
		return nftables.TypeIPAddr
	case "ipv6_addr":
		return nftables.TypeIP6Addr
	case "inet_service":
		return nftables.TypeInetService
	case "ether_addr":
		return nftables.TypeEtherAddr
	case "ether_type":
		return nftables.TypeEtherType
	}
	return nftables.TypeInvalid
}

func compileSet(s model.Set) (*setIR, error) {
	if s.Name == "" || strings.ContainsAny(s.Name, " \t\n\"@{}") || strings.HasPrefix(s.Name, "__") {
		return nil, fmt.Errorf("bad set name %q", s.Name)
	}
	switch s.Type {
	case "ipv4_addr", "ipv6_addr", "inet_service":
	default:
		return nil, fmt.Errorf("set %q: unknown type %q (want ipv4_addr, ipv6_addr or inet_service)", s.Name, s.Type)
	}
	ivs, err := parseIntervals(s.Type, s.Elements)
	if err != nil {
		return nil, fmt.Errorf("set %q: %w", s.Name, err)
	}
	return &setIR{name: s.Name, typ: s.Type, key: datatype(s.Type), elems: intervalStrings(s.Type, ivs), kernel: kernelElements(ivs, true)}, nil
}

func compileMasq(m model.Masquerade) (ruleIR, error) {
	ri := ruleIR{fp: model.Fingerprint("masquerade " + m.String()), origin: "masquerade " + m.String()}
	s, err := ifStmt(expr.MetaKeyOIFNAME, "oifname", m.OutIface)
	if err != nil {
		return ri, fmt.Errorf("masquerade: %w", err)
	}
	if !m.Source.IsValid() {
		return ri, fmt.Errorf("masquerade through %q: no source prefix", m.OutIface)
	}
	f := famOf(m.Source.Addr())
	ri.stmts = append(ri.stmts, s, stmt{text: "meta nfproto " + f.text, exprs: metaCmp(expr.MetaKeyNFPROTO, []byte{f.nfproto})})
	if m.Source.Bits() > 0 {
		src, err := matchValues(payload(expr.PayloadBaseNetworkHeader, f.saddr, f.addrLen), f.name+" saddr", f.setType, []string{m.Source.Masked().String()}, false)
		if err != nil {
			return ri, err
		}
		ri.stmts = append(ri.stmts, src)
	}
	ri.stmts = append(ri.stmts,
		stmt{text: "counter", exprs: []expr.Any{&expr.Counter{}}},
		stmt{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}})
	return ri, nil
}

// compileGuard turns a port guard into rules of the bridge prerouting chain,
// each dropping (and counting) what the port may not send:
//
//  1. VLAN-tagged frames, when addresses are guarded (an 802.1Q header would
//     hide the ARP check behind another ether type);
//  2. a source MAC other than the port's MACs;
//  3. ARP whose sender MAC is not one of them;
//  4. IPv4 from a source other than its IPv4 addresses (0.0.0.0 allowed:
//     DHCP), ARP with another sender IP (0.0.0.0 allowed: ARP probes);
//  5. IPv6 from a source other than its IPv6 addresses, :: (DAD) and
//     link-local fe80::/10;
//  6. broadcast and multicast frames over BroadcastPPS a second.
//
// A family with no declared address is not checked.
func compileGuard(g model.PortGuard) ([]ruleIR, error) {
	port, err := ifStmt(expr.MetaKeyIIFNAME, "iifname", g.Port)
	if err != nil {
		return nil, err
	}
	var out []ruleIR
	rule := func(what string, ss ...stmt) {
		all := append([]stmt{port}, ss...)
		all = append(all, stmt{text: "counter", exprs: []expr.Any{&expr.Counter{}}}, stmt{text: "drop", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		texts := make([]string, len(all))
		for i, s := range all {
			texts[i] = s.text
		}
		line := strings.Join(texts, " ")
		out = append(out, ruleIR{stmts: all, fp: model.Fingerprint("guard " + line), origin: fmt.Sprintf("guard %s: %s", g.Port, what)})
	}
	var macs []string
	for _, m := range g.MACs {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("bad MAC %q", m)
		}
		macs = append(macs, hw.String())
	}
	var v4, v6 []string
	var own6 []netip.Addr // the port's IPv6 addresses
	for _, ip := range g.IPs {
		switch {
		case !ip.IsValid():
			return nil, fmt.Errorf("invalid IP address")
		case ip.Unmap().Is4():
			v4 = append(v4, ip.Unmap().String())
		default:
			v6 = append(v6, ip.String())
			own6 = append(own6, ip)
		}
	}
	etherType := func(t uint16) stmt {
		name := map[uint16]string{unix.ETH_P_ARP: "arp", unix.ETH_P_IP: "ip", unix.ETH_P_IPV6: "ip6"}[t]
		return stmt{text: "ether type " + name, exprs: []expr.Any{payload(expr.PayloadBaseLLHeader, 12, 2), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, t)}}}
	}
	metaProto := func(t uint16, name string) stmt {
		return stmt{text: "meta protocol " + name, exprs: metaCmp(expr.MetaKeyPROTOCOL, binary.BigEndian.AppendUint16(nil, t))}
	}
	if len(v4)+len(v6) > 0 {
		rule("VLAN-tagged frame", stmt{
			text:  "ether type { 8021q, 8021ad }",
			exprs: []expr.Any{payload(expr.PayloadBaseLLHeader, 12, 2)},
			anon: &anonSet{key: nftables.TypeEtherType, elems: []nftables.SetElement{
				{Key: binary.BigEndian.AppendUint16(nil, unix.ETH_P_8021Q)}, {Key: binary.BigEndian.AppendUint16(nil, unix.ETH_P_8021AD)}}},
		})
	}
	if len(macs) > 0 {
		s, err := matchMACs(payload(expr.PayloadBaseLLHeader, 6, 6), "ether saddr", macs)
		if err != nil {
			return nil, err
		}
		rule("source MAC not "+strings.Join(macs, ","), s)
		s, err = matchMACs(payload(expr.PayloadBaseNetworkHeader, 8, 6), "arp saddr ether", macs)
		if err != nil {
			return nil, err
		}
		rule("ARP sender MAC not "+strings.Join(macs, ","), etherType(unix.ETH_P_ARP), s)
	}
	if len(v4) > 0 {
		allowed := append([]string{"0.0.0.0"}, v4...)
		s, err := matchValues(payload(expr.PayloadBaseNetworkHeader, 12, 4), "ip saddr", "ipv4_addr", allowed, true)
		if err != nil {
			return nil, err
		}
		rule("IPv4 source not "+strings.Join(v4, ","), metaProto(unix.ETH_P_IP, "ip"), s)
		s, err = matchValues(payload(expr.PayloadBaseNetworkHeader, 14, 4), "arp saddr ip", "ipv4_addr", allowed, true)
		if err != nil {
			return nil, err
		}
		rule("ARP sender IP not "+strings.Join(v4, ","), etherType(unix.ETH_P_ARP), s)
	}
	if len(v6) > 0 {
		allowed := append([]string{"::", "fe80::/10"}, v6...)
		s, err := matchValues(payload(expr.PayloadBaseNetworkHeader, 8, 16), "ip6 saddr", "ipv6_addr", allowed, true)
		if err != nil {
			return nil, err
		}
		rule("IPv6 source not "+strings.Join(v6, ","), metaProto(unix.ETH_P_IPV6, "ip6"), s)
		// Neighbour advertisements (which any source may send, from its
		// link-local address) only for the port's own addresses: its
		// IPv6 addresses and the EUI-64 link-local of each of its MACs.
		targets, names := own6, slices.Clone(v6)
		for _, m := range macs {
			hw, _ := net.ParseMAC(m)
			ll := eui64LinkLocal(hw)
			targets, names = append(targets, ll), append(names, ll.String())
		}
		rule("IPv6 neighbour advertisement for a target not "+strings.Join(names, ","),
			metaProto(unix.ETH_P_IPV6, "ip6"), icmpv6Type(ndNeighborAdvert), matchIPv6Raw(payload(expr.PayloadBaseTransportHeader, 8, 16), "@th,64,128", targets))
	}
	if len(v4)+len(v6) > 0 {
		// A guarded port is no router: its router advertisements (rogue
		// RAs that would steer the segment's IPv6) are dropped.
		rule("IPv6 router advertisement", metaProto(unix.ETH_P_IPV6, "ip6"), icmpv6Type(ndRouterAdvert))
	}
	if g.BroadcastPPS < 0 {
		return nil, fmt.Errorf("negative broadcast limit %d", g.BroadcastPPS)
	}
	if g.BroadcastPPS > 0 {
		group := []byte{1, 0, 0, 0, 0, 0}
		rule(fmt.Sprintf("broadcast/multicast over %d/s", g.BroadcastPPS), stmt{
			text: "ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00",
			exprs: []expr.Any{payload(expr.PayloadBaseLLHeader, 0, 6),
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 6, Mask: group, Xor: make([]byte, 6)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: group}},
		}, stmt{
			text:  fmt.Sprintf("limit rate over %d/second", g.BroadcastPPS),
			exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(g.BroadcastPPS), Over: true, Unit: expr.LimitTimeSecond, Burst: 5}},
		})
	}
	if g.Mark != 0 {
		// Last: frames that passed the checks get the port's mark.
		all := []stmt{port,
			{text: "counter", exprs: []expr.Any{&expr.Counter{}}},
			{text: fmt.Sprintf("meta mark set %#08x", g.Mark), exprs: []expr.Any{
				&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(g.Mark)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			}},
		}
		texts := make([]string, len(all))
		for i, st := range all {
			texts[i] = st.text
		}
		line := strings.Join(texts, " ")
		out = append(out, ruleIR{stmts: all, fp: model.Fingerprint("guard " + line), origin: fmt.Sprintf("mark of port %s", g.Port)})
	}
	return out, nil
}

// ICMPv6 types of the port guards.
const (
	ndRouterAdvert   = 134
	ndNeighborAdvert = 136
)

// icmpv6Type matches an ICMPv6 type, as nft compiles `icmpv6 type T`.
func icmpv6Type(t byte) stmt {
	name := map[byte]string{ndRouterAdvert: "nd-router-advert", ndNeighborAdvert: "nd-neighbor-advert"}[t]
	return stmt{text: "icmpv6 type " + name, exprs: append(metaCmp(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMPV6}),
		payload(expr.PayloadBaseTransportHeader, 0, 1), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{t}})}
}

// matchIPv6Raw matches a raw 16-byte field that is none of the IPv6
// addresses addrs (nft has no name for the ND target in this version:
// `@th,64,128 != { 0x... }`).
func matchIPv6Raw(load *expr.Payload, word string, addrs []netip.Addr) stmt {
	var keys [][]byte
	for _, a := range addrs {
		b := a.As16()
		keys = append(keys, b[:])
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	texts := make([]string, len(keys))
	for i, k := range keys {
		texts[i] = "0x" + hex.EncodeToString(k)
	}
	if len(keys) == 1 {
		return stmt{text: word + " != " + texts[0], exprs: []expr.Any{load, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: keys[0]}}}
	}
	key := nftables.TypeInteger
	key.Bytes = 16
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: k}
	}
	return stmt{text: word + " != { " + strings.Join(texts, ", ") + " }", exprs: []expr.Any{load},
		anon: &anonSet{key: key, elems: elems}, invert: true}
}

// eui64LinkLocal is the link-local address the kernel derives from a MAC
// (addr_gen_mode eui64, the default): fe80::, the MAC with the U/L bit
// flipped and ff:fe in the middle.
func eui64LinkLocal(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	copy(a[8:11], mac[0:3])
	a[8] ^= 0x02
	a[11], a[12] = 0xff, 0xfe
	copy(a[13:16], mac[3:6])
	return netip.AddrFrom16(a)
}

func matchMACs(load *expr.Payload, word string, macs []string) (stmt, error) {
	macs = slices.Clone(macs)
	slices.Sort(macs)
	macs = slices.Compact(macs)
	if len(macs) == 1 {
		hw, _ := net.ParseMAC(macs[0])
		return stmt{text: word + " != " + macs[0], exprs: []expr.Any{load, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: hw}}}, nil
	}
	elems := make([]nftables.SetElement, len(macs))
	for i, m := range macs {
		hw, _ := net.ParseMAC(m)
		elems[i] = nftables.SetElement{Key: hw}
	}
	return stmt{text: word + " != { " + strings.Join(macs, ", ") + " }", exprs: []expr.Any{load},
		anon: &anonSet{key: nftables.TypeEtherAddr, elems: elems}, invert: true}, nil
}

// ---- intervals -------------------------------------------------------------

// interval is an inclusive range of big-endian values of one length.
type interval struct{ lo, hi []byte }

func (iv interval) prefixLen() (int, bool) {
	n := len(iv.lo) * 8
	host := 0
	for i := len(iv.lo) - 1; i >= 0; i-- {
		x := iv.lo[i] ^ iv.hi[i]
		if x == 0xff && iv.lo[i] == 0 {
			host += 8
			continue
		}
		// x must be 0..01..1 with lo's bits there all zero.
		if x&(x+1) != 0 || iv.lo[i]&x != 0 {
			return 0, false
		}
		for ; x != 0; x >>= 1 {
			host++
		}
		if !bytes.Equal(iv.lo[:i], iv.hi[:i]) {
			return 0, false
		}
		break
	}
	return n - host, true
}

func incr(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return out, false // wrapped: b was the maximum
}

func decr(b []byte) []byte {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

func parseValue(typ, s string) ([]byte, error) {
	switch typ {
	case "inet_service":
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
		if err != nil {
			return nil, fmt.Errorf("bad port %q", s)
		}
		return binary.BigEndian.AppendUint16(nil, uint16(n)), nil
	case "ipv4_addr", "ipv6_addr":
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("bad address %q", s)
		}
		a = a.Unmap()
		if a.Is4() != (typ == "ipv4_addr") {
			return nil, fmt.Errorf("address %q is not %s", s, typ)
		}
		return a.AsSlice(), nil
	}
	return nil, fmt.Errorf("unknown element type %q", typ)
}

// parseIntervals reads values ("10.0.0.0/8", "10.0.0.1-10.0.0.9",
// "192.168.1.5", "22", "8000-8080") into sorted, merged, disjoint intervals.
func parseIntervals(typ string, values []string) ([]interval, error) {
	var ivs []interval
	for _, v := range values {
		var iv interval
		switch {
		case strings.Contains(v, "/") && typ != "inet_service":
			p, err := netip.ParsePrefix(strings.TrimSpace(v))
			if err != nil {
				return nil, fmt.Errorf("bad prefix %q", v)
			}
			if p.Addr().Is4() != (typ == "ipv4_addr") {
				return nil, fmt.Errorf("prefix %q is not %s", v, typ)
			}
			p = p.Masked()
			iv.lo = p.Addr().AsSlice()
			iv.hi = slices.Clone(iv.lo)
			host := len(iv.lo)*8 - p.Bits()
			for i := len(iv.hi) - 1; i >= 0 && host > 0; i-- {
				k := min(host, 8)
				iv.hi[i] |= byte(1<<k - 1)
				host -= k
			}
		case strings.Contains(v, "-"):
			a, b, _ := strings.Cut(v, "-")
			lo, err := parseValue(typ, a)
			if err != nil {
				return nil, err
			}
			hi, err := parseValue(typ, b)
			if err != nil {
				return nil, err
			}
			if bytes.Compare(lo, hi) > 0 {
				return nil, fmt.Errorf("empty range %q", v)
			}
			iv = interval{lo, hi}
		default:
			x, err := parseValue(typ, v)
			if err != nil {
				return nil, err
			}
			iv = interval{x, x}
		}
		ivs = append(ivs, iv)
	}
	slices.SortFunc(ivs, func(a, b interval) int { return bytes.Compare(a.lo, b.lo) })
	var out []interval
	for _, iv := range ivs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			next, ok := incr(last.hi)
			if !ok || bytes.Compare(iv.lo, next) <= 0 { // overlapping or adjacent
				if bytes.Compare(iv.hi, last.hi) > 0 {
					last.hi = iv.hi
				}
				continue
			}
		}
		out = append(out, interval{slices.Clone(iv.lo), slices.Clone(iv.hi)})
	}
	return out, nil
}

func valueString(typ string, b []byte) string {
	if typ == "inet_service" {
		return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
	}
	a, _ := netip.AddrFromSlice(b)
	return a.String()
}

func intervalStrings(typ string, ivs []interval) []string {
	out := make([]string, len(ivs))
	for i, iv := range ivs {
		switch bits, ok := iv.prefixLen(); {
		case bytes.Equal(iv.lo, iv.hi):
			out[i] = valueString(typ, iv.lo)
		case ok && typ != "inet_service":
			out[i] = valueString(typ, iv.lo) + "/" + strconv.Itoa(bits)
		default:
			out[i] = valueString(typ, iv.lo) + "-" + valueString(typ, iv.hi)
		}
	}
	return out
}

// kernelElements lays intervals out as nft does: for an interval set, a
// leading interval-end at zero when the first interval does not start
// there, then each interval's start and (unless it reaches the maximum) the
// value after its end, flagged as an interval end.
func kernelElements(ivs []interval, isInterval bool) []nftables.SetElement {
	var out []nftables.SetElement
	if !isInterval {
		for _, iv := range ivs {
			out = append(out, nftables.SetElement{Key: slices.Clone(iv.lo)})
		}
		return out
	}
	if len(ivs) > 0 && !allZero(ivs[0].lo) {
		out = append(out, nftables.SetElement{Key: make([]byte, len(ivs[0].lo)), IntervalEnd: true})
	}
	for _, iv := range ivs {
		out = append(out, nftables.SetElement{Key: slices.Clone(iv.lo)})
		if end, ok := incr(iv.hi); ok {
			out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
		}
	}
	return out
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// intervalsFromKernel reads an interval set's elements back into intervals.
func intervalsFromKernel(elems []nftables.SetElement, isInterval bool) []interval {
	elems = slices.Clone(elems)
	slices.SortStableFunc(elems, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		// At one key, an interval end closes the previous interval before
		// the next one starts.
		switch {
		case a.IntervalEnd && !b.IntervalEnd:
			return -1
		case !a.IntervalEnd && b.IntervalEnd:
			return 1
		}
		return 0
	})
	var out []interval
	if !isInterval {
		for _, e := range elems {
			out = append(out, interval{e.Key, e.Key})
		}
		return out
	}
	var start []byte
	for _, e := range elems {
		switch {
		case e.IntervalEnd && start != nil:
			out = append(out, interval{start, decr(e.Key)})
			start = nil
		case !e.IntervalEnd:
			if start != nil { // a start with no end before the next start: one value
				out = append(out, interval{start, start})
			}
			start = e.Key
		}
	}
	if start != nil {
		hi := make([]byte, len(start))
		for i := range hi {
			hi[i] = 0xff
		}
		out = append(out, interval{start, hi})
	}
	return out
}
