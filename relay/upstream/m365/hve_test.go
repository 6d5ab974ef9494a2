package m365_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

const hveAccount = "hve-alarms@contoso.test"

func hveEnv(t *testing.T) *env {
	e := newEnv(t, m365test.ExchangeOptions{HVE: true, Hostname: "smtp.hve.test", TenantDomains: []string{"contoso.test"},
		Passwords: map[string]string{hveAccount: pw}})
	e.x.Grant("app1", hveAccount)
	return e
}

func (e *env) hve(m config.M365) config.M365 {
	m.Tenant, m.Mailbox, m.AcceptedDomains = tenant, hveAccount, []string{"contoso.test"}
	if m.PasswordSecret == "" {
		m.ClientID, m.ClientSecretSecret = "app1", "m365-secret"
	}
	m.TokenURL, m.SMTPHost, m.SMTPPort = e.entra.URL, "127.0.0.1", e.port()
	return validated(e.t, config.KindHVE, m)
}

// TestHVETokensRenewedAheadOfItsMargin: over five virtual hours of alarms,
// with tokens of an hour, HVE never sees a token within 10 minutes of its
// expiry (it would answer 501 5.5.127).
func TestHVETokensRenewedAheadOfItsMargin(t *testing.T) {
	e := hveEnv(t)
	up, err := m365.New(config.KindHVE, e.hve(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	ctx := context.Background()
	const n = 100
	for i := range n {
		if _, err := up.Deliver(ctx, newMsg(i, hveAccount, "ops@contoso.test")); err != nil {
			t.Fatalf("message %d at %v: %v", i, e.clock.Now().Format(time.TimeOnly), err)
		}
		e.clock.Advance(3 * time.Minute)
	}
	if got := len(e.x.Received()); got != n {
		t.Errorf("received %d, want %d", got, n)
	}
	if got := e.x.ExpiringRefused(); got != 0 {
		t.Errorf("HVE refused %d tokens as expiring soon, want 0", got)
	}
	if l := up.Limits(); l.MaxRecipients != 50 || l.MessagesPerMinute != 0 {
		t.Errorf("limits %+v, want 50 recipients a message and no per-minute pacing", l)
	}
}

// The fake HVE itself refuses a token close to expiry, and the upstream
// drops that token, so the retry logs in with a new one.
func TestHVEExpiringTokenRefusedThenRenewed(t *testing.T) {
	e := hveEnv(t)
	// A token source with the submission kinds' 5-minute margin meets
	// HVE's 10-minute rule: the failure the HVE kind's margin avoids.
	o := m365.TokenOptions{BaseURL: e.entra.URL, Tenant: tenant, ClientID: "app1", Scope: m365test.SMTPScope,
		ClientSecret: []byte(secret), HTTPClient: e.entra.Client(), Clock: e.clock.Now, RenewBefore: config.KindM365OAuth.RenewBefore()}
	ts, err := m365.NewTokenSource(o)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := ts.Token(context.Background())
	e.clock.Advance(3599*time.Second - 8*time.Minute)
	if again, _ := ts.Token(context.Background()); again != tok {
		t.Fatal("the 5-minute margin renewed early; the test no longer shows the difference")
	}
	up, err := m365.New(config.KindHVE, e.hve(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	// The HVE kind's own source renews 20 minutes ahead: fine now.
	if _, err := up.Deliver(context.Background(), newMsg(1, hveAccount, "ops@contoso.test")); err != nil {
		t.Fatal(err)
	}
	// Entra down until the held token has under 10 minutes left, then
	// issuing 5-minute tokens: none of them is presented to HVE (it would
	// answer 501 5.5.127); the deferral says why; then a good token goes.
	e.entra.SetDown(true)
	e.clock.Advance(3599*time.Second - 9*time.Minute)
	e.entra.SetDown(false)
	e.entra.TTL = 5 * time.Minute
	_, err = up.Deliver(context.Background(), newMsg(2, hveAccount, "ops@contoso.test"))
	if err == nil {
		t.Fatal("delivered with a 5-minute token")
	}
	ue := upstream.Classify(err)
	if ue.Permanent || !strings.Contains(ue.Hint, "too short for High Volume Email") {
		t.Fatalf("short-lived token: got %v (permanent %v, hint %q), want a temporary failure that names the token lifetime", err, ue.Permanent, ue.Hint)
	}
	if got := e.x.ExpiringRefused(); got != 0 {
		t.Errorf("HVE refused %d tokens as expiring soon, want 0", got)
	}
	e.entra.TTL = time.Hour
	e.clock.Advance(10 * time.Minute)
	if _, err := up.Deliver(context.Background(), newMsg(3, hveAccount, "ops@contoso.test")); err != nil {
		t.Fatalf("after the refusal: %v", err)
	}
}

func TestTokenRenewalMarginPerKind(t *testing.T) {
	tests := []struct {
		kind config.Kind
		// at 12 and 9 minutes before expiry: a new token?
		renewedAt12, renewedAt9 bool
	}{
		{config.KindHVE, true, true},
		{config.KindM365OAuth, false, false},
		{config.KindGraph, false, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			e := newTokenEnv(t)
			e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
			o := e.opts()
			o.ClientSecret, o.RenewBefore = []byte("s3cret"), tt.kind.RenewBefore()
			ts, err := m365.NewTokenSource(o)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			first, _ := ts.Token(ctx)
			e.clock.Advance(3599*time.Second - 12*time.Minute)
			at12, _ := ts.Token(ctx)
			if got := at12 != first; got != tt.renewedAt12 {
				t.Errorf("12 minutes before expiry: renewed %v, want %v", got, tt.renewedAt12)
			}
			// With Entra down, what is handed out 9 minutes before the
			// first token's expiry must, for HVE, still have 10 left.
			e.entra.SetDown(true)
			e.clock.Advance(3 * time.Minute)
			tok, err := ts.Token(ctx)
			if err == nil {
				exp, _ := e.entra.Expires(tok)
				if left := exp.Sub(e.clock.Now()); tt.kind == config.KindHVE && left < m365test.HVETokenMargin {
					t.Errorf("handed out a token with %v left, inside HVE's margin", left)
				}
			}
			if got := tok != first; tt.kind != config.KindHVE && got != tt.renewedAt9 {
				t.Errorf("9 minutes before expiry: new token %v, want %v", got, tt.renewedAt9)
			}
		})
	}
}

func TestHVEInternalOnly(t *testing.T) {
	e := hveEnv(t)
	up, err := m365.New(config.KindHVE, e.hve(config.M365{PasswordSecret: "pw"}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	rc, ok := up.(upstream.RecipientChecker)
	if !ok {
		t.Fatal("hve must be a RecipientChecker")
	}
	if err := rc.CheckRecipient("ops@contoso.test"); err != nil {
		t.Errorf("internal recipient refused: %v", err)
	}
	err = rc.CheckRecipient("someone@fabrikam.test")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "High Volume Email") || !strings.Contains(se.Message, "routes[]") {
		t.Errorf("external recipient: got %v, want a 550 that says which route to add", err)
	}
	// The password (legacy) login, and the fake's own refusal of an
	// external recipient that got past the check.
	res, err := up.Deliver(context.Background(), newMsg(1, hveAccount, "ops@contoso.test", "x@fabrikam.test"))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || !upstream.IsPermanent(res[1].Err) {
		t.Errorf("results %+v, want the internal one delivered and the external one refused", res)
	}
}

// With from_mailbox every message goes from the HVE account: HVE (like
// client submission) takes mail only from its own account, and routes to
// several mailboxes cannot share one senders.rewrite_from. The device's
// address moves to Reply-To.
func TestFromMailbox(t *testing.T) {
	e := hveEnv(t)
	up, err := m365.New(config.KindHVE, e.hve(config.M365{FromMailbox: true}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Deliver(context.Background(), newMsg(1, "plc7@plant.contoso.test", "ops@contoso.test")); err != nil {
		t.Fatalf("a device's own sender with from_mailbox: %v", err)
	}
	rs := e.x.Received()
	if len(rs) != 1 || rs[0].From != hveAccount {
		t.Fatalf("received %+v, want one from the HVE account", rs)
	}
	m, err := mail.ReadMessage(bytes.NewReader(rs[0].Data))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get("From"); !strings.Contains(got, hveAccount) {
		t.Errorf("From %q, want the HVE account", got)
	}
	if got := m.Header.Get("Reply-To"); got != "<plc7@plant.contoso.test>" {
		t.Errorf("Reply-To %q, want the device's address", got)
	}
	// Without it the same message is refused (5.7.60, held).
	plain, err := m365.New(config.KindHVE, e.hve(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Deliver(context.Background(), newMsg(2, "plc7@plant.contoso.test", "ops@contoso.test")); !strings.Contains(fmt.Sprint(err), "5.7.60") {
		t.Errorf("without from_mailbox: %v, want 5.7.60", err)
	}
}

// A tenant whose token-lifetime policy issues tokens of 10 to 20 minutes:
// each is reused for as long as HVE takes it (more than 10 minutes left),
// not fetched again for every connection because it is inside the
// 20-minute renewal margin meant for hour-long tokens.
func TestHVEShortTokensReused(t *testing.T) {
	e := newTokenEnv(t)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: "s3cret"})
	e.entra.TTL = 15 * time.Minute
	o := e.opts()
	o.ClientSecret, o.RenewBefore = []byte("s3cret"), config.KindHVE.RenewBefore()
	ts, err := m365.NewTokenSource(o)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20 // a connection every 30 seconds for 10 minutes
	for i := range n {
		tok, err := ts.Token(context.Background())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if exp, _ := e.entra.Expires(tok); exp.Sub(e.clock.Now()) < m365test.HVETokenMargin {
			t.Fatalf("connection %d: a token with %v left, which HVE refuses", i, exp.Sub(e.clock.Now()))
		}
		e.clock.Advance(30 * time.Second)
	}
	// Each token is good for HVE during its first 5 minutes: a handful
	// of tokens, not one a connection.
	if got := e.entra.Issued(); got > 5 {
		t.Errorf("Entra issued %d tokens for %d connections over 10 minutes, want at most 5", got, n)
	}
}

// A tenant whose policy issues 10-minute tokens (Entra's minimum): HVE
// refuses every one of them (501 5.5.127), so the relay does not present
// them, says why on every deferral and in doctor, and does not ask Entra
// again on every attempt.
func TestHVETokenLifetimeTooShort(t *testing.T) {
	e := hveEnv(t)
	e.entra.TTL = 599 * time.Second // as Entra words an hour: 3599
	start := e.clock.Now()
	up, err := m365.New(config.KindHVE, e.hve(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	for i := range 5 {
		_, err := up.Deliver(context.Background(), newMsg(i, hveAccount, "ops@contoso.test"))
		if err == nil {
			t.Fatalf("attempt %d delivered with a 10-minute token; the fake HVE should refuse it", i)
		}
		ue := upstream.Classify(err)
		if errors.Is(err, upstream.ErrPaced) && i > 0 {
			continue // the pacer holds the mail while the token source waits
		}
		if ue.Permanent || !strings.Contains(ue.Hint, "token lifetime") || !strings.Contains(ue.Hint, "too short for High Volume Email") {
			t.Fatalf("attempt %d: got %v (permanent %v, hint %q), want a temporary failure naming the token lifetime", i, err, ue.Permanent, ue.Hint)
		}
		e.clock.Advance(time.Second)
	}
	if got := e.x.ExpiringRefused(); got != 0 {
		t.Errorf("the relay presented %d tokens HVE had to refuse, want 0", got)
	}
	// The backoff (5 s, doubling), not one request an attempt; the
	// pacer's waits inside Deliver move the virtual clock past the first.
	if got, at := e.entra.Requests(), e.clock.Now().Sub(start); got >= 5 {
		t.Errorf("Entra asked %d times in %v for 5 attempts, want a backoff between requests", got, at)
	}
	steps, _ := up.(upstream.Prober).Probe(context.Background())
	var found bool
	for _, s := range steps {
		if strings.HasPrefix(s.Name, "token") && !s.OK && strings.Contains(s.Detail, "too short for High Volume Email") {
			found = true
		}
	}
	if !found {
		t.Errorf("doctor steps %+v, want the token step to say the lifetime is too short for HVE", steps)
	}
}
