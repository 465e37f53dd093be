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
func Decode(file string, data []byte) (*Topology, error) {
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
	name string
	typ  reflect.Type
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
		out = append(out, yamlField{name: name, typ: sf.Type})
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
