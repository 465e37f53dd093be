package topology

import (
	"fmt"
	"strings"
)

// Error is one problem in a topology, positioned at the offending field.
type Error struct {
	File   string
	Line   int
	Column int
	// Field is the path of the field, e.g. "links[0].endpoints[1].mac".
	Field string
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem validation found, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap lets errors.As find each *Error.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// errs collects positioned errors during validation.
type errs struct {
	t    *Topology
	list ErrorList
}

func (c *errs) add(field, format string, args ...any) {
	e := &Error{File: c.t.File, Field: field, Msg: fmt.Sprintf(format, args...)}
	e.Line, e.Column = c.t.src.position(field)
	c.list = append(c.list, e)
}

// at names the place of another field for a message: "line 12" when the
// topology came from a file, else the field path.
func (c *errs) at(field string) string {
	if line, _ := c.t.src.position(field); line > 0 {
		return fmt.Sprintf("line %d", line)
	}
	return field
}

// given reports whether field is written in the file (rather than defaulted).
func (c *errs) given(field string) bool {
	if c.t.src == nil {
		return true
	}
	_, ok := c.t.src.at[field]
	return ok
}

func (c *errs) err() error {
	if len(c.list) == 0 {
		return nil
	}
	sortErrors(c.list)
	return c.list
}
