package appliance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// TestRelayctlProvisionsTenant is the tailnet issue's path for a
// Microsoft 365 site: a box flashed without secrets gets its Entra app's
// client secret and a configuration through relayctl, and mail goes out
// by XOAUTH2 client submission to a fake tenant. A wrong secret first:
// the mail waits with Microsoft's reply explained, and the right one,
// put over it, takes effect on the next attempt.
func TestRelayctlProvisionsTenant(t *testing.T) {
	const clientSecret = "Qv8~Entra.client-SECRET-value-7f3a91"
	tt := m365test.NewTenant(t, clientSecret)
	tn := provtest.New(t)
	b := startBox(t, tn, "plant-m", fmt.Sprintf(captureConfig, "plant-m", "outbox"), func(o *Options) {
		o.RootCAs, o.HTTPClient = tt.CA.Pool, tt.Graph.Client()
	})
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-m"}, args...) }
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})

	// The secret's ID pasted instead of its value: a classic first try.
	rc.ok("5f3c2a7e-secret-ID-not-value\n", cmd("creds", "put", "entra-app", "-kind", "client-secret", "-from", "-")...)
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-m","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":%q,"token_url":%q,"client_id":%q,"client_secret_secret":"entra-app","mailbox":%q,"from_mailbox":true,"smtp_host":"127.0.0.1","smtp_port":%d}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, m365test.TenantDomain, tt.Entra.URL, m365test.TenantApp, m365test.TenantMailbox, tt.SMTPPort())
	cfgFile := filepath.Join(t.TempDir(), "m365.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := rc.ok("", cmd("config", "put", cfgFile)...); !strings.Contains(out, "version 2 in force") {
		t.Errorf("config put said:\n%s", out)
	}
	if err := b.send(t, "scan to the tenant"); err != nil {
		t.Fatalf("send: %v", err)
	}
	var q []api.QueueItem
	relaytest.Eventually(t, "the message deferred on the wrong secret", func() bool {
		out := rc.ok("", cmd("-json", "queue")...)
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	var m api.Message
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "queue", "show", q[0].ID)...)), &m); err != nil {
		t.Fatal(err)
	}
	if got := m.LastReply + " | " + m.LastHint; !strings.Contains(got, "7000215") || !strings.Contains(strings.ToLower(m.LastHint), "secret") {
		t.Errorf("got reply and hint %q, want AADSTS7000215 explained", got)
	}
	t.Logf("relayctl queue show:\n%s", rc.ok("", cmd("queue", "show", q[0].ID)...))
	if n := len(tt.Exchange.Received()); n != 0 {
		t.Fatalf("Exchange got %d messages with a wrong secret", n)
	}
	var creds []api.Credential
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "list")...)), &creds); err != nil || len(creds) != 1 || !creds[0].LastUsed.IsZero() {
		t.Errorf("creds list before a delivery = %+v, %v: want one, never used", creds, err)
	}

	// The value, over it: the next attempt takes a new token.
	rc.ok(clientSecret+"\n", cmd("creds", "put", "entra-app", "-kind", "client-secret", "-from", "-")...)
	rc.ok("", cmd("queue", "retry", q[0].ID)...)
	relaytest.Eventually(t, "the message at the tenant", func() bool { return len(tt.Exchange.Received()) == 1 })
	got := tt.Exchange.Received()[0]
	if got.Mailbox != m365test.TenantMailbox || !strings.Contains(string(got.Data), "scan to the tenant") {
		t.Errorf("Exchange got mailbox %q, data %.200q", got.Mailbox, got.Data)
	}
	relaytest.Eventually(t, "the credential's last use", func() bool {
		return json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "list")...)), &creds) == nil && len(creds) == 1 && !creds[0].LastUsed.IsZero()
	})

	// Status over the tailnet says whether the clock is synchronised
	// (tokens depend on it) and which credential is in use.
	var st api.Status
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &st); err != nil {
		t.Fatal(err)
	}
	if st.ClockSynchronised == nil || len(st.Credentials) != 1 || st.Credentials[0].LastUsed.IsZero() {
		t.Errorf("status: clock %v, credentials %+v", st.ClockSynchronised, st.Credentials)
	}
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, "clock") || !strings.Contains(out, "credential entra-app") {
		t.Errorf("relayctl status:\n%s", out)
	}

	// Nothing of either value anywhere but the secret store.
	b.stop()
	for where, text := range map[string]string{"logs": b.logs.String(), "relayctl answers": rc.answers.String()} {
		for _, s := range []string{clientSecret, "5f3c2a7e-secret-ID-not-value"} {
			if strings.Contains(text, s) {
				t.Errorf("a provisioned secret appears in %s", where)
			}
		}
	}
}
