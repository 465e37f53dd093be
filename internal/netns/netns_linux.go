// Package netns is the only package in kvmnet that creates, enters or deletes
// network namespaces. Everything else addresses a namespace by file
// descriptor (netlink.NewHandleAt, nftables.WithNetNSFd, IFLA_NET_NS_FD) and
// never switches threads. See README.md beside this file for the rules.
//
// Named namespaces live where iproute2 keeps them (/run/netns/NAME), so
// `ip netns list` and `ip -n NAME ...` see exactly what kvmnet made.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (iproute2's convention).
var Dir = "/run/netns"

// Sentinel errors.
var (
	ErrExists   = errors.New("namespace already exists")
	ErrNotFound = errors.New("namespace not found")
)

// NS is an open network namespace: a file descriptor to /run/netns/NAME or to
// a thread's namespace.
//
// The descriptor is a plain one, not an *os.File: an nsfs file cannot join
// Go's poller, and opening one through os costs a failed epoll_ctl and a
// cleanup registration, which a no-op pays once per namespace.
type NS struct {
	Name string
	fd   int // -1 once closed
}

// Fd returns the namespace's file descriptor for fd-targeted APIs.
func (n *NS) Fd() int { return n.fd }

// Close releases the descriptor; the namespace itself stays.
func (n *NS) Close() error {
	if n == nil || n.fd < 0 {
		return nil
	}
	fd := n.fd
	n.fd = -1
	return unix.Close(fd)
}

// openNS opens path as a namespace named name, checking that it is one
// (a name under /run/netns that is not, or no longer, a namespace mount is a
// plain file: ErrNotFound, as Exists says).
func openNS(name, path string) (*NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err == unix.ENOENT {
		return nil, fmt.Errorf("open namespace %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open namespace %q: %w", name, &os.PathError{Op: "open", Path: path, Err: err})
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil || st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("open namespace %q: %w", name, ErrNotFound)
	}
	return &NS{Name: name, fd: fd}, nil
}

// Path is the bind-mount path of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

var mountOnce sync.Once
var mountErr error

// prepareDir makes Dir a shared mount point, as `ip netns add` does, so that
// namespace mounts propagate to every mount namespace.
func prepareDir() error {
	mountOnce.Do(func() {
		if err := os.MkdirAll(Dir, 0o755); err != nil {
			mountErr = fmt.Errorf("create %s: %w", Dir, err)
			return
		}
		for {
			err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
			if err == nil {
				return
			}
			if !errors.Is(err, unix.EINVAL) {
				mountErr = fmt.Errorf("make %s a shared mount: %w", Dir, err)
				return
			}
			// Not a mount point yet: bind it onto itself, then retry.
			if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				mountErr = fmt.Errorf("bind-mount %s: %w", Dir, err)
				return
			}
		}
	})
	return mountErr
}

// Exists reports whether a named namespace exists.
func Exists(name string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(Path(name), &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// List returns the names of the named namespaces under Dir, sorted.
func List() ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Create makes a new named namespace and returns it open. It fails with
// ErrExists if the name is taken. The namespace is born in a goroutine whose
// OS thread is locked and never unlocked, so the thread dies with it and no
// other goroutine ever runs in the new namespace by accident.
func Create(name string) (*NS, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("create namespace %q: invalid name", name)
	}
	if err := prepareDir(); err != nil {
		return nil, err
	}
	p := Path(name)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create namespace %q: %w", name, ErrExists)
		}
		return nil, fmt.Errorf("create namespace %q: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with this goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount %s: %w", p, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("create namespace %q: %w", name, err)
	}
	return Open(name)
}

// Open opens an existing named namespace.
func Open(name string) (*NS, error) { return openNS(name, Path(name)) }

// Delete removes a named namespace: it unmounts and removes /run/netns/NAME.
// The kernel then destroys the namespace and its devices asynchronously, once
// no process or descriptor holds it. A missing namespace is not an error.
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete namespace %q: unmount: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete namespace %q: %w", name, err)
	}
	return nil
}

// Do runs fn with the calling goroutine's work moved into ns: it starts a
// fresh goroutine, locks it to its OS thread, enters ns, runs fn and restores
// the original namespace. If the restore fails the thread stays locked, so Go
// retires it instead of reusing a thread in the wrong namespace (CNI's
// pkg/ns rule). fn must not start goroutines or block on the network.
func Do(ns *NS, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Every thread that runs goroutines freely is in the initial
		// namespace (a thread Do could not restore stays locked and dies),
		// so the way back is the initial namespace's descriptor, opened
		// once, not this thread's, opened per call.
		orig := initial
		if initialErr != nil {
			var err error
			if orig, err = os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())); err != nil {
				runtime.UnlockOSThread()
				errc <- fmt.Errorf("open current namespace: %w", err)
				return
			}
			defer orig.Close()
		}
		if err := unix.Setns(ns.Fd(), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %q: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore namespace after %q: %w", ns.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// WriteSysctl writes value to the sysctl key (dotted, e.g.
// "net.ipv4.ip_forward") inside ns. /proc/sys/net resolves to the namespace of
// the thread that opens the file, so the open happens inside Do.
func WriteSysctl(ns *NS, key, value string) error {
	p := sysctlPath(key)
	return Do(ns, func() error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString(value)
		cerr := f.Close()
		return errors.Join(werr, cerr)
	})
}

// ReadSysctl reads the sysctl key inside ns.
func ReadSysctl(ns *NS, key string) (string, error) {
	var out string
	err := Do(ns, func() error {
		b, err := os.ReadFile(sysctlPath(key))
		out = strings.TrimSpace(string(b))
		return err
	})
	return out, err
}

// ReadSysctls reads several keys inside ns with one thread switch. A key that
// does not exist reads as "".
func ReadSysctls(ns *NS, keys []string) (map[string]string, error) {
	var out map[string]string
	err := Do(ns, func() error {
		var err error
		out, err = ReadSysctlsHere(keys)
		return err
	})
	return out, err
}

// ReadSysctlsHere reads keys in the calling thread's namespace (inside Do).
func ReadSysctlsHere(keys []string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	buf := make([]byte, 64)
	for _, k := range keys {
		fd, err := unix.Open(sysctlPath(k), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			out[k] = ""
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", k, err)
		}
		n, err := unix.Read(fd, buf)
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", k, err)
		}
		out[k] = strings.TrimSpace(string(buf[:n]))
	}
	return out, nil
}

// WriteSysctls writes several keys inside ns with one thread switch, in order.
func WriteSysctls(ns *NS, kv [][2]string) error {
	return Do(ns, func() error {
		for _, e := range kv {
			if err := os.WriteFile(sysctlPath(e[0]), []byte(e[1]), 0); err != nil {
				return fmt.Errorf("write sysctl %s=%s: %w", e[0], e[1], err)
			}
		}
		return nil
	})
}

func sysctlPath(key string) string {
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// Exec replaces the process with argv[0] (looked up in PATH) running inside
// the named namespace. It only returns on error.
func Exec(name, file string, argv []string) error {
	ns, err := Open(name)
	if err != nil {
		return err
	}
	path, err := exec.LookPath(file)
	if err != nil {
		return err
	}
	runtime.LockOSThread() // exec happens from this thread, in ns
	if err := unix.Setns(ns.Fd(), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %q: %w", name, err)
	}
	return unix.Exec(path, argv, os.Environ())
}

// initial is the namespace the process started in, opened before any
// goroutine could move a thread. (/proc/self/ns/net is not a substitute: it
// follows the main thread, and Create may retire the main thread inside a new
// namespace when the goroutine that made it happens to run there.)
var initial, initialErr = os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))

// Initial returns the namespace kvmnet was started in (the host's root
// namespace, normally), open; close it when done.
func Initial() (*NS, error) {
	if initialErr != nil {
		return nil, fmt.Errorf("open the initial namespace: %w", initialErr)
	}
	ns, err := openNS("root", fmt.Sprintf("/proc/self/fd/%d", initial.Fd()))
	if err != nil {
		return nil, fmt.Errorf("open the initial namespace: %w", err)
	}
	return ns, nil
}
