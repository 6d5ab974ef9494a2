package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
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
}

// listener is a valid listener to build bad documents around.
const listener = `{"name":"plant","address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}`

// Every bad input of issue 18 (item 4) and the docs' examples: each
// problem listed, all at once, each against its full indexed key.
func TestCheckConfigListsEveryProblem(t *testing.T) {
	const hash = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
	for _, tc := range []struct {
		name, doc string
		want      []string // "key: problem" starts, in the order printed; nil: valid
	}{
		{"docs/examples/dev.json", "@../../docs/examples/dev.json", nil},
		{"docs/examples/plant-smarthost.json", "@../../docs/examples/plant-smarthost.json", nil},
		{"docs/examples/plant-routes.json", "@../../docs/examples/plant-routes.json", nil},
		{"docs/examples/acs-smarthost.json", "@../../docs/examples/acs-smarthost.json", nil},
		{"a secret name with a slash", `{"listeners":[` + listener + `],"upstream":{"kind":"smtp","smtp":{"address":"mail.example.com:587","auth":"login","username":"u","password_secret":"smarthost/password"}}}`,
			[]string{`upstream.smtp.password_secret: "smarthost/password" is not a secret name`}},
		{"a secret named out of the store", `{"listeners":[` + listener + `],"upstreams":{"oauth":{"kind":"m365-oauth","m365":{"tenant":"contoso.onmicrosoft.com","client_id":"c","client_secret_secret":"../config.json","mailbox":"s@contoso.com"}}},"routes":[{"name":"all","upstreams":["oauth"]}]}`,
			[]string{`upstreams.oauth.m365.client_secret_secret: "../config.json" is not a secret name`}},
		{"the tailnet join key as a secret", `{"listeners":[` + listener + `],"upstream":{"kind":"smtp","smtp":{"address":"mail.example.com:587","auth":"plain","username":"u","password_secret":"tailnet-authkey"}}}`,
			[]string{`upstream.smtp.password_secret: "tailnet-authkey" is the tailnet join key, kept by the box for itself`}},
		{"a truncated bcrypt hash", `{"listeners":[{"name":"sub","address":":587","mode":"submission"}],"accounts":[{"username":"a","password_hash":"` + hash + `"},{"username":"b","password_hash":"` + hash[:40] + `"}],"upstream":{"kind":"capture"}}`,
			[]string{"accounts[1].password_hash: not a whole bcrypt hash (60 characters, e.g. $2a$10$ and 53 more; this one has 40)"}},
		{"a hostname with spaces", `{"hostname":"relay plant a","listeners":[` + listener + `],"upstream":{"kind":"capture"}}`,
			[]string{`hostname: "relay plant a" is not a host name`}},
		{"a hostname with a trailing hyphen label", `{"hostname":"relay-.example.com","listeners":[` + listener + `],"upstream":{"kind":"capture"}}`,
			[]string{`hostname: "relay-.example.com" is not a host name`}},
		{"a smarthost on port 0", `{"listeners":[` + listener + `],"upstream":{"kind":"smtp","smtp":{"address":"mail.example.com:0"}}}`,
			[]string{`upstream.smtp.address: "mail.example.com:0": port 0 is no smarthost's port`}},
		{"a listener port out of range", `{"listeners":[{"name":"x","address":":70000","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}}`,
			[]string{`listeners[0].address: ":70000": the port must be a number from 0 to 65535`}},
		{"an unknown key does not hide value errors", `{"listners":[],"listeners":[{"name":"x","address":"nowhere","mode":"lmtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"pigeon"}}`,
			[]string{"listners: unknown key", `listeners[0].address: "nowhere": want host:port`, `listeners[0].mode: "lmtp"`, `upstream.kind: "pigeon"`}},
		{"every type error, with its index", `{"listeners":[` + listener + `,{"name":"b","address":":26","mode":"smtp","starttls":"yes","allowed_networks":["10.0.0.0/8"]}],"limits":{"max_recipients":"50","burst":true},"upstream":{"kind":"capture"}}`,
			[]string{"limits.burst: want a whole number, got JSON bool", "limits.max_recipients: want a whole number, got JSON string", "listeners[1].starttls: want true or false, got JSON string"}},
		{"a bad duration against its key", `{"listeners":[` + listener + `],"delivery":{"first_retry":"soon"},"limits":{"read_timeout":5},"upstream":{"kind":"capture"}}`,
			[]string{`delivery.first_retry: "soon" is not a duration`, `limits.read_timeout: want a duration string`}},
		{"a type error does not also count as the value it left out", `{"listeners":[{"name":"x","address":25,"mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}}`,
			[]string{"listeners[0].address: want a string, got JSON number"}},
		{"not JSON", "{\n\"listeners\": [],\n}", []string{"(document): line 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := strings.TrimPrefix(tc.doc, "@")
			if path == tc.doc {
				path = filepath.Join(t.TempDir(), "bad.json")
				if err := os.WriteFile(path, []byte(tc.doc), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var out, errs strings.Builder
			code := checkConfig([]string{path}, &out, &errs)
			if tc.want == nil {
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errs.String())
				}
				return
			}
			lines := strings.Split(strings.TrimSpace(errs.String()), "\n")
			if code != 1 || len(lines) != len(tc.want)+1 {
				t.Fatalf("exit %d, %d problems, want 1 and %d:\n%s", code, len(lines)-1, len(tc.want), errs.String())
			}
			for i, w := range tc.want {
				if got := strings.TrimSpace(lines[i+1]); !strings.HasPrefix(got, w) {
					t.Errorf("problem %d = %q\nwant it to start %q", i, got, w)
				}
			}
		})
	}
	var out, errs strings.Builder
	if code := checkConfig([]string{"a.json", "b.json"}, &out, &errs); code != 2 {
		t.Errorf("two files: exit %d, want 2 (usage)", code)
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

// TestCheckConfigCAFile: upstream.m365.ca_file is judged like a secret:
// listed with the creds put that sends it when there is no -state; with
// -state a missing file, or one that is no certificate, fails the check
// naming the key.
func TestCheckConfigCAFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "m365.json")
	doc := `{"hostname":"relay-x","listeners":[{"address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":"contoso.onmicrosoft.com","client_id":"11111111-2222-3333-4444-555555555555","client_secret_secret":"m365-client-secret","mailbox":"relay@contoso.com","ca_file":"certs/proxy-ca.pem"}}}`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	os.MkdirAll(filepath.Join(state, "secrets"), 0o700)
	os.MkdirAll(filepath.Join(state, "certs"), 0o700)
	os.WriteFile(filepath.Join(state, "secrets", "m365-client-secret"), []byte("value\n"), 0o600)
	ca := filepath.Join(state, "certs", "proxy-ca.pem")
	for _, tc := range []struct {
		name     string
		args     []string
		prepare  func()
		wantCode int
		want     string
	}{
		{"no state: listed", []string{file}, func() {}, 0,
			"upstream.m365.ca_file: file certs/proxy-ca.pem must be provisioned before mail can flow: relayctl -relay NAME creds put proxy-ca -kind ca-certificate -cert CA.pem"},
		{"missing", []string{"-state", state, file}, func() {}, 1, "upstream.m365.ca_file: file certs/proxy-ca.pem is missing"},
		{"not a certificate", []string{"-state", state, file}, func() { os.WriteFile(ca, []byte("proxy CA\n"), 0o600) }, 1, "is malformed (file certs/proxy-ca.pem: no PEM certificate in it)"},
		{"present", []string{"-state", state, file}, func() { os.WriteFile(ca, upstreamtest.NewTestCA(t).PEM(), 0o600) }, 0, "configuration is valid"},
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
