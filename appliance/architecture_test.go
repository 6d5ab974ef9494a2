package appliance

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

const mod = "github.com/siterelay/siterelay/"

// pkg is one package of the module as go list sees it.
type pkg struct {
	path          string   // below the module, e.g. "relay/inbound"
	imports, deps []string // full import paths: direct, and the whole closure
}

// listPackages runs go list once for both rule tests.
var listPackages = sync.OnceValues(func() ([]pkg, error) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{join .Imports \" \"}}\t{{join .Deps \" \"}}", mod+"...").Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	var pkgs []pkg
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		pkgs = append(pkgs, pkg{path: strings.TrimPrefix(f[0], mod), imports: strings.Fields(f[1]), deps: strings.Fields(f[2])})
	}
	return pkgs, nil
})

// importRule is one row of docs/architecture.md's package table: the
// packages it names (a "P/..." row is the default for every package under
// P without a row of its own) and what they may import ("P" that one
// package, "P/..." it and everything below). inherit: the row's last cell
// is empty, the list is the covering "P/..." row's.
type importRule struct {
	path    string // "relay/inbound", or "provisioning/..."
	allow   []string
	inherit bool
	line    int
}

// readImportRules parses the package table of docs/architecture.md: the
// first and the last column, backticked paths with {a,b} expanded.
func readImportRules(t *testing.T) []importRule {
	t.Helper()
	b, err := os.ReadFile("../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "## Packages and who may import whom")
	if start < 0 {
		t.Fatal("docs/architecture.md: no section \"Packages and who may import whom\"")
	}
	lineNo := strings.Count(text[:start], "\n") + 1
	var rules []importRule
	for i, l := range strings.Split(text[start:], "\n") {
		if i > 0 && strings.HasPrefix(l, "## ") {
			break
		}
		if !strings.HasPrefix(l, "| `") {
			continue
		}
		f := strings.Split(l, "|")
		if len(f) != 5 {
			t.Fatalf("docs/architecture.md:%d: want 3 columns: %s", lineNo+i, l)
		}
		allow := codeSpans(f[3])
		inherit := strings.TrimSpace(f[3]) == ""
		if len(allow) == 0 && !inherit && !strings.HasPrefix(strings.TrimSpace(f[3]), "nothing") {
			t.Errorf("docs/architecture.md:%d: the last column is neither paths, \"nothing\" nor empty: %q", lineNo+i, f[3])
		}
		for _, p := range codeSpans(f[1]) {
			rules = append(rules, importRule{path: p, allow: allow, inherit: inherit, line: lineNo + i})
		}
	}
	if len(rules) < 30 {
		t.Fatalf("docs/architecture.md: only %d rows read from the package table", len(rules))
	}
	return rules
}

// codeSpans are the backticked words of a table cell, braces expanded:
// "`relay/{a,b/...}`" is relay/a and relay/b/....
func codeSpans(cell string) []string {
	var out []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(cell, -1) {
		out = append(out, expandBraces(m[1])...)
	}
	return out
}

func expandBraces(s string) []string {
	i := strings.Index(s, "{")
	j := strings.Index(s, "}")
	if i < 0 || j < i {
		return []string{s}
	}
	var out []string
	for _, alt := range strings.Split(s[i+1:j], ",") {
		out = append(out, expandBraces(s[:i]+alt+s[j+1:])...)
	}
	return out
}

// allows reports whether the import path dep matches pattern ("P" or
// "P/...").
func allows(pattern, dep string) bool {
	if root, ok := strings.CutSuffix(pattern, "/..."); ok {
		return under(dep, root)
	}
	return dep == pattern
}

// ruleFor is pkg's row: its own, else the longest "P/..." row covering
// it; an empty last cell takes the covering "P/..." row's list.
func ruleFor(rules []importRule, pkg string) (importRule, bool) {
	var own, cover *importRule
	for i := range rules {
		r := &rules[i]
		if r.path == pkg {
			own = r
		}
		if root, ok := strings.CutSuffix(r.path, "/..."); ok && under(pkg, root) && (cover == nil || len(r.path) > len(cover.path)) {
			cover = r
		}
	}
	switch {
	case own != nil && !own.inherit:
		return *own, true
	case cover != nil:
		return *cover, true
	}
	return importRule{}, false
}

// TestImportRules holds docs/architecture.md's package table to the code
// both ways: every package's direct imports of the project are allowed by
// its row, every package has a row, and every row names a package.
func TestImportRules(t *testing.T) {
	pkgs, err := listPackages()
	if err != nil {
		t.Fatal(err)
	}
	rules := readImportRules(t)
	for _, p := range pkgs {
		pkg := p.path
		rule, ok := ruleFor(rules, pkg)
		if !ok {
			t.Errorf("%s: no row in docs/architecture.md's package table; add its room there", pkg)
			continue
		}
		for _, imp := range p.imports {
			dep, ok := strings.CutPrefix(imp, mod)
			if !ok {
				continue
			}
			allowed := false
			for _, a := range rule.allow {
				allowed = allowed || allows(a, dep)
			}
			if !allowed {
				t.Errorf("%s imports %s: not allowed by the row of %s (docs/architecture.md:%d)", pkg, dep, rule.path, rule.line)
			}
		}
	}
	for _, r := range rules {
		named := false
		for _, p := range pkgs {
			named = named || allows(r.path, p.path)
		}
		if !named {
			t.Errorf("docs/architecture.md:%d: the row of %s names no package of the module", r.line, r.path)
		}
	}
}

// under reports whether pkg is p or below it.
func under(pkg, p string) bool { return pkg == p || strings.HasPrefix(pkg, p+"/") }

// The layering of docs/architecture.md as whole dependency closures
// (go list -deps): the rooms each may reach, directly or not, and
// whether it may pull in tailscale.com. The relay core and the image
// builder stay free of the tailnet; provisioning never reaches the
// appliance.
var depRules = []struct {
	root      string
	rooms     []string
	tailscale bool
}{
	{"relay/...", []string{"relay"}, false},
	{"netcfg/...", []string{"netcfg", "relay"}, false},
	{"images/...", []string{"images", "appliance", "relay", "netcfg"}, false},
	{"provisioning/...", []string{"provisioning", "relay", "netcfg"}, true},
	{"appliance/...", []string{"appliance", "provisioning", "relay", "netcfg"}, true},
	{"cmd/relayctl", []string{"cmd", "provisioning", "relay"}, true},
}

func TestDependencyRules(t *testing.T) {
	pkgs, err := listPackages()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range depRules {
		// What go list -deps ROOT prints: the packages under it and
		// everything they need.
		closure := map[string]bool{}
		for _, p := range pkgs {
			if root, whole := strings.CutSuffix(r.root, "/..."); (whole && under(p.path, root)) || p.path == r.root {
				closure[mod+p.path] = true
				for _, d := range p.deps {
					closure[d] = true
				}
			}
		}
		rooms, tailscale := map[string]int{}, 0
		for dep := range closure {
			if rest, ok := strings.CutPrefix(dep, mod); ok {
				room, _, _ := strings.Cut(rest, "/")
				rooms[room]++
			} else if under(dep, "tailscale.com") {
				tailscale++
			}
		}
		for room, n := range rooms {
			if !slices.Contains(r.rooms, room) {
				t.Errorf("%s depends on %d package(s) of %s: not allowed (docs/architecture.md)", r.root, n, room)
			}
		}
		if tailscale > 0 && !r.tailscale {
			t.Errorf("%s depends on %d tailscale.com packages; only the tailnet's side may", r.root, tailscale)
		}
		t.Logf("go list -deps %s: project rooms %v, %d tailscale.com packages", r.root, rooms, tailscale)
	}
}
