package topology

import (
	"encoding/json"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

const schemaPath = "../docs/topology.schema.json"

type schemaDoc struct {
	t    *testing.T
	root map[string]any
}

func loadSchema(t *testing.T) *schemaDoc {
	t.Helper()
	data, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(data, &root); err != nil {
		t.Fatalf("%s: %v", schemaPath, err)
	}
	if got := root["$schema"]; got != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v, want draft 2020-12", got)
	}
	return &schemaDoc{t: t, root: root}
}

// resolve follows $ref chains ("#/$defs/x") to the schema that holds the
// type; a node with its own type or properties is returned as is.
func (s *schemaDoc) resolve(n map[string]any, path string) map[string]any {
	for range 16 {
		ref, ok := n["$ref"].(string)
		if !ok || n["type"] != nil || n["properties"] != nil {
			return n
		}
		name, found := strings.CutPrefix(ref, "#/$defs/")
		defs, _ := s.root["$defs"].(map[string]any)
		next, ok := defs[name].(map[string]any)
		if !found || !ok {
			s.t.Fatalf("%s: unresolvable $ref %q", path, ref)
		}
		n = next
	}
	s.t.Fatalf("%s: $ref loop", path)
	return nil
}

// types returns the JSON types a schema node allows, looking through $ref
// and anyOf/oneOf ("const" counts as the type of its value).
func (s *schemaDoc) types(n map[string]any, path string) []string {
	n = s.resolve(n, path)
	var out []string
	switch v := n["type"].(type) {
	case string:
		out = append(out, v)
	case []any:
		for _, x := range v {
			out = append(out, x.(string))
		}
	}
	if c, ok := n["const"]; ok {
		switch c.(type) {
		case float64:
			out = append(out, "integer")
		case string:
			out = append(out, "string")
		}
	}
	for _, key := range []string{"anyOf", "oneOf"} {
		alts, _ := n[key].([]any)
		for _, a := range alts {
			if m, ok := a.(map[string]any); ok {
				out = append(out, s.types(m, path)...)
			}
		}
	}
	return out
}

// hasDescription reports whether n, or the definition it refers to, is described.
func (s *schemaDoc) hasDescription(n map[string]any, path string) bool {
	if d, ok := n["description"].(string); ok && d != "" {
		return true
	}
	if _, ok := n["$ref"]; ok {
		d, ok := s.resolve(n, path)["description"].(string)
		return ok && d != ""
	}
	return false
}

// walk checks that schema node n describes Go type typ: the same properties
// at every level, objects closed with additionalProperties false, matching
// scalar types, and a description for every property.
func (s *schemaDoc) walk(n map[string]any, typ reflect.Type, path string) {
	t := s.t
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	r := s.resolve(n, path)
	want := map[reflect.Kind]string{
		reflect.Struct: "object", reflect.Map: "object", reflect.Slice: "array",
		reflect.String: "string", reflect.Bool: "boolean", reflect.Int: "integer",
	}[typ.Kind()]
	if want == "" {
		t.Fatalf("%s: Go kind %s has no JSON type in this test; extend it", path, typ.Kind())
	}
	if got := s.types(n, path); !slices.Contains(got, want) {
		t.Errorf("%s: schema types %v, want %q for Go type %s", path, got, want, typ)
	}
	switch typ.Kind() {
	case reflect.Struct:
		if r["additionalProperties"] != false {
			t.Errorf("%s: additionalProperties must be false", path)
		}
		props, _ := r["properties"].(map[string]any)
		var wantNames, gotNames []string
		for _, f := range yamlFields(typ) {
			wantNames = append(wantNames, f.name)
		}
		for name := range props {
			gotNames = append(gotNames, name)
		}
		sort.Strings(wantNames)
		sort.Strings(gotNames)
		if !slices.Equal(wantNames, gotNames) {
			t.Errorf("%s: schema properties %v, Go type %s has yaml fields %v", path, gotNames, typ, wantNames)
		}
		req, _ := r["required"].([]any)
		for _, x := range req {
			if _, ok := props[x.(string)]; !ok {
				t.Errorf("%s: required %q is not a property", path, x)
			}
		}
		for _, f := range yamlFields(typ) {
			p, ok := props[f.name].(map[string]any)
			if !ok {
				continue
			}
			fp := path + "." + f.name
			if !s.hasDescription(p, fp) {
				t.Errorf("%s: no description", fp)
			}
			s.walk(p, f.typ, fp)
		}
	case reflect.Slice:
		items, ok := r["items"].(map[string]any)
		if !ok {
			t.Errorf("%s: array without items", path)
			return
		}
		s.walk(items, typ.Elem(), path+"[]")
	case reflect.Map:
		ap, ok := r["additionalProperties"].(map[string]any)
		if !ok {
			t.Errorf("%s: a map needs additionalProperties with the value schema", path)
			return
		}
		s.walk(ap, typ.Elem(), path+"{}")
	}
}

// TestSchemaMatchesTypes keeps docs/topology.schema.json and the Go types
// from drifting apart: every level declares exactly the yaml fields.
func TestSchemaMatchesTypes(t *testing.T) {
	s := loadSchema(t)
	s.walk(s.root, reflect.TypeFor[Topology](), "topology")
}

func (s *schemaDoc) def(name string) map[string]any {
	defs, _ := s.root["$defs"].(map[string]any)
	d, ok := defs[name].(map[string]any)
	if !ok {
		s.t.Fatalf("$defs/%s missing", name)
	}
	return d
}

func enumOf(n map[string]any) []string {
	var out []string
	for _, x := range n["enum"].([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestSchemaEnums(t *testing.T) {
	s := loadSchema(t)
	role := s.def("namespace")["properties"].(map[string]any)["role"].(map[string]any)
	var roles []string
	for _, r := range Roles {
		roles = append(roles, string(r))
	}
	if got := enumOf(role); !slices.Equal(got, roles) {
		t.Errorf("role enum %v, want %v", got, roles)
	}
	mode := s.def("uplink")["properties"].(map[string]any)["mode"].(map[string]any)
	var modes []string
	for _, m := range Modes {
		modes = append(modes, string(m))
	}
	if got := enumOf(mode); !slices.Equal(got, modes) {
		t.Errorf("mode enum %v, want %v", got, modes)
	}
	dir := s.def("mirror")["properties"].(map[string]any)["direction"].(map[string]any)
	if got := enumOf(dir); !slices.Equal(got, MirrorDirections) {
		t.Errorf("mirror direction enum %v, want %v", got, MirrorDirections)
	}
}

// TestSchemaPatterns checks the schema's patterns against the validator on
// sample values (the patterns are RE2- and ECMA-262-compatible).
func TestSchemaPatterns(t *testing.T) {
	s := loadSchema(t)
	pattern := func(def string) *regexp.Regexp {
		p, ok := s.def(def)["pattern"].(string)
		if !ok {
			t.Fatalf("$defs/%s has no pattern", def)
		}
		return regexp.MustCompile(p)
	}
	ifName := pattern("ifName")
	for _, name := range []string{"eth0", "br0", "vm1", "uplink0", "a.b-c_d", "x@y", "eth0/1", "a:b", "a b", "é", "tab\there"} {
		schemaOK := ifName.MatchString(name) && len(name) <= MaxIfNameLen
		if goOK := CheckIfName(name) == ""; schemaOK != goOK {
			t.Errorf("interface name %q: schema accepts %v, CheckIfName accepts %v", name, schemaOK, goOK)
		}
	}
	nsName := pattern("namespaceName")
	for _, name := range []string{"vm1", "host", "lab1.vm-1_a", "vm/1", "vm:1", "vm 1", "-vm", ".vm"} {
		if got, want := nsName.MatchString(name), nsRe.MatchString(name); got != want {
			t.Errorf("namespace name %q: schema accepts %v, validation %v", name, got, want)
		}
	}
	mac := pattern("mac")
	for _, m := range []string{"00:11:22:33:44:55", "aa-bb-cc-dd-ee-ff", "0011.2233.4455", "00:11:22:33:44", "00:11:22:33:44:zz", "00:11-22:33:44:55"} {
		hw, err := net.ParseMAC(m)
		if goOK := err == nil && len(hw) == 6; mac.MatchString(m) != goOK {
			t.Errorf("MAC %q: schema accepts %v, validation accepts %v", m, mac.MatchString(m), goOK)
		}
	}
}
