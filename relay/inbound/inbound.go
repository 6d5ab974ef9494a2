// Package inbound is the relay's SMTP front end: a go-smtp backend whose
// sessions apply the site's policy as the dialogue goes and answer 250 to
// DATA only once the message is in the spool.
//
// Every refusal is an *smtp.SMTPError with an enhanced code and words that
// tell the device owner what to change; every failure of the relay itself
// (spool, disk) is a 4xx so that the device keeps the message and retries.
package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// Policy is what a session asks of the site's rules (relay/policy
// implements it). Each method returns nil or an *smtp.SMTPError.
type Policy interface {
	// Connect admits a client and says whether its network may relay
	// without logging in; release is called when the session ends.
	Connect(ip netip.Addr) (relayAllowed bool, release func(), err error)
	// Login checks a device account.
	Login(ip netip.Addr, user, pass string) (*policy.Account, error)
	// Sender checks the envelope sender (acct is nil when not logged in)
	// and takes one message from the client's rate allowance.
	Sender(ip netip.Addr, acct *policy.Account, from string) error
	// Recipient checks one recipient; relayAllowed is true for a client in
	// an allowed network or logged in.
	Recipient(ip netip.Addr, rcpt string, relayAllowed bool) error
}

// Options configure one listener.
type Options struct {
	Name     string // the listener's name, for logs and Received
	Hostname string
	// TLS, when not nil, offers STARTTLS with this configuration (its
	// MinVersion is the listener's oldest allowed version).
	TLS                *tls.Config
	RequireTLS         bool
	Auth               bool // offer AUTH PLAIN and LOGIN
	RequireAuth        bool
	AllowPlaintextAuth bool

	MaxMessageBytes int64
	MaxRecipients   int
	MaxLineLength   int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	BareLineEndings message.BareLineEndings
	RewriteFrom     string

	Policy Policy
	Spool  *spool.Spool
	// CheckRecipient, when set, lets the upstream refuse recipients it can
	// never reach (direct send) while the device is still connected.
	CheckRecipient func(rcpt string) error
	// Accepted is called with each committed message's queue id.
	Accepted func(id string)
	// Record receives the "received" trace event.
	Record func(trace.Event)
	// Refused counts refusals by reason (metrics); may be nil.
	Refused func(reason string)
	// AcceptLatency observes DATA-to-250 time (metrics); may be nil.
	AcceptLatency func(time.Duration)
	Clock         func() time.Time
	Logger        *slog.Logger
}

// TLSConfig is the STARTTLS configuration for a listener whose oldest TLS
// version is min. Below TLS 1.2 it adds the RSA key exchange CBC suites:
// the printers and scanners that still speak TLS 1.0 rarely know anything
// else, and the relay speaks only TLS 1.2+ upstream anyway.
func TLSConfig(cert func(*tls.ClientHelloInfo) (*tls.Certificate, error), min uint16) *tls.Config {
	c := &tls.Config{GetCertificate: cert, MinVersion: min}
	if min < tls.VersionTLS12 {
		for _, cs := range tls.CipherSuites() {
			c.CipherSuites = append(c.CipherSuites, cs.ID)
		}
		c.CipherSuites = append(c.CipherSuites, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA)
	}
	return c
}

func (o *Options) defaults() {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Record == nil {
		o.Record = func(trace.Event) {}
	}
	if o.Refused == nil {
		o.Refused = func(string) {}
	}
	if o.Accepted == nil {
		o.Accepted = func(string) {}
	}
}

// Server is one listener.
type Server struct {
	o   Options                 // as made by New: go-smtp's server settings
	cur atomic.Pointer[Options] // what new sessions take (Update)
	srv *smtp.Server
}

// New makes a listener; Serve runs it.
func New(o Options) *Server {
	o.defaults()
	s := &Server{o: o}
	s.cur.Store(&o)
	srv := smtp.NewServer(s)
	srv.Domain = o.Hostname
	srv.TLSConfig = o.TLS
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.MaxRecipients = o.MaxRecipients
	if o.MaxLineLength > 0 {
		srv.MaxLineLength = o.MaxLineLength
	}
	srv.ReadTimeout = o.ReadTimeout
	srv.WriteTimeout = o.WriteTimeout
	srv.AllowInsecureAuth = o.AllowPlaintextAuth
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogPrinter{o.Logger.With("listener", o.Name)}
	s.srv = srv
	return s
}

// Update gives new sessions o; sessions in flight keep the options they
// started with. go-smtp's own server settings (message size, line length,
// timeouts, TLS) stay as New made them.
func (s *Server) Update(o Options) {
	o.defaults()
	s.cur.Store(&o)
}

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.srv.Serve(l)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for sessions to finish until ctx
// ends, then closes them (a device cut off mid-DATA never got a 250 and
// will retry).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}

// NewSession implements smtp.Backend.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	o := s.cur.Load()
	ip := remoteIP(c.Conn().RemoteAddr())
	relay, release, err := o.Policy.Connect(ip)
	if err != nil {
		o.Refused("rate_limited")
		return nil, err
	}
	return &session{o: o, c: c, ip: ip, netRelay: relay, release: release,
		log: o.Logger.With("listener", o.Name, "client_ip", ip.String())}, nil
}

type session struct {
	o        *Options // as the session started
	c        *smtp.Conn
	ip       netip.Addr
	netRelay bool
	release  func()
	login    string
	acct     *policy.Account
	log      *slog.Logger

	from  string
	opts  smtp.MailOptions
	rcpts []string
}

func (ss *session) refuse(reason string, err error) error {
	ss.o.Refused(reason)
	ss.log.Info("refused", "reason", reason, "reply", err.Error())
	return err
}

func (ss *session) tlsState() (tls.ConnectionState, bool) { return ss.c.TLSConnectionState() }

// AuthMechanisms implements smtp.AuthSession.
func (ss *session) AuthMechanisms() []string {
	if !ss.o.Auth {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		acct, err := ss.o.Policy.Login(ss.ip, user, pass)
		if err != nil {
			ss.o.Refused("auth_failed")
			ss.log.Info("login refused", "user", user)
			return err
		}
		ss.login, ss.acct = user, acct
		ss.log = ss.log.With("login", user)
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "acting as another user is not supported; log in as the account itself"}
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return authlogin.NewServer(check), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	o := ss.o
	if _, ok := ss.tlsState(); o.RequireTLS && !ok {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires STARTTLS first; turn on TLS in the device's mail settings"})
	}
	if o.RequireAuth && ss.login == "" {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires login; set the device's SMTP user name and password"})
	}
	if opts != nil && opts.Size > 0 && o.MaxMessageBytes > 0 && opts.Size > o.MaxMessageBytes {
		return ss.refuse("too_big", tooBig(o.MaxMessageBytes))
	}
	if err := o.Policy.Sender(ss.ip, ss.acct, from); err != nil {
		reason := "bad_sender"
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 {
			reason = "rate_limited"
		}
		return ss.refuse(reason, err)
	}
	ss.from = from
	if opts != nil {
		ss.opts = *opts
	}
	ss.rcpts = ss.rcpts[:0]
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	o := ss.o
	relay := ss.netRelay || ss.login != ""
	if err := o.Policy.Recipient(ss.ip, to, relay); err != nil {
		reason := "bad_recipient"
		if !relay {
			reason = "not_allowed"
		}
		return ss.refuse(reason, err)
	}
	if o.CheckRecipient != nil {
		if err := o.CheckRecipient(to); err != nil {
			return ss.refuse("bad_recipient", err)
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	o := ss.o
	start := o.Clock()
	m := o.Spool.NewMessage()
	id := m.ID()
	log := ss.log.With("queue_id", id)

	proto := "ESMTP"
	rcv := &message.Received{Helo: ss.c.Hostname(), ClientIP: ss.ip, By: o.Hostname}
	if st, ok := ss.tlsState(); ok {
		proto += "S"
		rcv.TLSVersion, rcv.TLSCipher = st.Version, st.CipherSuite
	}
	if ss.login != "" {
		proto += "A"
	}
	rcv.Protocol = proto
	if len(ss.rcpts) == 1 {
		rcv.Recipient = ss.rcpts[0]
	}
	info, err := message.Prepare(m, r, message.Options{
		BareLineEndings: o.BareLineEndings,
		Received:        rcv,
		QueueID:         id,
		Now:             start,
		AddMessageID:    o.Hostname,
		AddDate:         true,
		RewriteFrom:     o.RewriteFrom,
		MaxLineLength:   o.MaxLineLength,
	})
	if err != nil {
		m.Abort()
		return ss.dataError(log, err)
	}
	env := spool.Envelope{
		From:        ss.from,
		UTF8:        ss.opts.UTF8,
		EightBit:    info.EightBit || ss.opts.Body == smtp.Body8BitMIME,
		Received:    start,
		ClientIP:    ss.ip.String(),
		Login:       ss.login,
		MessageID:   info.MessageID,
		Subject:     info.Subject,
		HeaderBytes: info.HeaderBytes,
	}
	if o.RewriteFrom != "" {
		env.From = o.RewriteFrom
	}
	env.To = make([]spool.Rcpt, len(ss.rcpts))
	for i, rc := range ss.rcpts {
		env.To[i] = spool.Rcpt{Addr: rc}
	}
	if _, err := m.Commit(env); err != nil {
		return ss.dataError(log, err)
	}
	o.Accepted(id)
	if o.AcceptLatency != nil {
		o.AcceptLatency(o.Clock().Sub(start))
	}
	ev := trace.Event{Time: start, Kind: trace.Received, QueueID: id, MessageID: info.MessageID,
		ClientIP: env.ClientIP, From: env.From, To: ss.rcpts, Subject: info.Subject, Size: info.Size,
		Listener: o.Name, Account: ss.login}
	if env.From != ss.from {
		ev.FromReceived = ss.from // senders.rewrite_from replaced it
	}
	if st, ok := ss.tlsState(); ok {
		ev.TLSVersion, ev.TLSCipher = tlsVersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	}
	o.Record(ev)
	log.Debug("queued", "from", env.From, "rcpts", len(ss.rcpts), "size", info.Size, "message_id", info.MessageID)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + id}
}

// dataError turns a failure during DATA into the reply: the device's own
// fault (too big, bad line endings) is permanent; the relay's (disk full,
// write error) is temporary.
func (ss *session) dataError(log *slog.Logger, err error) error {
	o := ss.o
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		return ss.refuse("too_big", tooBig(o.MaxMessageBytes))
	case errors.Is(err, spool.ErrFull):
		log.Warn("spool full; device told to retry", "err", err)
		return ss.refuse("storage_full", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
			Message: "relay storage is full; the message was not accepted, try again later"})
	}
	if reply, ok := message.Reply(err); ok {
		reason := "other"
		if reply.EnhancedCode == (smtp.EnhancedCode{5, 6, 11}) {
			reason = "smuggling"
		}
		return ss.refuse(reason, reply)
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) {
		log.Info("client went away during DATA", "err", err)
		return err
	}
	log.Error("cannot spool message; device told to retry", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "relay could not store the message; try again later"}
}

// tlsVersionName is "1.0" .. "1.3", as in the configuration's min_tls.
func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "1.0"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS13:
		return "1.3"
	}
	return "other"
}

func tooBig(max int64) error {
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("message too big: the limit is %d bytes; send a smaller scan or lower the resolution", max)}
}

func (ss *session) Reset() {
	ss.from = ""
	ss.rcpts = ss.rcpts[:0]
	ss.opts = smtp.MailOptions{}
}

func (ss *session) Logout() error {
	if ss.release != nil {
		ss.release()
		ss.release = nil
	}
	return nil
}

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// slogPrinter gives go-smtp's own log lines (accept errors, panics) to slog.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) { p.l.Warn(fmt.Sprintf(format, v...)) }
func (p slogPrinter) Println(v ...any)               { p.l.Warn(fmt.Sprint(v...)) }
