package topology

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultFile is the name shown in positions for the embedded reference design.
const DefaultFile = "<default>"

// DefaultYAML returns the embedded reference design as YAML (what `kvmnet init` writes).
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Default returns the reference design, loaded, defaulted and validated.
func Default() (*Topology, error) { return Parse(DefaultFile, defaultYAML) }

// Load reads, decodes, defaults and validates the topology file at path.
func Load(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data (named file in errors) strictly, fills in defaults and
// validates the result. Every error it returns is an *Error or an ErrorList,
// positioned at file:line:column and naming the field.
func Parse(file string, data []byte) (*Topology, error) {
	t, err := Decode(file, data)
	if err != nil {
		return nil, err
	}
	if err := t.Normalize(); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Decode only decodes: unknown fields, wrong types and YAML syntax errors are
// reported; defaults and semantic checks are not applied.
func Decode(file string, data []byte) (*Topology, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{File: file, Line: 1, Column: 1, Msg: "the topology is empty"}
	}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(file, err)
	}
	if len(f.Docs) != 1 {
		return nil, &Error{File: file, Line: 1, Column: 1, Msg: fmt.Sprintf("want exactly one YAML document, found %d", len(f.Docs))}
	}
	if body := f.Docs[0].Body; body == nil || body.Type() != ast.MappingType {
		return nil, &Error{File: file, Line: 1, Column: 1, Msg: "the topology must be a mapping with at least a name and namespaces"}
	}
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField())
	if err := dec.Decode(&t); err != nil {
		return nil, yamlError(file, err)
	}
	t.File = file
	t.src = &source{file: file, ast: f}
	return &t, nil
}

// yamlError turns a go-yaml error into a positioned *Error with a message
// written for users (no Go type names).
func yamlError(file string, err error) error {
	var ye yaml.Error
	if !errors.As(err, &ye) || ye.GetToken() == nil {
		return &Error{File: file, Line: 1, Column: 1, Msg: err.Error()}
	}
	pos := ye.GetToken().Position
	e := &Error{File: file, Line: pos.Line, Column: pos.Column, Msg: ye.GetMessage()}
	var te *yaml.TypeError
	var ue *yaml.UnknownFieldError
	switch {
	case errors.As(err, &te):
		if te.StructFieldName != nil {
			name := *te.StructFieldName
			e.Field = name[strings.LastIndex(name, ".")+1:]
		}
		e.Msg = fmt.Sprintf("want %s, found %s", kindName(te.DstType), strings.TrimSpace(ye.GetToken().Value))
		if ye.GetToken().Value == "" {
			e.Msg = fmt.Sprintf("want %s", kindName(te.DstType))
		}
	case errors.As(err, &ue):
		e.Msg = strings.Replace(ue.Message, "unknown field", "unknown field", 1)
	}
	return e
}

func kindName(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

// source remembers the parsed file so that semantic errors found after decoding
// can still be pointed at a line and column.
type source struct {
	file string
	ast  *ast.File
}

// position finds the line and column of field (a path such as
// "links[0].endpoints[1].mac"). A field that is absent from the file is
// reported at the closest enclosing node that is present.
func (s *source) position(field string) (line, col int) {
	if s == nil || s.ast == nil {
		return 0, 0
	}
	segs := splitField(field)
	for n := len(segs); n >= 0; n-- {
		p, err := yaml.PathString("$" + joinField(segs[:n]))
		if err != nil {
			continue
		}
		node, err := p.FilterFile(s.ast)
		if err != nil || node == nil || node.GetToken() == nil {
			continue
		}
		tok := node.GetToken()
		return tok.Position.Line, tok.Position.Column
	}
	return 1, 1
}

// splitField splits "a[0].b.'c.d'" into ["a", "[0]", "b", "'c.d'"].
func splitField(field string) []string {
	var segs []string
	var cur strings.Builder
	inQuote := false
	flush := func() {
		if cur.Len() > 0 {
			segs = append(segs, cur.String())
			cur.Reset()
		}
	}
	for _, r := range field {
		switch {
		case r == '\'':
			inQuote = !inQuote
			cur.WriteRune(r)
		case inQuote:
			cur.WriteRune(r)
		case r == '.':
			flush()
		case r == '[':
			flush()
			cur.WriteRune(r)
		case r == ']':
			cur.WriteRune(r)
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return segs
}

func joinField(segs []string) string {
	var b strings.Builder
	for _, s := range segs {
		if !strings.HasPrefix(s, "[") {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}

// Key renders a map key as a field path segment, quoting keys that contain dots.
func Key(k string) string {
	if strings.ContainsAny(k, ".[]") {
		return "'" + k + "'"
	}
	return k
}
