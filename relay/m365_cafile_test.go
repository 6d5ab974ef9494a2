package relay

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// caFileRelay runs a relay whose one upstream is m365-oauth against tt,
// with ca_file caFile ("" for none), no injected roots and no injected
// HTTP client: the system's roots and the file are all it trusts.
func caFileRelay(t *testing.T, tt *m365test.Tenant, secret, caFile string) (*Relay, *config.Config, string) {
	t.Helper()
	dir := relaytest.StateDir(t)
	cfg := config.Default()
	cfg.Listeners[0].StartTLS = new(bool)
	cfg.Listeners[0].Address = "127.0.0.1:0"
	cfg.Upstream = config.Upstream{Kind: config.KindM365OAuth, M365: config.M365{Tenant: m365test.TenantDomain, ClientID: m365test.TenantApp,
		ClientSecretSecret: "m365-client-secret", TokenURL: tt.Entra.URL, Mailbox: m365test.TenantMailbox, FromMailbox: true,
		SMTPHost: "127.0.0.1", SMTPPort: tt.SMTPPort(), CAFile: caFile}}
	cfg.SetDefaults()
	cfg.Delivery.FirstRetry, cfg.Delivery.MaxRetry = config.Duration(time.Hour), config.Duration(time.Hour)
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	store := &secretMap{m: map[string]string{"m365-client-secret": secret}}
	r, err := New(cfg, dir, Deps{Secret: store.get, Name: "plant-a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, cfg, dir
}

// TestM365CAFile: upstream.m365.ca_file is the only way the relay trusts
// a tenant behind a TLS-inspecting proxy (here: fakes whose certificates a
// CA of the test's signs, and no injected roots or HTTP client, so the
// system's roots and the file are all there is). Until the file is there
// the upstream waits, naming the key and the creds put that provides it;
// a file that is no certificate is malformed; once it is there, a reload
// delivers the held mail (token endpoint and SMTP both verified by it).
func TestM365CAFile(t *testing.T) {
	const secret = "Qv8~ca-file-client-SECRET"
	tt := m365test.NewTenantWith(t, m365test.TenantOptions{Secret: secret, Names: []string{"localhost"}})
	r, cfg, dir := caFileRelay(t, tt, secret, "certs/tenant-ca.pem")

	caPath := layout.Dir(dir).Resolve(cfg.Upstream.M365.CAFile)
	for _, tc := range []struct {
		name, content string // content "" leaves the file out
		want          Waiting
	}{
		{"missing", "", Waiting{Upstream: "upstream", Key: "upstream.m365.ca_file", File: "certs/tenant-ca.pem", Reason: config.ReasonMissing,
			Detail: "file certs/tenant-ca.pem is not there yet", Fix: "relayctl -relay plant-a creds put tenant-ca -kind ca-certificate -cert CA.pem"}},
		{"not a certificate", "just text\n", Waiting{Upstream: "upstream", Key: "upstream.m365.ca_file", File: "certs/tenant-ca.pem", Reason: config.ReasonMalformed,
			Detail: "file certs/tenant-ca.pem: no PEM certificate in it", Fix: "relayctl -relay plant-a creds put tenant-ca -kind ca-certificate -cert CA.pem"}},
	} {
		if tc.content != "" {
			os.MkdirAll(filepath.Dir(caPath), 0o700)
			if err := os.WriteFile(caPath, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := r.Reload(cfg); err != nil {
				t.Fatal(err)
			}
		}
		if w := r.Status().Waiting; len(w) != 1 || w[0] != tc.want {
			t.Errorf("%s: Status.Waiting = %+v, want [%+v]", tc.name, w, tc.want)
		}
	}
	if err := send(t, r.Addrs()[0].String(), "plc@plant.example", []string{"ops@fabrikam.test"}, "Subject: alarm\r\n\r\nheld\r\n"); err != nil {
		t.Fatalf("device got %v, want 250 while the CA file is missing", err)
	}
	if n := len(tt.Exchange.Received()) + tt.Entra.Requests(); n != 0 {
		t.Fatalf("the tenant was asked %d times while the upstream waited", n)
	}

	if err := os.WriteFile(caPath, tt.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "the held message at the tenant", func() bool { return len(tt.Exchange.Received()) == 1 })
	if w := r.Status().Waiting; len(w) != 0 {
		t.Errorf("still waiting with the CA file there: %+v", w)
	}
	if tt.Entra.Issued() == 0 {
		t.Error("no token was issued: the token endpoint was not reached through the CA file")
	}
}

// TestM365WithoutCAFileRefusesTheProxy: the same tenant without ca_file
// is not trusted (the system's roots do not hold the test's CA): the
// delivery is deferred with a TLS error, never made. The test above can
// fail: without ca_file nothing reaches the tenant.
func TestM365WithoutCAFileRefusesTheProxy(t *testing.T) {
	tt := m365test.NewTenantWith(t, m365test.TenantOptions{Secret: "s", Names: []string{"localhost"}})
	r, _, _ := caFileRelay(t, tt, "s", "")
	addr := r.Addrs()[0].String()
	if err := send(t, addr, "plc@plant.example", []string{"ops@fabrikam.test"}, "Subject: alarm\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "a deferral", func() bool { return r.Status().Counts[trace.Deferred] > 0 })
	if n := len(tt.Exchange.Received()); n != 0 || tt.Entra.Issued() != 0 {
		t.Errorf("without ca_file the tenant got %d messages and issued %d tokens", n, tt.Entra.Issued())
	}
}
