package layout

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// stateRow is a path cell of docs/architecture.md's state-directory table.
var stateRow = regexp.MustCompile("(?m)^\\| `([^`]+)` \\|")

// documentedPaths reads the state-directory table's paths.
func documentedPaths(t *testing.T) []string {
	b, err := os.ReadFile("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "## The state directory")
	if start < 0 {
		t.Fatal("docs/architecture.md has no state-directory section")
	}
	s = s[start:]
	if end := strings.Index(s[3:], "\n## "); end >= 0 {
		s = s[:end+3]
	}
	var rows []string
	for _, m := range stateRow.FindAllStringSubmatch(s, -1) {
		rows = append(rows, m[1])
	}
	if len(rows) < 10 {
		t.Fatalf("read only %d rows of the state-directory table", len(rows))
	}
	return rows
}

// pathsOfDir calls every method of Dir that names a place (Path and
// Resolve, which take any name, aside) and returns the places relative to
// the state directory; NAME stands for a name argument, 1 for a number.
func pathsOfDir(t *testing.T) map[string]string {
	const root = "/STATE"
	d := reflect.ValueOf(Dir(root))
	out := map[string]string{}
	for i := range d.NumMethod() {
		m, name := d.Method(i), d.Type().Method(i).Name
		if name == "Path" || name == "Resolve" {
			continue
		}
		var args []reflect.Value
		for j := range m.Type().NumIn() {
			switch m.Type().In(j).Kind() {
			case reflect.String:
				args = append(args, reflect.ValueOf("NAME"))
			case reflect.Int:
				args = append(args, reflect.ValueOf(1))
			default:
				t.Fatalf("Dir.%s takes a %s: teach this test", name, m.Type().In(j))
			}
		}
		res := m.Call(args)
		if len(res) != 1 || res[0].Kind() != reflect.String {
			continue
		}
		rel, err := filepath.Rel(root, res[0].String())
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("Dir.%s = %s: not below the state directory", name, res[0])
			continue
		}
		out[name] = filepath.ToSlash(rel)
	}
	return out
}

// rowMatches reports whether the documented row (`secrets/NAME`,
// `spool/`, `config.json`) covers the place rel.
func rowMatches(row, rel string) bool {
	if strings.HasPrefix(row, rel+"/") {
		return true // the directory of a row's files (secrets for secrets/NAME)
	}
	if dir, ok := strings.CutSuffix(row, "/"); ok {
		return rel == dir || strings.HasPrefix(rel, dir+"/")
	}
	re := "^" + strings.ReplaceAll(regexp.QuoteMeta(row), "NAME", "[^/]+") + "$"
	return regexp.MustCompile(re).MatchString(rel)
}

// TestStateDirectoryTable holds docs/architecture.md's state-directory
// table to this package both ways: every place a Dir method names has its
// row, and every row is a place some Dir method names (a row for a file no
// code writes is a false lead).
func TestStateDirectoryTable(t *testing.T) {
	rows := documentedPaths(t)
	places := pathsOfDir(t)
	used := map[string]bool{}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range places {
			if !yield(k) {
				return
			}
		}
	}) {
		rel := places[name]
		found := false
		for _, r := range rows {
			if rowMatches(r, rel) {
				found, used[r] = true, true
			}
		}
		if !found {
			t.Errorf("Dir.%s (%s): no row in docs/architecture.md's state-directory table", name, rel)
		}
	}
	for _, r := range rows {
		if !used[r] {
			t.Errorf("docs/architecture.md's state-directory row %s: no Dir method in relay/layout names it", r)
		}
	}
}
