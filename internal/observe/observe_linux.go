// Package observe reads the kernel into the model: every namespace a network
// wants or owns, with its links, addresses, routes and the sysctls the desired
// state names.
package observe

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kvmnet/kvmnet/internal/link"
	"github.com/kvmnet/kvmnet/internal/model"
	"github.com/kvmnet/kvmnet/internal/netns"
	"github.com/kvmnet/kvmnet/internal/nft"
	"github.com/kvmnet/kvmnet/internal/qos"
)

// Workers bounds how many namespaces are read at once.
var Workers = 2

// Deep makes observation read every sysctl from /proc/sys even when the
// namespace's mark records that kvmnet applied exactly the desired ones.
type Deep bool

// Network observes network id. It reads every namespace that desired names
// (whoever owns it) and every namespace under /run/netns whose name starts
// with scanPrefix and whose mark says id owns it. Namespaces that exist but
// belong to someone else are returned with their Owner and no contents.
func Network(desired *model.State, scanPrefix string, deep Deep) (*model.State, error) {
	names, err := netns.List()
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	id := desired.Network
	var todo []string
	for _, n := range names {
		if desired.Namespaces[n] != nil || strings.HasPrefix(n, scanPrefix) {
			todo = append(todo, n)
		}
	}
	// Largest first (by the links the desired state gives them), so that a
	// namespace with hundreds of bridge ports is not the last one read while
	// the other workers have finished.
	slices.SortStableFunc(todo, func(a, b string) int {
		return linkCount(desired.Namespaces[b]) - linkCount(desired.Namespaces[a])
	})
	out := &model.State{Network: id, Namespaces: map[string]*model.Namespace{}}
	var mu sync.Mutex
	var errs []error
	// Long-lived workers: their stacks grow once, not once per namespace.
	// They take the next name by an atomic index, not from a channel:
	// each channel hand-off would wake a sleeping thread.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(Workers, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(todo)); i = next.Add(1) - 1 {
				name := todo[i]
				ns, err := one(name, desired.Namespaces[name], id, deep)
				mu.Lock()
				switch {
				case errors.Is(err, netns.ErrNotFound): // deleted while we looked
				case err != nil:
					errs = append(errs, err)
				case ns != nil:
					out.Namespaces[name] = ns
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func linkCount(ns *model.Namespace) int {
	if ns == nil {
		return 0
	}
	return len(ns.Links)
}

// one reads a single namespace; it returns nil for one that is neither
// desired nor owned by id. It switches into the namespace only to open a
// netlink socket there (and again to read sysctls, when the namespace mark
// does not vouch for them); the dumps of links (with lo's mark), addresses
// and routes run from the calling goroutine.
func one(name string, want *model.Namespace, id string, deep Deep) (*model.Namespace, error) {
	ns, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var r *link.Reader
	if err := netns.Do(ns, func() (err error) { r, err = link.NewReaderHere(ns); return err }); err != nil {
		return nil, err
	}
	// Where kvmnet switched IPv6 off (all and default disable_ipv6, the
	// derived sysctls of a namespace without IPv6) and the mark vouches
	// that it still is, no IPv6 address or route can be there: leave the
	// two IPv6 dumps out. Like the trusted sysctls themselves, --deep (and
	// status) reads them anyway.
	var sysctlHash string // what the mark must say for the sysctls to be trusted
	if want != nil {
		sysctlHash = model.SysctlHash(want.Sysctls)
	}
	if !deep && want != nil && want.Sysctls[model.SysctlIPv6DisableAll] == "1" && want.Sysctls[model.SysctlIPv6DisableDefault] == "1" {
		r.SkipIPv6(func(o *model.Namespace) bool { return o.Owner == id && o.Marks[model.AspectSysctl] == sysctlHash })
	}
	obs, err := r.Observe()
	r.Close()
	if err != nil {
		return nil, err
	}
	if obs.Owner == id && want != nil && len(want.Sysctls) > 0 {
		if !deep && obs.Marks[model.AspectSysctl] == sysctlHash {
			// Trust the mark: it records exactly the desired sysctls.
			obs.Sysctls = maps.Clone(want.Sysctls)
		} else if err := netns.Do(ns, func() (err error) {
			obs.Sysctls, err = netns.ReadSysctlsHere(model.SortedNames(want.Sysctls))
			return err
		}); err != nil {
			return nil, fmt.Errorf("namespace %q: %w", name, err)
		}
	}
	if obs.Owner != id {
		if want == nil {
			return nil, nil
		}
		return &model.Namespace{Name: name, Owner: obs.Owner}, nil
	}
	if want != nil {
		if err := aspects(ns, want, obs, deep); err != nil {
			return nil, err
		}
	}
	return obs, nil
}

// aspects fills in the nftables tables, the QoS and the port mirrors of an
// owned namespace.
// Each is trusted from the namespace mark when the mark records exactly the
// desired state (and deep is off), skipped when kvmnet neither has nor wants
// any, and read from the kernel otherwise.
func aspects(ns *netns.NS, want, obs *model.Namespace, d Deep) error {
	deep := bool(d)
	switch mark := obs.Marks[model.AspectNFT]; {
	case !deep && mark == model.NFTHash(want.NFT):
		obs.NFT = want.NFT
	case !deep && mark == "" && want.NFT == "":
	default:
		var err error
		if obs.NFT, err = nft.Observe(ns); err != nil {
			return err
		}
	}
	err := perLink(deep, obs.Marks[model.AspectQoS], model.QoSHash(want), obs, want,
		func(l, w *model.Link) { l.QoS = w.QoS },
		func(l *model.Link) (err error) {
			if l.Kind != model.KindBridge {
				l.QoS, err = qos.Observe(ns, l.Name)
			}
			return err
		})
	if err != nil {
		return fmt.Errorf("namespace %q: %w", ns.Name, err)
	}
	err = perLink(deep, obs.Marks[model.AspectMirror], model.MirrorHash(want), obs, want,
		func(l, w *model.Link) { l.Mirror = w.Mirror },
		func(l *model.Link) (err error) {
			l.Mirror, err = qos.ObserveMirror(ns, l.Name)
			return err
		})
	if err != nil {
		return fmt.Errorf("namespace %q: %w", ns.Name, err)
	}
	return nil
}

// perLink fills one per-link aspect of the owned links of obs: trusted from
// want when the namespace mark records exactly the desired hash (and deep is
// off), left empty when kvmnet neither has nor wants any, read otherwise.
func perLink(deep bool, mark, wantHash string, obs, want *model.Namespace, trust func(l, w *model.Link), read func(l *model.Link) error) error {
	switch {
	case !deep && mark == wantHash:
		for name, l := range obs.Links {
			if w := want.Links[name]; w != nil && l.Owner != "" {
				trust(l, w)
			}
		}
	case !deep && mark == "" && wantHash == "":
	default:
		for _, l := range obs.Links {
			if l.Owner == "" {
				continue
			}
			if err := read(l); err != nil {
				return err
			}
		}
	}
	return nil
}
