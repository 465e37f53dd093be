package topology

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultFile is the name shown in positions for the embedded reference design.
const DefaultFile = "<default>"

// DefaultYAML returns the embedded reference design as YAML (what `kvmnet init` writes).
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Default returns the reference design, loaded, defaulted and validated.
func Default(opts ...Option) (*Topology, error) { return Parse(DefaultFile, defaultYAML, opts...) }

// Option adjusts a topology after decoding and before defaults and
// validation.
type Option func(*Topology)

// WithPrefix overrides the file's namespace prefix. It applies before
// defaults, so MACs derived from the network ID differ between two copies of
// one file run under different prefixes.
func WithPrefix(prefix string) Option {
	return func(t *Topology) {
		if prefix != "" {
			t.Prefix = prefix
		}
	}
}

// Load reads, decodes, defaults and validates the topology file at path.
func Load(path string, opts ...Option) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return Parse(path, data, opts...)
}

// Parse decodes data (named file in errors) strictly, fills in defaults and
// validates the result. Every error it returns is an *Error or an ErrorList,
// positioned at file:line:column and naming the field.
func Parse(file string, data []byte, opts ...Option) (*Topology, error) {
	t, err := Decode(file, data)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(t)
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
// reported; defaults and semantic checks are not applied. Every unknown field
// is reported, with the first type error the decoder meets.
//
// Files in the plain subset of YAML that topologies are written in take a
// fast path (fastDecode, about 20 times faster on a large file); anything
// else, and every file with an error, goes through go-yaml's parser and
// decoder, which also positions the errors.
func Decode(file string, data []byte) (*Topology, error) {
	if t, ok := fastDecode(file, data); ok {
		return t, nil
	}
	return slowDecode(file, data)
}

// slowDecode decodes with go-yaml's syntax tree: any YAML, every error.
func slowDecode(file string, data []byte) (*Topology, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{File: file, Line: 1, Column: 1, Msg: "the topology is empty"}
	}
	var f *ast.File
	err := safely(func() (err error) {
		f, err = parser.ParseBytes(data, 0)
		return err
	})
	if err != nil {
		return nil, syntaxError(file, data, err)
	}
	var docs []*ast.DocumentNode
	for _, d := range f.Docs {
		if d != nil && d.Body != nil {
			docs = append(docs, d)
		}
	}
	switch len(docs) {
	case 0:
		return nil, &Error{File: file, Line: 1, Column: 1, Msg: "the topology is empty (the file holds only comments)"}
	case 1:
	default:
		line, col := 1, 1
		if tok := docs[1].Start; tok != nil {
			line, col = tokenPos(tok)
		} else if tok := docs[1].Body.GetToken(); tok != nil {
			line, col = tokenPos(tok)
		}
		return nil, &Error{File: file, Line: line, Column: col,
			Msg: fmt.Sprintf("a second YAML document starts here; a topology file holds exactly one (found %d)", len(docs))}
	}
	src := newSource(file, f)
	body := docs[0].Body
	if body.Type() != ast.MappingType && body.Type() != ast.MappingValueType {
		line, col := src.nodePos(body)
		return nil, &Error{File: file, Line: line, Column: col,
			Msg: fmt.Sprintf("the topology must be a mapping of fields (name, namespaces, bridges, links, uplink), found %s", describeNode(body))}
	}
	if len(src.tagErrs) > 0 {
		if len(src.tagErrs) == 1 {
			return nil, src.tagErrs[0]
		}
		sortErrors(src.tagErrs)
		return nil, src.tagErrs
	}
	var list ErrorList
	src.checkFields(body, reflect.TypeFor[Topology](), "", 0, &list)
	var t Topology
	if err := safely(func() error { return yaml.NodeToValue(body, &t, yaml.DisallowUnknownField()) }); err != nil {
		var ue *yaml.UnknownFieldError
		if !errors.As(err, &ue) || len(list) == 0 {
			list = append(list, src.decodeError(err))
		}
	}
	switch len(list) {
	case 0:
	case 1:
		return nil, list[0]
	default:
		sortErrors(list)
		return nil, list
	}
	t.File = file
	// Later errors (validation, lint) only need field positions: let the
	// syntax tree and its token maps go (a large file's tree is most of the
	// loader's memory).
	src.paths, src.nodes, src.byPos = nil, nil, nil
	t.src = src
	return &t, nil
}

// safely runs fn, turning a panic of the YAML library into an error: a
// malformed file must never crash the program that loads it.
func safely(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the YAML library failed on this input (%v); please report it", r)
		}
	}()
	return fn()
}

// dupKeyRe matches go-yaml's duplicate key message.
var dupKeyRe = regexp.MustCompile(`^mapping key "(.*)" already defined at \[(\d+):(\d+)\]$`)

// syntaxError turns a go-yaml parse error into a positioned *Error.
func syntaxError(file string, data []byte, err error) *Error {
	var ye yaml.Error
	if !errors.As(err, &ye) || ye.GetToken() == nil {
		return &Error{File: file, Line: 1, Column: 1, Msg: "invalid YAML: " + firstLine(err.Error())}
	}
	line, col := tokenPos(ye.GetToken())
	e := &Error{File: file, Line: line, Column: col}
	msg := ye.GetMessage()
	switch m := dupKeyRe.FindStringSubmatch(msg); {
	case m != nil:
		// Parse again, tolerating the duplicate, only to name the field.
		if f, err := parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey()); err == nil {
			e.Field = newSource(file, f).pathAt(line, col)
		}
		e.Msg = fmt.Sprintf("duplicate key %q: it is already given at line %s, column %s", m[1], m[2], m[3])
	case strings.Contains(msg, "'\t'"):
		e.Msg = "invalid YAML: a tab character here; YAML is indented with spaces only"
	case syntaxHints[msg] != "":
		e.Msg = "invalid YAML: " + syntaxHints[msg]
	default:
		e.Msg = "invalid YAML: " + firstLine(msg)
	}
	return e
}

// syntaxHints rewords the go-yaml syntax errors users meet most.
var syntaxHints = map[string]string{
	"mapping value is not allowed in this context": "a key (\"key:\") where none is allowed; check the indentation of this line and the next",
	"',' or ']' must be specified":                 "expected ',' or ']': a flow list ([...]) is not closed",
	"',' or '}' must be specified":                 "expected ',' or '}': a flow mapping ({...}) is not closed",
	"could not find flow mapping end token '}'":    "expected '}': a flow mapping ({...}) is not closed",
	"sequence end token ']' not found":             "expected ']': a flow list ([...]) is not closed",
}

// decodeError turns a go-yaml decoding error into a positioned *Error with a
// message written for users (no Go type names).
func (s *source) decodeError(err error) *Error {
	var ye yaml.Error
	if !errors.As(err, &ye) || ye.GetToken() == nil {
		msg := firstLine(err.Error())
		if errors.Is(err, yaml.ErrExceededMaxDepth) {
			msg = "the YAML is nested too deeply"
		}
		return &Error{File: s.file, Line: 1, Column: 1, Msg: msg}
	}
	tok := ye.GetToken()
	line, col := tokenPos(tok)
	e := &Error{File: s.file, Line: line, Column: col, Field: s.paths[tok], Msg: firstLine(ye.GetMessage())}
	if e.Field == "" {
		e.Field = s.pathAt(line, col)
	}
	if p, ok := s.at[e.Field]; ok && e.Field != "" {
		e.Line, e.Column = p.line, p.col
	}
	var (
		te *yaml.TypeError
		oe *yaml.OverflowError
		ne *yaml.UnexpectedNodeTypeError
		ue *yaml.UnknownFieldError
		se *yaml.SyntaxError
	)
	switch {
	case errors.As(err, &te):
		e.Msg = fmt.Sprintf("want %s, found %s", kindName(te.DstType), s.describeToken(tok))
	case errors.As(err, &oe):
		e.Msg = fmt.Sprintf("want %s, found %s, which is out of range", kindName(oe.DstType), oe.SrcNum)
	case errors.As(err, &ne):
		e.Msg = fmt.Sprintf("want %s, found %s", yamlKindName(ne.Expected), yamlKindName(ne.Actual))
	case errors.As(err, &ue):
		e.Msg = unknownFieldMsg(tok.Value, s.fieldType(parentField(e.Field)))
	case errors.As(err, &se):
		e.Msg = "invalid YAML: " + firstLine(se.Message)
	}
	return e
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func tokenPos(tok *token.Token) (line, col int) {
	if tok == nil || tok.Position == nil {
		return 1, 1
	}
	return max(tok.Position.Line, 1), max(tok.Position.Column, 1)
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

func yamlKindName(t ast.NodeType) string {
	switch t {
	case ast.MappingType, ast.MappingValueType:
		return "a mapping"
	case ast.SequenceType:
		return "a list"
	case ast.NullType:
		return "nothing"
	case ast.BoolType:
		return "true or false"
	case ast.IntegerType:
		return "an integer"
	case ast.FloatType, ast.InfinityType, ast.NanType:
		return "a number"
	case ast.StringType, ast.LiteralType:
		return "a string"
	}
	return "a " + t.YAMLName()
}

// describeNode says what a node is, for "found ..." messages.
func describeNode(n ast.Node) string {
	n = unwrapNode(n)
	if n == nil {
		return "nothing"
	}
	switch n.Type() {
	case ast.MappingType, ast.MappingValueType, ast.SequenceType, ast.NullType:
		return yamlKindName(n.Type())
	}
	if tok := n.GetToken(); tok != nil {
		return strconv.Quote(tok.Value)
	}
	return yamlKindName(n.Type())
}

func (s *source) describeToken(tok *token.Token) string {
	if n := s.nodes[tok]; n != nil {
		return describeNode(n)
	}
	if tok.Value == "" {
		return "nothing"
	}
	return strconv.Quote(tok.Value)
}

func unwrapNode(n ast.Node) ast.Node {
	for range maxDepth {
		switch v := n.(type) {
		case *ast.TagNode:
			n = v.Value
		case *ast.AnchorNode:
			n = v.Value
		default:
			return n
		}
	}
	return n
}

// unknownFieldMsg names the unknown key and suggests the field the user
// probably meant, or lists the valid ones.
func unknownFieldMsg(key string, t reflect.Type) string {
	msg := fmt.Sprintf("unknown field %q", key)
	names := yamlFieldNames(t)
	if len(names) == 0 {
		return msg
	}
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), n); d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" {
		return fmt.Sprintf("%s; did you mean %q?", msg, best)
	}
	return fmt.Sprintf("%s; the fields here are %s", msg, strings.Join(names, ", "))
}

// yamlFieldNames lists the YAML keys of struct type t, in declaration order.
func yamlFieldNames(t reflect.Type) []string {
	fields := yamlFields(t)
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return names
}

type yamlField struct {
	name  string
	typ   reflect.Type
	index int // in the struct
}

// yamlFields lists the YAML keys of struct type t (after dereferencing
// pointers) with their Go types, in declaration order.
func yamlFields(t reflect.Type) []yamlField {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []yamlField
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		out = append(out, yamlField{name: name, typ: sf.Type, index: i})
	}
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// maxDepth bounds the walks over the YAML tree; the topology format nests
// fewer than ten levels deep, so anything deeper is not a topology.
const maxDepth = 64

type linecol struct{ line, col int }

// source remembers the parsed file so that semantic errors found after decoding
// can still be pointed at a line and column.
type source struct {
	file string
	// at maps a field path ("links[0].endpoints[1].mac") to where a user looks
	// for it: the value of a scalar, the key of a mapping or list.
	at map[string]linecol
	// paths and nodes map a token back to the field path and the outermost
	// node it starts, to name the field in the decoder's errors.
	paths map[*token.Token]string
	nodes map[*token.Token]ast.Node
	// byPos maps the position of a key or value to its field path.
	byPos map[linecol]string
	// tagErrs are the YAML tags a topology cannot have.
	tagErrs ErrorList
}

// plainTags are the YAML tags that only restate a plain value's type.
var plainTags = []string{"!!str", "!!int", "!!float", "!!bool", "!!null", "!!seq", "!!map"}

func newSource(file string, f *ast.File) *source {
	s := &source{
		file:  file,
		at:    map[string]linecol{},
		paths: map[*token.Token]string{},
		nodes: map[*token.Token]ast.Node{},
		byPos: map[linecol]string{},
	}
	for _, d := range f.Docs {
		if d != nil && d.Body != nil {
			s.index(d.Body, "", nil, 0)
			break
		}
	}
	return s
}

func (s *source) record(tok *token.Token, path string, n ast.Node) {
	if tok == nil {
		return
	}
	if _, ok := s.paths[tok]; !ok {
		s.paths[tok] = path
		s.nodes[tok] = n
	}
	if tok.Position != nil {
		lc := linecol{tok.Position.Line, tok.Position.Column}
		if _, ok := s.byPos[lc]; !ok {
			s.byPos[lc] = path
		}
	}
}

func (s *source) mark(path string, tok *token.Token) {
	if tok == nil || tok.Position == nil {
		return
	}
	if _, ok := s.at[path]; !ok {
		s.at[path] = linecol{max(tok.Position.Line, 1), max(tok.Position.Column, 1)}
	}
}

// index records where every field of the tree under n is. at, when not nil,
// is the key token that introduces n.
func (s *source) index(n ast.Node, path string, at *token.Token, depth int) {
	if n == nil || depth > maxDepth {
		return
	}
	s.record(n.GetToken(), path, n)
	switch n := n.(type) {
	case *ast.TagNode:
		tag := ""
		if n.Start != nil {
			tag = n.Start.Value
		}
		line, col := tokenPos(n.Start)
		switch {
		case !slices.Contains(plainTags, tag):
			s.tagErrs = append(s.tagErrs, &Error{File: s.file, Line: line, Column: col, Field: path,
				Msg: fmt.Sprintf("YAML tag %q is not supported; a topology is plain YAML (tags %s at most)", tag, strings.Join(plainTags, ", "))})
		case n.Value == nil:
			s.tagErrs = append(s.tagErrs, &Error{File: s.file, Line: line, Column: col, Field: path,
				Msg: fmt.Sprintf("YAML tag %q has no value", tag)})
		}
		s.index(n.Value, path, cmpOr(at, n.Start), depth+1)
	case *ast.AnchorNode:
		s.index(n.Value, path, cmpOr(at, n.Start), depth+1)
	case *ast.MappingNode:
		first := n.Start
		if len(n.Values) > 0 && n.Values[0] != nil && n.Values[0].Key != nil {
			first = n.Values[0].Key.GetToken()
		}
		s.mark(path, cmpOr(at, first))
		for _, mv := range n.Values {
			s.indexPair(mv, path, depth+1)
		}
	case *ast.MappingValueNode:
		if n.Key != nil {
			s.mark(path, cmpOr(at, n.Key.GetToken()))
		}
		s.indexPair(n, path, depth+1)
	case *ast.SequenceNode:
		s.mark(path, cmpOr(at, n.Start))
		for i, v := range n.Values {
			s.index(v, fmt.Sprintf("%s[%d]", path, i), nil, depth+1)
		}
	default:
		s.mark(path, cmpOr(at, n.GetToken()))
	}
}

func (s *source) indexPair(mv *ast.MappingValueNode, parent string, depth int) {
	if mv == nil || mv.Key == nil {
		return
	}
	path := joinPath(parent, Key(keyText(mv.Key)))
	kt := mv.Key.GetToken()
	s.record(kt, path, mv.Key)
	var at *token.Token
	switch v := unwrapNode(mv.Value); v.(type) {
	case nil, *ast.MappingNode, *ast.MappingValueNode, *ast.SequenceNode, *ast.NullNode:
		at = kt
	}
	if mv.Value == nil {
		s.mark(path, kt)
		return
	}
	s.index(mv.Value, path, at, depth)
}

// checkFields reports every key of the tree under n that is not a field of
// Go type t (a struct, slice, map or pointer to one), at the key, and every
// fractional number given for an integer. Other type mismatches are left to
// the decoder.
func (s *source) checkFields(n ast.Node, t reflect.Type, path string, depth int, out *ErrorList) {
	n = unwrapNode(n)
	if n == nil || depth > maxDepth {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var pairs []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		pairs = m.Values
	case *ast.MappingValueNode:
		pairs = []*ast.MappingValueNode{m}
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		// The decoder would silently truncate 1500.5 to 1500.
		switch n.(type) {
		case *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
			line, col := tokenPos(n.GetToken())
			*out = append(*out, &Error{File: s.file, Line: line, Column: col, Field: path,
				Msg: fmt.Sprintf("want an integer, found %s", describeNode(n))})
		}
	case reflect.Struct:
		fields := yamlFields(t)
		for _, mv := range pairs {
			if mv == nil || mv.Key == nil || mv.Key.IsMergeKey() {
				continue
			}
			k := keyText(mv.Key)
			i := slices.IndexFunc(fields, func(f yamlField) bool { return f.name == k })
			if i < 0 {
				line, col := tokenPos(mv.Key.GetToken())
				*out = append(*out, &Error{File: s.file, Line: line, Column: col,
					Field: joinPath(path, Key(k)), Msg: unknownFieldMsg(k, t)})
				continue
			}
			s.checkFields(mv.Value, fields[i].typ, joinPath(path, Key(k)), depth+1, out)
		}
	case reflect.Map:
		for _, mv := range pairs {
			if mv == nil || mv.Key == nil {
				continue
			}
			// A map entry (a sysctl) is named by its key: point there.
			p := joinPath(path, Key(keyText(mv.Key)))
			line, col := tokenPos(mv.Key.GetToken())
			s.at[p] = linecol{line, col}
			s.checkFields(mv.Value, t.Elem(), p, depth+1, out)
		}
	case reflect.Slice:
		if seq, ok := n.(*ast.SequenceNode); ok {
			for i, v := range seq.Values {
				s.checkFields(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1, out)
			}
		}
	}
}

// fieldType returns the Go type of the value at field path ("" is the
// topology itself), or nil if the path does not lead to a field.
func (s *source) fieldType(field string) reflect.Type {
	t := reflect.TypeFor[Topology]()
	for _, seg := range splitField(field) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case strings.HasPrefix(seg, "["):
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		case t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			i := slices.IndexFunc(yamlFields(t), func(f yamlField) bool { return f.name == seg })
			if i < 0 {
				return nil
			}
			t = yamlFields(t)[i].typ
		default:
			return nil
		}
	}
	return t
}

// parentField drops the last segment of a field path.
func parentField(field string) string {
	segs := splitField(field)
	if len(segs) == 0 {
		return ""
	}
	return strings.TrimPrefix(joinField(segs[:len(segs)-1]), ".")
}

func keyText(k ast.Node) string {
	switch k := k.(type) {
	case *ast.StringNode:
		return k.Value
	case *ast.MappingKeyNode:
		if k.Value != nil {
			return keyText(k.Value)
		}
	}
	if tok := k.GetToken(); tok != nil {
		return tok.Value
	}
	return k.String()
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func cmpOr(a, b *token.Token) *token.Token {
	if a != nil {
		return a
	}
	return b
}

func (s *source) nodePos(n ast.Node) (line, col int) {
	if p, ok := s.at[s.paths[n.GetToken()]]; ok && n.GetToken() != nil {
		return p.line, p.col
	}
	return tokenPos(n.GetToken())
}

// pathAt returns the field path of the key or value at line:col, or "".
func (s *source) pathAt(line, col int) string { return s.byPos[linecol{line, col}] }

// position finds the line and column of field (a path such as
// "links[0].endpoints[1].mac"). A field that is absent from the file is
// reported at the closest enclosing field that is present.
func (s *source) position(field string) (line, col int) {
	if s == nil {
		return 0, 0
	}
	segs := splitField(field)
	for n := len(segs); n >= 0; n-- {
		if p, ok := s.at[strings.TrimPrefix(joinField(segs[:n]), ".")]; ok {
			return p.line, p.col
		}
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

// The fast path. A topology file is nearly always plain block YAML: keys,
// "- " lists, one-line flow lists and mappings, plain or simply quoted
// scalars, comments. fastDecode reads exactly that subset straight into the
// Go types, and records where each field is as the slow path does (source.at,
// with the same rules as source.index and checkFields), so that validation
// errors carry the same positions. It gives up (ok false) on anything outside
// the subset, on anything the slow path would report (unknown fields,
// duplicate keys, type mismatches, tags, anchors, several documents), and on
// any scalar whose reading by go-yaml is not its plain text: the slow path
// then decides, so a file decodes the same whichever path reads it
// (TestFastDecodeMatches, FuzzFastDecode).

// fnode is a node of the subset: a scalar, a mapping or a sequence, at the
// position of its token (a mapping: its first key; a sequence: its first
// "-" or its "[").
type fnode struct {
	kind      byte // 's', 'm' or 'q'
	line, col int
	text      string // scalar
	quoted    bool   // scalar
	pairs     []fpair
	items     []*fnode
}

type fpair struct {
	key       string
	line, col int
	val       *fnode
}

type fline struct {
	num, indent int
	text        string // without indentation, comment and trailing spaces
}

type fparser struct {
	lines []fline
	p     int
	ok    bool
	slab  []fnode // nodes are cut from it
	count int     // nodes and pairs made, to size source.at
}

func (f *fparser) node(kind byte, line, col int) *fnode {
	if len(f.slab) == 0 {
		f.slab = make([]fnode, 512)
	}
	n := &f.slab[0]
	f.slab = f.slab[1:]
	n.kind, n.line, n.col = kind, line, col
	f.count++
	return n
}

func (f *fparser) fail() *fnode {
	f.ok = false
	return nil
}

func fastDecode(file string, data []byte) (*Topology, bool) {
	lines, ok := splitLines(data)
	if !ok || len(lines) == 0 {
		return nil, false
	}
	f := &fparser{lines: lines, ok: true}
	if lines[0].indent != 0 || isSeqItem(lines[0].text) {
		return nil, false
	}
	root := f.block(0)
	if !f.ok || f.p != len(f.lines) || root == nil || root.kind != 'm' {
		return nil, false
	}
	src := &source{file: file, at: make(map[string]linecol, f.count)}
	var t Topology
	if !src.fill(root, reflect.ValueOf(&t).Elem(), "", false, linecol{}) {
		return nil, false
	}
	t.File = file
	t.src = src
	return &t, true
}

// splitLines cuts data into its content lines. It refuses control
// characters, non-ASCII characters outside comments, directives, and
// document markers other than one leading "---".
func splitLines(data []byte) ([]fline, bool) {
	// Control characters (tabs and carriage returns included), a byte order
	// mark and the Unicode line breaks are refused anywhere, comments too:
	// they change how go-yaml counts lines and columns.
	for _, c := range data {
		if c < 0x20 && c != '\n' || c == 0x7f {
			return nil, false
		}
	}
	for _, bad := range []string{"\ufeff", "\u0085", "\u2028", "\u2029"} {
		if bytes.Contains(data, []byte(bad)) {
			return nil, false
		}
	}
	out := make([]fline, 0, bytes.Count(data, []byte{'\n'})+1)
	all := string(data) // one copy; the lines are slices of it
	off := 0
	num := 0
	for len(data) > 0 {
		num++
		var raw []byte
		start := off
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
			off += i + 1
		} else {
			raw, data = data, nil
		}
		indent := 0
		for indent < len(raw) && raw[indent] == ' ' {
			indent++
		}
		text, ok := stripComment(raw[indent:])
		if !ok {
			return nil, false
		}
		if len(text) == 0 {
			continue
		}
		if indent == 0 && (bytes.HasPrefix(text, []byte("---")) || bytes.HasPrefix(text, []byte("..."))) {
			if len(out) > 0 || len(text) != 3 || text[0] != '-' {
				return nil, false
			}
			continue // a leading document start
		}
		if text[0] == '%' {
			return nil, false
		}
		out = append(out, fline{num: num, indent: indent, text: all[start+indent : start+indent+len(text)]})
	}
	return out, true
}

// stripComment drops a comment (a "#" at the start or after a space, outside
// quotes) and the spaces before it.
func stripComment(b []byte) ([]byte, bool) {
	var quote byte
	end := len(b)
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 0x80 {
			return nil, false // (the loop stops at a comment: allowed there)
		}
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '#' && (i == 0 || b[i-1] == ' '):
			end = i
			i = len(b)
		case (c == '\'' || c == '"') && (i == 0 || strings.IndexByte(" ,[{:", b[i-1]) >= 0):
			quote = c
		}
	}
	if quote != 0 {
		return nil, false // a quoted scalar spanning lines
	}
	if end == len(b) && len(b) > 0 && b[len(b)-1] == ' ' {
		// go-yaml places a plain scalar followed by spaces (and no
		// comment) further right than it starts: leave such lines to it.
		return nil, false
	}
	return bytes.TrimRight(b[:end], " "), true
}

func isSeqItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// block reads the node that starts at the current line, indented by indent.
func (f *fparser) block(indent int) *fnode {
	if isSeqItem(f.lines[f.p].text) {
		return f.seq(indent)
	}
	return f.mapping(indent)
}

func (f *fparser) mapping(indent int) *fnode {
	l := f.lines[f.p]
	m := f.node('m', l.num, indent+1)
	for f.ok && f.p < len(f.lines) {
		l := f.lines[f.p]
		if l.indent < indent {
			break
		}
		if l.indent > indent || isSeqItem(l.text) {
			return f.fail()
		}
		key, rest, ok := splitKey(l.text)
		if !ok {
			return f.fail()
		}
		pair := fpair{key: key, line: l.num, col: indent + 1}
		if rest == "" {
			f.p++
			switch {
			case f.p < len(f.lines) && f.lines[f.p].indent > indent:
				pair.val = f.block(f.lines[f.p].indent)
			case f.p < len(f.lines) && f.lines[f.p].indent == indent && isSeqItem(f.lines[f.p].text):
				pair.val = f.seq(indent)
			default:
				return f.fail() // null
			}
		} else {
			pair.val = f.inline(rest, l.num, indent+1+len(l.text)-len(rest))
			f.p++
			if f.p < len(f.lines) && f.lines[f.p].indent > indent {
				return f.fail() // a scalar continued on the next line
			}
		}
		m.pairs = append(m.pairs, pair)
	}
	if !f.ok {
		return nil
	}
	return m
}

func (f *fparser) seq(indent int) *fnode {
	l := f.lines[f.p]
	q := f.node('q', l.num, indent+1)
	for f.ok && f.p < len(f.lines) {
		l := f.lines[f.p]
		if l.indent < indent || (l.indent == indent && !isSeqItem(l.text)) {
			break
		}
		if l.indent > indent {
			return f.fail()
		}
		rest := strings.TrimLeft(l.text[1:], " ")
		col := indent + 1 + len(l.text) - len(rest)
		var item *fnode
		switch {
		case rest == "":
			f.p++
			if f.p >= len(f.lines) || f.lines[f.p].indent <= indent {
				return f.fail() // null
			}
			item = f.block(f.lines[f.p].indent)
		case isSeqItem(rest):
			return f.fail()
		case mapStart(rest):
			// "- key: value": a mapping whose keys are at col.
			f.lines[f.p] = fline{num: l.num, indent: col - 1, text: rest}
			item = f.mapping(col - 1)
		default:
			item = f.inline(rest, l.num, col)
			f.p++
			if f.p < len(f.lines) && f.lines[f.p].indent > indent {
				return f.fail()
			}
		}
		q.items = append(q.items, item)
	}
	if !f.ok {
		return nil
	}
	return q
}

// mapStart reports whether text starts a block mapping ("key: ..." or
// "key:").
func mapStart(text string) bool {
	_, _, ok := splitKey(text)
	return ok
}

// splitKey splits "key: rest" or "key:"; the key is plain and simple.
func splitKey(text string) (key, rest string, ok bool) {
	i := 0
	for i < len(text) && keyChar(text[i]) {
		i++
	}
	if i == 0 || i >= len(text) || text[i] != ':' || !plainString(text[:i]) {
		return "", "", false
	}
	switch {
	case i+1 == len(text):
		return text[:i], "", true
	case text[i+1] == ' ':
		return text[:i], strings.TrimLeft(text[i+1:], " "), true
	}
	return "", "", false
}

func keyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-' || c == '/'
}

// plainChar: the characters a plain scalar of the subset may hold.
func plainChar(c byte) bool {
	return keyChar(c) || c == ' ' || c == ':' || c == '+' || c == '=' || c == '@' || c == '~' || c == '%' || c == '(' || c == ')'
}

// plainString reports whether go-yaml reads the plain scalar s as the string
// s (token.New's rule: not a reserved word, not a number). A word that starts
// with a letter, "_" or "/" is a number for no one: only the null and bool
// words need a look.
func plainString(s string) bool {
	switch c := s[0]; {
	case c == '-':
		return false
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '/':
		switch s {
		case "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE":
			return false
		}
		return true
	}
	return token.New(s, s, &token.Position{}).Type == token.StringType
}

// inline reads the value after "key: " or "- ": a one-line flow
// collection, a quoted scalar or a plain scalar.
func (f *fparser) inline(s string, line, col int) *fnode {
	switch s[0] {
	case '{', '[':
		n, i := f.flow(s, 0, line, col)
		if n == nil || i != len(s) {
			return f.fail()
		}
		return n
	case '"', '\'':
		n, i := quoted(s, 0, line, col)
		if n == nil || i != len(s) {
			return f.fail()
		}
		return n
	}
	for i := 0; i < len(s); i++ {
		if !plainChar(s[i]) || s[i] == ':' && (i+1 == len(s) || s[i+1] == ' ') || s[i] == ' ' && s[i-1] == ' ' {
			return f.fail()
		}
	}
	if !plainStart(s) {
		return f.fail()
	}
	n := f.node('s', line, col)
	n.text = s
	return n
}

// plainStart refuses plain scalars that start with an indicator (a "-"
// only starts a negative number).
func plainStart(s string) bool {
	return keyChar(s[0]) && (s[0] != '-' || len(s) > 1 && s[1] >= '1' && s[1] <= '9')
}

// quoted reads a quoted scalar at s[i]: single quotes with ” for a quote,
// or double quotes without escapes.
func quoted(s string, i, line, col int) (*fnode, int) {
	q := s[i]
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '\\' && q == '"':
			return nil, 0
		case c == q && q == '\'' && j+1 < len(s) && s[j+1] == '\'':
			b.WriteByte('\'')
			j++
		case c == q:
			return &fnode{kind: 's', line: line, col: col + i, text: b.String(), quoted: true}, j + 1
		default:
			b.WriteByte(c)
		}
	}
	return nil, 0
}

// flow reads a one-line flow collection at s[i] (col is s[0]'s column).
func (f *fparser) flow(s string, i, line, col int) (*fnode, int) {
	open := s[i]
	n := f.node('q', line, col+i)
	if open == '{' {
		n.kind = 'm'
	}
	i++
	for {
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i >= len(s) {
			return nil, 0
		}
		if open == '{' {
			k := i
			for i < len(s) && keyChar(s[i]) {
				i++
			}
			if i == k || i+1 >= len(s) || s[i] != ':' || s[i+1] != ' ' || !plainString(s[k:i]) {
				return nil, 0
			}
			pair := fpair{key: s[k:i], line: line, col: col + k}
			if len(n.pairs) == 0 {
				n.col = pair.col // a mapping is where its first key is
			}
			i += 2
			for i < len(s) && s[i] == ' ' {
				i++
			}
			if pair.val, i = f.flowValue(s, i, line, col); pair.val == nil {
				return nil, 0
			}
			n.pairs = append(n.pairs, pair)
		} else {
			var item *fnode
			if item, i = f.flowValue(s, i, line, col); item == nil {
				return nil, 0
			}
			n.items = append(n.items, item)
		}
		for i < len(s) && s[i] == ' ' {
			i++
		}
		switch {
		case i < len(s) && s[i] == ',':
			i++
		case i < len(s) && (open == '{' && s[i] == '}' || open == '[' && s[i] == ']'):
			return n, i + 1
		default:
			return nil, 0
		}
	}
}

func (f *fparser) flowValue(s string, i, line, col int) (*fnode, int) {
	if i >= len(s) {
		return nil, 0
	}
	switch s[i] {
	case '{', '[':
		return f.flow(s, i, line, col)
	case '"', '\'':
		return quoted(s, i, line, col)
	}
	j := i
	for j < len(s) && plainChar(s[j]) && !(s[j] == ':' && (j+1 == len(s) || s[j+1] == ' ')) {
		if s[j] == ' ' && s[j-1] == ' ' {
			return nil, 0
		}
		j++
	}
	v := strings.TrimRight(s[i:j], " ")
	if v == "" || !plainStart(v) {
		return nil, 0
	}
	if j < len(s) && strings.IndexByte(",]}", s[j]) < 0 && s[j] != ' ' {
		return nil, 0
	}
	n := f.node('s', line, col+i)
	n.text = v
	return n, j
}

// fill decodes n into v (the field at path) and records where the field is
// in s.at as source.index and checkFields would. keyAt says that path's
// position is that of the key introducing n (a mapping or list value); key
// is that position.
func (s *source) fill(n *fnode, v reflect.Value, path string, keyAt bool, key linecol) bool {
	t := v.Type()
	if t.Kind() == reflect.Pointer {
		if customDecoded(t) || customDecoded(t.Elem()) {
			return false
		}
		p := reflect.New(t.Elem())
		if !s.fill(n, p.Elem(), path, keyAt, key) {
			return false
		}
		v.Set(p)
		return true
	}
	at := linecol{n.line, n.col}
	if keyAt {
		at = key
	}
	if _, ok := s.at[path]; !ok {
		s.at[path] = at
	}
	switch {
	case t == scalarType:
		text, ok := scalarOf(n)
		v.SetString(text)
		return ok
	case t == listType:
		if n.kind == 's' {
			text, ok := scalarOf(n)
			v.Set(reflect.ValueOf(List{text}))
			return ok
		}
		if n.kind != 'q' {
			return false
		}
		l := make(List, len(n.items))
		for i, item := range n.items {
			var ok bool
			if l[i], ok = scalarOf(item); !ok {
				return false
			}
			s.fillItem(item, path, i)
		}
		v.Set(reflect.ValueOf(l))
		return true
	case customDecoded(t):
		return false
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.kind != 'm' {
			return false
		}
		fields := fieldIndex(t)
		seen := make([]bool, t.NumField())
		for _, pr := range n.pairs {
			i, ok := fields[pr.key]
			if !ok || seen[i] {
				return false
			}
			seen[i] = true
			if !s.fill(pr.val, v.Field(i), joinPath(path, Key(pr.key)), pr.val.kind != 's', linecol{pr.line, pr.col}) {
				return false
			}
		}
		return true
	case reflect.Map:
		if n.kind != 'm' || t.Key().Kind() != reflect.String {
			return false
		}
		m := reflect.MakeMapWithSize(t, len(n.pairs))
		for _, pr := range n.pairs {
			k := reflect.ValueOf(pr.key).Convert(t.Key())
			if m.MapIndex(k).IsValid() {
				return false
			}
			e := reflect.New(t.Elem()).Elem()
			p := joinPath(path, Key(pr.key))
			if !s.fill(pr.val, e, p, pr.val.kind != 's', linecol{pr.line, pr.col}) {
				return false
			}
			s.at[p] = linecol{pr.line, pr.col} // checkFields: a map entry is named by its key
			m.SetMapIndex(k, e)
		}
		v.Set(m)
		return true
	case reflect.Slice:
		if n.kind != 'q' {
			return false
		}
		sl := reflect.MakeSlice(t, len(n.items), len(n.items))
		for i, item := range n.items {
			if !s.fill(item, sl.Index(i), path+"["+strconv.Itoa(i)+"]", false, linecol{}) {
				return false
			}
		}
		v.Set(sl)
		return true
	case reflect.String:
		if n.kind != 's' {
			return false
		}
		if !n.quoted && !plainString(n.text) && !simpleInt(n.text) && n.text != "true" && n.text != "false" {
			return false
		}
		v.SetString(n.text)
		return true
	case reflect.Int:
		if n.kind != 's' || n.quoted || !simpleInt(n.text) {
			return false
		}
		i, err := strconv.Atoi(n.text)
		v.SetInt(int64(i))
		return err == nil
	case reflect.Bool:
		if n.kind != 's' || n.quoted || n.text != "true" && n.text != "false" {
			return false
		}
		v.SetBool(n.text == "true")
		return true
	}
	return false
}

// fillItem records the position of the scalar item i of a List at path.
func (s *source) fillItem(n *fnode, path string, i int) {
	p := path + "[" + strconv.Itoa(i) + "]"
	if _, ok := s.at[p]; !ok {
		s.at[p] = linecol{n.line, n.col}
	}
}

// scalarOf is scalarText for the subset: the text of a scalar go-yaml reads
// as a string, a decimal integer or true/false.
func scalarOf(n *fnode) (string, bool) {
	if n.kind != 's' {
		return "", false
	}
	if n.quoted || plainString(n.text) || simpleInt(n.text) || n.text == "true" || n.text == "false" {
		return n.text, true
	}
	return "", false
}

// simpleInt: a decimal integer go-yaml reads as itself (no sign, no leading
// zero, no underscore, within int64).
func simpleInt(s string) bool {
	if s == "" || len(s) > 18 || s[0] == '0' && len(s) > 1 {
		return false
	}
	if s[0] == '-' {
		s = s[1:]
		if s == "" || s[0] == '0' {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

var (
	scalarType = reflect.TypeFor[Scalar]()
	listType   = reflect.TypeFor[List]()
)

// customDecoded reports types that decode themselves (other than Scalar and
// List): the fast path leaves them to go-yaml.
func customDecoded(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	for _, m := range []string{"UnmarshalYAML", "UnmarshalText", "UnmarshalJSON"} {
		if _, ok := p.MethodByName(m); ok {
			return true
		}
	}
	return false
}

var fieldIndexes sync.Map // reflect.Type -> map[string]int

// fieldIndex maps the YAML keys of struct type t to field indexes (the
// names yamlFields gives).
func fieldIndex(t reflect.Type) map[string]int {
	if m, ok := fieldIndexes.Load(t); ok {
		return m.(map[string]int)
	}
	m := map[string]int{}
	for _, f := range yamlFields(t) {
		m[f.name] = f.index
	}
	fieldIndexes.Store(t, m)
	return m
}
