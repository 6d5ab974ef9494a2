package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestKindTable holds kindTable to the code and the docs: every Kind
// constant declared in this package has exactly one row, every row's
// family is one of Families and has its case in Upstream.validate, and
// docs/config.md names every kind. A new
// kind added as a constant without its row fails here, naming it.
func TestKindTable(t *testing.T) {
	consts := kindConstants(t)
	if len(consts) == 0 {
		t.Fatal("no Kind constants found: the test reads the wrong files")
	}
	values := map[Kind]bool{}
	for name, v := range consts {
		values[v] = true
		n := 0
		for _, r := range kindTable {
			if r.kind == v {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s (%q): %d rows in kindTable (relay/config/kinds.go), want 1", name, v, n)
		}
	}
	doc, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range kindTable {
		if !slices.Contains(Families, r.family) {
			t.Errorf("kind %q: family %q is not one of Families", r.kind, r.family)
		}
		if !values[r.kind] {
			t.Errorf("kindTable row %q: no Kind constant of that value", r.kind)
		}
		u := Upstream{Kind: r.kind}
		u.setDefaults()
		for _, e := range u.validate("upstream") {
			if ke, ok := e.(*KeyError); ok && ke.Key == "upstream.kind" {
				t.Errorf("kind %q: validate has no case for family %q: %v", r.kind, r.family, e)
			}
		}
		if !strings.Contains(string(doc), "`"+string(r.kind)+"`") {
			t.Errorf("kind %q: docs/config.md does not name it (`%s`)", r.kind, r.kind)
		}
	}
}

// kindConstants are the constants of type Kind declared in the package's
// non-test files, by name.
func kindConstants(t *testing.T) map[string]Kind {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Kind{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Kind" {
					continue
				}
				for i, n := range vs.Names {
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok {
						t.Fatalf("%s: %s is not a string literal", f, n.Name)
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out[n.Name] = Kind(v)
				}
			}
		}
	}
	return out
}
