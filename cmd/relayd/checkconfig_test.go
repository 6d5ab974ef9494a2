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

// TestCheckConfigSecrets: without -state, the secrets a configuration
// names are listed as what must be provisioned (with the command); with
// -state, one that is missing or open to others fails the check, naming
// its key.
func TestCheckConfigSecrets(t *testing.T) {
	file := filepath.Join(t.TempDir(), "m365.json")
	doc := `{"hostname":"relay-x","listeners":[{"address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":"contoso.onmicrosoft.com","client_id":"11111111-2222-3333-4444-555555555555","client_secret_secret":"m365-client-secret","mailbox":"relay@contoso.com"}}}`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	os.MkdirAll(filepath.Join(state, "secrets"), 0o700)
	secret := filepath.Join(state, "secrets", "m365-client-secret")
	for _, tc := range []struct {
		name     string
		args     []string
		prepare  func()
		wantCode int
		want     string
	}{
		{"no state: listed", []string{file}, func() {}, 0,
			"upstream.m365.client_secret_secret: secret m365-client-secret must be provisioned before mail can flow: relayctl -relay NAME creds put m365-client-secret -kind client-secret -from FILE"},
		{"missing", []string{"-state", state, file}, func() {}, 1, "upstream.m365.client_secret_secret: secret m365-client-secret is missing"},
		{"open to others", []string{file, "-state", state}, func() { os.WriteFile(secret, []byte("v"), 0o644); os.Chmod(secret, 0o644) }, 1, "readable by others"},
		{"empty", []string{"-state", state, file}, func() { os.WriteFile(secret, nil, 0o600); os.Chmod(secret, 0o600) }, 1, "is malformed (secret m365-client-secret: empty)"},
		{"present", []string{"-state", state, file}, func() { os.WriteFile(secret, []byte("value\n"), 0o600) }, 0, "configuration is valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare()
			var out, errs strings.Builder
			code := checkConfig(tc.args, &out, &errs)
			if code != tc.wantCode || !strings.Contains(out.String()+errs.String(), tc.want) {
				t.Errorf("exit %d, want %d with %q:\n%s%s", code, tc.wantCode, tc.want, out.String(), errs.String())
			}
		})
	}
}
