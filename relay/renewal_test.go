package relay

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/secrets"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

const renewObjectID = "5e1f0c7a-0b7d-4d5c-9a51-0f7c2e9b1d34"

// TestBoxCertificateRenewsItself, end to end on the virtual clock: the box
// makes its key pair (the secret store's NewCertificate, as relayctl creds
// new-certificate does), the admin uploads the certificate with the box's
// key id (the fake plays Graph PowerShell), mail flows; 59 days before
// expiry the relay renews through addKey/removeKey and mail keeps flowing
// without a deferral, the old key gone and the other box's key kept. Then a
// renewal Graph refuses (a tenant policy caps lifetimes) is raised on
// status and metrics with the hint, and mail keeps flowing on the key in
// force. Neither private key is anywhere but the secret store. With
// ca_file the same holds when the file is all the relay trusts (a plant
// behind a TLS-inspecting proxy): the renewal's Graph and token calls
// verify by it as delivery does.
func TestBoxCertificateRenewsItself(t *testing.T) {
	for _, viaCAFile := range []bool{false, true} {
		t.Run(map[bool]string{false: "injected roots", true: "ca_file"}[viaCAFile], func(t *testing.T) { renewsItself(t, viaCAFile) })
	}
}

func renewsItself(t *testing.T, viaCAFile bool) {
	opts := m365test.TenantOptions{Secret: "unused-secret"}
	if viaCAFile {
		opts.Names = []string{"localhost"}
	}
	tt := m365test.NewTenantWith(t, opts)
	tt.Entra.AddApp(m365test.App{ClientID: m365test.TenantApp, ObjectID: renewObjectID})
	dir := relaytest.StateDir(t)
	store := secrets.New(layout.Dir(dir), tt.Clock.Now)
	made, err := store.NewCertificate("entra", api.NewCertificate{})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(made.CertificatePEM))
	cert, _ := x509.ParseCertificate(blk.Bytes)
	tt.Entra.Upload(m365test.TenantApp, cert, made.KeyID)
	other, err := secrets.New(layout.Dir(t.TempDir()), tt.Clock.Now).NewCertificate("plant8", api.NewCertificate{})
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := pem.Decode([]byte(other.CertificatePEM))
	otherCert, _ := x509.ParseCertificate(ob.Bytes)
	otherID := tt.Entra.Upload(m365test.TenantApp, otherCert, "")
	firstKey, _ := os.ReadFile(layout.Dir(dir).Secret("entra"))

	cfg := config.Default()
	cfg.Listeners[0].StartTLS = new(bool)
	cfg.Upstream = config.Upstream{Kind: config.KindM365OAuth, M365: config.M365{Tenant: m365test.TenantDomain, ClientID: m365test.TenantApp,
		CertificateFile: made.Credential.CertificateFile, CertificateKeySecret: "entra", ApplicationObjectID: renewObjectID,
		TokenURL: tt.Entra.URL, GraphURL: tt.Graph.URL, Mailbox: m365test.TenantMailbox, FromMailbox: true, SMTPHost: "127.0.0.1", SMTPPort: tt.SMTPPort()}}
	deps := Deps{RootCAs: tt.CA.Pool, HTTPClient: tt.Graph.Client()}
	if viaCAFile {
		cfg.Upstream.M365.CAFile = "certs/tenant-ca.pem"
		if err := os.WriteFile(layout.Dir(dir).Resolve(cfg.Upstream.M365.CAFile), tt.CAPEM(), 0o600); err != nil {
			t.Fatal(err)
		}
		deps = Deps{} // the file and the system's roots are all it trusts
	}
	cfg.SetDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for i := range cfg.Listeners {
		cfg.Listeners[i].Address = "127.0.0.1:0"
	}
	logs := &relaytest.Buffer{}
	var steps []m365.RenewStep
	r, err := New(cfg, dir, Deps{Clock: tt.Clock.Now, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Secret:   func(name string) ([]byte, error) { return os.ReadFile(layout.Dir(dir).Secret(name)) },
		KeyStore: store, RenewalStep: func(s m365.RenewStep) { steps = append(steps, s) },
		RootCAs: deps.RootCAs, HTTPClient: deps.HTTPClient})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	addr := r.Addrs()[0].String()
	deliver := func(n int) {
		t.Helper()
		if err := send(t, addr, "plc@plant.example", []string{"ops@fabrikam.test"}, fmt.Sprintf("Subject: alarm %d\r\n\r\nline 4\r\n", n)); err != nil {
			t.Fatalf("send %d: %v", n, err)
		}
		relaytest.Eventually(t, fmt.Sprintf("message %d at the tenant", n), func() bool { return len(tt.Exchange.Received()) == n })
	}
	deliver(1)

	// 59 days before expiry (the clock is the tenant's and the relay's).
	tt.Clock.Advance(cert.NotAfter.Sub(tt.Clock.Now()) - 59*24*time.Hour)
	r.CheckRenewals(ctx)
	calls := tt.Graph.KeyCalls()
	if len(calls) != 2 || calls[0].Action != "addKey" || calls[1].Action != "removeKey" || calls[1].KeyID != made.KeyID || calls[1].Status != 204 {
		t.Fatalf("Graph calls %+v, want addKey then removeKey of the box's key %s", calls, made.KeyID)
	}
	var ids []string
	for _, k := range tt.Entra.Keys(m365test.TenantApp) {
		ids = append(ids, k.KeyID)
	}
	if strings.Join(ids, ",") != otherID+","+calls[0].KeyID {
		t.Errorf("the app's keys are %v, want the other box's %s and the new %s", ids, otherID, calls[0].KeyID)
	}
	l, _ := store.List()
	if len(l) != 1 || l[0].Origin != api.OriginBox || !l[0].NotAfter.After(cert.NotAfter) {
		t.Errorf("creds list after renewal %+v", l)
	}
	deliver(2)
	st := r.Status()
	if st.Counts[trace.Deferred] != 0 {
		t.Errorf("%d deferrals around the renewal, want none", st.Counts[trace.Deferred])
	}
	if len(st.Renewals) != 1 || st.Renewals[0].Renewals != 1 || st.Renewals[0].Failures != 0 {
		t.Errorf("status renewals %+v", st.Renewals)
	}
	if len(steps) != 8 || steps[len(steps)-1].Step != "done" {
		t.Errorf("steps %+v", steps)
	}
	// Every step is in the trace too (relayctl trace -kind renewal), in
	// the order it happened.
	ev, err := r.Trace().Query(ctx, trace.Filter{Kind: trace.Renewal})
	if err != nil || len(ev) != len(steps) {
		t.Fatalf("trace renewal events %+v (%v), want the %d steps", ev, err, len(steps))
	}
	// (All at one instant of the virtual clock: in no particular order.)
	traced := map[string]bool{}
	for _, e := range ev {
		traced[e.Credential+" "+e.Step+" "+e.Result+" "+e.KeyID] = true
	}
	for _, s := range steps {
		if !traced["entra "+s.Step+" ok "+s.KeyID] {
			t.Errorf("step %+v not in the trace %+v", s, ev)
		}
	}

	// Next year: the tenant now caps certificates at 180 days.
	tt.Graph.CapKeyLifetime(180 * 24 * time.Hour)
	tt.Clock.Advance(365*24*time.Hour - 59*24*time.Hour)
	r.CheckRenewals(ctx)
	st = r.Status()
	if len(st.Renewals) != 1 || st.Renewals[0].Failures != 1 || !strings.Contains(st.Renewals[0].Hint, "certificate_days") {
		t.Fatalf("status renewals after a refusal %+v", st.Renewals)
	}
	ev, _ = r.Trace().Query(ctx, trace.Filter{Kind: trace.Renewal, Since: tt.Clock.Now()})
	ev = slices.DeleteFunc(ev, func(e trace.Event) bool { return e.Result != "failed" })
	if len(ev) != 1 || ev[0].Step != "addKey" || ev[0].Result != "failed" || !strings.Contains(ev[0].Reply, "HTTP 400") || !strings.Contains(ev[0].Hint, "certificate_days") {
		t.Errorf("the refused renewal in the trace: %+v", ev)
	}
	if w := strings.Join(st.Warnings, "\n"); !strings.Contains(w, "could not be renewed") || !strings.Contains(w, "certificate_days") {
		t.Errorf("status warnings %q", w)
	}
	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	metrics, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(metrics), `siterelay_credential_renewal_failures{credential="entra"} 1`) {
		t.Errorf("metrics:\n%s", grepLines(string(metrics), "renewal"))
	}
	deliver(3)
	if st := r.Status(); st.Counts[trace.Deferred] != 0 {
		t.Errorf("%d deferrals after the refused renewal, want none", st.Counts[trace.Deferred])
	}

	// Neither key anywhere but its own file: logs, status, metrics, every
	// other state file (trace, pace, config, descriptions).
	key, _ := os.ReadFile(layout.Dir(dir).Secret("entra"))
	cancel()
	<-done
	done <- nil
	sj, _ := json.Marshal(r.Status())
	places := map[string]string{"logs": logs.String(), "metrics": string(metrics), "status": string(sj)}
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && path != layout.Dir(dir).Secret("entra") {
			b, _ := os.ReadFile(path)
			places[path] = string(b)
		}
		return nil
	})
	for _, k := range [][]byte{firstKey, key} {
		kb, _ := pem.Decode(k)
		line := strings.Split(string(k), "\n")[3]
		for where, text := range places {
			if strings.Contains(text, string(kb.Bytes)) || strings.Contains(text, line) {
				t.Errorf("a private key appears in %s", where)
			}
		}
	}
	if strings.Contains(string(key), strings.Split(string(firstKey), "\n")[3]) {
		t.Error("the first key is still in the secret store")
	}
}
