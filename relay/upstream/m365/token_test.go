package m365_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

type tokenEnv struct {
	clock *m365test.Clock
	entra *m365test.Entra
	ca    *m365test.CA
}

func newTokenEnv(t *testing.T) *tokenEnv {
	c := m365test.NewClock()
	return &tokenEnv{clock: c, entra: m365test.NewEntra(t, "contoso.test", c.Now), ca: m365test.NewCA(t)}
}

func (e *tokenEnv) opts() m365.TokenOptions {
	return m365.TokenOptions{BaseURL: e.entra.URL, Tenant: "contoso.test", ClientID: "app1", Scope: m365test.SMTPScope,
		HTTPClient: e.entra.Client(), Clock: e.clock.Now}
}

func TestTokenSecretCachedAndRenewed(t *testing.T) {
	e := newTokenEnv(t)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	o := e.opts()
	o.ClientSecret = []byte("s3cret")
	ts, err := m365.NewTokenSource(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if tok, _ := ts.Token(ctx); tok != first {
			t.Fatal("token not cached")
		}
	}
	if _, ok := e.entra.Check(first, m365test.SMTPScope); !ok {
		t.Fatal("fake does not know its token")
	}
	e.clock.Advance(3599*time.Second - 4*time.Minute) // inside the 5-minute renewal window
	second, err := ts.Token(ctx)
	if err != nil || second == first {
		t.Fatalf("want a renewed token, got same=%v err=%v", second == first, err)
	}
	if got := e.entra.Requests(); got != 2 {
		t.Errorf("requests %d, want 2", got)
	}
}

func TestTokenCertificate(t *testing.T) {
	for _, alg := range []string{"PS256", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			e := newTokenEnv(t)
			certPEM, keyPEM, cert := e.ca.RSA(t, "relay-app")
			e.entra.AddApp(m365test.App{ClientID: "app1", Cert: cert.Leaf})
			c, err := m365.ParseCertificate(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			k, err := m365.ParsePrivateKey(keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			o := e.opts()
			o.Certificate, o.Key, o.Alg = c, k, alg
			ts, _ := m365.NewTokenSource(o)
			for range 2 { // a fresh jti each time
				e.clock.Advance(time.Hour)
				if _, err := ts.Token(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestTokenEndpointDown(t *testing.T) {
	e := newTokenEnv(t)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	o := e.opts()
	o.ClientSecret = []byte("s3cret")
	ts, _ := m365.NewTokenSource(o)
	ctx := context.Background()
	e.entra.SetDown(true)
	_, err := ts.Token(ctx)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Permanent || ue.RetryAfter != 5*time.Second || !strings.Contains(ue.Hint, "waits") {
		t.Fatalf("got %#v", err)
	}
	// Within the backoff no new request is sent.
	ts.Token(ctx)
	if got := e.entra.Requests(); got != 1 {
		t.Errorf("requests during backoff: %d, want 1", got)
	}
	e.clock.Advance(5 * time.Second)
	_, err = ts.Token(ctx)
	if !errors.As(err, &ue) || ue.RetryAfter != 10*time.Second {
		t.Fatalf("want a doubled backoff, got %v", err)
	}
	e.entra.SetDown(false)
	e.clock.Advance(10 * time.Second)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	// Down again while the token is still good but due for renewal: the
	// old token carries on.
	e.entra.SetDown(true)
	e.clock.Advance(3599*time.Second - 4*time.Minute)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatalf("a still-valid token should be used: %v", err)
	}
}

func TestTokenErrorsExplained(t *testing.T) {
	tests := []struct {
		name   string
		app    m365test.App
		modify func(*m365.TokenOptions)
		want   string
	}{
		{"wrong secret", m365test.App{ClientID: "app1", Secret: "right"}, func(o *m365.TokenOptions) { o.ClientSecret = []byte("wrong") }, "Value (not its Secret ID)"},
		{"expired secret", m365test.App{ClientID: "app1", Secret: "s", SecretExpired: true}, func(o *m365.TokenOptions) { o.ClientSecret = []byte("s") }, "expired"},
		{"unknown app", m365test.App{ClientID: "other", Secret: "s"}, func(o *m365.TokenOptions) { o.ClientSecret = []byte("s") }, "not found in this tenant"},
		{"unknown tenant", m365test.App{ClientID: "app1", Secret: "s"}, func(o *m365.TokenOptions) { o.ClientSecret = []byte("s"); o.Tenant = "nope.test" }, "tenant was not found"},
		{"bad scope", m365test.App{ClientID: "app1", Secret: "s"}, func(o *m365.TokenOptions) {
			o.ClientSecret = []byte("s")
			o.Scope = "https://outlook.office.com/SMTP.Send"
		}, "scope is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTokenEnv(t)
			e.entra.AddApp(tt.app)
			o := e.opts()
			tt.modify(&o)
			ts, _ := m365.NewTokenSource(o)
			_, err := ts.Token(context.Background())
			ue := upstream.Classify(err)
			if ue == nil || ue.Permanent || !strings.Contains(ue.Hint, tt.want) || m365.Explain(err) != ue.Hint {
				t.Fatalf("got %v (hint %q), want a temporary error with hint containing %q", err, ue.Hint, tt.want)
			}
			if strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "right") {
				t.Error("error text contains the secret")
			}
		})
	}
	t.Run("wrong certificate", func(t *testing.T) {
		e := newTokenEnv(t)
		_, _, registered := e.ca.RSA(t, "registered")
		certPEM, keyPEM, _ := e.ca.RSA(t, "other")
		e.entra.AddApp(m365test.App{ClientID: "app1", Cert: registered.Leaf})
		o := e.opts()
		o.Certificate, _ = m365.ParseCertificate(certPEM)
		o.Key, _ = m365.ParsePrivateKey(keyPEM)
		ts, _ := m365.NewTokenSource(o)
		_, err := ts.Token(context.Background())
		if h := m365.Explain(err); !strings.Contains(h, "upload this certificate") {
			t.Fatalf("got %v, hint %q", err, h)
		}
	})
}

func TestNewTokenSourceErrors(t *testing.T) {
	tests := []struct {
		name string
		o    m365.TokenOptions
		want string
	}{
		{"no tenant", m365.TokenOptions{ClientID: "c", Scope: "s", ClientSecret: []byte("x")}, "tenant"},
		{"no credential", m365.TokenOptions{Tenant: "t", ClientID: "c", Scope: "s"}, "either"},
	}
	for _, tt := range tests {
		if _, err := m365.NewTokenSource(tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
	if _, err := m365.ParsePrivateKey([]byte("junk")); err == nil {
		t.Error("ParsePrivateKey accepted junk")
	}
	if _, err := m365.ParseCertificate([]byte("junk")); err == nil {
		t.Error("ParseCertificate accepted junk")
	}
}

// Invalidate drops the cached token so the next Token asks again, spaced
// by a doubling backoff; a token that is not the cached one is ignored.
func TestTokenInvalidate(t *testing.T) {
	e := newTokenEnv(t)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	o := e.opts()
	o.ClientSecret = []byte("s3cret")
	ts, err := m365.NewTokenSource(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, _ := ts.Token(ctx)
	if ts.Invalidate("some-other-token") {
		t.Error("dropped a token that is not the cached one")
	}
	steps := []struct {
		advance time.Duration
		dropped bool
	}{
		{0, true},                // first refusal: dropped at once
		{time.Second, false},     // within 5s: kept
		{5 * time.Second, true},  // backoff 5s passed
		{9 * time.Second, false}, // now 10s
		{2 * time.Second, true},  // 11s after the last drop
		{2 * time.Hour, true},    // an hour without drops: back to 5s
		{5 * time.Second, true},  // ...
		{5 * time.Second, false}, // then 10s again
	}
	for i, st := range steps {
		e.clock.Advance(st.advance)
		if got := ts.Invalidate(tok); got != st.dropped {
			t.Fatalf("step %d: dropped %v, want %v", i, got, st.dropped)
		}
		next, err := ts.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := next != tok; got != st.dropped {
			t.Fatalf("step %d: new token %v, want %v", i, got, st.dropped)
		}
		tok = next
	}
}
