// Package smarthost delivers to an SMTP smarthost: a pool of reusable,
// authenticated connections speaking PIPELINING where offered, so that a
// small box can push thousands of small messages a second through a few
// connections. Microsoft 365 client submission and connector relay are built
// on it; see docs/smarthost.md.
package smarthost

import (
	"bufio"
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

// dropIdle closes every idle connection numbered up to cutoff: one pooled
// connection found dead means the peer dropped them all (a restart), and
// each would otherwise fail its next transaction in turn.
func (u *Upstream) dropIdle(cutoff uint64) int {
	old := u.takeIdle(func(c *conn) bool { return c.gen <= cutoff })
	for _, c := range old {
		c.nc.Close() // dead or suspect: no QUIT to wait for
	}
	return len(old)
}

// get takes an idle connection or dials a new one; fresh always dials.
func (u *Upstream) get(ctx context.Context, fresh bool) (*conn, bool, error) {
	now := u.o.Clock()
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, false, errClosed
	}
	var c *conn
	var stale []*conn
	for !fresh && c == nil && len(u.idle) > 0 {
		last := u.idle[len(u.idle)-1]
		u.idle = u.idle[:len(u.idle)-1]
		if now.Sub(last.lastUsed) >= u.o.IdleTimeout {
			stale = append(stale, last)
			continue
		}
		c = last
	}
	u.mu.Unlock()
	// A stale session ends before a new one starts: the upstream counts it
	// until its QUIT, and an overlap can pass its limit on sessions
	// (Microsoft's 3 a mailbox answers 432 4.3.2 "sender thread limit").
	for _, s := range stale {
		s.quit()
	}
	if c != nil {
		return c, true, nil
	}
	c, err := u.dial(ctx, nil)
	return c, false, err
}

func (u *Upstream) put(c *conn) {
	c.lastUsed = u.o.Clock()
	c.canceled = false
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		c.quit()
		return
	}
	u.idle = append(u.idle, c)
	u.mu.Unlock()
}

// discard closes c; politely (QUIT) when it is still in step.
func (u *Upstream) discard(c *conn, polite bool) {
	if polite {
		c.quit()
		return
	}
	c.nc.Close()
}

// takeIdle removes the idle connections for which take is true from the
// pool and returns them, for the caller to close outside the lock.
func (u *Upstream) takeIdle(take func(*conn) bool) []*conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []*conn
	keep := u.idle[:0]
	for _, c := range u.idle {
		if take(c) {
			out = append(out, c)
		} else {
			keep = append(keep, c)
		}
	}
	clear(u.idle[len(keep):])
	u.idle = keep
	return out
}

// janitor closes connections left idle too long.
func (u *Upstream) janitor() {
	defer close(u.done)
	tick := time.NewTicker(max(u.o.IdleTimeout/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-tick.C:
		}
		now := u.o.Clock()
		old := u.takeIdle(func(c *conn) bool { return now.Sub(c.lastUsed) >= u.o.IdleTimeout })
		for _, c := range old {
			c.quit()
		}
		if len(old) > 0 {
			u.log.Debug("closed idle connections", "count", len(old))
		}
	}
}

// Close quits the idle connections; connections in use close when their
// Deliver returns.
func (u *Upstream) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	idle := u.idle
	u.idle = nil
	u.mu.Unlock()
	close(u.stop)
	<-u.done
	for _, c := range idle {
		c.quit()
	}
	return nil
}

// dial connects, greets, secures and logs in. With steps non-nil it
// records each stage for Probe.
func (u *Upstream) dial(ctx context.Context, steps *[]upstream.Step) (*conn, error) {
	o := &u.o
	step := func(name string, ok bool, detail string) {
		if steps != nil {
			*steps = append(*steps, upstream.Step{Name: name, OK: ok, Detail: detail})
		}
	}
	var token string
	if strings.EqualFold(o.Auth.Mechanism, "xoauth2") {
		// The token first: while the token endpoint fails, no session
		// is opened (Exchange allows a mailbox three at once).
		t, err := o.Auth.TokenSource.Token(ctx)
		if err != nil {
			e := tokenErr(o.Auth.Username, err)
			step("token", false, e.Error())
			return nil, e
		}
		token = t
	}
	dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	nc, err := o.Dialer(dctx, "tcp", o.Addr)
	cancel()
	if err != nil {
		e := netErr(ctx, "connecting to "+o.Addr, err)
		step("connect", false, e.Error())
		return nil, e
	}
	step("connect", true, fmt.Sprintf("connected to %s (%s)", o.Addr, nc.RemoteAddr()))
	u.open.Add(1)
	nc = &countedConn{Conn: nc, open: &u.open}
	c := &conn{u: u, nc: nc, gen: u.dials.Add(1)}
	c.br = bufio.NewReaderSize(nc, 4096)
	c.bw = bufio.NewWriterSize(nc, 16<<10)
	stop := c.watch(ctx)
	defer stop()
	fail := func(name string, err error) (*conn, error) {
		step(name, false, err.Error())
		if ue := (*upstream.Error)(nil); errors.As(err, &ue) && ue.Reply != nil && ctx.Err() == nil {
			// The server answered: the dialogue is in step, so end it
			// with QUIT (a session dropped without it may count against
			// the mailbox's limit until the server notices).
			c.quit()
		} else {
			c.nc.Close()
		}
		if ctx.Err() != nil {
			var ue *upstream.Error
			if !errors.As(err, &ue) || ue.Reply == nil {
				err = netErr(ctx, "connecting to "+o.Addr, err)
			}
		}
		return nil, err
	}
	if o.TLS == TLSImplicit {
		if err := c.handshake(ctx); err != nil {
			return fail("tls", err)
		}
		step("tls", true, tlsDetail(c.tls, o.Clock()))
	}
	c.deadline(o.CommandTimeout)
	r, err := c.readReply(true)
	if err != nil {
		return fail("banner", netErr(ctx, "reading the greeting of "+o.Addr, err))
	}
	if r.code != 220 {
		return fail("banner", replyErr("upstream refused the connection", r, true))
	}
	step("banner", true, strings.Join(r.lines, " "))
	if err := c.hello(ctx); err != nil {
		return fail("ehlo", err)
	}
	if o.TLS == TLSStartTLS {
		if !c.has("STARTTLS") {
			return fail("starttls", &upstream.Error{Err: fmt.Errorf(
				"%s does not offer STARTTLS; refusing to send in the clear (TLS mode \"none\" allows it)", o.Addr)})
		}
		if err := c.startTLS(ctx); err != nil {
			return fail("tls", err)
		}
		step("tls", true, tlsDetail(c.tls, o.Clock()))
		if err := c.hello(ctx); err != nil {
			return fail("ehlo", err)
		}
	}
	step("ehlo", true, extDetail(c.ext))
	if o.Auth.Mechanism != AuthNone {
		if err := c.auth(ctx, token); err != nil {
			return fail("auth", err)
		}
		step("auth", true, fmt.Sprintf("logged in as %s with %s", o.Auth.Username, strings.ToUpper(o.Auth.Mechanism)))
	}
	u.log.Debug("connected", "tls", c.tls != nil, "pipelining", c.pipe)
	return c, nil
}

func tlsDetail(st *tls.ConnectionState, now time.Time) string {
	s := fmt.Sprintf("%s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	if len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		s += fmt.Sprintf("; certificate %q issued by %q, expires %s", leaf.Subject.String(),
			leaf.Issuer.String(), leaf.NotAfter.UTC().Format(time.RFC3339))
		if left := leaf.NotAfter.Sub(now); left < 14*24*time.Hour {
			s += fmt.Sprintf(" (in %s)", left.Round(time.Hour))
		}
	}
	return s
}

func extDetail(ext map[string]string) string {
	var parts []string
	for _, k := range []string{"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "STARTTLS", "AUTH", "CHUNKING", "DSN"} {
		if v, ok := ext[k]; ok {
			if v != "" {
				k += " " + v
			}
			parts = append(parts, k)
		}
	}
	return strings.Join(parts, ", ")
}

// Connections is how many connections to the smarthost are open now,
// idle or in use; see upstream.ConnectionCounter.
func (u *Upstream) Connections() int { return int(u.open.Load()) }

// countedConn takes itself off the count of open connections when it is
// first closed (TLS closes it through its own Close).
type countedConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// Probe checks the path without sending mail: connect, TLS, EHLO, AUTH.
func (u *Upstream) Probe(ctx context.Context) ([]upstream.Step, error) {
	var steps []upstream.Step
	c, err := u.dial(ctx, &steps)
	if err != nil {
		return steps, err
	}
	c.quit()
	return steps, nil
}
