package upstreamtest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TLS modes of a FakeServer (the same words smarthost uses).
const (
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
	TLSNone     = "none"
)

// Stages a Rule can act at.
const (
	StageAuth = "auth"
	StageMail = "mail"
	StageRcpt = "rcpt"
	// StageData acts on the reply after the message body (Drop closes the
	// connection after the first bytes of the body).
	StageData = "data"
)

// FakeOptions shape a FakeServer. The zero value is a STARTTLS server
// without AUTH that accepts everything.
type FakeOptions struct {
	// TLS is "starttls" (default), "implicit" or "none".
	TLS string
	// CA issues the server certificate; nil makes a new one (FakeServer.CA).
	CA *TestCA
	// Hostname is the banner name and the certificate's name (default
	// "localhost"; 127.0.0.1 is always in the certificate too).
	Hostname string
	// Certificate overrides the issued server certificate.
	Certificate *tls.Certificate
	// MinTLS and MaxTLS bound the TLS versions offered (0: Go's defaults).
	MinTLS, MaxTLS uint16
	// RequireClientCert asks for a client certificate signed by CA.
	RequireClientCert bool

	// AuthMechanisms offered: any of "PLAIN", "LOGIN", "XOAUTH2". Empty:
	// no AUTH at all.
	AuthMechanisms []string
	// RequireAuth refuses MAIL before a successful AUTH (530 5.7.0).
	RequireAuth bool
	// CheckAuth decides a login: mech is "PLAIN", "LOGIN" or "XOAUTH2",
	// secret the password or the bearer token. A non-SMTPError refusal is
	// answered 535 5.7.8. Nil accepts every login.
	CheckAuth func(mech, user, secret string) error
	// XOAUTH2Challenge answers a refused XOAUTH2 with a 334 JSON challenge
	// first (as Gmail does); otherwise 535 at once (as Microsoft 365 does).
	XOAUTH2Challenge bool

	// MaxSize is the advertised SIZE (0: SIZE without a limit).
	MaxSize int64
	// MaxRecipients refuses RCPTs beyond it (452 4.5.3).
	MaxRecipients int
	// NoSMTPUTF8 hides SMTPUTF8.
	NoSMTPUTF8 bool
	// NoPipelining hides PIPELINING (only with TLS "none" or "implicit",
	// where the fake sees the clear text).
	NoPipelining bool
	// SlowQuit delays the answer to QUIT (only with TLS "none" or
	// "implicit"), as a busy server may: a client that starts its next
	// session without waiting has two open at once.
	SlowQuit time.Duration
	// Discard counts messages without keeping them (benchmarks).
	Discard bool
	// Clock stamps received messages (default time.Now).
	Clock func() time.Time
}

// Received is one message the fake accepted.
type Received struct {
	From string
	To   []string
	// Data is the message as received, dot-stuffing removed.
	Data []byte
	// Opts are the MAIL parameters (SIZE, BODY, SMTPUTF8).
	Opts smtp.MailOptions
	// User is the authenticated user ("" without AUTH).
	User string
	// Conn numbers the connection it came on (1 for the first).
	Conn int
	// TLS tells whether the connection was encrypted; ClientCN is the
	// client certificate's common name, if one was presented.
	TLS      bool
	ClientCN string
	At       time.Time
}

// Rule scripts the fake's answer at one stage.
type Rule struct {
	Stage string
	// Rcpt limits a StageRcpt rule to this recipient (case-insensitive).
	Rcpt string
	// Times is how many matches the rule answers; 0 means all of them.
	Times int
	// Reply is sent instead of the normal answer.
	Reply *smtp.SMTPError
	// Drop closes the connection instead of answering.
	Drop bool
	// Delay holds the answer this long (then Reply, Drop or the normal
	// answer follows); closing the fake cuts it short.
	Delay time.Duration
}

// Reply builds an SMTP reply, e.g. Reply(550, "5.1.1", "no such user").
func Reply(code int, enhanced, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: text}
	if enhanced != "" {
		parts := strings.Split(enhanced, ".")
		if len(parts) == 3 {
			for i, p := range parts {
				n, err := strconv.Atoi(p)
				if err != nil {
					panic("upstreamtest.Reply: bad enhanced code " + enhanced)
				}
				e.EnhancedCode[i] = n
			}
		}
	}
	return e
}

// FakeServer is a go-smtp server on 127.0.0.1 with scripted replies.
type FakeServer struct {
	// Addr is "127.0.0.1:port".
	Addr string
	// CA signed the server certificate; its Pool is what clients trust.
	CA *TestCA
	o  FakeOptions

	srv  *smtp.Server
	ln   net.Listener
	done chan struct{}

	w          waiter
	rules      []*Rule
	received   []Received
	count      int
	conns      int
	open       int
	logins     int
	authFails  int
	commands   int
	rsets      int
	maxBatch   int
	peakOpen   int
	live       map[*fakeConn]bool
	closeOnce  sync.Once
	serveErr   chan error
	tlsVersion uint16
}

// NewFakeServer starts a fake on 127.0.0.1:0; it stops when the test ends.
func NewFakeServer(t testing.TB, o FakeOptions) *FakeServer {
	t.Helper()
	if o.TLS == "" {
		o.TLS = TLSStartTLS
	}
	switch o.TLS {
	case TLSStartTLS, TLSImplicit, TLSNone:
	default:
		t.Fatalf("upstreamtest: unknown TLS mode %q", o.TLS)
	}
	if o.NoPipelining && o.TLS == TLSStartTLS {
		t.Fatalf("upstreamtest: NoPipelining needs TLS \"none\" or \"implicit\"")
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.CA == nil {
		o.CA = NewTestCA(t)
	}
	f := &FakeServer{CA: o.CA, o: o, done: make(chan struct{}), serveErr: make(chan error, 1)}
	f.w.init()

	var tlsConfig *tls.Config
	if o.TLS != TLSNone {
		cert := o.Certificate
		if cert == nil {
			c := o.CA.ServerCert(t, o.Hostname)
			cert = &c
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: o.MinTLS, MaxVersion: o.MaxTLS}
		if o.RequireClientCert {
			tlsConfig.ClientAuth = tls.RequireAndVerifyClientCert
			tlsConfig.ClientCAs = o.CA.Pool
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = &fakeListener{Listener: ln, f: f, tls: o.TLS == TLSImplicit, config: tlsConfig}
	f.Addr = ln.Addr().String()

	s := smtp.NewServer(smtp.BackendFunc(f.newSession))
	s.Domain = o.Hostname
	s.MaxMessageBytes = o.MaxSize
	s.MaxLineLength = 16000
	s.ReadTimeout = time.Minute
	s.WriteTimeout = time.Minute
	s.EnableSMTPUTF8 = !o.NoSMTPUTF8
	s.ErrorLog = log.New(io.Discard, "", 0)
	if o.TLS == TLSStartTLS {
		s.TLSConfig = tlsConfig
	}
	// Implicit TLS is terminated by the listener; the fake then sees clear
	// text, so AUTH must be allowed "without" TLS there too.
	s.AllowInsecureAuth = o.TLS != TLSStartTLS
	f.srv = s
	go func() { f.serveErr <- s.Serve(f.ln) }()
	t.Cleanup(f.Close)
	return f
}

// Close stops the server and cuts delays short.
func (f *FakeServer) Close() {
	f.closeOnce.Do(func() {
		close(f.done)
		f.srv.Close()
		f.ln.Close() // in case Serve had not registered it yet
		<-f.serveErr
	})
}

// Script adds rules; they are consulted in the order added.
func (f *FakeServer) Script(rules ...Rule) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	for i := range rules {
		r := rules[i]
		f.rules = append(f.rules, &r)
	}
}

// ClearScript removes every rule.
func (f *FakeServer) ClearScript() {
	f.w.mu.Lock()
	f.rules = nil
	f.w.mu.Unlock()
}

// RefuseRcpt answers RCPT TO rcpt with reply every time.
func (f *FakeServer) RefuseRcpt(rcpt string, reply *smtp.SMTPError) {
	f.Script(Rule{Stage: StageRcpt, Rcpt: rcpt, Reply: reply})
}

// FailNext answers the next n commands at stage with reply.
func (f *FakeServer) FailNext(stage string, n int, reply *smtp.SMTPError) {
	f.Script(Rule{Stage: stage, Times: n, Reply: reply})
}

// DropNextData closes the connection in the middle of the next n DATA.
func (f *FakeServer) DropNextData(n int) {
	f.Script(Rule{Stage: StageData, Times: n, Drop: true})
}

// Slow delays every answer at stage by d.
func (f *FakeServer) Slow(stage string, d time.Duration) {
	f.Script(Rule{Stage: stage, Delay: d})
}

// match finds and consumes the rule for stage (and rcpt); nil if none.
func (f *FakeServer) match(stage, rcpt string) *Rule {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	for _, r := range f.rules {
		if r.Stage != stage || (r.Rcpt != "" && !strings.EqualFold(r.Rcpt, rcpt)) {
			continue
		}
		if r.Times < 0 {
			continue
		}
		if r.Times > 0 {
			r.Times--
			if r.Times == 0 {
				r.Times = -1
			}
		}
		c := *r
		return &c
	}
	return nil
}

// apply acts on a matched rule: returns (handled, err).
func (f *FakeServer) apply(r *Rule, c *smtp.Conn) (bool, error) {
	if r == nil {
		return false, nil
	}
	if r.Delay > 0 {
		t := time.NewTimer(r.Delay)
		select {
		case <-t.C:
		case <-f.done:
			t.Stop()
		}
	}
	if r.Drop {
		c.Conn().Close()
		return true, errors.New("upstreamtest: connection dropped by script")
	}
	if r.Reply != nil {
		return true, r.Reply
	}
	return false, nil
}

// Messages returns a copy of every message received so far.
func (f *FakeServer) Messages() []Received {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return append([]Received(nil), f.received...)
}

// Count is how many messages were accepted (also with Discard).
func (f *FakeServer) Count() int {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.count
}

// WaitMessages blocks until at least n messages were accepted and returns
// them; it fails the test if the test's deadline comes first.
func (f *FakeServer) WaitMessages(t testing.TB, n int) []Received {
	t.Helper()
	f.w.wait(t, func() bool { return f.count >= n },
		func() string { return fmt.Sprintf("waiting for %d messages, got %d", n, f.count) })
	return f.Messages()
}

// WaitClosed blocks until no connection is open (the client quit).
func (f *FakeServer) WaitClosed(t testing.TB) {
	t.Helper()
	f.w.wait(t, func() bool { return f.open == 0 },
		func() string { return fmt.Sprintf("waiting for connections to close, %d open", f.open) })
}

// Stats is what the fake has seen, at one instant.
type Stats struct {
	// Connections were accepted; Open are open now; PeakOpen were open at
	// once at most.
	Connections, Open, PeakOpen int
	// Logins are AUTH exchanges that succeeded; AuthFailures were refused.
	Logins, AuthFailures int
	// Resets are RSET commands, and MaxPipelined the most MAIL/RCPT/DATA/
	// RSET commands in one read (1 for a client that waits for each
	// reply); both counted only where the fake sees clear text (TLS "none"
	// or "implicit").
	Resets, MaxPipelined int
	// TLSVersion was negotiated on the latest TLS connection.
	TLSVersion uint16
}

// Stats returns a snapshot of the counters.
func (f *FakeServer) Stats() Stats {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return Stats{Connections: f.conns, Open: f.open, PeakOpen: f.peakOpen, Logins: f.logins, AuthFailures: f.authFails,
		Resets: f.rsets, MaxPipelined: f.maxBatch, TLSVersion: f.tlsVersion}
}

// DropAll closes every open connection without a word, as a server does
// that times out idle clients or restarts.
func (f *FakeServer) DropAll() {
	f.w.mu.Lock()
	var live []*fakeConn
	for c := range f.live {
		live = append(live, c)
	}
	f.w.mu.Unlock()
	for _, c := range live {
		c.Close()
	}
}
