package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfigPrintsTheRouteTable(t *testing.T) {
	var out, errs strings.Builder
	if code := checkConfig([]string{"../../docs/examples/plant-routes.json"}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	for _, want := range []string{"configuration is valid", "internal", "hve (hve) → oauth (m365-oauth)", "external", "everything else", "oauth (m365-oauth) → graph (graph)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	doc := `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
	  "upstreams":{"oauth":{"kind":"capture"}},"routes":[{"name":"all","upstreams":["hve"]}]}`
	if err := os.WriteFile(bad, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errs.Reset()
	if code := checkConfig([]string{bad}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "routes[0].upstreams[0]") {
		t.Errorf("exit %d, error %q: want 1 naming routes[0].upstreams[0]", code, errs.String())
	}
}
