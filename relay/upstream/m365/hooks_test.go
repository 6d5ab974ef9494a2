package m365_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// TokenOptions.Renewed hears of every request: failures, and successes
// with the new token's expiry (the metrics' renewals and seconds left).
func TestTokenRenewedHook(t *testing.T) {
	e := newTokenEnv(t)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	type call struct {
		expires time.Time
		failed  bool
	}
	var calls []call
	o := e.opts()
	o.ClientSecret = []byte("s3cret")
	o.Renewed = func(exp time.Time, err error) { calls = append(calls, call{exp, err != nil}) }
	ts, err := m365.NewTokenSource(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.entra.SetDown(true)
	ts.Token(ctx)
	ts.Token(ctx) // within the backoff: no request, no call
	e.entra.SetDown(false)
	e.clock.Advance(5 * time.Second)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatal(err)
	}
	ts.Token(ctx) // cached: no call
	want := []call{{time.Time{}, true}, {e.clock.Now().Add(3599 * time.Second), false}}
	if len(calls) != len(want) || calls[0] != want[0] || !calls[1].expires.Equal(want[1].expires) || calls[1].failed {
		t.Errorf("calls %+v, want %+v", calls, want)
	}
}

// Deps.ClientCertificate is told the assertion certificate's expiry
// when New loads it, and Deps.TokenRenewed of the token the first
// delivery asks for.
func TestClientCertificateAndTokenHooks(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	certPEM, keyPEM, cert := e.ca.RSA(t, "relay-app")
	e.entra.AddApp(m365test.App{ClientID: "app2", Cert: cert.Leaf})
	e.x.Grant("app2", mailbox)
	os.WriteFile(filepath.Join(e.dir, "app.pem"), certPEM, 0o644)
	e.secrets["app-key"] = keyPEM
	m := e.oauth(config.M365{CertificateFile: "app.pem", CertificateKeySecret: "app-key"})
	m.ClientID = "app2"
	d := e.deps("")
	var notAfter, tokenExpires time.Time
	renewals := 0
	d.ClientCertificate = func(na time.Time) { notAfter = na }
	d.TokenRenewed = func(exp time.Time, err error) {
		if err == nil {
			renewals++
			tokenExpires = exp
		}
	}
	up, err := m365.New("m365-oauth", m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if !notAfter.Equal(cert.Leaf.NotAfter) {
		t.Errorf("client certificate expiry %v, want %v", notAfter, cert.Leaf.NotAfter)
	}
	if _, err := up.Deliver(context.Background(), newMsg(1, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatal(err)
	}
	if renewals != 1 || !tokenExpires.After(e.clock.Now()) {
		t.Errorf("renewals %d, token expires %v (now %v)", renewals, tokenExpires, e.clock.Now())
	}
}
