package m365_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/dsn"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

const (
	tenant  = "contoso.test"
	mailbox = "scanner@contoso.test"
	secret  = "Xy7~client.secret-VALUE-0123456789"
	pw      = "hunter2-mailbox-password"
)

// env is a whole fake Microsoft 365 with a log sink for the secrets test.
type env struct {
	t       *testing.T
	clock   *m365test.Clock
	ca      *m365test.CA
	entra   *m365test.Entra
	x       *m365test.Exchange
	logs    *relaytest.Buffer
	secrets map[string][]byte
	dir     string
}

func newEnv(t *testing.T, xo m365test.ExchangeOptions) *env {
	e := &env{t: t, clock: m365test.NewClock(), ca: m365test.NewCA(t), logs: &relaytest.Buffer{}, secrets: map[string][]byte{}, dir: t.TempDir()}
	e.entra = m365test.NewEntra(t, tenant, e.clock.Now)
	e.entra.AddApp(m365test.App{ClientID: "app1", Secret: secret})
	xo.CA, xo.Clock, xo.Entra = e.ca, e.clock.Now, e.entra
	e.x = m365test.NewExchange(t, xo)
	e.x.Grant("app1", mailbox)
	e.secrets["m365-secret"] = []byte(secret + "\n")
	e.secrets["pw"] = []byte(pw)
	return e
}

func (e *env) port() int {
	_, p, _ := net.SplitHostPort(e.x.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

func (e *env) deps(resolver string) m365.Deps {
	return m365.Deps{
		Secret: func(name string) ([]byte, error) {
			if b, ok := e.secrets[name]; ok {
				return b, nil
			}
			return nil, errors.New("no such secret")
		},
		Clock: e.clock.Now, Sleep: e.clock.Sleep,
		Logger:     slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HTTPClient: e.entra.Client(), Resolver: resolver, Dir: e.dir, RootCAs: e.ca.Pool, LocalName: "relay.test",
	}
}

// validated runs the configuration through the real parser.
func validated(t *testing.T, kind config.Kind, m config.M365) config.M365 {
	c := config.Default()
	c.Upstream = config.Upstream{Kind: kind, M365: m}
	c.SetDefaults()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	return c.Upstream.M365
}

func (e *env) oauth(m config.M365) config.M365 {
	m.Tenant, m.ClientID, m.Mailbox = tenant, "app1", mailbox
	if m.ClientSecretSecret == "" && m.CertificateFile == "" {
		m.ClientSecretSecret = "m365-secret"
	}
	m.TokenURL, m.SMTPHost, m.SMTPPort = e.entra.URL, "127.0.0.1", e.port()
	return validated(e.t, "m365-oauth", m)
}

func newMsg(i int, from string, to ...string) *upstream.Message {
	b := []byte(fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: alarm %d\r\nMessage-ID: <%d@plant>\r\n\r\nline 4 stopped\r\n", from, strings.Join(to, ", "), i, i))
	return &upstream.Message{QueueID: fmt.Sprint("q", i), From: from, To: to, Size: int64(len(b)), Body: bytes.NewReader(b)}
}

// deliverAll works like the scheduler: workers take messages, a deferral
// or temporary failure puts the message back after RetryAfter (virtual
// time), a permanent failure fails the test.
func deliverAll(t *testing.T, e *env, up upstream.Upstream, msgs []*upstream.Message, workers int) (temporary int) {
	t.Helper()
	queue := make(chan *upstream.Message, len(msgs))
	for _, m := range msgs {
		queue <- m
	}
	var mu sync.Mutex
	left := len(msgs)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				var m *upstream.Message
				select {
				case m = <-queue:
				default:
					mu.Lock()
					done := left == 0
					mu.Unlock()
					if done {
						return
					}
					runtimeYield()
					continue
				}
				res, err := up.Deliver(ctx, m)
				if err == nil {
					for _, r := range res {
						if r.Err != nil {
							err = r.Err
						}
					}
				}
				if err == nil {
					mu.Lock()
					left--
					mu.Unlock()
					continue
				}
				ue := upstream.Classify(err)
				if ue.Permanent {
					t.Errorf("message %s: permanent failure %v", m.QueueID, err)
					mu.Lock()
					left--
					mu.Unlock()
					continue
				}
				mu.Lock()
				if !errors.Is(err, upstream.ErrPaced) {
					temporary++
					t.Logf("temporary: %v", err)
				}
				mu.Unlock()
				e.clock.Sleep(ctx, max(ue.RetryAfter, time.Second))
				queue <- m
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("not all messages delivered in time (%d left)", left)
	}
	return temporary
}

func runtimeYield() { time.Sleep(0) }

func maxPerMinute(rs []m365test.Received) int {
	most := 0
	for i := range rs {
		n := 0
		for j := range rs {
			if d := rs[j].At.Sub(rs[i].At); d >= 0 && d < time.Minute {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// TestOAuthThousandMessages is the proof: 1,000 messages through
// XOAUTH2 with tokens expiring every 10 (virtual) minutes, at most 30
// accepted per minute, at most 3 sessions, nothing lost.
func TestOAuthThousandMessages(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	e.entra.TTL = 10 * time.Minute
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if l := up.Limits(); l.Concurrency != 3 || l.MessagesPerMinute != 30 || l.RecipientsPerDay != 10000 || l.MaxRecipients != 500 {
		t.Errorf("limits %+v", l)
	}
	const n = 1000
	var msgs []*upstream.Message
	for i := range n {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	start := e.clock.Now()
	temporary := deliverAll(t, e, up, msgs, 3)
	elapsed := e.clock.Now().Sub(start)
	got := e.x.Received()
	seen := map[string]bool{}
	for _, r := range got {
		seen[string(r.Data[bytes.Index(r.Data, []byte("Message-ID")):][:20])] = true
	}
	if len(got) != n || len(seen) != n {
		t.Fatalf("received %d (%d distinct), want %d", len(got), len(seen), n)
	}
	if v := e.x.Violations(); len(v) > 0 {
		t.Errorf("the fake had to enforce limits: %v", v[:min(3, len(v))])
	}
	if m := maxPerMinute(got); m > 30 {
		t.Errorf("%d messages accepted within one minute, want at most 30", m)
	}
	if p := e.x.PeakSessions(mailbox); p > 3 {
		t.Errorf("%d sessions at once, want at most 3", p)
	}
	if temporary > 0 {
		t.Errorf("%d temporary failures (throttling or auth), want none", temporary)
	}
	tokens := e.entra.Issued()
	t.Logf("FIGURES: %d messages in %v virtual time; tokens issued %d (%.1f per hour, token lifetime %v); upstream connections %d per 1000 messages",
		n, elapsed.Round(time.Second), tokens, float64(tokens)/elapsed.Hours(), e.entra.TTL, e.x.Connections()*1000/n)
	if tokens < 2 {
		t.Errorf("tokens %d: want renewals during the run", tokens)
	}
	assertNoSecrets(t, e)
}

func TestTokenEndpointDownMailWaits(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	e.entra.SetDown(true)
	for i := range 3 {
		_, err := up.Deliver(context.Background(), newMsg(i, mailbox, "ops@fabrikam.test"))
		ue := upstream.Classify(err)
		if err == nil || ue.Permanent || ue.Hint == "" {
			t.Fatalf("attempt %d while Entra is down: got %v (permanent %v, hint %q), want temporary with a hint", i, err, ue.Permanent, ue.Hint)
		}
		e.clock.Advance(ue.RetryAfter)
	}
	e.entra.SetDown(false)
	var msgs []*upstream.Message
	for i := range 10 {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	deliverAll(t, e, up, msgs, 3)
	if got := len(e.x.Received()); got != 10 {
		t.Fatalf("received %d, want 10", got)
	}
}

func TestThrottlingKeepsMail(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	// The cooldowns move the virtual clock by up to hours while other
	// sessions are between fetching a token and presenting it; tokens that
	// outlive the test keep 535s out of the count, which is about the
	// throttling replies alone.
	e.entra.TTL = 72 * time.Hour
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	e.x.Script(m365test.AtMail, m365test.ErrThreadLimit)
	e.x.Script(m365test.AtData, m365test.ErrIPThrottled, m365test.ErrQuota)
	var msgs []*upstream.Message
	for i := range 60 {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	temporary := deliverAll(t, e, up, msgs, 3)
	if got := len(e.x.Received()); got != 60 {
		t.Fatalf("received %d, want 60", got)
	}
	// The three scripted replies; at most one more when a connection
	// dropped after the 432 is still counted by the server while its
	// replacement logs in (real Exchange counts sessions the same way).
	if temporary < 3 || temporary > 4 {
		t.Errorf("%d temporary failures, want the 3 scripted ones", temporary)
	}
	if v := e.x.Violations(); len(v) > temporary-3 {
		t.Errorf("violations after cooling down: %v", v)
	}
}

// TestRepliesExplained: each scripted Exchange reply reaches the caller
// with its hint, and refusals of the relay's own identity stay temporary.
func TestRepliesExplained(t *testing.T) {
	tests := []struct {
		stage     string
		reply     *smtp.SMTPError
		permanent bool
		hint      string
	}{
		{m365test.AtAuth, m365test.ErrAuthFailed, false, "New-ServicePrincipal"},
		{m365test.AtAuth, m365test.ErrBasicOff, false, "move to OAuth"},
		{m365test.AtAuth, m365test.ErrBasicRetired, false, "move to OAuth"},
		{m365test.AtMail, m365test.ErrNotAuthed, false, "m365-oauth"},
		{m365test.AtMail, m365test.ErrSendAs, false, "SendAs"},
		{m365test.AtData, m365test.ErrSendAs, false, "rewrite_from"},
		{m365test.AtRcpt, m365test.ErrTenantRate, false, "keeps the mail"},
		{m365test.AtData, m365test.ErrTenantRate, false, "keeps the mail"},
		{m365test.AtRcpt, m365test.ErrRcptRate, false, "keeps the mail"},
		{m365test.AtMail, m365test.ErrTenantAttr, false, "connector"},
		{m365test.AtMail, m365test.ErrRejectDirect, false, "RejectDirectSend"},
		{m365test.AtMail, m365test.ErrThreadLimit, false, "3 connections"},
		{m365test.AtData, m365test.ErrIPThrottled, false, "throttling"},
		{m365test.AtData, m365test.ErrQuota, false, "10,000"},
		{m365test.AtData, m365test.ErrTooBig, true, "too large"},
		{m365test.AtRcpt, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}, true, "does not exist"},
		{m365test.AtRcpt, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 1}, Message: "Recipient address rejected: Access denied"}, true, "edge blocking"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %d %v", tt.stage, tt.reply.Code, tt.reply.EnhancedCode), func(t *testing.T) {
			e := newEnv(t, m365test.ExchangeOptions{})
			up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
			if err != nil {
				t.Fatal(err)
			}
			defer up.Close()
			e.x.Script(tt.stage, tt.reply)
			res, err := up.Deliver(context.Background(), newMsg(1, mailbox, "ops@fabrikam.test"))
			if err == nil && len(res) == 1 {
				err = res[0].Err
			}
			ue := upstream.Classify(err)
			if ue == nil {
				t.Fatal("delivered despite the scripted reply")
			}
			if ue.Permanent != tt.permanent || !strings.Contains(ue.Hint, tt.hint) {
				t.Errorf("got %v permanent=%v hint %q; want permanent=%v and %q", err, ue.Permanent, ue.Hint, tt.permanent, tt.hint)
			}
			if !strings.Contains(upstream.Status(err), strconv.Itoa(tt.reply.Code)) {
				t.Errorf("status %q lost the reply", upstream.Status(err))
			}
		})
	}
}

func TestCertificateAssertionUpstream(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	certPEM, keyPEM, cert := e.ca.RSA(t, "relay-app")
	e.entra.AddApp(m365test.App{ClientID: "app2", Cert: cert.Leaf})
	e.x.Grant("app2", mailbox)
	os.WriteFile(filepath.Join(e.dir, "app.pem"), certPEM, 0o644)
	e.secrets["app-key"] = keyPEM
	m := e.oauth(config.M365{CertificateFile: "app.pem", CertificateKeySecret: "app-key"})
	m.ClientID = "app2"
	up, err := m365.New("m365-oauth", m, e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Deliver(context.Background(), newMsg(1, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatal(err)
	}
	assertNoSecrets(t, e)
}

func TestPasswordLegacy(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{Passwords: map[string]string{mailbox: pw}})
	m := validated(t, "m365-password", config.M365{Mailbox: mailbox, PasswordSecret: "pw", SMTPHost: "127.0.0.1", SMTPPort: e.port()})
	up, err := m365.New("m365-password", m, e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Deliver(context.Background(), newMsg(1, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatal(err)
	}
	// The December switch is announced at start and in doctor.
	if !strings.Contains(e.logs.String(), "end of December 2026") {
		t.Error("no warning about the end of basic authentication at start")
	}
	steps, err := up.(upstream.Prober).Probe(context.Background())
	found := false
	for _, st := range steps {
		found = found || (st.Name == "basic authentication" && st.OK && strings.Contains(st.Detail, "m365-oauth"))
	}
	if err != nil || !found {
		t.Errorf("probe %+v, %v: want the basic authentication warning", steps, err)
	}
	// The tenant turns basic auth off.
	e2 := newEnv(t, m365test.ExchangeOptions{})
	m.SMTPPort = e2.port()
	up2, _ := m365.New("m365-password", m, e2.deps(""))
	defer up2.Close()
	_, err = up2.Deliver(context.Background(), newMsg(1, mailbox, "ops@fabrikam.test"))
	if ue := upstream.Classify(err); ue == nil || ue.Permanent || !strings.Contains(ue.Hint, "move to OAuth") {
		t.Fatalf("got %v, want a temporary 5.7.139 with the OAuth hint", err)
	}
	e.secrets, e2.secrets = nil, nil
	assertNoSecrets(t, e)
	assertNoSecrets(t, e2)
}

func mxEnv(t *testing.T, xo m365test.ExchangeOptions) (*env, *m365test.DNS) {
	xo.MX, xo.Hostname = true, "contoso-test.mail.protection.outlook.test"
	e := newEnv(t, xo)
	d := m365test.NewDNS(t,
		"contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.test.",
		"contoso-test.mail.protection.outlook.test. 300 IN A 127.0.0.1")
	return e, d
}

func TestConnectorCertificate(t *testing.T) {
	e, d := mxEnv(t, m365test.ExchangeOptions{ConnectorDomains: []string{"contoso.test"}, RequireConnector: true})
	client := e.ca.ClientCert(t, "contoso.test")
	der, _ := x509MarshalKey(client.PrivateKey)
	os.WriteFile(filepath.Join(e.dir, "connector.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: client.Certificate[0]}), 0o644)
	e.secrets["connector-key"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	m := validated(t, "m365-connector", config.M365{Domain: "contoso.test", SMTPPort: e.port(),
		ConnectorCertificateFile: "connector.pem", ConnectorKeySecret: "connector-key"})
	up, err := m365.New("m365-connector", m, e.deps(d.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Deliver(context.Background(), newMsg(1, "printer@fabrikam-plant.test", "ops@elsewhere.test")); err != nil {
		t.Fatal(err)
	}
	if got := e.x.Received(); len(got) != 1 || got[0].Connector != "certificate:contoso.test" {
		t.Fatalf("received %+v", got)
	}
	// Without the certificate the connector does not match: 5.7.64, kept.
	m.ConnectorCertificateFile, m.ConnectorKeySecret = "", ""
	up2, _ := m365.New("m365-connector", m, e.deps(d.Addr))
	defer up2.Close()
	_, err = up2.Deliver(context.Background(), newMsg(2, "printer@fabrikam-plant.test", "ops@elsewhere.test"))
	if ue := upstream.Classify(err); ue == nil || ue.Permanent || !strings.Contains(ue.Hint, "connector") {
		t.Fatalf("got %v, want a temporary 5.7.64 with the connector hint", err)
	}
	assertNoSecrets(t, e)
}

func TestDirectSend(t *testing.T) {
	e, d := mxEnv(t, m365test.ExchangeOptions{TenantDomains: []string{"contoso.test"}})
	m := validated(t, "m365-direct", config.M365{Domain: "contoso.test", SMTPPort: e.port()})
	up, err := m365.New("m365-direct", m, e.deps(d.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	rc, ok := up.(upstream.RecipientChecker)
	if !ok {
		t.Fatal("direct send must be a RecipientChecker")
	}
	if err := rc.CheckRecipient("ops@contoso.test"); err != nil {
		t.Errorf("tenant recipient refused: %v", err)
	}
	err = rc.CheckRecipient("someone@fabrikam.test")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 54}) || !strings.Contains(se.Message, "contoso.test") {
		t.Errorf("outside recipient: got %v", err)
	}
	if _, err := up.Deliver(context.Background(), newMsg(1, "printer@contoso.test", "ops@contoso.test")); err != nil {
		t.Fatal(err)
	}
	if got := e.x.Received(); len(got) != 1 || got[0].Connector != "" {
		t.Fatalf("received %+v", got)
	}
}

// TestMXRefresh: the MX answer is used for an hour, asked again a minute
// after a delivery got no reply at all, and a failed lookup keeps the host.
func TestMXRefresh(t *testing.T) {
	e, _ := mxEnv(t, m365test.ExchangeOptions{TenantDomains: []string{"contoso.test"}})
	const (
		mx      = "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.test."
		good    = "contoso-test.mail.protection.outlook.test. 300 IN A 127.0.0.1"
		oldMX   = "contoso.test. 300 IN MX 0 gone.mail.protection.outlook.test."
		goneA   = "gone.mail.protection.outlook.test. 300 IN A 127.0.0.2" // nobody listens there
		mxQuery = "contoso.test."
	)
	d := m365test.NewDNS(t, oldMX, goneA)
	m := validated(t, "m365-connector", config.M365{Domain: "contoso.test", SMTPPort: e.port()})
	up, err := m365.New("m365-connector", m, e.deps(d.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	deliver := func(n int) error {
		res, err := up.Deliver(context.Background(), newMsg(n, "printer@contoso.test", "ops@contoso.test"))
		for _, r := range res {
			if r.Err != nil {
				return r.Err
			}
		}
		return err
	}

	// The MX host of record is gone: the delivery fails without a reply.
	if ue := upstream.Classify(deliver(1)); ue == nil || ue.Permanent || ue.Reply != nil {
		t.Fatalf("to a host that is gone: got %v, want a temporary failure without a reply", ue)
	}
	// The tenant's MX moved. Within the minute the relay does not ask again.
	d.Replace(t, mx, good)
	e.clock.Advance(30 * time.Second)
	if err := deliver(2); err == nil {
		t.Fatal("delivered within the minute: the MX was asked again too soon")
	}
	if got, want := d.Queries(mxQuery, "MX"), 1; got != want {
		t.Errorf("MX queries within the minute: got %d, want %d", got, want)
	}
	// After it, the new host is found and takes the mail.
	e.clock.Advance(time.Minute)
	if err := deliver(3); err != nil {
		t.Fatalf("after the MX moved: %v", err)
	}
	if got, want := len(e.x.Received()), 1; got != want {
		t.Fatalf("received %d, want %d", got, want)
	}

	// Working: no lookups for an hour, then one.
	before := d.Queries(mxQuery, "MX")
	e.clock.Advance(59 * time.Minute)
	if err := deliver(4); err != nil {
		t.Fatal(err)
	}
	if got := d.Queries(mxQuery, "MX"); got != before {
		t.Errorf("MX asked again within the hour: %d queries, want %d", got, before)
	}
	// The hour is up and the MX lookup fails: the host it has still takes mail.
	d.Replace(t, good)
	e.clock.Advance(2 * time.Minute)
	if err := deliver(5); err != nil {
		t.Fatalf("with the MX lookup failing after an hour: %v, want the known host to take it", err)
	}
	if got := d.Queries(mxQuery, "MX"); got != before+1 {
		t.Errorf("MX queries after the hour: got %d, want %d", got, before+1)
	}
	if got, want := len(e.x.Received()), 3; got != want {
		t.Errorf("received %d, want %d", got, want)
	}
}

func TestMXNotFoundWaits(t *testing.T) {
	e, _ := mxEnv(t, m365test.ExchangeOptions{})
	empty := m365test.NewDNS(t)
	m := validated(t, "m365-connector", config.M365{Domain: "contoso.test", SMTPPort: e.port()})
	up, err := m365.New("m365-connector", m, e.deps(empty.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	_, err = up.Deliver(context.Background(), newMsg(1, "a@contoso.test", "b@contoso.test"))
	if ue := upstream.Classify(err); ue == nil || ue.Permanent || !strings.Contains(ue.Hint, "MX") {
		t.Fatalf("got %v", err)
	}
}

func TestGraphThroughNew(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	g := m365test.NewGraph(t, e.entra)
	g.Grant("app1", mailbox)
	m := validated(t, "graph", config.M365{Tenant: tenant, ClientID: "app1", ClientSecretSecret: "m365-secret", Mailbox: mailbox,
		TokenURL: e.entra.URL, GraphURL: g.URL})
	d := e.deps("")
	d.HTTPClient = g.Client() // the fakes share httptest's certificate
	up, err := m365.New("graph", m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if l := up.Limits(); l.Concurrency != 4 {
		t.Errorf("limits %+v", l)
	}
	var msgs []*upstream.Message
	for i := range 20 {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	g.Throttle(30 * time.Second)
	deliverAll(t, e, up, msgs, 4)
	if got := len(g.Sent()); got != 20 {
		t.Fatalf("sent %d, want 20", got)
	}
	if p := g.Peak(); p > 4 {
		t.Errorf("peak %d concurrent Graph requests", p)
	}
	assertNoSecrets(t, e)
}

func TestNewErrors(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	tests := []struct {
		name string
		kind config.Kind
		m    config.M365
		want string
	}{
		{"missing secret", "m365-oauth", e.oauth(config.M365{ClientSecretSecret: "nope"}), `reading secret "nope"`},
		{"missing certificate", "m365-oauth", e.oauth(config.M365{CertificateFile: "none.pem", CertificateKeySecret: "k"}), "certificate_file"},
		{"missing password", "m365-password", config.M365{Mailbox: mailbox, PasswordSecret: "nope", SMTPHost: "h", SMTPPort: 1}, "password_secret"},
		{"bad connector pair", "m365-connector", config.M365{Domain: "c.test", ConnectorCertificateFile: "none.pem", ConnectorKeySecret: "k"}, "connector_certificate_file"},
		{"unknown kind", "m365-carrier-pigeon", config.M365{}, "unknown kind"},
	}
	for _, tt := range tests {
		if _, err := m365.New(tt.kind, tt.m, e.deps("")); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}

// assertNoSecrets greps the logs for every secret and token.
func assertNoSecrets(t *testing.T, e *env) {
	t.Helper()
	logs := e.logs.String()
	if logs == "" {
		t.Error("no logs written: the test proves nothing")
	}
	needles := []string{secret, pw}
	for _, b := range e.secrets {
		if s := strings.TrimSpace(string(b)); len(s) > 8 {
			needles = append(needles, s)
			if blk, _ := pem.Decode(b); blk != nil {
				needles = append(needles, string(pem.EncodeToMemory(blk))[40:80])
			}
		}
	}
	needles = append(needles, e.entra.Tokens()...)
	for _, n := range needles {
		if strings.Contains(logs, n) {
			t.Errorf("a secret or token appears in the logs: %.12s…", n)
		}
	}
}

// TestFigureSteadyLoad measures tokens per hour with Entra's usual
// lifetime (3599 s) under three hours of steady load at the pacing limit.
func TestFigureSteadyLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("figure")
	}
	e := newEnv(t, m365test.ExchangeOptions{})
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	const n = 5400 // three hours at 30 a minute
	var msgs []*upstream.Message
	for i := range n {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	start := e.clock.Now()
	deliverAll(t, e, up, msgs, 3)
	hours := e.clock.Now().Sub(start).Hours()
	if got := len(e.x.Received()); got != n {
		t.Fatalf("received %d", got)
	}
	t.Logf("FIGURES: steady load %d messages over %.1f h: %d tokens (%.2f per hour, lifetime 3599 s), %d connections (%.1f per 1000 messages), %d limit violations",
		n, hours, e.entra.Issued(), float64(e.entra.Issued())/hours, e.x.Connections(), float64(e.x.Connections())*1000/n, len(e.x.Violations()))
}

// A token the login refused is dropped: roles are fixed when a token is
// issued, so after the admin grants SMTP.SendAsApp only a new token works.
// The drops are spaced, so a refusal that every token meets does not turn
// into a token request per message.
func TestRefusedTokenDropped(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	e.entra.SetRoles("app1") // no consent yet
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	ctx := context.Background()
	_, err = up.Deliver(ctx, newMsg(1, mailbox, "ops@fabrikam.test"))
	if ue := upstream.Classify(err); ue == nil || ue.Permanent || !strings.Contains(ue.Error(), "5.7.3") {
		t.Fatalf("without the role: got %v, want a temporary 535 5.7.3", err)
	}
	e.entra.SetRoles("app1", m365test.RoleSMTP) // the admin follows the hint
	if _, err := up.Deliver(ctx, newMsg(2, mailbox, "ops@fabrikam.test")); err != nil {
		t.Fatalf("after the grant: %v (the old token, issued without the role, was used again)", err)
	}
	if got := len(e.x.Received()); got != 1 {
		t.Errorf("received %d, want 1", got)
	}

	// Bounded: with the role gone for good, 20 attempts at one instant
	// fetch a new token at most once more.
	e2 := newEnv(t, m365test.ExchangeOptions{})
	e2.entra.SetRoles("app1")
	up2, err := m365.New("m365-oauth", e2.oauth(config.M365{}), e2.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up2.Close()
	for i := range 20 {
		up2.Deliver(ctx, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	if got := e2.entra.Requests(); got > 2 {
		t.Errorf("%d token requests for 20 refused attempts, want at most 2", got)
	}
}

// The token comes before the session: while Entra is down no connection
// is opened (each would hold one of the mailbox's three sessions), and a
// refused login ends with QUIT.
func TestTokenFirstAndQuit(t *testing.T) {
	t.Run("token endpoint down", func(t *testing.T) {
		e := newEnv(t, m365test.ExchangeOptions{})
		e.entra.SetDown(true)
		up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		for i := range 5 {
			if _, err := up.Deliver(context.Background(), newMsg(i, mailbox, "ops@fabrikam.test")); err == nil || upstream.IsPermanent(err) {
				t.Fatalf("got %v, want a temporary failure", err)
			}
			e.clock.Advance(10 * time.Minute)
		}
		if got := e.x.Connections(); got != 0 {
			t.Errorf("%d connections opened without a token, want 0", got)
		}
	})
	t.Run("535 ends with QUIT", func(t *testing.T) {
		e := newEnv(t, m365test.ExchangeOptions{})
		e.x.Script(m365test.AtAuth, m365test.ErrAuthFailed, m365test.ErrAuthFailed)
		up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		for i := range 2 {
			up.Deliver(context.Background(), newMsg(i, mailbox, "ops@fabrikam.test"))
			e.clock.Advance(time.Minute)
		}
		if !e.x.WaitEnded(5 * time.Second) {
			t.Fatal("sessions still open")
		}
		if got := e.x.Dropped(); got != 0 {
			t.Errorf("%d of %d sessions dropped without QUIT, want 0", got, e.x.Connections())
		}
	})
}

// A certificate whose key is another's is refused at start, naming both
// keys and AADSTS700027, instead of at every token request; doctor's probe
// shows the certificate it uses.
func TestCertificateKeyMismatch(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	certPEM, keyPEM, cert := e.ca.RSA(t, "relay-app")
	_, otherKey, _ := e.ca.RSA(t, "another-app")
	e.entra.AddApp(m365test.App{ClientID: "app2", Cert: cert.Leaf})
	e.x.Grant("app2", mailbox)
	os.WriteFile(filepath.Join(e.dir, "app.pem"), certPEM, 0o644)
	e.secrets["app-key"], e.secrets["other-key"] = keyPEM, otherKey
	for _, tt := range []struct {
		key     string
		wantErr bool
	}{{"other-key", true}, {"app-key", false}} {
		m := e.oauth(config.M365{CertificateFile: "app.pem", CertificateKeySecret: tt.key})
		m.ClientID = "app2"
		up, err := m365.New("m365-oauth", m, e.deps(""))
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "AADSTS700027") || !strings.Contains(err.Error(), "certificate_key_secret") {
				t.Errorf("%s: got %v, want a refusal at start naming the keys and AADSTS700027", tt.key, err)
			}
			if err == nil {
				up.Close()
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		steps, err := up.(upstream.Prober).Probe(context.Background())
		up.Close()
		if err != nil || len(steps) == 0 || steps[0].Name != "app certificate" || !steps[0].OK || !strings.Contains(steps[0].Detail, m365.Thumbprint(cert.Leaf)) {
			t.Errorf("probe: %+v, %v", steps, err)
		}
	}
	if got := e.entra.Requests(); got != 1 {
		t.Errorf("%d token requests, want only the probe's", got)
	}
}

// bounceMsg is a DSN as the relay builds it, with the null sender.
func bounceMsg(t *testing.T, to ...string) *upstream.Message {
	t.Helper()
	b, err := dsn.Build(dsn.Report{ReportingMTA: "relay.test", QueueID: "Q1", EnvelopeFrom: to[0], To: to[0],
		Headers: []byte("From: printer@contoso.test\r\nSubject: scan\r\n\r\n"), Date: time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC),
		Recipients: []dsn.Recipient{{Recipient: "gone@fabrikam.test", Action: dsn.Failed, DiagnosticCode: "550 5.1.10 Recipient not found"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &upstream.Message{QueueID: "b1", From: "", To: to, Size: int64(len(b)), Body: bytes.NewReader(b)}
}

// Client submission and Graph take mail only from the mailbox: a bounce
// (MAIL FROM:<>, From: MAILER-DAEMON@relay) goes from the mailbox, with
// the DSN's own headers, instead of being refused with 5.7.60.
func TestBounceSentFromMailbox(t *testing.T) {
	check := func(t *testing.T, data []byte) {
		t.Helper()
		m, err := mail.ReadMessage(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get("From"), `"Mail Delivery System" <`+mailbox+`>`; got != want {
			t.Errorf("From %q, want %q", got, want)
		}
		if got := m.Header.Get("Auto-Submitted"); got != "auto-replied" {
			t.Errorf("Auto-Submitted %q", got)
		}
		if ct := m.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/report; report-type=delivery-status") {
			t.Errorf("Content-Type %q", ct)
		}
		if !bytes.Contains(data, []byte("Final-Recipient: rfc822; gone@fabrikam.test")) {
			t.Error("the delivery status part is lost")
		}
	}
	t.Run("m365-oauth", func(t *testing.T) {
		e := newEnv(t, m365test.ExchangeOptions{})
		up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		if _, err := up.Deliver(context.Background(), bounceMsg(t, "printer@contoso.test")); err != nil {
			t.Fatalf("bounce refused: %v", err)
		}
		rs := e.x.Received()
		if len(rs) != 1 || rs[0].From != mailbox {
			t.Fatalf("received %+v", rs)
		}
		check(t, rs[0].Data)
		if !strings.Contains(e.logs.String(), "sent from the mailbox") {
			t.Error("the log does not say the bounce went from the mailbox")
		}
	})
	t.Run("graph", func(t *testing.T) {
		e := newEnv(t, m365test.ExchangeOptions{})
		g := m365test.NewGraph(t, e.entra)
		g.Grant("app1", mailbox)
		m := validated(t, "graph", config.M365{Tenant: tenant, ClientID: "app1", ClientSecretSecret: "m365-secret", Mailbox: mailbox,
			TokenURL: e.entra.URL, GraphURL: g.URL})
		d := e.deps("")
		d.HTTPClient = g.Client()
		up, err := m365.New("graph", m, d)
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		if _, err := up.Deliver(context.Background(), bounceMsg(t, "printer@contoso.test", "admin@contoso.test")); err != nil {
			t.Fatalf("bounce refused: %v", err)
		}
		sent := g.Sent()
		if len(sent) != 1 {
			t.Fatalf("sent %d", len(sent))
		}
		check(t, sent[0].MIME)
	})
	t.Run("connector keeps the null sender", func(t *testing.T) {
		e, dns := mxEnv(t, m365test.ExchangeOptions{MX: true, TenantDomains: []string{"contoso.test"}})
		up, err := m365.New("m365-direct", validated(t, "m365-direct", config.M365{Domain: "contoso.test", SMTPPort: e.port()}), e.deps(dns.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		if _, err := up.Deliver(context.Background(), bounceMsg(t, "printer@contoso.test")); err != nil {
			t.Fatal(err)
		}
		if rs := e.x.Received(); len(rs) != 1 || rs[0].From != "" {
			t.Fatalf("received %+v", rs)
		}
	})
}

func FuzzFromMailbox(f *testing.F) {
	f.Add([]byte("From: \"Mail Delivery System\" <MAILER-DAEMON@relay.test>\r\nTo: a@b.c\r\n\r\nbody\r\n"))
	f.Add([]byte("Subject: x\r\nFROM :\r\n folded@x\r\n\r\n"))
	f.Add([]byte("no header end"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := &upstream.Message{QueueID: "f", Size: int64(len(b)), Body: bytes.NewReader(b), To: []string{"a@b.c"}}
		m, err := m365.FromMailbox(in, mailbox)
		if err != nil {
			return
		}
		out, err := io.ReadAll(m.Reader())
		if err != nil || int64(len(out)) != m.Size || m.From != mailbox {
			t.Fatalf("size %d vs %d, from %q, err %v", len(out), m.Size, m.From, err)
		}
		_, body, _ := bytes.Cut(b, []byte("\r\n\r\n"))
		if !bytes.HasSuffix(out, body) || !bytes.Contains(out, []byte("From: ")) {
			t.Fatalf("body changed: %q -> %q", b, out)
		}
	})
}

// The windows survive a restart of the relay (a new upstream over the same
// state directory): 25 sent in a minute, then the next 10 keep Exchange's
// limit of 30 a minute, so it never has to throttle.
func TestWindowsSurviveRestart(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	var msgs []*upstream.Message
	for i := range 35 {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	deliverAll(t, e, up, msgs[:25], 3)
	up.Close()
	up, err = m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if temporary := deliverAll(t, e, up, msgs[25:], 3); temporary > 0 {
		t.Errorf("%d temporary failures after the restart, want none", temporary)
	}
	got := e.x.Received()
	if len(got) != 35 {
		t.Fatalf("received %d, want 35", len(got))
	}
	if m := maxPerMinute(got); m > 30 {
		t.Errorf("%d messages accepted within one minute across the restart, want at most 30", m)
	}
	if v := e.x.Violations(); len(v) > 0 {
		t.Errorf("Exchange had to throttle: %v", v)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "pace", "m365-oauth-"+mailbox+".json")); err != nil {
		t.Errorf("no pacing state in the state directory: %v", err)
	}
}

// A tenant-wide 5.7.233 is a hold: every message arrives in the end, none
// bounces (deliverAll fails the test on a permanent failure).
func TestTenantRateHeld(t *testing.T) {
	e := newEnv(t, m365test.ExchangeOptions{})
	up, err := m365.New("m365-oauth", e.oauth(config.M365{}), e.deps(""))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	e.x.Script(m365test.AtRcpt, m365test.ErrTenantRate, m365test.ErrTenantRate, m365test.ErrRcptRate)
	var msgs []*upstream.Message
	for i := range 10 {
		msgs = append(msgs, newMsg(i, mailbox, "ops@fabrikam.test"))
	}
	start := e.clock.Now()
	// One worker: the holds move the virtual clock by an hour, which must
	// not happen while another worker's fresh token is on its way.
	if temporary := deliverAll(t, e, up, msgs, 1); temporary != 3 {
		t.Errorf("%d temporary failures, want the 3 scripted holds", temporary)
	}
	if got := len(e.x.Received()); got != 10 {
		t.Fatalf("received %d, want 10", got)
	}
	if waited := e.clock.Now().Sub(start); waited < time.Hour {
		t.Errorf("done after %v: the holds should wait for the window (an hour)", waited)
	}
}

func TestBasicAuthWarning(t *testing.T) {
	tests := []struct {
		now  time.Time
		want string
	}{
		{time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), "in 30 days"},
		{time.Date(2026, 12, 30, 23, 0, 0, 0, time.UTC), "in 1 day)"},
		{time.Date(2027, 1, 5, 0, 0, 0, 0, time.UTC), "since the end of December 2026"},
	}
	for _, tt := range tests {
		if got := m365.BasicAuthWarning(tt.now); !strings.Contains(got, tt.want) || !strings.Contains(got, "m365-oauth") {
			t.Errorf("%v: %q, want %q", tt.now, got, tt.want)
		}
	}
}
