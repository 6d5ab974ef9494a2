package relay

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream"
)

// TestSecretExpiryWarned: a password whose expiry the admin gave (creds put
// -expires) gets the metric from the start, and the status warning from 30
// days before it, on the relay's clock; a secret the configuration does not
// use, or one without a known expiry, gets neither.
func TestSecretExpiryWarned(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	expires := now.Add(40 * 24 * time.Hour)
	cfg := config.Default()
	cfg.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: "127.0.0.1:1", TLS: "none", Auth: "plain",
		Username: "relay@example.com", PasswordSecret: "smarthost", Concurrency: 1, MaxRecipients: 10}}
	cfg.Listeners[0].Address = "127.0.0.1:0"
	cfg.SetDefaults()
	known := map[string]struct {
		kind  string
		until time.Time
	}{"smarthost": {config.RefPassword, expires}, "unused": {config.RefClientSecret, now.Add(24 * time.Hour)}}
	r, err := New(cfg, relaytest.StateDir(t), Deps{Clock: clock,
		Secret: func(string) ([]byte, error) { return []byte("pw"), nil },
		SecretExpiry: func(name string) (string, time.Time) {
			k := known[name]
			return k.kind, k.until
		}})
	if err != nil {
		t.Fatal(err)
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return grepLines(string(b), "secret_expires")
	}
	warned := func() string { return strings.Join(r.Status().Warnings, "\n") }
	tests := []struct {
		name            string
		advance         time.Duration
		metric, warning string
	}{
		{"40 days ahead", 0, `siterelay_credential_secret_expires_in_seconds{credential="smarthost",kind="password"} 3.456e+06`, ""},
		{"20 days ahead", 20 * 24 * time.Hour, `siterelay_credential_secret_expires_in_seconds{credential="smarthost",kind="password"} 1.728e+06`,
			"password smarthost expires on 2027-01-16 (in 20 days): nothing renews it. Make a new one and put it on the box (relayctl creds put smarthost -kind password -expires DATE)"},
		{"expired", 21 * 24 * time.Hour, `siterelay_credential_secret_expires_in_seconds{credential="smarthost",kind="password"} -86400`,
			"password smarthost expired on 2027-01-16"},
	}
	for _, tt := range tests {
		now = now.Add(tt.advance)
		m, w := scrape(), warned()
		if !strings.Contains(m, tt.metric) || strings.Contains(m, "unused") {
			t.Errorf("%s: metrics\n%s\nwant %s and nothing of the unused secret", tt.name, m, tt.metric)
		}
		steps, _ := Doctor(context.Background(), cfg, t.TempDir(), Deps{Clock: clock, Secret: func(string) ([]byte, error) { return []byte("pw"), nil },
			SecretExpiry: func(name string) (string, time.Time) { return known[name].kind, known[name].until }}, "")
		var doc *upstream.Step
		for i := range steps {
			if steps[i].Name == "secret smarthost expiry" {
				doc = &steps[i]
			}
		}
		if doc == nil || doc.OK != (tt.warning == "") || (tt.warning != "" && !strings.Contains(doc.Detail, tt.warning)) {
			t.Errorf("%s: doctor says %+v, want ok %v and %q", tt.name, doc, tt.warning == "", tt.warning)
		}
		if (tt.warning == "") != !strings.Contains(w, "smarthost") || (tt.warning != "" && !strings.Contains(w, tt.warning)) {
			t.Errorf("%s: warnings %q, want %q", tt.name, w, tt.warning)
		}
	}
}
