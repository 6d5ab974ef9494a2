package appliance

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
)

// The import rules of docs/architecture.md, checked against the code: for
// each package (longest prefix wins), the project packages it may import
// directly. The composition root holds this test because it is the one
// package that may import everything below it.
var importRules = []struct {
	pkg   string
	allow []string // prefixes; "" allows nothing of the project
}{
	// Leaves: anyone may import them, they import nothing of the project.
	{"relay/layout", nil},
	{"relay/strictjson", nil},
	{"relay/durable", nil},
	{"relay/relaytest", nil},
	{"relay/safetext", nil},

	{"netcfg", []string{"netcfg", "relay/strictjson"}},

	{"relay", []string{"relay"}},
	{"relay/upstream", []string{"relay/upstream", "relay/config", "relay/layout", "relay/durable", "relay/strictjson", "relay/authlogin", "relay/relaytest"}},
	// The scheduler knows the upstream contract, not the kinds behind it.
	{"relay/delivery", []string{"relay/upstream", "relay/spool", "relay/trace", "relay/dsn", "relay/durable"}},
	{"relay/inbound", []string{"relay/authlogin", "relay/message", "relay/policy", "relay/spool", "relay/trace", "relay/config", "relay/durable", "relay/learn", "relay/safetext"}},
	{"relay/policy", []string{"relay/config"}},
	{"relay/learn", []string{"relay/config", "relay/durable"}},
	{"relay/config", []string{"relay/strictjson", "relay/layout"}},

	{"appliance", []string{"appliance", "relay", "netcfg", "provisioning"}},
	{"appliance/site", []string{"netcfg", "relay/strictjson"}},
	{"appliance/buildinfo", nil}, // a leaf: sitegen stamps what it owns

	{"provisioning", []string{"provisioning", "relay/config", "relay/layout", "relay/strictjson", "relay/durable", "relay/safetext", "netcfg"}},
	{"provisioning/testboot", nil}, // a leaf: cmd/bootguard links it into every root

	{"cmd/relayd", []string{"appliance", "relay"}},
	{"cmd/relaybench", nil},
	{"cmd/bootguard", []string{"provisioning/testboot"}},
	{"cmd/relayctl", []string{"provisioning/api", "provisioning/ctl", "relay/layout"}},

	{"images", []string{"appliance/site", "appliance/buildinfo", "relay/config", "relay/layout", "relay/strictjson", "netcfg"}},
}

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

func TestImportRules(t *testing.T) {
	pkgs, err := listPackages()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		pkg := p.path
		rule := -1
		for i, r := range importRules {
			if under(pkg, r.pkg) && (rule < 0 || len(r.pkg) > len(importRules[rule].pkg)) {
				rule = i
			}
		}
		if rule < 0 {
			t.Errorf("%s: no import rule; add its room to docs/architecture.md and to importRules", pkg)
			continue
		}
		for _, imp := range p.imports {
			dep, ok := strings.CutPrefix(imp, mod)
			if !ok {
				continue
			}
			allowed := false
			for _, a := range importRules[rule].allow {
				allowed = allowed || under(dep, a)
			}
			if !allowed {
				t.Errorf("%s imports %s: not allowed by the rule for %s (docs/architecture.md)", pkg, dep, importRules[rule].pkg)
			}
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
	// The boot guard must work while relayd hangs: nothing of relayd.
	{"cmd/bootguard", []string{"cmd", "provisioning"}, false},
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
