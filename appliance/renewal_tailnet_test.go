package appliance

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

const tailnetObjectID = "7c0de5a1-4b2e-4f7a-9c3d-2e1f0a9b8c7d"

// ticks stands in for the relay's tickers (Options.Ticks): the test ticks
// every periodic check of the box (renewals, the alert webhook) after it
// moves the virtual clock.
type ticks struct {
	mu sync.Mutex
	cs []chan time.Time
}

func (k *ticks) new(time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	k.mu.Lock()
	k.cs = append(k.cs, c)
	k.mu.Unlock()
	return c
}

// tick wakes every check that is waiting (one that is busy sees the
// next tick).
func (k *ticks) tick() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.cs {
		select {
		case c <- time.Time{}:
		default:
		}
	}
}

// webhook is the alert receiver (a Teams channel, here JSON).
type webhook struct {
	mu     sync.Mutex
	alerts []map[string]string
}

func (w *webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var a map[string]string
	json.NewDecoder(r.Body).Decode(&a)
	w.mu.Lock()
	w.alerts = append(w.alerts, a)
	w.mu.Unlock()
}

func (w *webhook) got() []map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.alerts)
}

// TestBoxCertificateRenewsOverTailnet, end to end on the test tailnet and
// the virtual clock: a box flashed with no tenant secret makes its key pair
// (relayctl creds new-certificate); the admin uploads the certificate with
// the box's key id (the fake Entra plays the portal) and puts the
// configuration; mail flows. The clock moves to 59 days before expiry: the
// box renews by itself (addKey, a token with the new key, removeKey of the
// old one), mail keeps flowing without a deferral, the old key is gone from
// the app, every step is in the trace and the audit log. A year on, Graph
// refuses the renewal (a tenant policy caps lifetimes): relayctl status and
// the webhook say so with the hint, and mail keeps flowing on the key in
// force. Neither private key is in any answer, log line, trace event,
// audit entry, metric or state file but its own.
func TestBoxCertificateRenewsOverTailnet(t *testing.T) {
	tt := m365test.NewTenant(t, "unused-secret")
	tt.Entra.AddApp(m365test.App{ClientID: m365test.TenantApp, ObjectID: tailnetObjectID})
	hook := &webhook{}
	hooks := httptest.NewServer(hook)
	defer hooks.Close()
	tk := &ticks{}
	tn := provtest.New(t)
	b := startBox(t, tn, "plant-r", fmt.Sprintf(captureConfig, "plant-r", "outbox"), func(o *Options) {
		o.RootCAs, o.HTTPClient = tt.CA.Pool, tt.Graph.Client()
		o.Clock, o.Ticks = tt.Clock.Now, tk.new
		// The webhook's URL (a Teams URL carries its token: a secret).
		dir := layout.Dir(o.StateDir)
		if err := os.MkdirAll(dir.Secrets(), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir.Secret("alerts-webhook"), []byte(hooks.URL+"/hook\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-r"}, args...) }
	waitRole(t, rc, cmd, api.Admin)

	var made api.NewCertificateResult
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "new-certificate", "entra-cert", "-days", "200")...)), &made); err != nil || made.KeyID == "" {
		t.Fatalf("new-certificate: %+v %v", made, err)
	}
	blk, _ := pem.Decode([]byte(made.CertificatePEM))
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := layout.Dir(b.dir).Secret("entra-cert")
	firstKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// The admin uploads it with the key id the box chose (Graph
	// PowerShell); another box shares the app.
	tt.Entra.Upload(m365test.TenantApp, cert, made.KeyID)
	other := tt.Entra.Upload(m365test.TenantApp, otherBoxCert(t, tt.Clock.Now()), "")
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-r","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":%q,"token_url":%q,"graph_url":%q,"client_id":%q,"application_object_id":%q,
	    "certificate_file":%q,"certificate_key_secret":"entra-cert","mailbox":%q,"from_mailbox":true,"smtp_host":"127.0.0.1","smtp_port":%d}},
	  "alerts":{"webhook":{"kind":"json","url_secret":"alerts-webhook","conditions":["certificate_renewal_failing"]}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, m365test.TenantDomain, tt.Entra.URL, tt.Graph.URL, m365test.TenantApp, tailnetObjectID,
		made.Credential.CertificateFile, m365test.TenantMailbox, tt.SMTPPort())
	cfgFile := filepath.Join(t.TempDir(), "m365.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rc.ok("", cmd("config", "put", cfgFile)...)
	deliver := func(n int) {
		t.Helper()
		if err := b.send(t, fmt.Sprintf("scan %d", n)); err != nil {
			t.Fatalf("send %d: %v", n, err)
		}
		relaytest.Eventually(t, fmt.Sprintf("message %d at the tenant", n), func() bool { return len(tt.Exchange.Received()) == n })
	}
	deliver(1)
	status := func() api.Status {
		t.Helper()
		var s api.Status
		if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := status(); len(s.Renewals) != 1 || s.Renewals[0].Credential != "entra-cert" || s.Renewals[0].Failures != 0 {
		t.Fatalf("status renewals before: %+v", s.Renewals)
	}

	// 59 days before expiry the box renews by itself at its next check.
	tt.Clock.Advance(cert.NotAfter.Sub(tt.Clock.Now()) - 59*24*time.Hour)
	relaytest.Eventually(t, "the old key removed from the app", func() bool {
		tk.tick()
		return !slices.ContainsFunc(tt.Entra.Keys(m365test.TenantApp), func(k m365test.KeyCredential) bool { return k.KeyID == made.KeyID })
	})
	calls := tt.Graph.KeyCalls()
	if len(calls) != 2 || calls[0].Action != "addKey" || calls[1].Action != "removeKey" || calls[1].KeyID != made.KeyID || calls[1].Status != 204 {
		t.Fatalf("Graph calls %+v, want addKey, then removeKey of the box's key %s", calls, made.KeyID)
	}
	var keys []string
	for _, k := range tt.Entra.Keys(m365test.TenantApp) {
		keys = append(keys, k.KeyID)
	}
	if want := []string{other, calls[0].KeyID}; !slices.Equal(keys, want) {
		t.Errorf("the app's keys %v, want the other box's and the new one %v", keys, want)
	}
	renewedKey, _ := os.ReadFile(keyFile)
	if string(renewedKey) == string(firstKey) {
		t.Fatal("the key in the secret store is the first one still")
	}
	deliver(2)
	s := status()
	if s.Counts["deferred"] != 0 {
		t.Errorf("%d deferrals around the renewal, want none", s.Counts["deferred"])
	}
	var creds []api.Credential
	json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "list")...)), &creds)
	creds = slices.DeleteFunc(creds, func(c api.Credential) bool { return c.Name != "entra-cert" })
	if len(creds) != 1 || creds[0].Origin != api.OriginBox || !creds[0].NotAfter.After(cert.NotAfter) {
		t.Errorf("creds list after the renewal %+v", creds)
	}
	// Each step in the trace (relayctl trace -kind renewal) and the audit.
	var ev []api.TraceEvent
	json.Unmarshal([]byte(rc.ok("", cmd("-json", "trace", "-kind", "renewal", "-since", "2000-01-01")...)), &ev)
	var traced []string
	for _, e := range ev {
		traced = append(traced, e.Step+" "+e.Result)
	}
	for _, want := range []string{"start ok", "new key pair ok", "addKey ok", "token with the new key ok", "removeKey ok", "done ok"} {
		if !slices.Contains(traced, want) {
			t.Errorf("trace -kind renewal has no %q: %v", want, traced)
		}
	}
	if out := rc.ok("", cmd("trace", "-kind", "renewal", "-since", "2000-01-01")...); !strings.Contains(out, "removeKey ok") || !strings.Contains(out, made.KeyID) {
		t.Errorf("relayctl trace -kind renewal:\n%s", out)
	}
	var audit []api.AuditEntry
	json.Unmarshal([]byte(rc.ok("", cmd("-json", "audit", "-limit", "100")...)), &audit)
	var audited []string
	for _, e := range audit {
		if e.Method == "RENEW" {
			audited = append(audited, e.What)
		}
	}
	if len(audited) != 8 || !strings.Contains(strings.Join(audited, "\n"), "removeKey (key id "+made.KeyID+")") {
		t.Errorf("audit has %d renewal steps, want 8 with the old key's removal:\n%s", len(audited), strings.Join(audited, "\n"))
	}

	// A year on, the tenant caps certificates at 180 days: Graph refuses.
	tt.Graph.CapKeyLifetime(180 * 24 * time.Hour)
	tt.Clock.Advance(365*24*time.Hour - 59*24*time.Hour)
	relaytest.Eventually(t, "the webhook told of the refused renewal", func() bool {
		tk.tick()
		return len(hook.got()) > 0
	})
	a := hook.got()[0]
	if a["condition"] != "certificate_renewal_failing" || a["status"] != "firing" || !strings.Contains(a["summary"], "certificate_days") || !strings.Contains(a["summary"], "entra-cert") {
		t.Errorf("webhook got %v", a)
	}
	s = status()
	if len(s.Renewals) != 1 || s.Renewals[0].Failures != 1 || !strings.Contains(s.Renewals[0].Hint, "certificate_days") {
		t.Errorf("status renewals after the refusal %+v", s.Renewals)
	}
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, "RENEWAL FAILING") || !strings.Contains(out, "certificate_days") {
		t.Errorf("relayctl status:\n%s", out)
	}
	deliver(3)
	if s := status(); s.Counts["deferred"] != 0 {
		t.Errorf("%d deferrals after the refused renewal, want none", s.Counts["deferred"])
	}

	// The keys, in any form, nowhere but the key's own file.
	resp, err := http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	b.stop()
	places := map[string]string{"logs": b.logs.String(), "log ring": strings.Join(ringLines(b), "\n"), "metrics": string(metrics),
		"relayctl answers": rc.answers.String(), "webhook": fmt.Sprint(hook.got())}
	filepath.Walk(b.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && path != keyFile {
			data, _ := os.ReadFile(path)
			places[path] = string(data)
		}
		return nil
	})
	for _, want := range []string{"trace", "audit", "renewal"} {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(places)), func(p string) bool {
			return strings.Contains(p, string(filepath.Separator)+want+string(filepath.Separator))
		}) {
			t.Errorf("no %s file searched", want)
		}
	}
	searchKeys(t, places, map[string][]byte{"first key": firstKey, "renewed key": renewedKey})
}

// searchKeys fails for every place that holds one of the PEM keys, as
// PEM lines, DER, or base64 of the DER.
func searchKeys(t *testing.T, places map[string]string, keys map[string][]byte) {
	t.Helper()
	for name, k := range keys {
		kb, _ := pem.Decode(k)
		if kb == nil {
			t.Fatalf("%s is no PEM key", name)
		}
		b64 := base64.StdEncoding.EncodeToString(kb.Bytes)
		lines := strings.Split(string(k), "\n")
		needles := map[string]string{"DER": string(kb.Bytes[len(kb.Bytes)/2 : len(kb.Bytes)/2+32]), "base64": b64[len(b64)/2 : len(b64)/2+48],
			"PEM line": lines[len(lines)/2], "base64url": base64.RawURLEncoding.EncodeToString(kb.Bytes)[len(b64)/3 : len(b64)/3+48]}
		for where, text := range places {
			for form, needle := range needles {
				if strings.Contains(text, needle) {
					t.Errorf("the %s (%s) appears in %s", name, form, where)
				}
			}
		}
	}
}

// ringLines are every record in the box's log ring (relayctl logs).
func ringLines(b *box) []string {
	es, _ := b.ring.Read(logring.Query{Level: slog.LevelDebug})
	var out []string
	for _, e := range es {
		out = append(out, string(e.Line))
	}
	return out
}

// otherBoxCert is another box's certificate on the same app registration.
func otherBoxCert(t *testing.T, now time.Time) *x509.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: "siterelay plant-s"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
