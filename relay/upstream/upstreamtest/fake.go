package upstreamtest

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
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

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
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

type fakeListener struct {
	net.Listener
	f      *FakeServer
	tls    bool
	config *tls.Config
}

func (l *fakeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	f := l.f
	f.w.mu.Lock()
	f.conns++
	f.open++
	f.peakOpen = max(f.peakOpen, f.open)
	id := f.conns
	fc := &fakeConn{f: f, id: id, noPipe: f.o.NoPipelining, count: f.o.TLS != TLSStartTLS}
	if f.live == nil {
		f.live = map[*fakeConn]bool{}
	}
	f.live[fc] = true
	f.w.mu.Unlock()
	if l.tls {
		tc := tls.Server(c, l.config)
		fc.Conn, fc.tls = tc, tc
	} else {
		fc.Conn = c
	}
	return fc, nil
}

// fakeConn counts, hides PIPELINING when asked, and notes when the client
// sent several commands in one go.
type fakeConn struct {
	net.Conn
	f      *FakeServer
	id     int
	tls    *tls.Conn // implicit TLS
	noPipe bool
	count  bool
	inData bool
	closed sync.Once
}

var pipeliningLine = []byte("250-PIPELINING\r\n")

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.noPipe && bytes.Equal(p, pipeliningLine) {
		return len(p), nil
	}
	if c.count && bytes.HasPrefix(p, []byte("221 ")) {
		// The session ends at the answer to QUIT, as an upstream's limit
		// on sessions counts it: the close that follows may come after
		// the client has already started its next one.
		time.Sleep(c.f.o.SlowQuit) // a slow server, not synchronisation
		c.ended()
	}
	if c.count && bytes.HasPrefix(p, []byte("354")) {
		c.inData = true
	}
	return c.Conn.Write(p)
}

func (c *fakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.count {
		c.countCommands(p[:n])
	}
	return n, err
}

func (c *fakeConn) countCommands(b []byte) {
	batch, rsets := 0, 0
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i+1], b[i+1:]
		} else {
			b = nil
		}
		if c.inData {
			if bytes.Equal(line, []byte(".\r\n")) {
				c.inData = false
			}
			continue
		}
		if len(line) >= 4 {
			switch strings.ToUpper(string(line[:4])) {
			case "MAIL", "RCPT", "DATA":
				batch++
			case "RSET":
				batch++
				rsets++
			}
		}
	}
	c.f.w.mu.Lock()
	c.f.commands += batch
	c.f.rsets += rsets
	if batch > c.f.maxBatch {
		c.f.maxBatch = batch
	}
	c.f.w.mu.Unlock()
}

func (c *fakeConn) Close() error {
	c.ended()
	return c.Conn.Close()
}

// ended counts the session as over (once): at its QUIT's answer, or at
// the close.
func (c *fakeConn) ended() {
	c.closed.Do(func() {
		c.f.w.mu.Lock()
		c.f.open--
		delete(c.f.live, c)
		c.f.w.broadcast()
		c.f.w.mu.Unlock()
	})
}

func (f *FakeServer) newSession(c *smtp.Conn) (smtp.Session, error) {
	s := &session{f: f, c: c}
	nc := c.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		s.noteTLS(tc.ConnectionState())
		nc = tc.NetConn()
	}
	if fc, ok := nc.(*fakeConn); ok {
		s.conn = fc.id
		if fc.tls != nil {
			s.noteTLS(fc.tls.ConnectionState())
		}
	}
	return s, nil
}

type session struct {
	f        *FakeServer
	c        *smtp.Conn
	conn     int
	tls      bool
	clientCN string
	user     string
	from     string
	opts     smtp.MailOptions
	to       []string
}

func (s *session) noteTLS(st tls.ConnectionState) {
	s.tls = true
	if len(st.PeerCertificates) > 0 {
		s.clientCN = st.PeerCertificates[0].Subject.CommonName
	}
	s.f.w.mu.Lock()
	s.f.tlsVersion = st.Version
	s.f.w.mu.Unlock()
}

func (s *session) AuthMechanisms() []string { return s.f.o.AuthMechanisms }

func (s *session) Auth(mech string) (sasl.Server, error) {
	offered := false
	for _, m := range s.f.o.AuthMechanisms {
		if strings.EqualFold(m, mech) {
			offered = true
		}
	}
	if !offered {
		return nil, Reply(504, "5.5.4", "mechanism not offered")
	}
	switch mech {
	case "PLAIN":
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			return s.check("PLAIN", user, pass)
		}), nil
	case "LOGIN":
		return authlogin.NewServer(func(user, pass string) error { return s.check("LOGIN", user, pass) }), nil
	case "XOAUTH2":
		return &xoauth2Server{s: s}, nil
	}
	return nil, Reply(504, "5.5.4", "mechanism not supported")
}

func (s *session) check(mech, user, secret string) error {
	f := s.f
	handled, err := f.apply(f.match(StageAuth, ""), s.c)
	if !handled && f.o.CheckAuth != nil {
		err = f.o.CheckAuth(mech, user, secret)
		var se *smtp.SMTPError
		if err != nil && !errors.As(err, &se) {
			err = Reply(535, "5.7.8", "Authentication credentials invalid")
		}
	}
	f.w.mu.Lock()
	if err != nil {
		f.authFails++
	} else {
		f.logins++
		s.user = user
	}
	f.w.mu.Unlock()
	return err
}

type xoauth2Server struct {
	s      *session
	failed error
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if x.failed != nil {
		return nil, true, x.failed
	}
	user, token, ok := parseXOAUTH2(resp)
	if !ok {
		return nil, true, Reply(501, "5.5.2", "malformed XOAUTH2 response")
	}
	err := x.s.check("XOAUTH2", user, token)
	if err != nil && x.s.f.o.XOAUTH2Challenge {
		x.failed = err
		return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`), false, nil
	}
	return nil, true, err
}

// parseXOAUTH2 splits "user=U\x01auth=Bearer T\x01\x01".
func parseXOAUTH2(b []byte) (user, token string, ok bool) {
	s := string(b)
	if !strings.HasSuffix(s, "\x01\x01") {
		return "", "", false
	}
	for _, kv := range strings.Split(strings.TrimSuffix(s, "\x01\x01"), "\x01") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "user":
			user = v
		case "auth":
			t, found := strings.CutPrefix(v, "Bearer ")
			if !found {
				return "", "", false
			}
			token = t
		}
	}
	return user, token, user != "" && token != ""
}

// EncodeXOAUTH2 is the client side of the SASL exchange, base64-encoded
// (for tests that speak to the fake by hand).
func EncodeXOAUTH2(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.f.o.RequireAuth && len(s.f.o.AuthMechanisms) > 0 && s.user == "" {
		return Reply(530, "5.7.0", "Authentication required")
	}
	if handled, err := s.f.apply(s.f.match(StageMail, ""), s.c); handled {
		return err
	}
	s.from = from
	if opts != nil {
		s.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if handled, err := s.f.apply(s.f.match(StageRcpt, to), s.c); handled {
		return err
	}
	if s.f.o.MaxRecipients > 0 && len(s.to) >= s.f.o.MaxRecipients {
		return Reply(452, "4.5.3", "Too many recipients")
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	f := s.f
	rule := f.match(StageData, "")
	if rule != nil && rule.Drop {
		// Read the first bytes, so the client is surely inside DATA.
		var b [1]byte
		io.ReadFull(r, b[:])
		f.apply(rule, s.c)
		return errors.New("upstreamtest: connection dropped by script")
	}
	var data []byte
	var err error
	if f.o.Discard {
		_, err = io.Copy(io.Discard, r)
	} else {
		data, err = io.ReadAll(r)
	}
	if err != nil {
		return err
	}
	if handled, err := f.apply(rule, s.c); handled {
		return err
	}
	f.w.mu.Lock()
	f.count++
	if !f.o.Discard {
		f.received = append(f.received, Received{
			From: s.from, To: append([]string(nil), s.to...), Data: data, Opts: s.opts,
			User: s.user, Conn: s.conn, TLS: s.tls, ClientCN: s.clientCN, At: f.o.Clock(),
		})
	}
	f.w.broadcast()
	f.w.mu.Unlock()
	return nil
}

func (s *session) Reset() {
	s.from, s.to, s.opts = "", nil, smtp.MailOptions{}
}

func (s *session) Logout() error { return nil }
