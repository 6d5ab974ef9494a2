package m365test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
)

// ExchangeOptions shape the fake Exchange.
type ExchangeOptions struct {
	// Hostname is the name in its certificate and banner.
	Hostname string
	CA       *CA
	Clock    func() time.Time
	// MX makes it the tenant's MX host (no AUTH; connectors and direct
	// send); otherwise it is smtp.office365.com (client submission).
	MX bool
	// HVE makes it High Volume Email (smtp.hve.mx.microsoft): client
	// submission for HVE accounts (XOAUTH2, or Passwords), no per-minute
	// limit, only TenantDomains' recipients (ErrHVEExternal otherwise),
	// and tokens that expire within HVETokenMargin refused
	// (ErrHVETokenExpiring).
	HVE bool

	// Client submission: Entra checks XOAUTH2 tokens; Passwords, when set,
	// allow basic AUTH LOGIN/PLAIN for those mailboxes (else 535 5.7.139).
	Entra     *Entra
	Passwords map[string]string
	// PerMinute and MaxConnections per mailbox; defaults 30 and 3.
	PerMinute, MaxConnections int

	// MX: ConnectorDomains are certificate connectors (the client
	// certificate's CN or SAN must be one); ConnectorIPs are IP connectors.
	// With neither matching, mail is direct send: only TenantDomains'
	// recipients, and refused entirely when RejectDirectSend.
	ConnectorDomains []string
	ConnectorIPs     []string
	TenantDomains    []string
	RejectDirectSend bool
	// RequireConnector refuses unmatched senders with 5.7.64.
	RequireConnector bool

	MaxSize int64

	// Names are more names and addresses its certificate holds besides
	// Hostname and 127.0.0.1 (a VM guest reaches the host as 10.0.2.2);
	// Listen is its address, default 127.0.0.1:0.
	Names  []string
	Listen string
}

// Received is one accepted message.
type Received struct {
	Mailbox   string // the authenticated mailbox ("" on the MX host)
	Connector string // the matched connector ("" for direct send)
	From      string
	To        []string
	Data      []byte
	At        time.Time
}

// Exchange is an Exchange-like SMTP server.
type Exchange struct {
	Addr string
	o    ExchangeOptions
	srv  *smtp.Server

	mu         sync.Mutex
	grants     map[string][]string // client id -> mailboxes
	received   []Received
	conns      int
	quits      int
	ended      int
	authed     map[string]int // mailbox -> authenticated sessions
	sent       map[string][]time.Time
	scripts    map[string][]*smtp.SMTPError
	refuse     map[string]*smtp.SMTPError
	expiring   int
	violations []string
	peak       map[string]int
}

// Stages a reply can be scripted at.
const (
	AtAuth = "auth"
	AtMail = "mail"
	AtRcpt = "rcpt"
	AtData = "data"
)

// NewExchange starts the server; it stops with the test.
func NewExchange(t testing.TB, o ExchangeOptions) *Exchange {
	if o.Hostname == "" {
		o.Hostname = "smtp.office365.test"
	}
	if o.PerMinute == 0 {
		o.PerMinute = 30
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 3
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	x := &Exchange{o: o, grants: map[string][]string{}, authed: map[string]int{},
		sent: map[string][]time.Time{}, scripts: map[string][]*smtp.SMTPError{}, refuse: map[string]*smtp.SMTPError{}, peak: map[string]int{}}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &xsession{x: x, c: c}, nil
	}))
	s.Domain = o.Hostname
	s.Debug = quitCounter{x}
	s.MaxMessageBytes = o.MaxSize
	s.EnableSMTPUTF8 = true
	s.ReadTimeout = time.Minute
	s.WriteTimeout = time.Minute
	cert := o.CA.ServerCert(t, append([]string{o.Hostname}, o.Names...)...)
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: o.CA.Pool}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: l, x: x}
	go s.Serve(counted)
	t.Cleanup(func() { s.Close() })
	x.srv, x.Addr = s, l.Addr().String()
	return x
}

type countingListener struct {
	net.Listener
	x *Exchange
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.x.mu.Lock()
		l.x.conns++
		l.x.mu.Unlock()
		c = &endConn{Conn: c, x: l.x}
	}
	return c, err
}

// endConn counts the connections the server has ended.
type endConn struct {
	net.Conn
	x      *Exchange
	mu     sync.Mutex
	closed bool
}

func (c *endConn) Close() error {
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if first {
		c.x.mu.Lock()
		c.x.ended++
		c.x.mu.Unlock()
	}
	return c.Conn.Close()
}

// WaitEnded waits until the server has ended every connection it accepted
// (the client's hang-up is noticed asynchronously), for at most d.
func (x *Exchange) WaitEnded(d time.Duration) bool {
	for deadline := time.Now().Add(d); ; {
		x.mu.Lock()
		done := x.ended == x.conns
		x.mu.Unlock()
		if done {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// Dropped counts sessions that ended without QUIT (call WaitEnded first:
// a client's hang-up is noticed asynchronously).
func (x *Exchange) Dropped() int { x.mu.Lock(); defer x.mu.Unlock(); return x.ended - x.quits }

// quitCounter sees the server's SMTP traffic (smtp.Server.Debug) and
// counts the answers to QUIT.
type quitCounter struct{ x *Exchange }

func (q quitCounter) Write(b []byte) (int, error) {
	if n := bytes.Count(b, []byte("221 2.0.0 Bye")); n > 0 {
		q.x.mu.Lock()
		q.x.quits += n
		q.x.mu.Unlock()
	}
	return len(b), nil
}

// Grant gives an app FullAccess on a mailbox (Add-MailboxPermission).
func (x *Exchange) Grant(clientID, mailbox string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.grants[clientID] = append(x.grants[clientID], strings.ToLower(mailbox))
}

// Script queues a reply for the next command at stage.
func (x *Exchange) Script(stage string, replies ...*smtp.SMTPError) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.scripts[stage] = append(x.scripts[stage], replies...)
}

// Refuse answers every command at stage with reply from now on, until
// Refuse(stage, nil): a path closed for the tenant, as when an admin turns
// SMTP AUTH off (ErrBasicOff at AtAuth), basic authentication is retired
// (ErrBasicRetired at AtAuth) or RejectDirectSend is set (ErrRejectDirect
// at AtMail), and opened again.
func (x *Exchange) Refuse(stage string, reply *smtp.SMTPError) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if reply == nil {
		delete(x.refuse, stage)
		return
	}
	x.refuse[stage] = reply
}

func (x *Exchange) scripted(stage string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if r := x.refuse[stage]; r != nil {
		return r
	}
	q := x.scripts[stage]
	if len(q) == 0 {
		return nil
	}
	x.scripts[stage] = q[1:]
	return q[0]
}

// Received returns the accepted messages.
func (x *Exchange) Received() []Received {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(x.received)
}

// Connections counts TCP connections accepted.
func (x *Exchange) Connections() int { x.mu.Lock(); defer x.mu.Unlock(); return x.conns }

// Violations lists every time a limit had to be enforced (a well-paced
// relay causes none).
func (x *Exchange) Violations() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(x.violations)
}

// PeakSessions is the most authenticated sessions a mailbox had at once.
func (x *Exchange) PeakSessions(mailbox string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.peak[strings.ToLower(mailbox)]
}

func reply(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// Replies Exchange Online sends (docs/m365.md).
var (
	ErrAuthFailed   = reply(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful [fake.prod.outlook.com]")
	ErrBasicOff     = reply(535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, basic authentication is disabled. [fake.prod.outlook.com]")
	ErrBasicRetired = reply(550, smtp.EnhancedCode{5, 7, 30}, "Basic authentication is not supported for Client Submission.")
	ErrNotAuthed    = reply(530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail. [fake.prod.outlook.com]")
	ErrThreadLimit  = reply(432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=fake.prod.outlook.com]")
	ErrIPThrottled  = reply(451, smtp.EnhancedCode{4, 7, 500}, "Server busy. Please try again later from [203.0.113.9]. (S77719) [fake.prod.outlook.com]")
	ErrQuota        = reply(554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Message submission quota exceeded.[EndDiagnosticData]")
	ErrSendAs       = reply(550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender")
	ErrTenantRate   = reply(550, smtp.EnhancedCode{5, 7, 233}, "Message rejected: the tenant has exceeded its external recipient rate limit [fake.prod.outlook.com]")
	ErrRcptRate     = reply(550, smtp.EnhancedCode{5, 1, 90}, "Your message can't be sent because you've reached your daily limit for message recipients [fake.prod.outlook.com]")
	ErrTenantAttr   = reply(550, smtp.EnhancedCode{5, 7, 64}, "TenantAttribution; Relay Access Denied [fake.prod.protection.outlook.com]")
	ErrRejectDirect = reply(550, smtp.EnhancedCode{5, 7, 68}, "TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources")
	ErrNoRelay      = reply(550, smtp.EnhancedCode{5, 7, 54}, "SMTP; Unable to relay recipient in non-accepted domain")
	ErrTooBig       = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message size exceeds fixed maximum message size")
	// HVE's refusal of a token close to expiry, as Microsoft documents it.
	ErrHVETokenExpiring = reply(501, smtp.EnhancedCode{5, 5, 127}, "Authentication unsuccessful. Token will expire soon. [fake.hve.mx.microsoft]")
	// HVE's refusal of an external recipient: Microsoft documents the rule
	// (internal recipients only) but not the reply; this text is the fake's.
	ErrHVEExternal = reply(550, smtp.EnhancedCode{5, 7, 1}, "High Volume Email sends only to recipients inside the organization [fake.hve.mx.microsoft]")
)

// HVETokenMargin is how close to its expiry HVE refuses a token.
const HVETokenMargin = 10 * time.Minute

// ExpiringRefused counts tokens HVE refused as expiring soon.
func (x *Exchange) ExpiringRefused() int { x.mu.Lock(); defer x.mu.Unlock(); return x.expiring }

type xsession struct {
	x         *Exchange
	c         *smtp.Conn
	mailbox   string
	connector string
	from      string
	to        []string
}

func (s *xsession) AuthMechanisms() []string {
	if s.x.o.MX {
		return nil
	}
	return []string{"LOGIN", "XOAUTH2"}
}

func (s *xsession) Auth(mech string) (sasl.Server, error) {
	if err := s.x.scripted(AtAuth); err != nil {
		return nil, err
	}
	switch mech {
	case "XOAUTH2":
		return &xoauth2Server{s: s}, nil
	case "LOGIN":
		return authlogin.NewServer(s.password), nil
	case "PLAIN":
		return sasl.NewPlainServer(func(_, u, p string) error { return s.password(u, p) }), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *xsession) password(user, pass string) error {
	want, ok := s.x.o.Passwords[strings.ToLower(user)]
	if s.x.o.Passwords == nil {
		return ErrBasicOff
	}
	if !ok || want != pass {
		return ErrAuthFailed
	}
	s.login(user)
	return nil
}

func (s *xsession) login(mailbox string) {
	x := s.x
	x.mu.Lock()
	defer x.mu.Unlock()
	s.mailbox = strings.ToLower(mailbox)
	x.authed[s.mailbox]++
	x.peak[s.mailbox] = max(x.peak[s.mailbox], x.authed[s.mailbox])
}

type xoauth2Server struct{ s *xsession }

func (a *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil {
		return []byte{}, false, nil
	}
	var user, token string
	for _, kv := range strings.Split(string(resp), "\x01") {
		if v, ok := strings.CutPrefix(kv, "user="); ok {
			user = v
		}
		if v, ok := strings.CutPrefix(kv, "auth=Bearer "); ok {
			token = v
		}
	}
	if !bytes.HasSuffix(resp, []byte("\x01\x01")) || user == "" || token == "" || a.s.x.o.Entra == nil {
		return nil, false, ErrAuthFailed
	}
	client, ok := a.s.x.o.Entra.Check(token, SMTPScope)
	role := RoleSMTP
	if a.s.x.o.HVE {
		role = RoleGraph // HVE accounts take apps with Mail.Send (Add-HVEAppAccess)
	}
	if !ok || !a.s.x.o.Entra.HasRole(token, role) {
		return nil, false, ErrAuthFailed
	}
	if a.s.x.o.HVE {
		if exp, _ := a.s.x.o.Entra.Expires(token); exp.Sub(a.s.x.o.Clock()) < HVETokenMargin {
			a.s.x.mu.Lock()
			a.s.x.expiring++
			a.s.x.mu.Unlock()
			return nil, false, ErrHVETokenExpiring
		}
	}
	a.s.x.mu.Lock()
	granted := slices.Contains(a.s.x.grants[client], strings.ToLower(user))
	a.s.x.mu.Unlock()
	if !granted {
		return nil, false, ErrAuthFailed
	}
	a.s.login(user)
	return nil, true, nil
}

func (s *xsession) Mail(from string, _ *smtp.MailOptions) error {
	x := s.x
	if err := x.scripted(AtMail); err != nil {
		return err
	}
	if !x.o.MX {
		if s.mailbox == "" {
			return ErrNotAuthed
		}
		x.mu.Lock()
		n := x.authed[s.mailbox]
		x.mu.Unlock()
		if n > x.o.MaxConnections {
			x.violate("more than %d sessions for %s", x.o.MaxConnections, s.mailbox)
			return ErrThreadLimit
		}
		if !strings.EqualFold(from, s.mailbox) {
			return ErrSendAs
		}
	} else {
		s.connector = s.matchConnector()
		if s.connector == "" && x.o.RequireConnector {
			return ErrTenantAttr
		}
		if s.connector == "" && x.o.RejectDirectSend {
			return ErrRejectDirect
		}
	}
	s.from = from
	return nil
}

func (s *xsession) matchConnector() string {
	if st, ok := s.c.TLSConnectionState(); ok && len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		for _, d := range s.x.o.ConnectorDomains {
			if strings.EqualFold(leaf.Subject.CommonName, d) || slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, d) }) {
				return "certificate:" + d
			}
		}
	}
	host, _, _ := net.SplitHostPort(s.c.Conn().RemoteAddr().String())
	if slices.Contains(s.x.o.ConnectorIPs, host) {
		return "ip:" + host
	}
	return ""
}

func (s *xsession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.x.scripted(AtRcpt); err != nil {
		return err
	}
	if (s.x.o.MX && s.connector == "") || s.x.o.HVE {
		_, dom, _ := strings.Cut(to, "@")
		if !slices.ContainsFunc(s.x.o.TenantDomains, func(d string) bool { return strings.EqualFold(d, dom) }) {
			if s.x.o.HVE {
				return ErrHVEExternal
			}
			return ErrNoRelay
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *xsession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return ErrTooBig
		}
		return err
	}
	if err := s.x.scripted(AtData); err != nil {
		return err
	}
	x := s.x
	if !x.o.MX {
		// Client submission checks the header sender as well.
		if m, err := mail.ReadMessage(bytes.NewReader(b)); err == nil {
			if a, err := mail.ParseAddress(m.Header.Get("From")); err == nil && !strings.EqualFold(a.Address, s.mailbox) {
				return ErrSendAs
			}
		}
	}
	now := x.o.Clock()
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.o.MX && !x.o.HVE {
		recent := slices.DeleteFunc(x.sent[s.mailbox], func(t time.Time) bool { return !t.After(now.Add(-time.Minute)) })
		if len(recent) >= x.o.PerMinute {
			x.violations = append(x.violations, fmt.Sprintf("more than %d messages a minute for %s", x.o.PerMinute, s.mailbox))
			x.sent[s.mailbox] = recent
			return ErrIPThrottled
		}
		x.sent[s.mailbox] = append(recent, now)
	}
	x.received = append(x.received, Received{Mailbox: s.mailbox, Connector: s.connector, From: s.from, To: slices.Clone(s.to), Data: b, At: now})
	return nil
}

func (x *Exchange) violate(format string, a ...any) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.violations = append(x.violations, fmt.Sprintf(format, a...))
}

func (s *xsession) Reset() { s.from, s.to = "", nil }

func (s *xsession) Logout() error {
	if s.mailbox != "" {
		s.x.mu.Lock()
		s.x.authed[s.mailbox]--
		s.x.mu.Unlock()
	}
	return nil
}
