package inbound

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/safetext"
)

// session is one connection's dialogue.
type session struct {
	srv  *Server
	o    *Options // as when the session started
	raw  net.Conn
	conn net.Conn      // raw, or the TLS connection after STARTTLS
	r    *bufio.Reader // reads in
	in   spillReader   // connReader, after what DATA read past its end
	w    *bufio.Writer
	log  *slog.Logger

	ip       netip.Addr
	netRelay bool
	known    bool      // the site configured the client (Client.Known)
	release  func()    // the policy's per-client count; once
	ending   bool      // uncounted, writing its last reply (lastReplyTimeout)
	end      time.Time // MaxSessionTime runs out
	lineEnd  time.Time // the command line being read must be complete by then; zero outside
	lastSeen atomic.Int64

	mu sync.Mutex
	// waiting: idle, outside a transaction, from the accept (before the
	// banner) and whenever it waits for a command line; a full listener
	// and Shutdown may tell it to go.
	waiting bool
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

	out []byte // scratch for formatting a reply
}

// newSession is a session not yet started: its buffers and logger come
// in serve, once it is admitted. Until its first command it is idle.
func newSession(s *Server, o *Options, c net.Conn, ip netip.Addr, cl Client, release func()) *session {
	if release == nil {
		release = func() {}
	}
	ss := &session{srv: s, o: o, raw: c, conn: c, ip: ip, netRelay: cl.Relay, known: cl.Known,
		release: sync.OnceFunc(release), end: time.Now().Add(o.MaxSessionTime), waiting: true}
	ss.lastSeen.Store(time.Now().UnixNano())
	return ss
}

// finish stops counting the session against the listener's and the
// client's connection limits. It is called the moment the session's end
// is known, before its last reply is written (QUIT's 221, a limit's 421)
// or once the client is gone, so that a device that reconnects as soon as
// it has read 221 finds its place free.
func (ss *session) finish() {
	ss.srv.mu.Lock()
	ss.srv.uncount(ss)
	ss.srv.mu.Unlock()
	ss.release()
	ss.ending = true
}

// formatReply writes an SMTP reply (multi-line when the message has line
// breaks), with the enhanced code on every line.
func formatReply(b []byte, err error) []byte {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		se = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: err.Error()}
	}
	return appendReply(b, se.Code, se.EnhancedCode, se.Message)
}

// appendReply is formatReply of an SMTPError's fields, without making one:
// every reply of every message comes here.
func appendReply(b []byte, code int, enh smtp.EnhancedCode, msg string) []byte {
	if enh == smtp.EnhancedCodeNotSet {
		enh = smtp.NoEnhancedCode
		if c := code / 100; c == 2 || c == 4 || c == 5 {
			enh = smtp.EnhancedCode{c, 0, 0}
		}
	}
	if strings.IndexByte(msg, '\r') >= 0 {
		msg = strings.ReplaceAll(msg, "\r", "")
	}
	for {
		l, rest, more := strings.Cut(msg, "\n")
		sep := byte(' ')
		if more {
			sep = '-'
		}
		b = strconv.AppendInt(b, int64(code), 10)
		b = append(b, sep)
		if enh != smtp.NoEnhancedCode {
			b = strconv.AppendInt(b, int64(enh[0]), 10)
			b = append(b, '.')
			b = strconv.AppendInt(b, int64(enh[1]), 10)
			b = append(b, '.')
			b = strconv.AppendInt(b, int64(enh[2]), 10)
			b = append(b, ' ')
		}
		b = append(b, l...)
		b = append(b, '\r', '\n')
		if !more {
			return b
		}
		msg = rest
	}
}

func (ss *session) reply(code int, enh smtp.EnhancedCode, format string, a ...any) {
	ss.replyText(code, enh, fmt.Sprintf(format, a...))
}

// replyText writes a reply through the session's own scratch buffer.
func (ss *session) replyText(code int, enh smtp.EnhancedCode, msg string) {
	ss.out = appendReply(ss.out[:0], code, enh, msg)
	ss.w.Write(ss.out)
}

func (ss *session) replyErr(err error) {
	ss.out = formatReply(ss.out[:0], err)
	ss.w.Write(ss.out)
}

func (ss *session) refuse(reason string, err error) error {
	ss.refused(reason)
	ss.log.Info("refused", "reason", reason, "reply", safetext.Escape(err.Error())) // quotes what the client sent
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
	ss.in.r = connReader{ss}
	ss.r = bufio.NewReaderSize(&ss.in, 4096)
	ss.w = bufio.NewWriterSize(connWriter{ss}, 1024)
	defer func() {
		ss.finish()
		ss.w.Flush()
		ss.resetTx()
		ss.raw.Close()
	}()
	if err := ss.boundary(); err != nil {
		// Displaced (or shut down) before its banner.
		ss.replyErr(err)
		return
	}
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
//
// The session is marked idle before the replies are flushed: a client that
// has read them may rely on the session being displaceable (a full listener
// then finds it), so the mark must not trail the bytes.
func (ss *session) readCommand(between bool) (string, error) {
	idle := between && !ss.inTx
	if idle {
		ss.setWaiting(true)
	}
	if buf, _ := ss.r.Peek(ss.r.Buffered()); bytes.IndexByte(buf, '\n') < 0 && !ss.in.hasLine() {
		if err := ss.w.Flush(); err != nil {
			if idle {
				ss.setWaiting(false)
			}
			return "", err
		}
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
