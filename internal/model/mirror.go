package model

import (
	"fmt"
	"strings"

	"github.com/kvmnet/kvmnet/topology"
)

// Mirror copies what crosses a link to another interface of its namespace
// (tc mirred): Ingress what arrives on the link, Egress what leaves it.
type Mirror struct {
	To      string `json:"to"`
	Ingress bool   `json:"ingress,omitempty"`
	Egress  bool   `json:"egress,omitempty"`
}

func (m *Mirror) String() string {
	if m == nil {
		return "none"
	}
	var dirs []string
	if m.Ingress {
		dirs = append(dirs, "ingress")
	}
	if m.Egress {
		dirs = append(dirs, "egress")
	}
	return fmt.Sprintf("%s to %s", strings.Join(dirs, "+"), m.To)
}

// Equal reports whether two mirrors (nil: none) are the same.
func (m *Mirror) Equal(o *Mirror) bool {
	if m == nil || o == nil {
		return m == o
	}
	return *m == *o
}

// mirrors puts each declared mirror on its ports.
func mirrors(t *topology.Topology, s *State) {
	for _, m := range t.Mirrors {
		ns := s.Namespaces[t.NSName(m.Namespace)]
		if ns == nil {
			continue
		}
		in, eg := m.Copies()
		for _, p := range m.Ports {
			if l := ns.Links[p]; l != nil {
				l.Mirror = &Mirror{To: m.To, Ingress: in, Egress: eg}
			}
		}
	}
}

// MirrorHash is the mark hash of the mirrors of a namespace's links ("" for none).
func MirrorHash(ns *Namespace) string {
	return linkHash(ns, func(l *Link) fmt.Stringer {
		if l.Mirror == nil {
			return nil
		}
		return l.Mirror
	})
}
