package nft

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A rule's comment is "kvmnet <fingerprint> <digest>": the fingerprint
// names the rule kvmnet meant (a hash of its canonical text), the digest
// is a hash of the bytecode kvmnet wrote for it. Observe recomputes the
// digest from what the kernel has, so a rule edited by hand in place (nft
// replace rule ... keeping the comment) no longer matches and is rewritten.

// lookupKeys returns the elements of the set a lookup reads (each key with
// an interval-end flag byte) and whether it is anonymous; a named set is
// digested by name (its contents are compared as a set of its own).
type lookupKeys func(l *expr.Lookup) (keys [][]byte, anonymous bool)

// digest hashes a rule's expressions. What the kernel adds or keeps apart
// from the rule's meaning is left out: counter values, the default log
// level the kernel reports, anonymous set names and IDs.
func digest(fam byte, exprs []expr.Any, keys lookupKeys) string {
	var b bytes.Buffer
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Counter:
			b.WriteString("counter;")
			continue
		case *expr.Lookup:
			ks, anon := keys(x)
			fmt.Fprintf(&b, "lookup sreg=%d dreg=%d inv=%v map=%v ", x.SourceRegister, x.DestRegister, x.Invert, x.IsDestRegSet)
			if !anon {
				fmt.Fprintf(&b, "@%s;", x.SetName)
				continue
			}
			ks = slices.Clone(ks)
			slices.SortFunc(ks, bytes.Compare)
			for _, k := range ks {
				fmt.Fprintf(&b, "%x,", k)
			}
			b.WriteString(";")
			continue
		case *expr.Log:
			if x.Level == expr.LogLevelWarning {
				l := *x
				l.Level, l.Key = 0, l.Key&^(1<<unix.NFTA_LOG_LEVEL)
				e = &l
			}
		}
		m, err := expr.Marshal(fam, e)
		if err != nil {
			fmt.Fprintf(&b, "%T:%v;", e, err)
			continue
		}
		fmt.Fprintf(&b, "%x;", m)
	}
	sum := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(sum[:6])
}

// anonKey is a set element as digest compares it.
func anonKey(key []byte, intervalEnd bool) []byte {
	end := byte(0)
	if intervalEnd {
		end = 1
	}
	return append(slices.Clip(key), end)
}

// digest is the digest of the bytecode Apply writes for r in family fam.
func (r ruleIR) digest(fam byte) string {
	var exprs []expr.Any
	anon := map[string][][]byte{}
	for _, s := range r.stmts {
		exprs = append(exprs, s.exprs...)
		if s.anon != nil {
			name := fmt.Sprintf("\x00anon%d", len(anon))
			for _, e := range s.anon.elems {
				anon[name] = append(anon[name], anonKey(e.Key, e.IntervalEnd))
			}
			exprs = append(exprs, &expr.Lookup{SourceRegister: 1, SetName: name, Invert: s.invert})
		}
	}
	return digest(fam, exprs, func(l *expr.Lookup) ([][]byte, bool) {
		ks, ok := anon[l.SetName]
		return ks, ok
	})
}

// comment is the comment Apply gives r in family fam.
func (r ruleIR) comment(fam byte) string { return CommentPrefix + r.fp + " " + r.digest(fam) }

// parseComment splits a kvmnet rule comment; ok is false for any other.
func parseComment(c string) (fp, dg string, ok bool) {
	rest, found := strings.CutPrefix(c, CommentPrefix)
	if !found {
		return "", "", false
	}
	f := strings.Fields(rest)
	if len(f) != 2 || strings.ContainsAny(rest, "\n") {
		return "", "", false
	}
	return f[0], f[1], true
}
