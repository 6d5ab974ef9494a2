package config

import (
	"encoding"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// codeKeys lists every leaf key of the configuration types, spelt as
// docs/config.md spells them: json names joined by dots, arrays as
// `name[]`, a map's values (upstreams) as `name.NAME`. A type that decodes
// itself (Duration) is a leaf.
func codeKeys(typ reflect.Type, prefix string, out *[]string) {
	unmarshaler := reflect.TypeFor[json.Unmarshaler]()
	textual := reflect.TypeFor[encoding.TextUnmarshaler]()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || reflect.PointerTo(typ).Implements(unmarshaler) || reflect.PointerTo(typ).Implements(textual) {
		*out = append(*out, prefix)
		return
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			codeKeys(ft.Elem(), key+"[]", out)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			codeKeys(ft.Elem(), key+".NAME", out)
		default:
			codeKeys(ft, key, out)
		}
	}
}

// TestEveryKeyDocumented is TestDocumentedKeysParse the other way: every
// key of the configuration types has its row in docs/config.md (itself or
// a documented ancestor, for a section documented as a whole).
func TestEveryKeyDocumented(t *testing.T) {
	doc := docKeys(t, "../../docs/config.md")
	var code []string
	codeKeys(reflect.TypeFor[Config](), "", &code)
	for _, k := range code {
		// upstreams.NAME is "of the same shape as upstream" (config.md)
		want := k
		if rest, ok := strings.CutPrefix(k, "upstreams.NAME."); ok {
			want = "upstream." + rest
		}
		if !slices.Contains(doc, want) {
			t.Errorf("%s: a key of the configuration with no row in docs/config.md", k)
		}
	}
	t.Logf("%d keys of the code checked", len(code))
}
