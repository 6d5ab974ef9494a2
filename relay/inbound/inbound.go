// Package inbound is the relay's SMTP front end: its own small SMTP server
// whose sessions apply the site's policy as the dialogue goes and answer
// 250 to DATA (or the last BDAT) only once the message is in the spool.
//
// It is the relay's own loop rather than go-smtp's server because the front
// end must bound what a device can hold: every command line has a total
// time and a length, every read a time without progress, a session a
// lifetime and a number of commands without mail, and the connection limits
// are counted at accept, before the banner. DATA is read here, a buffer at
// a time, so that every byte the device sent reaches message.Prepare's
// line-ending and NUL policy; a BDAT chunk shorter than declared is never
// committed. go-smtp's types (SMTPError, EnhancedCode) are kept for replies.
//
// Every refusal is an *smtp.SMTPError with an enhanced code and words that
// tell the device owner what to change; every failure of the relay itself
// (spool, disk, its own timeouts) is a 4xx so that the device keeps the
// message and retries.
package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/learn"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// Policy is what a session asks of the site's rules (relay/policy
// implements it). Each method returns nil or an *smtp.SMTPError.
type Policy interface {
	// Connect admits a client and says what the site knows of it;
	// release is called (once) when the session ends. It is asked in the
	// accept loop, before the banner, so it must be quick.
	Connect(ip netip.Addr) (c Client, release func(), err error)
	// Login checks a device account.
	Login(ip netip.Addr, user, pass string) (*policy.Account, error)
	// Device names the configured device behind the client at MAIL, when
	// login, address and HELO name are all known (nil: not a known
	// device), or refuses it (devices_only, a device that must log in).
	Device(ip netip.Addr, acct *policy.Account, helo string) (*policy.Device, error)
	// Sender checks the envelope sender (acct is nil when not logged in,
	// dev when not a known device) and takes one message from the client's
	// (or the device's) rate allowance.
	Sender(ip netip.Addr, acct *policy.Account, dev *policy.Device, from string) error
	// Recipient checks one recipient; relayAllowed is true for a client in
	// an allowed network or logged in.
	Recipient(ip netip.Addr, dev *policy.Device, rcpt string, relayAllowed bool) error
}

// Client is what the site's policy says of a client when it connects.
type Client struct {
	// Relay: its network may relay on this listener without logging in.
	Relay bool
	// Known: the site configured it (an address of a device, or in a
	// listener's allowed networks). At limits.max_connections a known
	// client always gets a session and its exact fair share, and a client
	// that is not known cannot take its last session or any within its
	// share (see admit).
	Known bool
}

// Defaults for the Options left zero.
const (
	DefaultReadTimeout            = 5 * time.Minute
	DefaultWriteTimeout           = time.Minute
	DefaultCommandTimeout         = 5 * time.Minute
	DefaultMaxSessionTime         = time.Hour
	DefaultMaxCommandsWithoutMail = 100
	DefaultMaxConnections         = 1000
	DefaultMaxLineLength          = 4000
)

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
	// MaxMessageBytesSetting names what sets MaxMessageBytes in the 552
	// (default "limits.max_message_bytes").
	MaxMessageBytesSetting string
	MaxRecipients          int
	MaxLineLength          int
	// MaxHeaderBytes bounds the header section (limits.max_header_bytes);
	// 0 is relay/message's default.
	MaxHeaderBytes int
	// ReadTimeout bounds each read: a client that sends nothing for this
	// long is cut off (in DATA with 451 4.4.2).
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// CommandTimeout bounds the time from a reply to the whole next
	// command line, however slowly its bytes trickle in.
	CommandTimeout time.Duration
	// MaxSessionTime bounds a session's lifetime.
	MaxSessionTime time.Duration
	// MaxCommandsWithoutMail bounds the commands (all but RCPT, DATA and
	// BDAT) a session may send without a message being accepted.
	MaxCommandsWithoutMail int
	// MaxConnections bounds this listener's sessions. At the limit a new
	// connection below its fair share displaces an idle session of another
	// address, or is refused (Server.admit).
	MaxConnections  int
	BareLineEndings message.BareLineEndings
	NUL             message.NULBytes
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
	// Observe, when set, is told what each client does (learning mode):
	// every MAIL, also a refused one, and every accepted message.
	Observe func(learn.Sighting)
	// Refused counts refusals by reason and device (metrics): device is
	// the configured device the client is recognised as, "" for a client
	// that is none. May be nil.
	Refused func(reason, device string)
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

// Server is one listener. Its Options can be swapped (Update) while it
// serves; the connection count and the sessions live in the Server, so
// they survive that.
type Server struct {
	opts atomic.Pointer[Options]

	mu        sync.Mutex
	sessions  map[*session]struct{}
	count     int // sessions counted against MaxConnections
	perIP     map[netip.Addr]map[*session]struct{}
	listeners map[net.Listener]struct{}
	closing   atomic.Bool
	stopped   atomic.Bool // StopAccepting: Serve returns, sessions go on
	wg        sync.WaitGroup

	refusedLog logBrake
}

// logBrake lets one log line a second through and counts the others.
type logBrake struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// allow reports whether a line may be logged now, and how many were
// skipped since the last one.
func (b *logBrake) allow(now time.Time) (skipped int, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.last) < time.Second {
		b.skipped++
		return 0, false
	}
	skipped, b.skipped, b.last = b.skipped, 0, now
	return skipped, true
}

// New makes a listener; Serve runs it.
func New(o Options) *Server {
	s := &Server{sessions: map[*session]struct{}{}, perIP: map[netip.Addr]map[*session]struct{}{},
		listeners: map[net.Listener]struct{}{}}
	s.Update(o)
	return s
}

// Update makes o the Options of sessions that start from now on; sessions
// in flight keep the Options they started with.
func (s *Server) Update(o Options) {
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
		o.Refused = func(string, string) {}
	}
	if o.Accepted == nil {
		o.Accepted = func(string) {}
	}
	setDefault(&o.ReadTimeout, DefaultReadTimeout)
	setDefault(&o.WriteTimeout, DefaultWriteTimeout)
	setDefault(&o.CommandTimeout, DefaultCommandTimeout)
	setDefault(&o.MaxSessionTime, DefaultMaxSessionTime)
	setDefault(&o.MaxCommandsWithoutMail, DefaultMaxCommandsWithoutMail)
	setDefault(&o.MaxConnections, DefaultMaxConnections)
	setDefault(&o.MaxLineLength, DefaultMaxLineLength)
	setDefault(&o.MaxMessageBytesSetting, "limits.max_message_bytes")
	if lim := DescriptorLimit(); lim > 0 && o.MaxConnections > lim/2 {
		// Half the descriptors stay for the spool, the trace, the upstream
		// and sockets on their way out.
		o.Logger.Warn("limits.max_connections is above half the process's descriptor limit; using half",
			"listener", o.Name, "max_connections", o.MaxConnections, "descriptor_limit", lim, "using", lim/2)
		o.MaxConnections = lim / 2
	}
	s.opts.Store(&o)
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// DescriptorLimit is the process's RLIMIT_NOFILE (soft), 0 if unknown.
func DescriptorLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 0
	}
	return int(rl.Cur)
}

// Serve accepts connections on l until Shutdown; it returns nil after
// Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() || s.stopped.Load() {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.closing.Load() || s.stopped.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.opts.Load().Logger.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accepting connections: %w", err)
		}
		backoff = 0
		// The limits are checked here, in the accept loop: a refused
		// connection costs a write and a close, never a goroutine, so a
		// flood does not crowd the scheduler the devices' sessions run on.
		ss := s.gate(c, s.opts.Load())
		if ss == nil {
			if s.closing.Load() {
				return nil
			}
			continue
		}
		go func() {
			defer s.wg.Done()
			defer s.leave(ss)
			ss.serve()
		}()
	}
}

// StopAccepting closes the listeners Serve runs on (Serve returns nil)
// while the sessions in flight go on as usual, idle ones included: a
// listener handing its port over to a new socket (a reload that narrows
// it) lets its devices finish. Wait waits for them; Shutdown ends them.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped.Store(true)
	for l := range s.listeners {
		l.Close()
	}
}

// Wait waits until every session has ended, or ctx ends (its error).
func (s *Server) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops accepting, closes sessions that wait for a command
// outside a transaction (421 4.3.2), lets the others finish until ctx
// ends, then closes them (a device cut off mid-DATA never got a 250 and
// will retry).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for ss := range s.sessions {
		ss.kickIfIdle(errShuttingDown(ss.o.Hostname))
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for ss := range s.sessions {
		ss.raw.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

func errShuttingDown(host string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: host + " is shutting down; try again in a minute"}
}

// gate applies the connection limits to a new connection, before the
// banner: it returns the admitted session (counted; s.wg holds it, and it
// holds the policy's per-client count), or nil after refusing and closing
// c.
func (s *Server) gate(c net.Conn, o *Options) *session {
	ip := remoteIP(c.RemoteAddr())
	refuse := func(reason string, err error) {
		o.Refused(reason, deviceName(o.Policy, ip, nil, ""))
		if n, ok := s.refusedLog.allow(time.Now()); ok {
			// A flood is refused thousands of times a second: one line a
			// second says so without filling the log.
			o.Logger.Info("connection refused", "listener", o.Name, "client_ip", ip.String(), "reason", reason,
				"reply", err.Error(), "refused_since_last_line", n)
		}
		// A fresh socket's send buffer takes the short reply at once.
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(formatReply(nil, err))
		c.Close()
	}
	cl, release, err := o.Policy.Connect(ip)
	if err != nil {
		refuse("rate_limited", err)
		return nil
	}
	ss := newSession(s, o, c, ip, cl, release)
	if err := s.admit(ss); err != nil {
		ss.release()
		refuse("rate_limited", err)
		return nil
	}
	return ss
}

// admit counts ss against MaxConnections. Below the limit every client is
// admitted. At the limit a client below its fair share of the listener
// (shareLeft) takes the place of an idle session of another address
// (victim), which is told why and closed; a client at its share, or with
// nothing to displace, is refused. So a flood from other addresses cannot
// keep a device out, and costs the relay only an accept and a 421 for each
// connection beyond the limit.
func (s *Server) admit(ss *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return errShuttingDown(ss.o.Hostname)
	}
	if limit := ss.o.MaxConnections; limit > 0 && s.count >= limit {
		full := &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: fmt.Sprintf("%s has too many connections (limits.max_connections is %d); try again later, or close idle sessions on the devices", ss.o.Hostname, limit)}
		held := len(s.perIP[ss.ip])
		addrs := len(s.perIP)
		if held == 0 {
			addrs++
		}
		if !shareLeft(ss.known, held, addrs, limit) {
			return full
		}
		victim := s.victim(ss, held, addrs, limit)
		if victim == nil || !victim.kickIfIdle(&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: fmt.Sprintf("%s is at limits.max_connections (%d) and this address holds the most sessions; closing this idle one, reconnect when there is mail", ss.o.Hostname, limit)}) {
			return full
		}
		s.uncount(victim)
	}
	s.count++
	s.wg.Add(1) // under s.mu, before Shutdown can wait
	s.sessions[ss] = struct{}{}
	m := s.perIP[ss.ip]
	if m == nil {
		m = map[*session]struct{}{}
		s.perIP[ss.ip] = m
	}
	m[ss] = struct{}{}
	return nil
}

// shareLeft reports whether a client that holds held of a full listener's
// limit sessions, shared among addrs addresses (its own counted), may have
// one more. The share is limit/addrs exactly, compared in integers so that
// nothing is rounded away (900 addresses sharing 1,000 sessions leave a
// device its second). A known client may have a session while it holds
// less than its share, and always its first. A client that is not known
// may only take a whole session still left of its share ((held+1)*addrs
// <= limit): a flood of unknown addresses holding one session each then
// cannot pass sessions round among itself by displacing each other.
func shareLeft(known bool, held, addrs, limit int) bool {
	if known {
		return held == 0 || held*addrs < limit
	}
	return (held+1)*addrs <= limit
}

// victim is the session a newcomer (ss, holding held; addrs addresses
// share the listener's limit) displaces: an idle one (waiting for a
// command outside a transaction) of another address that keeps at least
// as many sessions as the newcomer then has (it holds held+2 or more; a
// known newcomer may take from one holding held+1, so a known device gets
// its session even among equals). A newcomer that is not known never takes
// a known client's last session, nor one within that client's exact share.
// Addresses that are not known go first, then the address holding the
// most, then the session idle longest. Called with s.mu.
func (s *Server) victim(ss *session, held, addrs, limit int) *session {
	need := held + 2
	if ss.known {
		need = held + 1
	}
	var best *session
	var bestKnown bool
	var bestHeld int
	var bestAt int64
	for ip, m := range s.perIP {
		v := len(m)
		if ip == ss.ip || v < need {
			continue
		}
		for o := range m {
			if o.known && !ss.known && (v < 2 || v*addrs <= limit) {
				continue
			}
			at, idle := o.idleSince()
			if !idle {
				continue
			}
			if best == nil || bestKnown && !o.known ||
				bestKnown == o.known && (v > bestHeld || v == bestHeld && at < bestAt) {
				best, bestKnown, bestHeld, bestAt = o, o.known, v, at
			}
		}
	}
	return best
}

// uncount stops counting ss (displaced, or ended). Called with s.mu.
func (s *Server) uncount(ss *session) {
	if ss.evicted {
		return
	}
	ss.evicted = true
	s.count--
	if m := s.perIP[ss.ip]; m != nil {
		delete(m, ss)
		if len(m) == 0 {
			delete(s.perIP, ss.ip)
		}
	}
}

// leave forgets a session whose goroutine has ended.
func (s *Server) leave(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.uncount(ss)
	s.mu.Unlock()
	ss.release()
}

// Sessions reports the sessions counted against MaxConnections.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
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
