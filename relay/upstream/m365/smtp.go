package m365

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/smarthost"
)

// newSubmission is client submission to smtp.office365.com:587 with
// STARTTLS and TLS 1.2+, authenticated by XOAUTH2 (tokens) or, legacy, by
// AUTH LOGIN with a password.
func newSubmission(cfg config.M365, d Deps, log *slog.Logger, tokens *TokenSource, password []byte) (upstream.Upstream, error) {
	o := smtpOptions(cfg, d, log, net.JoinHostPort(cfg.SMTPHost, strconv.Itoa(cfg.SMTPPort)), cfg.SMTPHost)
	o.Auth.Username = cfg.Mailbox
	if tokens != nil {
		o.Auth.Mechanism, o.Auth.TokenSource = "xoauth2", recording{tokens}
	} else {
		o.Auth.Mechanism, o.Auth.Password = "login", string(password)
	}
	u, err := smarthost.New(o)
	if err != nil {
		return nil, fmt.Errorf("m365: %w", err)
	}
	return u, nil
}

func smtpOptions(cfg config.M365, d Deps, log *slog.Logger, addr, serverName string) smarthost.Options {
	o := smarthost.Options{
		Addr:          addr,
		TLS:           "starttls",
		MinTLS:        tls.VersionTLS12,
		RootCAs:       d.RootCAs,
		ServerName:    serverName,
		LocalName:     d.LocalName,
		Concurrency:   cfg.Limits.Concurrency,
		MaxRecipients: cfg.Limits.MaxRecipients,
		MaxSize:       cfg.Limits.MaxMessageBytes,
		Clock:         d.Clock,
		Logger:        log,
		// Pacing pauses up to a minute between bursts; keeping
		// connections that long saves a TLS handshake and a login per
		// burst (smarthost retries once when the server closed one).
		IdleTimeout: 90 * time.Second,
	}
	if d.Resolver != "" {
		r := &Resolver{Server: d.Resolver}
		o.Dialer = r.Dial
	}
	return o
}

// newMX is connector relay or direct send to the tenant's MX host, found
// in DNS on first use (a relay that starts while DNS is down waits rather
// than fails), STARTTLS required, with the connector's client certificate
// when one is configured.
func newMX(cfg config.M365, d Deps, log *slog.Logger) (upstream.Upstream, error) {
	var cert *tls.Certificate
	if cfg.ConnectorCertificateFile != "" {
		c, err := d.readFile(cfg.ConnectorCertificateFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.m365.connector_certificate_file: %w", err)
		}
		k, err := d.secret("upstream.m365.connector_key_secret", cfg.ConnectorKeySecret)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			// tls's messages describe the mismatch, never the key.
			return nil, fmt.Errorf("upstream.m365.connector_certificate_file: certificate and key do not form a pair: %w", err)
		}
		cert = &pair
		if leaf := pair.Leaf; leaf != nil && d.ClientCertificate != nil {
			d.ClientCertificate(leaf.NotAfter)
		}
	}
	return &mxUpstream{cfg: cfg, d: d, log: log, cert: cert}, nil
}

// How long an MX answer is used: Microsoft publishes its MX records with a
// one-hour TTL, and a tenant's MX host does change (a domain moved to
// another tenant, the MX moved to mx.microsoft). After a connection
// failure the record is asked again sooner, but not for every message.
const (
	mxRefresh      = time.Hour
	mxRetryOnFault = time.Minute
)

type mxUpstream struct {
	cfg  config.M365
	d    Deps
	log  *slog.Logger
	cert *tls.Certificate

	mu       sync.Mutex
	inner    *smarthost.Upstream
	host     string
	resolved time.Time // when host was last looked up (or the lookup failed)
	faulted  bool      // a delivery to host failed without a reply since
}

// get returns the upstream for the MX host, looking the host up the first
// time, when the answer is an hour old, and a minute after a connection
// failure. A failed lookup keeps the host it has: DNS trouble must not stop
// mail that a known host would take.
func (m *mxUpstream) get(ctx context.Context) (*smarthost.Upstream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inner != nil && (m.cfg.MXHost != "" || !m.due()) {
		return m.inner, nil
	}
	host := m.cfg.MXHost
	if host == "" {
		r := &Resolver{Server: m.d.Resolver}
		hosts, err := r.MX(ctx, m.cfg.Domain)
		m.resolved, m.faulted = m.d.Clock(), false
		if err != nil {
			err = &upstream.Error{Err: fmt.Errorf("finding the MX host of %s: %w", m.cfg.Domain, err),
				Hint: "The tenant's MX host could not be found in DNS: check the relay's DNS servers and the domain's MX record, or set upstream.m365.mx_host."}
			if m.inner != nil {
				m.log.Warn("MX lookup failed; keeping the MX host", "domain", m.cfg.Domain, "host", m.host, "err", err)
				return m.inner, nil
			}
			return nil, err
		}
		host = hosts[0]
		if m.inner != nil && strings.EqualFold(host, m.host) {
			return m.inner, nil
		}
	}
	o := smtpOptions(m.cfg, m.d, m.log, net.JoinHostPort(host, strconv.Itoa(m.cfg.SMTPPort)), host)
	o.ClientCertificate = m.cert
	u, err := smarthost.New(o)
	if err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("m365: %w", err)}
	}
	if old := m.inner; old != nil {
		m.log.Info("MX host changed", "domain", m.cfg.Domain, "was", m.host, "host", host)
		go old.Close() // deliveries in flight finish; their connections close after
	} else {
		m.log.Info("MX host found", "domain", m.cfg.Domain, "host", host)
	}
	m.inner, m.host = u, host
	return u, nil
}

func (m *mxUpstream) due() bool {
	age := m.d.Clock().Sub(m.resolved)
	return age >= mxRefresh || (m.faulted && age >= mxRetryOnFault)
}

func (m *mxUpstream) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	u, err := m.get(ctx)
	if err != nil {
		return nil, err
	}
	res, err := u.Deliver(ctx, msg)
	if ue := upstream.Classify(err); ue != nil && ue.Reply == nil && ctx.Err() == nil {
		m.mu.Lock()
		m.faulted = true // no reply at all: perhaps the host is no longer there
		m.mu.Unlock()
	}
	return res, err
}

func (m *mxUpstream) Limits() upstream.Limits {
	l := m.cfg.Limits
	return upstream.Limits{Concurrency: l.Concurrency, MaxRecipients: l.MaxRecipients, MaxSize: l.MaxMessageBytes}
}

func (m *mxUpstream) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inner != nil {
		return m.inner.Close()
	}
	return nil
}

// Connections counts those to the current MX host (none before the first
// delivery looks it up).
func (m *mxUpstream) Connections() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inner == nil {
		return 0
	}
	return m.inner.Connections()
}

func (m *mxUpstream) Probe(ctx context.Context) ([]upstream.Step, error) {
	st := upstream.Step{Name: "MX host of " + m.cfg.Domain}
	u, err := m.get(ctx)
	if err != nil {
		st.Detail = upstream.Status(err) + " — " + Explain(err)
		return []upstream.Step{st}, nil
	}
	st.OK, st.Detail = true, m.host
	steps := []upstream.Step{st}
	var p upstream.Upstream = u
	if pr, ok := p.(upstream.Prober); ok {
		ps, err := pr.Probe(ctx)
		return append(steps, ps...), err
	}
	return steps, nil
}

// usedKey carries a *string through a delivery's context: the token the
// SMTP client logged in with, so that a 535 drops exactly that token.
type usedKey struct{}

// recording is the token source as the SMTP client sees it: it notes the
// token handed out in the delivery's context.
type recording struct{ *TokenSource }

func (r recording) Token(ctx context.Context) (string, error) {
	tok, err := r.TokenSource.Token(ctx)
	if p, ok := ctx.Value(usedKey{}).(*string); ok && err == nil {
		*p = tok
	}
	return tok, err
}
