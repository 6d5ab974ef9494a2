package appliance

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// TestFirstBootWaitsForSecret is the new box's path: its configuration
// names a Microsoft 365 client secret that is not provisioned yet. The box
// comes up and joins the tailnet (it used to exit, and gokrazy restarted
// it forever, off the tailnet), accepts mail and holds it, says on the
// tailnet and on the LAN which secret is missing and how to put it, and
// `relayctl creds put` delivers the held mail without a restart or a retry.
func TestFirstBootWaitsForSecret(t *testing.T) {
	const clientSecret = "Qv8~Entra.client-SECRET-first-boot-19b2"
	tt := m365test.NewTenant(t, clientSecret)
	tn := provtest.New(t)
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-w","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":%q,"token_url":%q,"client_id":%q,"client_secret_secret":"m365-client-secret","mailbox":%q,"from_mailbox":true,"smtp_host":"127.0.0.1","smtp_port":%d}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, m365test.TenantDomain, tt.Entra.URL, m365test.TenantApp, m365test.TenantMailbox, tt.SMTPPort())
	b := startBox(t, tn, "plant-w", cfg, func(o *Options) {
		o.RootCAs, o.HTTPClient = tt.CA.Pool, tt.Graph.Client()
	})
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-w"}, args...) }
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})

	const fix = "relayctl -relay plant-w creds put m365-client-secret -kind client-secret -from FILE"
	var st api.Status
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Waiting) != 1 || st.Waiting[0].Secret != "m365-client-secret" || st.Waiting[0].Key != "upstream.m365.client_secret_secret" ||
		st.Waiting[0].Reason != "missing" || st.Waiting[0].Fix != fix || st.Health != "warning" {
		t.Errorf("status over the tailnet: health %q, waiting %+v", st.Health, st.Waiting)
	}
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, "m365-client-secret") || !strings.Contains(out, fix) {
		t.Errorf("relayctl status does not name the secret and its fix:\n%s", out)
	}
	resp, err := http.Get("http://" + b.http + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), `"secret": "m365-client-secret"`) || !strings.Contains(string(page), fix) {
		t.Errorf("the LAN status page does not name the secret and its fix:\n%s", page)
	}

	if err := b.send(t, "first alarm"); err != nil {
		t.Fatalf("device got %v, want 250 while the secret is missing", err)
	}
	var q []api.QueueItem
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "queue")...)), &q); err != nil || len(q) != 1 {
		t.Fatalf("queue = %+v, %v: want the one held message", q, err)
	}

	rc.ok(clientSecret+"\n", cmd("creds", "put", "m365-client-secret", "-kind", "client-secret", "-from", "-")...)
	relaytest.Eventually(t, "the held message at the tenant", func() bool { return len(tt.Exchange.Received()) == 1 })
	var after api.Status
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &after); err != nil || len(after.Waiting) != 0 {
		t.Errorf("still waiting after creds put: %+v, %v", after.Waiting, err)
	}

	// Deleting the secret the configuration uses is refused, naming the
	// key; forced, it is deleted and the upstream waits again (not a
	// relay that keeps the old secret in memory until the next power cut).
	code, out, errs := rc.run("", cmd("creds", "delete", "m365-client-secret")...)
	if code == 0 || !strings.Contains(out+errs, "upstream.m365.client_secret_secret") || !strings.Contains(out+errs, "-force") {
		t.Errorf("creds delete of a secret in use: exit %d\n%s%s", code, out, errs)
	}
	rc.ok("", cmd("creds", "delete", "-force", "m365-client-secret")...)
	var forced api.Status
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &forced); err != nil || len(forced.Waiting) != 1 || forced.Waiting[0].Secret != "m365-client-secret" {
		t.Errorf("after a forced delete: waiting %+v, %v", forced.Waiting, err)
	}
	var audit []api.AuditEntry
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "audit")...)), &audit); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range audit {
		found = found || strings.Contains(e.What, "forced; in use by upstream.m365.client_secret_secret")
	}
	if !found {
		t.Errorf("the forced delete is not in the audit log: %+v", audit)
	}

	b.stop()
	if strings.Contains(b.logs.String(), clientSecret) {
		t.Error("the client secret appears in the log")
	}
}

// TestBrokenConfigFallsBack: a config.json that cannot be parsed, or
// parses but cannot be built, is kept for the admin to read while the box
// runs the newest kept version that builds, and says so; with no version
// that builds it runs with no listener, still managed.
func TestBrokenConfigFallsBack(t *testing.T) {
	tn := provtest.New(t)
	good := fmt.Sprintf(captureConfig, "plant-f", "outbox")
	// Parses and validates, but its listener's certificate is not there.
	unbuildable := strings.Replace(good, `"starttls":false`, `"starttls":true`, 1)
	unbuildable = strings.TrimSuffix(unbuildable, "}") + `,"tls":{"cert_file":"certs/none.pem","key_file":"certs/none.key"}}`
	for _, tc := range []struct {
		name, broken, problem string
		kept                  bool
	}{
		{"unparseable", `{"hostname": "relay-plant-f", "listeners": [`, "cut-off", true},
		{"unbuildable", unbuildable, "none.pem", true},
		{"nothing builds", `not json`, "invalid character", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			site := "plant-f"
			b := startBoxWith(t, tn, site, tc.broken, func(dir string) {
				if tc.kept {
					kept := layout.Dir(dir).ConfigVersion(3)
					os.MkdirAll(filepath.Dir(kept), 0o700)
					older := layout.Dir(dir).ConfigVersion(2)
					if err := os.WriteFile(older, []byte(`{"older": true}`), 0o600); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(kept, []byte(good), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			})
			resp, err := http.Get("http://" + b.http + "/status.json")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var page struct {
				Relay struct {
					Config *struct {
						InForce string `json:"in_force"`
						Broken  string `json:"broken"`
						Problem string `json:"problem"`
					} `json:"config"`
					Listeners []json.RawMessage `json:"listeners"`
				} `json:"relay"`
				Health struct {
					State string   `json:"state"`
					Notes []string `json:"notes"`
				} `json:"health"`
			}
			if err := json.Unmarshal(body, &page); err != nil {
				t.Fatal(err)
			}
			c := page.Relay.Config
			wantIn := ""
			if tc.kept {
				wantIn = "config.d/000003.json"
			}
			if c == nil || c.InForce != wantIn || c.Broken != "config.json" || !strings.Contains(c.Problem, tc.problem) || page.Health.State != "warning" {
				t.Fatalf("status.json: %s", body)
			}
			if b, err := os.ReadFile(filepath.Join(b.dir, "config.json")); err != nil || string(b) != tc.broken {
				t.Errorf("the broken config.json was not kept as it was: %q, %v", b, err)
			}
			resp, err = http.Get("http://" + b.http + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			metrics, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantM := `siterelay_config_in_force{source="none"} 1`
			if tc.kept {
				wantM = `siterelay_config_in_force{source="kept"} 1`
			}
			if !strings.Contains(string(metrics), wantM) {
				t.Errorf("metrics lack %s", wantM)
			}
			if !tc.kept {
				if len(page.Relay.Listeners) != 0 {
					t.Errorf("listeners with no configuration: %s", body)
				}
				return
			}
			if err := b.send(t, "on the kept version"); err != nil {
				t.Fatalf("send: %v", err)
			}
			relaytest.Eventually(t, "the message in outbox/", func() bool {
				files, _ := filepath.Glob(filepath.Join(b.dir, "outbox", "*.eml"))
				return len(files) == 1
			})
		})
	}
}

// startBoxWith is startBox with cfg as config.json and prepare run on the
// state directory first.
func startBoxWith(t *testing.T, tn *provtest.Tailnet, site, cfg string, prepare func(dir string)) *box {
	t.Helper()
	var dir string
	return startBox(t, tn, site, cfg, func(o *Options) {
		dir = o.StateDir
		prepare(dir)
	})
}
