// Package m365 builds the Microsoft 365 upstreams: client submission with
// XOAUTH2 (client secret or certificate), client submission with a
// password (legacy), connector relay and direct send to the tenant's MX
// host, and Graph. Each comes wrapped so that Microsoft's replies carry a
// plain-language hint, refusals of the relay's own identity wait for the
// admin's fix instead of bouncing, and delivery is paced below Microsoft's
// published limits (docs/m365.md, "Limits and pacing").
package m365

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/graph"
	"github.com/siterelay/siterelay/relay/upstream/pace"
)

// Deps are what the composition provides.
type Deps struct {
	// Secret returns a secret by name from the secret store.
	Secret func(name string) ([]byte, error)
	// Clock defaults to time.Now; Sleep (pacing waits) to a real timer.
	Clock func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// Logger never receives secrets or tokens.
	Logger *slog.Logger
	// HTTPClient talks to Entra and Graph; default a client with timeouts.
	HTTPClient *http.Client
	// Resolver is a DNS server host:port for MX and host lookups; "" means
	// the system's.
	Resolver string
	// Dir resolves relative file names in the configuration (the state
	// directory). The pacer keeps its windows there too
	// (layout.Dir.PaceWindows), so that they survive a restart; "" keeps
	// them in memory only.
	Dir string
	// RootCAs verify the SMTP upstream; nil means the system roots.
	RootCAs *x509.CertPool
	// LocalName is the EHLO name.
	LocalName string
	// TokenRenewed, when set, is told of every token request: when the new
	// token expires, or the error (metrics: renewals, failures, seconds
	// until expiry). It must not block.
	TokenRenewed func(expires time.Time, err error)
	// ClientCertificate, when set, is told when the client certificate the
	// upstream presents (the OAuth assertion's, the connector's) expires,
	// once New has loaded it (metrics).
	ClientCertificate func(notAfter time.Time)
}

func (d *Deps) defaults() {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.HTTPClient == nil {
		d.HTTPClient = &http.Client{Timeout: 2 * time.Minute}
	}
}

func (d *Deps) readFile(name string) ([]byte, error) {
	if !filepath.IsAbs(name) && d.Dir != "" {
		name = filepath.Join(d.Dir, name)
	}
	return os.ReadFile(name)
}

func (d *Deps) secret(key, name string) ([]byte, error) {
	if d.Secret == nil {
		return nil, fmt.Errorf("%s: no secret store", key)
	}
	b, err := d.Secret(name)
	if err != nil {
		// The store's error names the secret, never its value.
		return nil, fmt.Errorf("%s: reading secret %q: %w", key, name, err)
	}
	return b, nil
}

// New builds the upstream of a Microsoft 365 kind from a validated
// configuration, already behind pace with the configured limits.
func New(kind config.Kind, cfg config.M365, d Deps) (upstream.Upstream, error) {
	d.defaults()
	log := d.Logger.With("upstream", string(kind))
	var inner upstream.Upstream
	var tokens *TokenSource
	var check func(string) error
	var err error
	switch {
	case kind == config.KindHVE:
		// Client submission to HVE, for the tenant's own recipients only.
		check = HVEChecker(cfg.AcceptedDomains)
		if cfg.UsesTokens(kind) {
			if tokens, err = newTokens(kind, cfg, d, log); err == nil {
				inner, err = newSubmission(cfg, d, log, tokens, nil)
			}
			break
		}
		var pw []byte
		if pw, err = d.secret("upstream.m365.password_secret", cfg.PasswordSecret); err == nil {
			inner, err = newSubmission(cfg, d, log, nil, pw)
		}
	case kind.OAuth():
		tokens, err = newTokens(kind, cfg, d, log)
		if err != nil {
			return nil, err
		}
		if kind == config.KindGraph {
			gopt := graph.Options{BaseURL: cfg.GraphURL, Mailbox: cfg.Mailbox, Tokens: tokens,
				HTTPClient: d.HTTPClient, Concurrency: cfg.Limits.Concurrency, MaxRecipients: cfg.Limits.MaxRecipients,
				MaxSize: cfg.Limits.MaxMessageBytes, Logger: log}
			if d.Dir != "" {
				gopt.DraftsFile = layout.Dir(d.Dir).GraphDrafts(paceName(kind, cfg))
			}
			inner, err = graph.New(gopt)
		} else {
			inner, err = newSubmission(cfg, d, log, tokens, nil)
		}
	case kind == config.KindM365Password:
		var pw []byte
		pw, err = d.secret("upstream.m365.password_secret", cfg.PasswordSecret)
		if err == nil {
			inner, err = newSubmission(cfg, d, log, nil, pw)
		}
	case kind.MX():
		inner, err = newMX(cfg, d, log)
		if kind == config.KindM365Direct {
			check = DirectSendChecker(cfg.AcceptedDomains)
		}
	default:
		return nil, fmt.Errorf("m365: unknown kind %q", kind)
	}
	if err != nil {
		return nil, err
	}
	e := &explained{inner: inner, tokens: tokens, check: check, log: log, clock: d.Clock, objectID: cfg.ApplicationObjectID, clientID: cfg.ClientID}
	e.renewBefore = time.Duration(cfg.RenewBeforeDays) * 24 * time.Hour
	if e.renewBefore == 0 {
		e.renewBefore = config.DefaultRenewBeforeDays * 24 * time.Hour
	}
	if kind.Mailbox() {
		e.mailbox, e.sendAs = cfg.Mailbox, cfg.FromMailbox
	}
	if kind == "m365-password" {
		e.basicAuth = BasicAuthWarning(d.Clock())
		log.Warn(e.basicAuth, "mailbox", cfg.Mailbox)
	}
	l := cfg.Limits
	po := pace.Options{MessagesPerMinute: l.MessagesPerMinute, Concurrency: l.Concurrency,
		RecipientsPerDay: l.RecipientsPerDay, MaxRecipients: l.MaxRecipients, Clock: d.Clock, Sleep: d.Sleep, Logger: log}
	if d.Dir != "" {
		po.StateFile = layout.Dir(d.Dir).PaceWindows(paceName(kind, cfg))
	}
	return pace.Wrap(e, po), nil
}

// paceName names the pacing windows after what Microsoft counts them for:
// the mailbox (client submission, Graph) or the domain's MX host. Another
// mailbox starts with windows of its own.
func paceName(kind config.Kind, cfg config.M365) string {
	who := cfg.Mailbox
	if who == "" {
		who = cfg.Domain
	}
	return string(kind) + "-" + strings.ToLower(who)
}

func newTokens(kind config.Kind, cfg config.M365, d Deps, log *slog.Logger) (*TokenSource, error) {
	o := TokenOptions{BaseURL: cfg.TokenURL, Tenant: cfg.Tenant, ClientID: cfg.ClientID, Scope: cfg.Scope,
		Alg: cfg.AssertionAlg, HTTPClient: d.HTTPClient, Clock: d.Clock, Logger: log, Renewed: d.TokenRenewed, RenewBefore: kind.RenewBefore()}
	if kind == config.KindHVE {
		o.MinLife, o.MinLifeFor = HVEMinLife, "High Volume Email"
	}
	if cfg.ClientSecretSecret != "" {
		s, err := d.secret("upstream.m365.client_secret_secret", cfg.ClientSecretSecret)
		if err != nil {
			return nil, err
		}
		o.ClientSecret = []byte(strings.TrimSpace(string(s)))
	} else {
		c, err := d.readFile(cfg.CertificateFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.m365.certificate_file: %w", err)
		}
		if o.Certificate, err = ParseCertificate(c); err != nil {
			return nil, fmt.Errorf("upstream.m365.certificate_file: %w", err)
		}
		if d.ClientCertificate != nil {
			d.ClientCertificate(o.Certificate.NotAfter)
		}
		k, err := d.secret("upstream.m365.certificate_key_secret", cfg.CertificateKeySecret)
		if err != nil {
			return nil, err
		}
		if o.Key, err = ParsePrivateKey(k); err != nil {
			return nil, fmt.Errorf("upstream.m365.certificate_key_secret: %w", err)
		}
		if err := CheckKeyPair(o.Certificate, o.Key); err != nil {
			return nil, fmt.Errorf("upstream.m365.certificate_file and certificate_key_secret: %w", err)
		}
	}
	return NewTokenSource(o)
}

// HVEMinLife is the least life HVE takes in a token: it answers
// 501 5.5.127 "Token will expire soon" to one with under 10 minutes left.
const HVEMinLife = 10 * time.Minute

// DirectSendChecker refuses recipients outside the tenant's domains at
// RCPT: direct send cannot reach them, and a refusal now beats a bounce.
func DirectSendChecker(domains []string) func(string) error {
	return internalOnly(domains, func(dom string) string {
		return fmt.Sprintf("This relay sends by Microsoft 365 direct send, which reaches only %s; %s cannot be reached this way (ask the admin for a connector)", strings.Join(domains, ", "), dom)
	})
}

// HVEChecker refuses recipients outside the tenant's domains at RCPT:
// High Volume Email delivers only inside the organisation. The words say
// what to add, since a route is how other mail gets a way.
func HVEChecker(domains []string) func(string) error {
	return internalOnly(domains, func(dom string) string {
		return fmt.Sprintf("This relay sends %s by Microsoft 365 High Volume Email, which reaches only %s: the admin adds a route for other recipients (routes[] ending in a catch-all route to kind m365-oauth or graph)", dom, strings.Join(domains, ", "))
	})
}

// internalOnly passes recipients in domains and refuses the others with
// 550 5.7.54 and the words why(domain) gives: the kinds that reach only the
// tenant's own mailboxes.
func internalOnly(domains []string, why func(dom string) string) func(string) error {
	return func(rcpt string) error {
		at := strings.LastIndexByte(rcpt, '@')
		dom := strings.ToLower(strings.TrimSuffix(rcpt[at+1:], "."))
		for _, d := range domains {
			if strings.EqualFold(d, dom) {
				return nil
			}
		}
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 54}, Message: why(dom)}
	}
}

// explained adds hints, keeps relay-side refusals temporary, and offers a
// token step in probes.
type explained struct {
	inner  upstream.Upstream
	tokens *TokenSource
	check  func(string) error
	log    *slog.Logger
	clock  func() time.Time
	// mailbox, for the kinds that send as one mailbox, is the sender of
	// messages with a null envelope sender (see fromMailbox), and of every
	// message when sendAs (upstream.m365.from_mailbox).
	mailbox string
	sendAs  bool
	// basicAuth is the warning for the password kind (BasicAuthWarning).
	basicAuth string
	// objectID and clientID say whether the certificate renews itself
	// (upstream.m365.application_object_id), for doctor.
	objectID, clientID string
	renewBefore        time.Duration
}

// BasicAuthOff is when Microsoft turns basic authentication for client
// submission off by default in existing tenants: "end of December 2026"
// (Exchange team, January 2026); admins can turn it back on until a
// removal date Microsoft announces in the second half of 2027, and tenants
// created after it never have it.
var BasicAuthOff = time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC)

// BasicAuthWarning is what the password kind says at start and in doctor,
// worded for the date now.
func BasicAuthWarning(now time.Time) string {
	if now.Before(BasicAuthOff) {
		days, unit := int(BasicAuthOff.Sub(now).Hours()/24)+1, "days"
		if days == 1 {
			unit = "day"
		}
		return fmt.Sprintf("kind m365-password logs in with the mailbox's password: Microsoft turns basic authentication for client submission off by default at the end of December 2026 (in %d %s), after which this tenant refuses it (550 5.7.30) unless an admin turns it back on; move to kind m365-oauth (or graph) before then",
			days, unit)
	}
	return "kind m365-password logs in with the mailbox's password: Microsoft has turned basic authentication for client submission off by default since the end of December 2026; it works only while an admin keeps it on for this tenant, and Microsoft will remove it for good (date announced in the second half of 2027); move to kind m365-oauth (or graph)"
}

func (e *explained) Limits() upstream.Limits { return e.inner.Limits() }
func (e *explained) Close() error            { return e.inner.Close() }

func (e *explained) CheckRecipient(rcpt string) error {
	if e.check == nil {
		return nil
	}
	return e.check(rcpt)
}

// identityRefusals are replies about the relay's own credentials or
// connector, not about the message: the mail waits for the admin's fix
// (and its lifetime), it does not bounce. 5.7.60 and 5.2.252 (may not send
// as this sender) belong here too: the relay's configuration does not match
// the tenant (senders.rewrite_from, SendAs), which the admin fixes once for
// every message.
var identityRefusals = []string{"5.7.3", "5.5.127", "5.7.139", "5.7.30", "5.7.57", "5.7.60", "5.2.252", "5.7.64", "5.7.68", "5.7.708", "5.7.705"}

func (e *explained) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	var used string
	if e.tokens != nil {
		ctx = context.WithValue(ctx, usedKey{}, &used)
	}
	if e.sendAs && msg.From != "" && !strings.EqualFold(msg.From, e.mailbox) {
		m, err := sendAs(msg, e.mailbox, true)
		if err != nil {
			e.log.Warn("cannot send this message from the mailbox (from_mailbox); trying it as it is", "queue_id", msg.QueueID, "err", err)
		} else {
			msg = m
		}
	}
	if msg.From == "" && e.mailbox != "" {
		m, err := fromMailbox(msg, e.mailbox)
		if err != nil {
			e.log.Warn("cannot send this null-sender message from the mailbox; trying it as it is", "queue_id", msg.QueueID, "err", err)
		} else {
			e.log.Info("null-sender message (a bounce) sent from the mailbox: Microsoft 365 takes mail only from the mailbox here", "queue_id", msg.QueueID, "mailbox", e.mailbox)
			msg = m
		}
	}
	res, err := e.inner.Deliver(ctx, msg)
	if err != nil {
		if r := upstream.Classify(err).Reply; r != nil && used != "" && (enhanced(r) == "5.7.3" || enhanced(r) == "5.5.127") {
			// The login refused this token: a new one carries roles
			// granted since (Graph drops its own on 401/403).
			e.tokens.Invalidate(used)
		}
		ue := upstream.Classify(WithHint(err))
		if ue.Permanent && ue.Reply != nil {
			for _, c := range identityRefusals {
				if enhanced(ue.Reply) == c {
					c := *ue
					c.Permanent = false
					ue = &c
					break
				}
			}
		}
		e.log.Warn("delivery failed", "queue_id", msg.QueueID, "status", ue.Error(), "permanent", ue.Permanent, "hint", ue.Hint)
		return res, ue
	}
	for i := range res {
		if res[i].Err != nil {
			res[i].Err = WithHint(res[i].Err)
			ue := upstream.Classify(res[i].Err)
			e.log.Warn("recipient refused", "queue_id", msg.QueueID, "rcpt", res[i].Rcpt, "status", ue.Error(), "hint", ue.Hint)
		}
	}
	return res, nil
}

func (e *explained) Connections() int {
	if cc, ok := e.inner.(upstream.ConnectionCounter); ok {
		return cc.Connections()
	}
	return 0
}

func (e *explained) Probe(ctx context.Context) ([]upstream.Step, error) {
	var steps []upstream.Step
	if e.tokens != nil && e.tokens.o.Certificate != nil {
		// New refused a key that is not the certificate's; what is left to
		// see is which certificate, and until when.
		c := e.tokens.o.Certificate
		st := upstream.Step{Name: "app certificate", OK: true,
			Detail: fmt.Sprintf("%q, thumbprint %s, matches its key, valid until %s", c.Subject.CommonName, Thumbprint(c), c.NotAfter.UTC().Format(time.DateOnly))}
		if e.clock().After(c.NotAfter) {
			st.OK, st.Detail = false, st.Detail+": expired; Entra refuses it: upload a new certificate and store its key"
		}
		steps = append(steps, st)
		rs := upstream.Step{Name: "certificate renewal", OK: true}
		if e.objectID != "" {
			rs.Detail = fmt.Sprintf("the box renews this certificate itself through Graph from %s (application_object_id %s: the app registration's Object ID, which is not the client id %s; a wrong one fails the renewal with Request_ResourceNotFound)",
				c.NotAfter.Add(-e.renewBefore).UTC().Format(time.DateOnly), e.objectID, e.clientID)
		} else {
			rs.Detail = fmt.Sprintf("not renewed automatically: for a certificate made on the box (relayctl creds new-certificate) set upstream.m365.application_object_id to the app registration's Object ID (Entra admin center > App registrations > the app > Overview > Object ID; not the client id, Application (client) ID %s, and not the Enterprise application's object id), or replace it by hand before %s",
				e.clientID, c.NotAfter.UTC().Format(time.DateOnly))
		}
		steps = append(steps, rs)
	}
	if e.tokens != nil {
		st := upstream.Step{Name: "token from " + e.tokens.endpoint}
		if _, err := e.tokens.Token(ctx); err != nil {
			st.Detail = upstream.Status(err)
			if h := Explain(err); h != "" {
				st.Detail += " — " + h
			}
			return append(steps, st), nil
		}
		st.OK, st.Detail = true, "obtained for client "+e.tokens.o.ClientID+", scope "+e.tokens.o.Scope
		steps = append(steps, st)
	}
	if e.basicAuth != "" {
		// A warning, not a failure: the login step shows whether the
		// tenant still takes the password.
		steps = append(steps, upstream.Step{Name: "basic authentication", OK: true, Detail: "warning: " + e.basicAuth})
	}
	p, ok := e.inner.(upstream.Prober)
	if !ok {
		return steps, nil
	}
	ps, err := p.Probe(ctx)
	for i := range ps {
		if !ps[i].OK && !strings.Contains(ps[i].Detail, " — ") {
			if h := Explain(errors.New(ps[i].Detail)); h != "" {
				ps[i].Detail += " — " + h
			}
		}
	}
	if err != nil {
		err = WithHint(err)
	}
	return append(steps, ps...), err
}
