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
	return start(scanPrefix, desired).Finish(desired, scanPrefix, deep)
}

// Early is an observation started before the desired state is known: while
// the topology loads and validates (single-threaded, a quarter of a no-op
// up at 500 namespaces), one worker already reads the links, IPv4 addresses
// and routes of the namespaces under a prefix. What needs the desired state
// (whether the IPv6 dumps can be left out, the sysctls and the aspects the
// namespace mark vouches for, which namespaces belong to the network) waits
// for Finish. Reading is all it does: nothing is written before validation.
//
// The reads happen before the caller holds the network's lock; a caller
// that changes the network on their strength must first make sure that no
// kvmnet command ran in between (lab compares state.Generation).
type Early struct {
	names []string // the namespaces Start listed, in reading order
	err   error    // listing them failed
	next  atomic.Int64
	wg    sync.WaitGroup

	listed  chan struct{} // closed when every listed namespace has been read (Wait)
	ready   chan struct{} // closed when the desired state is set (or Cancel)
	desired *model.State  // nil after Cancel
	deep    Deep

	listedOnce sync.Once

	mu      sync.Mutex
	pending []*partial // read before the desired state was known
	seen    map[string]bool
	out     map[string]*model.Namespace
	errs    []error
}

// maxPending bounds the namespaces held open (a namespace descriptor and a
// socket each) while waiting for the desired state.
const maxPending = 256

// Start begins an observation of the namespaces whose names start with
// scanPrefix (every namespace when it is empty). Finish or Cancel it.
func Start(scanPrefix string) *Early { return start(scanPrefix, nil) }

// start lists the namespaces and starts one worker. With desired known, the
// namespaces it names come first, largest (by links) first, so that a
// namespace with hundreds of bridge ports is not the last one read while
// the other workers have finished.
func start(scanPrefix string, desired *model.State) *Early {
	e := &Early{listed: make(chan struct{}), ready: make(chan struct{}), seen: map[string]bool{}, out: map[string]*model.Namespace{}}
	names, err := netns.List()
	if err != nil {
		e.err = fmt.Errorf("list namespaces: %w", err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, scanPrefix) || desired != nil && desired.Namespaces[n] != nil {
			e.names = append(e.names, n)
			e.seen[n] = true
		}
	}
	if desired != nil {
		slices.SortStableFunc(e.names, func(a, b string) int {
			return linkCount(desired.Namespaces[b]) - linkCount(desired.Namespaces[a])
		})
	}
	e.wg.Add(1)
	go e.work()
	return e
}

func linkCount(ns *model.Namespace) int {
	if ns == nil {
		return 0
	}
	return len(ns.Links)
}

// Finish completes the observation for network desired.Network, as Network
// does: the namespaces Start did not list (desired ones outside its prefix,
// any made since) are read now, and those that are neither desired nor
// under scanPrefix are left out.
func (e *Early) Finish(desired *model.State, scanPrefix string, deep Deep) (*model.State, error) {
	e.desired, e.deep = desired, deep
	close(e.ready)
	e.spawn(Workers - 1)
	e.wg.Wait()
	if e.err != nil {
		return nil, e.err
	}
	// A second round for what the first did not list.
	names, err := netns.List()
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var more []string
	for _, n := range names {
		if !e.seen[n] && (desired.Namespaces[n] != nil || strings.HasPrefix(n, scanPrefix)) {
			more = append(more, n)
		}
	}
	if len(more) > 0 {
		e.names = more
		e.next.Store(0)
		e.spawn(Workers)
		e.wg.Wait()
	}
	if len(e.errs) > 0 {
		return nil, errors.Join(e.errs...)
	}
	out := &model.State{Network: desired.Network, Namespaces: map[string]*model.Namespace{}}
	for n, ns := range e.out {
		if desired.Namespaces[n] != nil || strings.HasPrefix(n, scanPrefix) {
			out.Namespaces[n] = ns
		}
	}
	return out, nil
}

// Cancel stops an observation that will not be finished and releases what
// it holds. It is a no-op after Finish.
func (e *Early) Cancel() {
	select {
	case <-e.ready:
	default:
		close(e.ready)
	}
	e.next.Store(int64(len(e.names)))
	e.wg.Wait()
}

// Wait blocks until the observation has read all it will before Finish:
// every namespace Start listed, or maxPending of them. Tests use it to make
// a change after the early reads.
func (e *Early) Wait() { <-e.listed }

func (e *Early) spawn(n int) {
	for range min(n, len(e.names)) {
		e.wg.Add(1)
		go e.work()
	}
}

// work reads namespaces until none is left. Long-lived workers: their
// stacks grow once, not once per namespace; they take the next name by an
// atomic index, not from a channel (each hand-off would wake a sleeping
// thread). Until the desired state is known, what they read waits in
// pending, at most maxPending namespaces.
func (e *Early) work() {
	defer e.wg.Done()
	for {
		if p := e.popPending(); p != nil {
			e.finish(p)
			continue
		}
		i := e.next.Add(1) - 1
		if i >= int64(len(e.names)) {
			e.listedOnce.Do(func() { close(e.listed) })
			<-e.ready
			for p := e.popPending(); p != nil; p = e.popPending() {
				e.finish(p)
			}
			return
		}
		p := first(e.names[i])
		select {
		case <-e.ready:
			e.finish(p)
			continue
		default:
		}
		e.mu.Lock()
		e.pending = append(e.pending, p)
		full := len(e.pending) >= maxPending
		e.mu.Unlock()
		if full {
			e.listedOnce.Do(func() { close(e.listed) })
			<-e.ready
		}
	}
}

// popPending takes a namespace read before the desired state was known,
// once it is.
func (e *Early) popPending() *partial {
	select {
	case <-e.ready:
	default:
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.pending) == 0 {
		return nil
	}
	p := e.pending[len(e.pending)-1]
	e.pending = e.pending[:len(e.pending)-1]
	return p
}

// finish completes p against the desired state and records the result.
func (e *Early) finish(p *partial) {
	if e.desired == nil { // cancelled
		p.close()
		return
	}
	ns, err := p.finish(e.desired.Namespaces[p.name], e.desired.Network, e.deep)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case errors.Is(err, netns.ErrNotFound): // deleted while we looked
	case err != nil:
		e.errs = append(e.errs, err)
	case ns != nil:
		e.out[p.name] = ns
	}
}

// partial is a namespace read as far as it can be without the desired
// state: links (with lo's mark), IPv4 addresses and routes. The namespace
// and the socket stay open for the rest.
type partial struct {
	name string
	ns   *netns.NS
	r    *link.Reader
	obs  *model.Namespace
	err  error
}

// first opens namespace name and reads what needs no desired state. It
// switches into the namespace only to open a netlink socket there; the
// dumps run from the calling goroutine.
func first(name string) *partial {
	p := &partial{name: name}
	if p.ns, p.err = netns.Open(name); p.err != nil {
		return p
	}
	if p.err = netns.Do(p.ns, func() (err error) { p.r, err = link.NewReaderHere(p.ns); return err }); p.err != nil {
		return p
	}
	p.obs, p.err = p.r.ObserveIPv4()
	return p
}

func (p *partial) close() {
	if p.r != nil {
		p.r.Close()
	}
	p.ns.Close()
}

// finish completes the namespace for network id, of which want is the
// desired state (nil: not desired); it returns nil for a namespace that is
// neither desired nor owned by id.
func (p *partial) finish(want *model.Namespace, id string, deep Deep) (*model.Namespace, error) {
	defer p.close()
	if p.err != nil {
		return nil, p.err
	}
	obs, ns := p.obs, p.ns
	// Where kvmnet switched IPv6 off (all and default disable_ipv6, the
	// derived sysctls of a namespace without IPv6) and the mark vouches
	// that it still is, no IPv6 address or route can be there: leave the
	// two IPv6 dumps out. Like the trusted sysctls themselves, --deep (and
	// status) reads them anyway.
	// The mark vouches for the sysctls only if the per-device copies the
	// link dump carries agree (a hand-written sysctl changes every device).
	trusted := false
	if want != nil && !deep && obs.Owner == id {
		trusted = obs.Marks[model.AspectSysctl] == model.SysctlHash(want.Sysctls) && model.DevConfAgrees(want.Sysctls, obs.DevConf)
	}
	v6off := trusted && want.Sysctls[model.SysctlIPv6DisableAll] == "1" && want.Sysctls[model.SysctlIPv6DisableDefault] == "1"
	if !v6off {
		if err := p.r.AddIPv6(obs); err != nil {
			return nil, err
		}
	}
	if obs.Owner == id && want != nil && len(want.Sysctls) > 0 {
		if trusted {
			// Trust the mark: it records exactly the desired sysctls.
			obs.Sysctls = maps.Clone(want.Sysctls)
		} else if err := netns.Do(ns, func() (err error) {
			obs.Sysctls, err = netns.ReadSysctlsHere(model.SortedNames(want.Sysctls))
			return err
		}); err != nil {
			return nil, fmt.Errorf("namespace %q: %w", p.name, err)
		}
	}
	if obs.Owner != id {
		if want == nil {
			return nil, nil
		}
		return &model.Namespace{Name: p.name, Owner: obs.Owner}, nil
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
