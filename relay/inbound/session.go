package inbound

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
	"github.com/siterelay/siterelay/relay/learn"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// session is one connection's dialogue.
type session struct {
	srv  *Server
	o    *Options // as when the session started
	raw  net.Conn
	conn net.Conn // raw, or the TLS connection after STARTTLS
	r    *bufio.Reader
	w    *bufio.Writer
	log  *slog.Logger

	ip       netip.Addr
	netRelay bool
	end      time.Time // MaxSessionTime runs out
	lineEnd  time.Time // the command line being read must be complete by then; zero outside
	lastSeen atomic.Int64

	mu      sync.Mutex
	waiting bool            // blocked reading a command outside a transaction
	kicked  *smtp.SMTPError // the reply for a session told to go
	evicted bool            // guarded by srv.mu: no longer counted (displaced or ended)

	helo     string
	ehlo     bool
	tlsState *tls.ConnectionState
	login    string
	acct     *policy.Account
	dev      *policy.Device // known from MAIL on
	// authTried is the AUTH mechanism last tried (learning mode).
	authTried string
	junk      int // commands since the last accepted message

	inTx  bool
	from  string
	utf8  bool
	body  string
	rcpts []string
	bdat  *bdatTx
}

// newSession is a session not yet started: its buffers and logger come
// in serve, once it is admitted.
func newSession(s *Server, o *Options, c net.Conn, ip netip.Addr, relay bool) *session {
	ss := &session{srv: s, o: o, raw: c, conn: c, ip: ip, netRelay: relay,
		end: time.Now().Add(o.MaxSessionTime)}
	ss.lastSeen.Store(time.Now().UnixNano())
	return ss
}

// connReader sets the read deadline before every read: no progress for
// ReadTimeout, and never past the command line's or the session's end.
type connReader struct{ ss *session }

var errKicked = errors.New("session told to go")

func (r connReader) Read(p []byte) (int, error) {
	ss := r.ss
	now := time.Now()
	d := now.Add(ss.o.ReadTimeout)
	lim := &limitError{Key: "limits.read_timeout", Limit: ss.o.ReadTimeout, What: "no data from the client"}
	if !ss.lineEnd.IsZero() && ss.lineEnd.Before(d) {
		d = ss.lineEnd
		lim = &limitError{Key: "limits.command_timeout", Limit: ss.o.CommandTimeout, What: "no complete command line"}
	}
	if ss.end.Before(d) {
		d = ss.end
		lim = &limitError{Key: "limits.max_session_time", Limit: ss.o.MaxSessionTime, What: "session not finished"}
	}
	ss.conn.SetReadDeadline(d)
	if ss.isKicked() {
		return 0, errKicked
	}
	n, err := ss.conn.Read(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if ss.isKicked() {
				return n, errKicked
			}
			return n, lim
		}
	}
	return n, err
}

type connWriter struct{ ss *session }

func (w connWriter) Write(p []byte) (int, error) {
	w.ss.conn.SetWriteDeadline(time.Now().Add(w.ss.o.WriteTimeout))
	return w.ss.conn.Write(p)
}

func (ss *session) isKicked() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.kicked != nil
}

// kickIfIdle tells a session that waits for a command outside a
// transaction to go with reply; it reports whether it did.
func (ss *session) kickIfIdle(reply *smtp.SMTPError) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.waiting || ss.kicked != nil {
		return false
	}
	ss.kicked = reply
	ss.raw.SetReadDeadline(time.Unix(1, 0))
	return true
}

// idleSince reports when a session waiting outside a transaction last
// heard from its client.
func (ss *session) idleSince() (int64, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.lastSeen.Load(), ss.waiting && ss.kicked == nil
}

func (ss *session) setWaiting(w bool) {
	ss.mu.Lock()
	ss.waiting = w
	ss.mu.Unlock()
}

// formatReply writes an SMTP reply (multi-line when the message has line
// breaks), with the enhanced code on every line.
func formatReply(b []byte, err error) []byte {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		se = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: err.Error()}
	}
	enh := se.EnhancedCode
	if enh == smtp.EnhancedCodeNotSet {
		enh = smtp.NoEnhancedCode
		if c := se.Code / 100; c == 2 || c == 4 || c == 5 {
			enh = smtp.EnhancedCode{c, 0, 0}
		}
	}
	lines := strings.Split(strings.ReplaceAll(se.Message, "\r", ""), "\n")
	for i, l := range lines {
		sep := byte(' ')
		if i < len(lines)-1 {
			sep = '-'
		}
		b = strconv.AppendInt(b, int64(se.Code), 10)
		b = append(b, sep)
		if enh != smtp.NoEnhancedCode {
			b = fmt.Appendf(b, "%d.%d.%d ", enh[0], enh[1], enh[2])
		}
		b = append(b, l...)
		b = append(b, '\r', '\n')
	}
	return b
}

func (ss *session) reply(code int, enh smtp.EnhancedCode, format string, a ...any) {
	ss.replyErr(&smtp.SMTPError{Code: code, EnhancedCode: enh, Message: fmt.Sprintf(format, a...)})
}

func (ss *session) replyErr(err error) {
	var buf [256]byte
	ss.w.Write(formatReply(buf[:0], err))
}

func (ss *session) refuse(reason string, err error) error {
	ss.refused(reason)
	ss.log.Info("refused", "reason", reason, "reply", err.Error())
	return err
}

// refused counts a refusal by reason and by the device the client is:
// the one recognised at MAIL, or before that the one its address, login
// and HELO name would be recognised as.
func (ss *session) refused(reason string) {
	name := ""
	if ss.dev != nil {
		name = ss.dev.Name
	} else {
		name = deviceName(ss.o.Policy, ss.ip, ss.acct, ss.helo)
	}
	ss.o.Refused(reason, name)
}

// deviceName is the configured device p recognises the client as, "" for
// none (a metrics label: a name from the configuration, never an address).
func deviceName(p Policy, ip netip.Addr, acct *policy.Account, helo string) string {
	if p == nil {
		return ""
	}
	if d, _ := p.Device(ip, acct, helo); d != nil {
		return d.Name
	}
	return ""
}

// serve runs the dialogue until QUIT, a limit, or the client goes.
func (ss *session) serve() {
	ss.log = ss.o.Logger.With("listener", ss.o.Name, "client_ip", ss.ip.String())
	ss.r = bufio.NewReaderSize(connReader{ss}, 4096)
	ss.w = bufio.NewWriterSize(connWriter{ss}, 1024)
	defer func() {
		ss.w.Flush()
		ss.resetTx()
		ss.raw.Close()
	}()
	ss.reply(220, smtp.NoEnhancedCode, "%s ESMTP siterelay ready", ss.o.Hostname)
	for {
		if err := ss.boundary(); err != nil {
			ss.replyErr(err)
			return
		}
		line, err := ss.readCommand(true)
		if err == errLineTooLong {
			ss.reply(500, smtp.EnhancedCode{5, 5, 2}, "command line longer than %d bytes (limits.max_line_length)", ss.o.MaxLineLength)
			continue
		}
		if err != nil {
			ss.readFailed(err, "waiting for a command")
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		arg = strings.TrimSpace(arg)
		if verb != "RCPT" && verb != "DATA" && verb != "BDAT" {
			ss.junk++
			if max := ss.o.MaxCommandsWithoutMail; max > 0 && ss.junk > max {
				ss.log.Info("closing session", "reason", "limits.max_commands_without_mail", "commands", ss.junk)
				ss.refused("other")
				ss.reply(421, smtp.EnhancedCode{4, 7, 0}, "%s: %d commands without a message (limits.max_commands_without_mail); closing", ss.o.Hostname, max)
				return
			}
		}
		if !ss.command(verb, arg) {
			return
		}
	}
}

// boundary is checked before each command: a session told to go, a server
// shutting down (outside a transaction) or a lifetime run out ends here.
func (ss *session) boundary() error {
	ss.mu.Lock()
	k := ss.kicked
	ss.mu.Unlock()
	if k != nil {
		return k
	}
	if ss.srv.closing.Load() && !ss.inTx {
		return errShuttingDown(ss.o.Hostname)
	}
	if !time.Now().Before(ss.end) {
		ss.log.Info("closing session", "reason", "limits.max_session_time")
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
			Message: fmt.Sprintf("%s: session longer than %v (limits.max_session_time); closing", ss.o.Hostname, ss.o.MaxSessionTime)}
	}
	return nil
}

// readCommand flushes the replies unless a whole pipelined command line is
// waiting, then reads the next command line within CommandTimeout. Between
// commands (between, not in an AUTH exchange) and outside a transaction the
// session is idle: Shutdown and a full listener may tell it to go.
func (ss *session) readCommand(between bool) (string, error) {
	if buf, _ := ss.r.Peek(ss.r.Buffered()); bytes.IndexByte(buf, '\n') < 0 {
		if err := ss.w.Flush(); err != nil {
			return "", err
		}
	}
	idle := between && !ss.inTx
	if idle {
		ss.setWaiting(true)
	}
	ss.lineEnd = time.Now().Add(ss.o.CommandTimeout)
	line, err := readCommandLine(ss.r, ss.o.MaxLineLength)
	ss.lineEnd = time.Time{}
	if idle {
		ss.setWaiting(false)
		if ss.isKicked() {
			return "", errKicked
		}
	}
	ss.lastSeen.Store(time.Now().UnixNano())
	return line, err
}

// readFailed ends a session whose read failed: a limit is named in a 421,
// a session told to go gets its reply, a vanished client nothing.
func (ss *session) readFailed(err error, while string) {
	var le *limitError
	switch {
	case errors.Is(err, errKicked):
		ss.mu.Lock()
		k := ss.kicked
		ss.mu.Unlock()
		ss.log.Info("closing session", "reason", k.Message)
		ss.replyErr(k)
	case errors.As(err, &le):
		ss.log.Info("closing session", "reason", le.Key, "while", while)
		ss.refused("other")
		ss.reply(421, smtp.EnhancedCode{4, 4, 2}, "%s: %v; closing", ss.o.Hostname, le)
	default:
		ss.log.Debug("client went away", "while", while, "err", err)
	}
}

// command runs one command; false ends the session.
func (ss *session) command(verb, arg string) bool {
	switch verb {
	case "EHLO", "HELO":
		ss.hello(verb == "EHLO", arg)
	case "MAIL":
		if ss.helo == "" {
			ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send EHLO first")
			break
		}
		if ss.bdat != nil || ss.inTx {
			ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "a transaction is already open; finish it or send RSET")
			break
		}
		if err := ss.mail(arg); err != nil {
			ss.replyErr(err)
		}
	case "RCPT":
		if !ss.inTx || ss.bdat != nil {
			ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send MAIL first")
			break
		}
		if err := ss.rcpt(arg); err != nil {
			ss.replyErr(err)
		}
	case "DATA":
		return ss.data(arg)
	case "BDAT":
		return ss.bdatCmd(arg)
	case "RSET":
		ss.resetTx()
		ss.reply(250, smtp.EnhancedCode{2, 0, 0}, "OK")
	case "NOOP":
		ss.reply(250, smtp.EnhancedCode{2, 0, 0}, "OK")
	case "VRFY":
		ss.reply(252, smtp.EnhancedCode{2, 5, 0}, "cannot verify the user; send the message and the relay will try")
	case "HELP":
		ss.reply(214, smtp.EnhancedCode{2, 0, 0}, "siterelay: EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, STARTTLS, AUTH")
	case "QUIT":
		ss.reply(221, smtp.EnhancedCode{2, 0, 0}, "Bye")
		return false
	case "STARTTLS":
		return ss.startTLS()
	case "AUTH":
		return ss.auth(arg)
	default:
		ss.reply(500, smtp.EnhancedCode{5, 5, 1}, "unknown command %q", truncate(verb, 20))
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (ss *session) hello(ehlo bool, arg string) {
	name, _, _ := strings.Cut(arg, " ")
	if name == "" {
		ss.reply(501, smtp.EnhancedCode{5, 5, 2}, "give the device's host name: EHLO name")
		return
	}
	ss.resetTx()
	ss.helo, ss.ehlo = name, ehlo
	if !ehlo {
		ss.reply(250, smtp.NoEnhancedCode, "%s", ss.o.Hostname)
		return
	}
	o := ss.o
	caps := []string{fmt.Sprintf("%s Hello %s", o.Hostname, truncate(name, 64)),
		"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8"}
	if o.MaxMessageBytes > 0 {
		caps = append(caps, fmt.Sprintf("SIZE %d", o.MaxMessageBytes))
	} else {
		caps = append(caps, "SIZE")
	}
	if o.TLS != nil && ss.tlsState == nil {
		caps = append(caps, "STARTTLS")
	}
	if ss.authOffered() {
		caps = append(caps, "AUTH PLAIN LOGIN")
	}
	caps = append(caps, "HELP")
	ss.reply(250, smtp.NoEnhancedCode, "%s", strings.Join(caps, "\n"))
}

func (ss *session) authOffered() bool {
	return ss.o.Auth && (ss.tlsState != nil || ss.o.AllowPlaintextAuth)
}

// resetTx ends the open transaction, if any, without a message.
func (ss *session) resetTx() {
	if ss.bdat != nil {
		ss.bdat.abort()
		ss.bdat = nil
	}
	ss.inTx = false
	ss.from, ss.utf8, ss.body = "", false, ""
	ss.rcpts = ss.rcpts[:0]
}

func (ss *session) startTLS() bool {
	if ss.o.TLS == nil {
		ss.reply(502, smtp.EnhancedCode{5, 5, 1}, "STARTTLS is not offered on this listener")
		return true
	}
	if ss.tlsState != nil {
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "TLS is already on")
		return true
	}
	if ss.inTx {
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "STARTTLS is not allowed inside a transaction")
		return true
	}
	// Commands pipelined after STARTTLS were sent in the clear: they must
	// not run inside the TLS session (CVE-2011-0411).
	ss.r.Discard(ss.r.Buffered())
	ss.reply(220, smtp.EnhancedCode{2, 0, 0}, "ready to start TLS")
	if ss.w.Flush() != nil {
		return false
	}
	tc := tls.Server(ss.raw, ss.o.TLS)
	d := time.Now().Add(ss.o.ReadTimeout)
	if ss.end.Before(d) {
		d = ss.end
	}
	ss.raw.SetDeadline(d)
	ctx, cancel := context.WithDeadline(context.Background(), d)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		ss.log.Info("TLS handshake failed", "err", err)
		return false
	}
	ss.raw.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	ss.conn, ss.tlsState = tc, &st
	ss.resetTx()
	ss.helo, ss.ehlo = "", false
	return true
}

func (ss *session) auth(arg string) bool {
	o := ss.o
	switch {
	case !o.Auth:
		ss.replyErr(ss.refuse("not_allowed", &smtp.SMTPError{Code: 502, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
			Message: "AUTH is not offered on this listener (its auth is off); send without logging in from an allowed network, or use the submission port"}))
		return true
	case !ss.ehlo:
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send EHLO first")
		return true
	case ss.login != "":
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "already logged in")
		return true
	case ss.inTx:
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "AUTH is not allowed inside a transaction")
		return true
	case !ss.authOffered():
		ss.replyErr(ss.refuse("not_allowed", &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
			Message: "log in only after STARTTLS; turn on TLS in the device's mail settings (or set the listener's allow_plaintext_auth on a trusted segment)"}))
		return true
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	ss.authTried = truncate(strings.ToUpper(mech), 20)
	var srv sasl.Server
	check := func(user, pass string) error {
		acct, err := o.Policy.Login(ss.ip, user, pass)
		if err != nil {
			ss.refused("auth_failed")
			ss.log.Info("login refused", "user", user)
			return err
		}
		ss.login, ss.acct = user, acct
		ss.log = ss.log.With("login", user)
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		srv = sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "acting as another user is not supported; log in as the account itself"}
			}
			return check(user, pass)
		})
	case sasl.Login:
		srv = authlogin.NewServer(check)
	default:
		ss.reply(504, smtp.EnhancedCode{5, 5, 4}, "AUTH mechanism %q is not supported; use PLAIN or LOGIN", truncate(mech, 20))
		return true
	}
	var resp []byte
	if hasIR {
		if ir == "=" {
			resp = []byte{}
		} else if b, err := base64.StdEncoding.DecodeString(ir); err == nil {
			resp = b
		} else {
			ss.reply(501, smtp.EnhancedCode{5, 5, 2}, "the initial response is not base64")
			return true
		}
	}
	for {
		chal, done, err := srv.Next(resp)
		if err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				se = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "AUTH exchange malformed: " + err.Error()}
			}
			ss.replyErr(se)
			return true
		}
		if done {
			ss.reply(235, smtp.EnhancedCode{2, 7, 0}, "Authentication succeeded")
			return true
		}
		ss.reply(334, smtp.NoEnhancedCode, "%s", base64.StdEncoding.EncodeToString(chal))
		line, err := ss.readCommand(false)
		if err == errLineTooLong {
			ss.reply(500, smtp.EnhancedCode{5, 5, 2}, "AUTH response longer than %d bytes (limits.max_line_length)", o.MaxLineLength)
			return true
		}
		if err != nil {
			ss.readFailed(err, "in AUTH")
			return false
		}
		if line == "*" {
			ss.reply(501, smtp.EnhancedCode{5, 0, 0}, "AUTH cancelled")
			return true
		}
		resp, err = base64.StdEncoding.DecodeString(line)
		if err != nil {
			ss.reply(501, smtp.EnhancedCode{5, 5, 2}, "the AUTH response is not base64")
			return true
		}
	}
}

// cutPrefixFold is strings.CutPrefix ignoring ASCII case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// parsePath splits "<addr> PARAM=V ..." (the angle brackets optional, a
// source route dropped) into the address and its parameters.
func parsePath(s string) (addr string, params []string, err error) {
	s = strings.TrimLeft(s, " ")
	if strings.HasPrefix(s, "<") {
		end := -1
		quoted := false
		for i := 1; i < len(s); i++ {
			switch c := s[i]; {
			case c == '\\' && quoted:
				i++
			case c == '"':
				quoted = !quoted
			case c == '>' && !quoted:
				end = i
			}
			if end >= 0 {
				break
			}
		}
		if end < 0 {
			return "", nil, errors.New("no closing >")
		}
		addr, s = s[1:end], s[end+1:]
		if s != "" && s[0] != ' ' {
			return "", nil, errors.New("text after >")
		}
	} else {
		addr, s, _ = strings.Cut(s, " ")
		if strings.ContainsAny(addr, "<>") {
			return "", nil, errors.New("unbalanced angle brackets")
		}
	}
	if strings.HasPrefix(addr, "@") {
		// A source route (@a,@b:user@c) is obsolete; only the mailbox counts.
		i := strings.IndexByte(addr, ':')
		if i < 0 {
			return "", nil, errors.New("malformed source route")
		}
		addr = addr[i+1:]
	}
	if strings.ContainsAny(addr, " \t\r\n") {
		return "", nil, errors.New("white space in the address")
	}
	return addr, strings.Fields(s), nil
}

func (ss *session) mail(arg string) error {
	o := ss.o
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "syntax: MAIL FROM:<address>"}
	}
	from, params, err := parsePath(rest)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "syntax: MAIL FROM:<address> (" + err.Error() + ")"}
	}
	var size int64
	utf8, body := false, ""
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToUpper(k) {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "SIZE wants a number of bytes"}
			}
			size = n
		case "BODY":
			switch strings.ToUpper(v) {
			case "7BIT", "8BITMIME":
				body = strings.ToUpper(v)
			default:
				return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "BODY must be 7BIT or 8BITMIME"}
			}
		case "SMTPUTF8":
			utf8 = true
		case "AUTH":
			// RFC 4954's AUTH= names who submitted; the relay has its own login.
		default:
			return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("MAIL parameter %q is not supported", truncate(k, 20))}
		}
	}
	if o.RequireTLS && ss.tlsState == nil {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires STARTTLS first; turn on TLS in the device's mail settings"})
	}
	if o.RequireAuth && ss.login == "" {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires login; set the device's SMTP user name and password"})
	}
	dev, err := o.Policy.Device(ss.ip, ss.acct, ss.helo)
	ss.observe(dev, from, "", false) // also when refused: adopt learns of it
	if err != nil {
		return ss.refuse("not_allowed", err)
	}
	if dev != nil && ss.dev != dev {
		ss.log = ss.log.With("device", dev.Name)
	}
	ss.dev = dev
	if max := ss.maxBytes(); size > 0 && max > 0 && size > max {
		return ss.refuse("too_big", tooBig(max))
	}
	if err := o.Policy.Sender(ss.ip, ss.acct, dev, from); err != nil {
		reason := "bad_sender"
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 {
			reason = "rate_limited"
		}
		return ss.refuse(reason, err)
	}
	ss.inTx, ss.from, ss.utf8, ss.body = true, from, utf8, body
	ss.rcpts = ss.rcpts[:0]
	ss.reply(250, smtp.EnhancedCode{2, 1, 0}, "sender <%s> OK", truncate(from, 256))
	return nil
}

func (ss *session) rcpt(arg string) error {
	o := ss.o
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "syntax: RCPT TO:<address>"}
	}
	to, params, err := parsePath(rest)
	if err != nil || to == "" {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "syntax: RCPT TO:<address>"}
	}
	if len(params) > 0 {
		k, _, _ := strings.Cut(params[0], "=")
		return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("RCPT parameter %q is not supported", truncate(k, 20))}
	}
	if o.MaxRecipients > 0 && len(ss.rcpts) >= o.MaxRecipients {
		return ss.refuse("too_many_rcpts", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: fmt.Sprintf("too many recipients (limits.max_recipients is %d); the device should send the rest in another message", o.MaxRecipients)})
	}
	relay := ss.netRelay || ss.login != ""
	if err := o.Policy.Recipient(ss.ip, ss.dev, to, relay); err != nil {
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
	ss.reply(250, smtp.EnhancedCode{2, 1, 5}, "recipient <%s> OK", truncate(to, 256))
	return nil
}

// data runs DATA; false ends the session.
func (ss *session) data(arg string) bool {
	switch {
	case arg != "":
		ss.reply(501, smtp.EnhancedCode{5, 5, 4}, "DATA takes no arguments")
		return true
	case ss.bdat != nil:
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "DATA cannot follow BDAT in one message")
		return true
	case !ss.inTx || len(ss.rcpts) == 0:
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send MAIL and RCPT first")
		return true
	}
	ss.reply(354, smtp.NoEnhancedCode, "end data with <CR><LF>.<CR><LF>")
	if ss.w.Flush() != nil {
		return false
	}
	d := newDataReader(ss.r, ss.maxBytes())
	reply, readErr := ss.store(d, func() bool { return d.done })
	if errors.Is(readErr, errDataTooLarge) {
		if readErr = d.drain(); readErr == nil {
			reply = ss.refuse("too_big", tooBig(ss.maxBytes()))
		}
	} else if readErr == nil && !d.done {
		readErr = d.drain()
	}
	ss.lastSeen.Store(time.Now().UnixNano())
	return ss.finishTx(reply, readErr)
}

// finishTx answers the end of a message: a read error mid-message ends the
// session with 451 4.4.2 (nothing after it is read as a command); otherwise
// the reply, and a new transaction.
func (ss *session) finishTx(reply error, readErr error) bool {
	ss.resetTx()
	if readErr != nil {
		var le *limitError
		switch {
		case errors.As(readErr, &le):
			ss.log.Info("closing session", "reason", le.Key, "while", "reading message data")
			ss.refused("other")
			ss.reply(451, smtp.EnhancedCode{4, 4, 2}, "%s: %v; the message was not accepted, closing", ss.o.Hostname, le)
		case errors.Is(readErr, errKicked):
			ss.readFailed(readErr, "reading message data")
		case errors.Is(readErr, io.ErrUnexpectedEOF), errors.Is(readErr, io.EOF), errors.Is(readErr, net.ErrClosed):
			ss.log.Info("client went away during the message; nothing accepted", "err", readErr)
		default:
			ss.log.Info("reading the message failed; nothing accepted", "err", readErr)
			ss.reply(451, smtp.EnhancedCode{4, 4, 2}, "%s: reading the message failed; the message was not accepted, closing", ss.o.Hostname)
		}
		return false
	}
	ss.replyErr(reply)
	var se *smtp.SMTPError
	if errors.As(reply, &se) && se.Code == 250 {
		ss.junk = 0
	}
	return true
}

// store prepares the message from src into the spool and commits it if
// complete() says src reached the end of the data. It returns the reply,
// or the error that reading src failed with (then nothing is committed
// and the caller ends the session).
func (ss *session) store(src io.Reader, complete func() bool) (reply error, readErr error) {
	o := ss.o
	start := o.Clock()
	m := o.Spool.NewMessage()
	id := m.ID()
	log := ss.log.With("queue_id", id)

	proto := "SMTP"
	if ss.ehlo {
		proto = "ESMTP"
	}
	rcv := &message.Received{Helo: ss.helo, ClientIP: ss.ip, By: o.Hostname}
	if st := ss.tlsState; st != nil {
		proto += "S"
		rcv.TLSVersion, rcv.TLSCipher = st.Version, st.CipherSuite
	}
	if ss.login != "" {
		proto += "A"
	}
	if proto == "SMTPA" || proto == "SMTPS" || proto == "SMTPSA" {
		proto = "E" + proto
	}
	rcv.Protocol = proto
	if len(ss.rcpts) == 1 {
		rcv.Recipient = ss.rcpts[0]
	}
	mo := message.Options{
		BareLineEndings: o.BareLineEndings,
		NUL:             o.NUL,
		Received:        rcv,
		QueueID:         id,
		Now:             start,
		AddMessageID:    o.Hostname,
		AddDate:         true,
		RewriteFrom:     o.RewriteFrom,
		MaxLineLength:   o.MaxLineLength,
	}
	envFrom := ss.from
	if o.RewriteFrom != "" {
		envFrom = o.RewriteFrom
	}
	if dev := ss.dev; dev != nil {
		fx := dev.Fixes
		if fx.RewriteFrom != "" {
			mo.RewriteFrom, envFrom = fx.RewriteFrom, fx.RewriteFrom
		}
		switch fx.AddFrom {
		case "":
		case "envelope":
			mo.AddFrom = ss.from
		default:
			mo.AddFrom = fx.AddFrom
		}
		mo.CleanDisplayName = fx.CleanDisplayName
		mo.SubjectPrefix = fx.SubjectPrefix
	}
	info, err := message.Prepare(m, src, mo)
	if err != nil || !complete() {
		m.Abort()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		if isReadError(err) {
			return nil, err
		}
		return ss.dataError(log, err), nil
	}
	env := spool.Envelope{
		From:        ss.from,
		UTF8:        ss.utf8,
		EightBit:    info.EightBit || ss.body == "8BITMIME",
		Received:    start,
		ClientIP:    ss.ip.String(),
		Login:       ss.login,
		MessageID:   info.MessageID,
		Subject:     info.Subject,
		HeaderBytes: info.HeaderBytes,
	}
	if envFrom != ss.from {
		env.From, env.FromReceived = envFrom, ss.from
	}
	if ss.dev != nil {
		env.Device, env.Class = ss.dev.Name, ss.dev.Class
	}
	env.To = make([]spool.Rcpt, len(ss.rcpts))
	for i, rc := range ss.rcpts {
		env.To[i] = spool.Rcpt{Addr: rc}
	}
	if _, err := m.Commit(env); err != nil {
		return ss.dataError(log, err), nil
	}
	o.Accepted(id)
	ss.observe(ss.dev, ss.from, info.HeaderFrom, true)
	if o.AcceptLatency != nil {
		o.AcceptLatency(o.Clock().Sub(start))
	}
	ev := trace.Event{Time: start, Kind: trace.Received, QueueID: id, MessageID: info.MessageID,
		ClientIP: env.ClientIP, From: env.From, To: ss.rcpts, Subject: info.Subject, Size: info.Size,
		Listener: o.Name, Account: ss.login, FromReceived: env.FromReceived, Device: env.Device}
	if ev.FromReceived == "" && env.From != ss.from {
		ev.FromReceived = ss.from // senders.rewrite_from replaced it
	}
	if st := ss.tlsState; st != nil {
		ev.TLSVersion, ev.TLSCipher = tlsVersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	}
	o.Record(ev)
	log.Debug("queued", "device", env.Device, "from", env.From, "rcpts", len(ss.rcpts), "size", info.Size, "message_id", info.MessageID)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + id}, nil
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

// observe tells learning mode what the client did.
func (ss *session) observe(dev *policy.Device, from, headerFrom string, message bool) {
	if ss.o.Observe == nil {
		return
	}
	v := learn.Sighting{Address: ss.ip.Unmap().String(), Helo: ss.helo, Login: ss.login, AuthTried: ss.authTried,
		From: from, HeaderFrom: headerFrom, Message: message}
	if dev != nil {
		v.Device = dev.Name
	}
	if st := ss.tlsState; st != nil {
		v.TLS = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	}
	ss.o.Observe(v)
}

// maxBytes is the largest message this session may send: the listener's
// limit, or the device's own when that is lower.
func (ss *session) maxBytes() int64 {
	max := ss.o.MaxMessageBytes
	if ss.dev != nil && ss.dev.MaxMessageBytes > 0 && (max <= 0 || ss.dev.MaxMessageBytes < max) {
		max = ss.dev.MaxMessageBytes
	}
	return max
}

// isReadError reports an error of the client connection (or the DATA
// reader's own size stop), as opposed to a refusal or a spool failure.
func isReadError(err error) bool {
	var le *limitError
	var ne net.Error
	return errors.As(err, &le) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, errKicked) || errors.Is(err, errDataTooLarge) || errors.Is(err, errChunkAborted) || errors.Is(err, net.ErrClosed)
}

// dataError turns a failure during DATA into the reply: the device's own
// fault (too big, bad line endings, NUL) is permanent; the relay's (disk
// full, write error) is temporary.
func (ss *session) dataError(log *slog.Logger, err error) error {
	if errors.Is(err, spool.ErrFull) {
		log.Warn("spool full; device told to retry", "err", err)
		return ss.refuse("storage_full", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
			Message: "relay storage is full; the message was not accepted, try again later"})
	}
	if reply, ok := message.Reply(err); ok {
		reason := "other"
		var nul *message.NULError
		if reply.EnhancedCode == (smtp.EnhancedCode{5, 6, 11}) || errors.As(err, &nul) {
			reason = "smuggling"
		}
		return ss.refuse(reason, reply)
	}
	log.Error("cannot spool message; device told to retry", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "relay could not store the message; try again later"}
}

func tooBig(max int64) error {
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("message too big: the limit is %d bytes; send a smaller scan or lower the resolution", max)}
}

// bdatTx is a message arriving in BDAT chunks: Prepare runs in its own
// goroutine, reading the chunks through a pipe, so that a message is
// streamed to the spool however many chunks it has.
type bdatTx struct {
	pw     *io.PipeWriter
	n      int64 // bytes so far
	result chan bdatResult
	done   bool // chunks complete (LAST read in full)
}

type bdatResult struct{ reply, readErr error }

var errChunkAborted = errors.New("BDAT transaction abandoned")

func (b *bdatTx) abort() {
	b.pw.CloseWithError(errChunkAborted)
	<-b.result
}

// bdatCmd runs one BDAT chunk; false ends the session.
func (ss *session) bdatCmd(arg string) bool {
	f := strings.Fields(arg)
	var size int64
	var err error
	if len(f) >= 1 {
		size, err = strconv.ParseInt(f[0], 10, 64)
	}
	if len(f) < 1 || len(f) > 2 || err != nil || size < 0 || len(f) == 2 && !strings.EqualFold(f[1], "LAST") {
		// Without a size the chunk's end cannot be found: the dialogue
		// cannot continue.
		ss.reply(501, smtp.EnhancedCode{5, 5, 4}, "syntax: BDAT <size> [LAST]; closing, the chunk's end cannot be found")
		return false
	}
	last := len(f) == 2
	if !ss.inTx || len(ss.rcpts) == 0 {
		if _, err := io.CopyN(io.Discard, ss.r, size); err != nil {
			ss.finishTx(nil, err)
			return false
		}
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send MAIL and RCPT first")
		return true
	}
	if ss.bdat == nil {
		pr, pw := io.Pipe()
		b := &bdatTx{pw: pw, result: make(chan bdatResult, 1)}
		go func() {
			reply, readErr := ss.store(pr, func() bool { return b.done })
			pr.CloseWithError(errChunkAborted) // unblocks a writer if store stopped early
			b.result <- bdatResult{reply, readErr}
		}()
		ss.bdat = b
	}
	b := ss.bdat
	b.n += size
	if max := ss.maxBytes(); max > 0 && b.n > max {
		ss.bdat = nil
		b.abort()
		if _, err := io.CopyN(io.Discard, ss.r, size); err != nil {
			return ss.finishTx(nil, err)
		}
		return ss.finishTx(ss.refuse("too_big", tooBig(max)), nil)
	}
	if _, err := io.CopyN(b.pw, ss.r, size); err != nil {
		// A chunk shorter than declared is never committed.
		var readErr error = err
		if err == io.EOF {
			readErr = io.ErrUnexpectedEOF
		}
		ss.bdat = nil
		b.pw.CloseWithError(readErr)
		<-b.result
		return ss.finishTx(nil, readErr)
	}
	ss.lastSeen.Store(time.Now().UnixNano())
	if !last {
		ss.reply(250, smtp.EnhancedCode{2, 0, 0}, "%d bytes received", size)
		return true
	}
	ss.bdat = nil
	b.done = true
	b.pw.Close()
	res := <-b.result
	return ss.finishTx(res.reply, res.readErr)
}
