// Package smarthost delivers to an SMTP smarthost: a pool of reusable,
// authenticated connections speaking PIPELINING where offered, so that a
// small box can push thousands of small messages a second through a few
// connections. Microsoft 365 client submission and connector relay are built
// on it; see docs/smarthost.md.
package smarthost

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
)

// TLS modes.
const (
	// TLSStartTLS upgrades with STARTTLS and refuses to send when the
	// server does not offer it.
	TLSStartTLS = "starttls"
	// TLSImplicit speaks TLS from the first byte (port 465).
	TLSImplicit = "implicit"
	// TLSNone sends in the clear; only when configured so.
	TLSNone = "none"
)

// Auth mechanisms.
const (
	AuthNone    = ""
	AuthPlain   = "plain"
	AuthLogin   = "login"
	AuthXOAUTH2 = "xoauth2"
)

// Auth says how to log in.
type Auth struct {
	// Mechanism is "" (none), "plain", "login" or "xoauth2".
	Mechanism string
	// Username is the login, or for xoauth2 the mailbox sent from.
	Username string
	// Password for plain and login.
	Password string
	// TokenSource gives access tokens for xoauth2.
	TokenSource upstream.TokenSource
}

// Options configure an Upstream. Zero values take the defaults noted.
type Options struct {
	// Addr is "host:port".
	Addr string
	// TLS is "starttls" (default), "implicit" or "none".
	TLS string
	// MinTLS is the lowest TLS version (default TLS 1.2).
	MinTLS uint16
	// RootCAs to verify the server; nil with no CAFile means the system's.
	// CAFile (PEM) adds to RootCAs.
	RootCAs *x509.CertPool
	CAFile  string
	// ServerName checked in the server's certificate (default Addr's host).
	ServerName string
	// ClientCertificate is presented when the server asks (certificate
	// connectors).
	ClientCertificate *tls.Certificate
	Auth              Auth
	// LocalName is the EHLO name (default "localhost"; set the box's name).
	LocalName string
	// Concurrency is the most connections open at once (default 4).
	Concurrency int
	// MaxRecipients is the most RCPTs in one transaction (0: no limit);
	// Deliver splits a longer list into several transactions.
	MaxRecipients int
	// MaxSize is the largest message to try (0: no limit of our own; the
	// server's SIZE still applies).
	MaxSize int64
	// MessagesPerMinute and RecipientsPerDay are passed on in Limits for
	// the scheduler's pacing.
	MessagesPerMinute int
	RecipientsPerDay  int
	// MessagesPerConnection: after that many, QUIT and reconnect (default
	// 100).
	MessagesPerConnection int
	// IdleTimeout closes connections unused this long (default 30 s).
	IdleTimeout time.Duration
	// DialTimeout (default 30 s), CommandTimeout for each command reply
	// (default 5 min) and DataTimeout for sending the body and its reply
	// (default 10 min).
	DialTimeout, CommandTimeout, DataTimeout time.Duration
	// DisablePipelining speaks one command at a time even when offered.
	DisablePipelining bool
	// Dialer opens the TCP connection (default net.Dialer).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock judges idleness and certificate expiry (default time.Now).
	Clock  func() time.Time
	Logger *slog.Logger
}

// Upstream is an SMTP smarthost client. It is safe for concurrent use.
type Upstream struct {
	o         Options
	host      string
	tlsConfig *tls.Config
	log       *slog.Logger
	sem       chan struct{}
	open      atomic.Int64  // connections open now, idle or in use
	dials     atomic.Uint64 // connections dialled so far; each conn keeps its number

	mu     sync.Mutex
	idle   []*conn
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

var _ upstream.Upstream = (*Upstream)(nil)
var _ upstream.Prober = (*Upstream)(nil)

// New checks the options and returns an Upstream; it does not connect.
func New(o Options) (*Upstream, error) {
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("smarthost: address %q is not host:port", o.Addr)
	}
	switch o.TLS {
	case "":
		o.TLS = TLSStartTLS
	case TLSStartTLS, TLSImplicit, TLSNone:
	default:
		return nil, fmt.Errorf("smarthost: TLS mode %q is not one of starttls, implicit, none", o.TLS)
	}
	switch {
	case o.MinTLS == 0:
		o.MinTLS = tls.VersionTLS12
	case o.MinTLS < tls.VersionTLS10 || o.MinTLS > tls.VersionTLS13:
		return nil, fmt.Errorf("smarthost: MinTLS %#x is not a TLS version", o.MinTLS)
	}
	o.Auth.Mechanism = strings.ToLower(o.Auth.Mechanism)
	switch o.Auth.Mechanism {
	case AuthNone:
	case AuthPlain, AuthLogin:
		if o.Auth.Username == "" || o.Auth.Password == "" {
			return nil, fmt.Errorf("smarthost: auth %s needs a username and a password", o.Auth.Mechanism)
		}
	case AuthXOAUTH2:
		if o.Auth.Username == "" || o.Auth.TokenSource == nil {
			return nil, errors.New("smarthost: auth xoauth2 needs a username (the mailbox) and a token source")
		}
	default:
		return nil, fmt.Errorf("smarthost: auth mechanism %q is not one of plain, login, xoauth2", o.Auth.Mechanism)
	}
	if o.Concurrency < 0 || o.MaxRecipients < 0 || o.MaxSize < 0 || o.MessagesPerConnection < 0 ||
		o.IdleTimeout < 0 || o.DialTimeout < 0 || o.CommandTimeout < 0 || o.DataTimeout < 0 ||
		o.MessagesPerMinute < 0 || o.RecipientsPerDay < 0 {
		return nil, errors.New("smarthost: limits and timeouts must not be negative")
	}
	if o.LocalName == "" {
		o.LocalName = "localhost"
	}
	if strings.ContainsAny(o.LocalName, " \r\n\t") {
		return nil, fmt.Errorf("smarthost: local name %q contains white space", o.LocalName)
	}
	if o.Concurrency == 0 {
		o.Concurrency = 4
	}
	if o.MessagesPerConnection == 0 {
		o.MessagesPerConnection = 100
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 30 * time.Second
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = 5 * time.Minute
	}
	if o.DataTimeout == 0 {
		o.DataTimeout = 10 * time.Minute
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Dialer == nil {
		d := &net.Dialer{}
		o.Dialer = d.DialContext
	}
	u := &Upstream{o: o, host: host, sem: make(chan struct{}, o.Concurrency),
		stop: make(chan struct{}), done: make(chan struct{})}
	u.log = o.Logger.With("upstream", o.Addr)

	if o.TLS != TLSNone {
		roots := o.RootCAs
		if o.CAFile != "" {
			pemData, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("smarthost: reading CA file: %w", err)
			}
			if roots == nil {
				roots = x509.NewCertPool()
			} else {
				roots = roots.Clone()
			}
			if !roots.AppendCertsFromPEM(pemData) {
				return nil, fmt.Errorf("smarthost: CA file %s holds no PEM certificate", o.CAFile)
			}
		}
		name := o.ServerName
		if name == "" {
			name = host
		}
		u.tlsConfig = &tls.Config{ServerName: name, RootCAs: roots, MinVersion: o.MinTLS}
		if o.ClientCertificate != nil {
			cert := *o.ClientCertificate
			u.tlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cert, nil
			}
		}
	} else if o.Auth.Mechanism != AuthNone {
		u.log.Warn("smarthost: logging in without TLS, as configured", "mechanism", o.Auth.Mechanism)
	}
	go u.janitor()
	return u, nil
}

// Limits reports what the scheduler must respect.
func (u *Upstream) Limits() upstream.Limits {
	return upstream.Limits{
		Concurrency:       u.o.Concurrency,
		MaxRecipients:     u.o.MaxRecipients,
		MaxSize:           u.o.MaxSize,
		MessagesPerMinute: u.o.MessagesPerMinute,
		RecipientsPerDay:  u.o.RecipientsPerDay,
	}
}

var errClosed = &upstream.Error{Err: errors.New("smarthost: upstream closed")}

// refusal is a permanent failure decided here, before the upstream could
// refuse: it carries a reply as the upstream would have given it, so the
// trace, the bounce and the hints treat it like one.
func refusal(code int, enh smtp.EnhancedCode, hint, format string, a ...any) *upstream.Error {
	return &upstream.Error{Permanent: true, Hint: hint,
		Reply: &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: fmt.Sprintf(format, a...)}}
}

// Deliver makes one attempt for msg; see upstream.Upstream.
func (u *Upstream) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	if len(msg.To) == 0 {
		return nil, nil
	}
	if u.o.MaxSize > 0 && msg.Size > u.o.MaxSize {
		// Devices are refused such messages at the door; this one was
		// queued before the limit was lowered.
		return nil, refusal(552, smtp.EnhancedCode{5, 3, 4},
			"The message is larger than the upstream accepts. Ask the sender for smaller attachments "+
				"(a scanner: lower resolution, or split the scan). Devices are refused such messages at once.",
			"message of %d bytes is larger than the upstream's limit of %d", msg.Size, u.o.MaxSize)
	}
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, &upstream.Error{Err: fmt.Errorf("waiting for a connection to %s: %w", u.o.Addr, ctx.Err())}
	}
	defer func() { <-u.sem }()

	n := u.o.MaxRecipients
	if n == 0 || len(msg.To) <= n {
		return u.deliver(ctx, msg, msg.To)
	}
	// More recipients than one transaction may carry: several
	// transactions, each reported per recipient.
	results := make([]upstream.RcptResult, 0, len(msg.To))
	for start := 0; start < len(msg.To); start += n {
		to := msg.To[start:min(start+n, len(msg.To))]
		res, err := u.deliver(ctx, msg, to)
		if err != nil {
			res = res[:0]
			for _, rc := range to {
				res = append(res, upstream.RcptResult{Rcpt: rc, Err: err})
			}
		}
		results = append(results, res...)
	}
	return results, nil
}

// deliver runs one transaction. When a pooled connection turns out to be
// dead before anything was accepted (the smarthost restarted, or closed it
// while idle), every idle connection dialled before this attempt began is
// suspect too: they are all dropped (those other attempts dialled since are
// kept) and the transaction goes out on a fresh dial.
// None of that is the upstream's refusal, so the caller never hears of it
// and no retry delay is spent on it; only a failure on the fresh connection
// counts.
func (u *Upstream) deliver(ctx context.Context, msg *upstream.Message, to []string) ([]upstream.RcptResult, error) {
	fresh := false
	for {
		c, reused, err := u.get(ctx, fresh)
		if err != nil {
			return nil, err
		}
		began := u.dials.Load()
		stop := c.watch(ctx)
		out := c.send(ctx, msg, to, reused)
		canceled := !stop()
		if out.keep && !canceled && c.sent < u.o.MessagesPerConnection {
			u.put(c)
		} else {
			u.discard(c, out.keep && !canceled)
		}
		if out.err != nil && out.stale && reused && ctx.Err() == nil {
			n := u.dropIdle(began)
			u.log.Debug("pooled connection was dead; dropped the idle ones dialled before this attempt, retrying on a new one",
				"queue_id", msg.QueueID, "dropped", n, "err", out.err)
			fresh = true
			continue
		}
		if out.err != nil {
			u.log.Debug("delivery failed", "queue_id", msg.QueueID, "err", out.err)
		}
		return out.results, out.err
	}
}
