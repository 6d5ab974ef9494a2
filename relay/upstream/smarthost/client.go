package smarthost

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
)

// conn is one SMTP client connection, written on bufio so that a whole
// pipelined transaction leaves in one write.
type conn struct {
	u    *Upstream
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	tls  *tls.ConnectionState
	ext  map[string]string
	pipe bool
	size int64 // the server's SIZE limit, 0 when none

	gen      uint64    // the Upstream's dial count when this one was dialled
	sent     int       // transactions completed
	lastUsed time.Time // by the Upstream's clock
	dirty    bool      // a transaction was started and not finished cleanly

	dlMu     sync.Mutex
	canceled bool

	buf     [16 << 10]byte
	scratch []byte
	lines   []string
}

// reply is one SMTP reply; text is collected only when asked or for
// anything but 2xx.
type reply struct {
	code  int
	lines []string
}

func (r reply) smtpError() *smtp.SMTPError {
	msg := strings.Join(r.lines, " ")
	e := &smtp.SMTPError{Code: r.code, EnhancedCode: smtp.NoEnhancedCode, Message: msg}
	if enh, rest, ok := parseEnhanced(msg, r.code); ok {
		e.EnhancedCode = enh
		e.Message = rest
	}
	return e
}

// parseEnhanced takes "5.1.1 text" apart when the class matches the code.
func parseEnhanced(s string, code int) (smtp.EnhancedCode, string, bool) {
	var enh smtp.EnhancedCode
	head, rest, _ := strings.Cut(s, " ")
	parts := strings.Split(head, ".")
	if len(parts) != 3 {
		return enh, s, false
	}
	for i, p := range parts {
		if len(p) == 0 || len(p) > 3 {
			return enh, s, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return enh, s, false
		}
		enh[i] = n
	}
	if enh[0] != code/100 {
		return enh, s, false
	}
	return enh, rest, true
}

// protoError marks a reply that did not make sense; the connection is then
// out of step and must be dropped.
var errProtocol = errors.New("smtp protocol error")

const maxReplyLines = 200

// readReply reads one (possibly multi-line) reply.
func (c *conn) readReply(keepText bool) (reply, error) {
	c.lines = c.lines[:0]
	code := 0
	for n := 0; ; n++ {
		line, err := c.readLine()
		if err != nil {
			return reply{}, err
		}
		if len(line) < 3 || n >= maxReplyLines {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		lc := 0
		for _, b := range line[:3] {
			if b < '0' || b > '9' {
				return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
			}
			lc = lc*10 + int(b-'0')
		}
		if lc < 200 || lc > 599 || (code != 0 && lc != code) {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		code = lc
		more := len(line) > 3 && line[3] == '-'
		if len(line) > 3 && line[3] != '-' && line[3] != ' ' {
			return reply{}, fmt.Errorf("%w: malformed reply %q", errProtocol, truncate(line))
		}
		if keepText || code >= 300 {
			text := ""
			if len(line) > 4 {
				text = string(line[4:])
			}
			c.lines = append(c.lines, text)
		}
		if !more {
			break
		}
	}
	r := reply{code: code}
	if len(c.lines) > 0 {
		r.lines = append([]string(nil), c.lines...)
	}
	return r, nil
}

const maxLine = 4096

// readLine returns one line without its ending; the slice is valid until
// the next read.
func (c *conn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// Longer than the buffer: keep what fits the limit, drop the rest.
		c.scratch = append(c.scratch[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = c.br.ReadSlice('\n')
			if len(c.scratch) < maxLine {
				c.scratch = append(c.scratch, line...)
			}
		}
		line = c.scratch
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > maxLine {
		line = line[:maxLine]
	}
	return line, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// deadline sets the connection deadline d from now, unless the context was
// cancelled (then the deadline stays in the past).
func (c *conn) deadline(d time.Duration) {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if !c.canceled {
		c.nc.SetDeadline(time.Now().Add(d))
	}
}

// watch makes ctx's end interrupt any blocked read or write.
func (c *conn) watch(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		c.dlMu.Lock()
		c.canceled = true
		c.nc.SetDeadline(time.Unix(1, 0))
		c.dlMu.Unlock()
	})
}

// netErr wraps a failure to talk to the peer: always temporary, and the
// connection is no longer usable.
func netErr(ctx context.Context, what string, err error) *upstream.Error {
	if ctx != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return &upstream.Error{Err: fmt.Errorf("%s: %w", what, err)}
}

// replyErr is a refusal by the peer; 5xx is permanent unless soft is set.
func replyErr(what string, r reply, soft bool) *upstream.Error {
	se := r.smtpError()
	return &upstream.Error{Reply: se, Permanent: !soft && r.code >= 500, Err: errors.New(what)}
}

// cmd writes one command line and flushes it, then reads the reply.
func (c *conn) cmd(keepText bool, parts ...string) (reply, error) {
	for _, p := range parts {
		c.bw.WriteString(p)
	}
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		return reply{}, err
	}
	return c.readReply(keepText)
}

// hello sends EHLO (HELO as a fallback without TLS) and records the
// extensions.
func (c *conn) hello(ctx context.Context) error {
	o := &c.u.o
	c.deadline(o.CommandTimeout)
	r, err := c.cmd(true, "EHLO ", o.LocalName)
	if err != nil {
		return netErr(ctx, "EHLO", err)
	}
	c.ext = map[string]string{}
	if r.code != 250 {
		if o.TLS != TLSNone || r.code < 500 {
			return replyErr("upstream refused EHLO", r, true)
		}
		if r, err = c.cmd(false, "HELO ", o.LocalName); err != nil {
			return netErr(ctx, "HELO", err)
		}
		if r.code != 250 {
			return replyErr("upstream refused HELO", r, true)
		}
		c.pipe, c.size = false, 0
		return nil
	}
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	_, c.pipe = c.ext["PIPELINING"]
	c.pipe = c.pipe && !o.DisablePipelining
	c.size = 0
	if v, ok := c.ext["SIZE"]; ok && v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			c.size = n
		}
	}
	return nil
}

// startTLS upgrades the connection.
func (c *conn) startTLS(ctx context.Context) error {
	c.deadline(c.u.o.CommandTimeout)
	r, err := c.cmd(false, "STARTTLS")
	if err != nil {
		return netErr(ctx, "STARTTLS", err)
	}
	if r.code != 220 {
		return replyErr("upstream refused STARTTLS", r, true)
	}
	return c.handshake(ctx)
}

func (c *conn) handshake(ctx context.Context) error {
	tc := tls.Client(c.nc, c.u.tlsConfig)
	c.deadline(c.u.o.CommandTimeout)
	if err := tc.HandshakeContext(ctx); err != nil {
		return netErr(ctx, "TLS handshake with "+c.u.o.Addr, err)
	}
	st := tc.ConnectionState()
	c.tls = &st
	c.nc = tc
	c.br.Reset(tc)
	c.bw.Reset(tc)
	return nil
}

// auth logs in with the configured mechanism. Refusals carry the server's
// reply but are never permanent: a wrong password is the admin's to fix, and
// the mail waits meanwhile (as Postfix's smtp_sasl_auth_soft_bounce).
func (c *conn) auth(ctx context.Context, token string) error {
	a := &c.u.o.Auth
	if a.Mechanism == "" {
		return nil
	}
	mech := strings.ToUpper(a.Mechanism)
	if !c.offers("AUTH", mech) {
		return &upstream.Error{Err: fmt.Errorf("upstream does not offer AUTH %s (it offers %q)", mech, c.ext["AUTH"])}
	}
	what := fmt.Sprintf("authenticating as %s with %s", a.Username, mech)
	c.deadline(c.u.o.CommandTimeout)
	var r reply
	var err error
	switch mech {
	case "PLAIN":
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + a.Username + "\x00" + a.Password))
		r, err = c.cmd(false, "AUTH PLAIN ", ir)
	case "LOGIN":
		r, err = c.cmd(false, "AUTH LOGIN")
		if err == nil && r.code == 334 {
			r, err = c.cmd(false, base64.StdEncoding.EncodeToString([]byte(a.Username)))
		}
		if err == nil && r.code == 334 {
			r, err = c.cmd(false, base64.StdEncoding.EncodeToString([]byte(a.Password)))
		}
	case "XOAUTH2":
		// token was fetched before dialling (see dial).
		c.deadline(c.u.o.CommandTimeout)
		ir := base64.StdEncoding.EncodeToString([]byte("user=" + a.Username + "\x01auth=Bearer " + token + "\x01\x01"))
		r, err = c.cmd(false, "AUTH XOAUTH2 ", ir)
		if err == nil && r.code == 334 {
			// The server's error details come as a challenge; an empty
			// answer gets the final reply.
			r, err = c.cmd(false, "")
		}
	}
	if err != nil {
		return netErr(ctx, what, err)
	}
	if r.code != 235 {
		return replyErr(what, r, true)
	}
	return nil
}

// tokenErr is a failure to get a token for user.
func tokenErr(user string, terr error) *upstream.Error {
	ue := upstream.Classify(terr)
	if ue.Err == nil || ue == terr {
		return ue
	}
	c2 := *ue
	c2.Err = fmt.Errorf("getting a token for %s: %w", user, ue.Err)
	return &c2
}

// offers tells whether the extension ext lists word among its parameters.
func (c *conn) offers(ext, word string) bool {
	v, ok := c.ext[ext]
	if !ok {
		return false
	}
	for _, f := range strings.Fields(v) {
		if strings.EqualFold(f, word) {
			return true
		}
	}
	return false
}

// quit says goodbye briefly and closes.
func (c *conn) quit() {
	c.nc.SetDeadline(time.Now().Add(time.Second))
	c.bw.WriteString("QUIT\r\n")
	if c.bw.Flush() == nil {
		c.readReply(false)
	}
	c.nc.Close()
}

// validAddr refuses what could break out of the command line.
func validAddr(a string) bool {
	for i := 0; i < len(a); i++ {
		if b := a[i]; b < 0x20 || b == 0x7f || b == '<' || b == '>' {
			return false
		}
	}
	return true
}

// outcome of one transaction on a connection.
type outcome struct {
	results []upstream.RcptResult
	err     error
	// keep: the connection is in step and may be reused.
	keep bool
	// stale: the connection failed before the server accepted anything
	// (an idle connection the server had closed): safe to retry once.
	stale bool
}

// send runs one transaction for to (at most MaxRecipients).
func (c *conn) send(ctx context.Context, msg *upstream.Message, to []string, reset bool) outcome {
	o := &c.u.o
	if msg.UTF8 && !c.has("SMTPUTF8") {
		return outcome{keep: true, err: refusal(553, smtp.EnhancedCode{5, 6, 7},
			"The message has non-ASCII addresses and the upstream does not offer SMTPUTF8: use ASCII addresses for this device, or an upstream that offers it.",
			"the message needs SMTPUTF8 (non-ASCII addresses), which %s does not offer", o.Addr)}
	}
	if c.size > 0 && msg.Size > c.size {
		return outcome{keep: true, err: refusal(552, smtp.EnhancedCode{5, 3, 4},
			"The upstream accepts smaller messages than the relay does: set limits.max_message_bytes to its SIZE, "+
				"so that devices are told at once, and ask the sender for smaller attachments.",
			"message of %d bytes is larger than %s accepts (SIZE %d)", msg.Size, o.Addr, c.size)}
	}
	if !validAddr(msg.From) {
		return outcome{keep: true, err: refusal(553, smtp.EnhancedCode{5, 1, 7}, "",
			"invalid sender address %q", msg.From)}
	}
	results := make([]upstream.RcptResult, len(to))
	send := make([]bool, len(to))
	nsend := 0
	for i, rc := range to {
		results[i].Rcpt = rc
		if validAddr(rc) {
			send[i] = true
			nsend++
		} else {
			results[i].Err = refusal(553, smtp.EnhancedCode{5, 1, 3}, "", "invalid recipient address %q", rc)
		}
	}
	if nsend == 0 {
		return outcome{results: results, keep: true}
	}

	c.dirty = true
	c.deadline(o.CommandTimeout)
	if reset {
		c.bw.WriteString("RSET\r\n")
		if !c.pipe {
			if err := c.bw.Flush(); err != nil {
				return outcome{err: netErr(ctx, "RSET", err), stale: true}
			}
			r, err := c.readReply(false)
			if err != nil {
				return outcome{err: netErr(ctx, "RSET", err), stale: true}
			}
			if r.code != 250 {
				return outcome{err: replyErr("upstream refused RSET", r, true), stale: r.code == 421}
			}
		}
	}
	c.writeMail(msg)
	if !c.pipe {
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
		}
		if r.code != 250 {
			return outcome{err: replyErr("upstream refused MAIL FROM", r, false), keep: r.code != 421, stale: r.code == 421 && reset}
		}
		return c.finishStepwise(ctx, msg, to, send, results)
	}
	// With PIPELINING everything up to DATA goes out in one write.
	for i, rc := range to {
		if send[i] {
			c.bw.WriteString("RCPT TO:<")
			c.bw.WriteString(rc)
			c.bw.WriteString(">\r\n")
		}
	}
	c.bw.WriteString("DATA\r\n")
	if err := c.bw.Flush(); err != nil {
		return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
	}
	if reset {
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RSET", err), stale: true}
		}
		if r.code != 250 {
			// Out of step or closing: read nothing more.
			return outcome{err: replyErr("upstream refused RSET", r, true), stale: r.code == 421}
		}
	}
	return c.finishPipelined(ctx, msg, to, send, results)
}

func (c *conn) has(ext string) bool { _, ok := c.ext[ext]; return ok }

func (c *conn) writeMail(msg *upstream.Message) {
	c.bw.WriteString("MAIL FROM:<")
	c.bw.WriteString(msg.From)
	c.bw.WriteString(">")
	if c.has("SIZE") {
		c.scratch = strconv.AppendInt(append(c.scratch[:0], " SIZE="...), msg.Size, 10)
		c.bw.Write(c.scratch)
	}
	if msg.EightBit && c.has("8BITMIME") {
		c.bw.WriteString(" BODY=8BITMIME")
	}
	if msg.UTF8 {
		c.bw.WriteString(" SMTPUTF8")
	}
	c.bw.WriteString("\r\n")
}

// finishPipelined reads the replies to MAIL, each RCPT and DATA, then
// sends the body.
func (c *conn) finishPipelined(ctx context.Context, msg *upstream.Message, to []string, send []bool, results []upstream.RcptResult) outcome {
	mr, err := c.readReply(false)
	if err != nil {
		return outcome{err: netErr(ctx, "MAIL FROM", err)}
	}
	closing := mr.code == 421
	accepted, refused := 0, 0
	for i, rc := range to {
		if !send[i] {
			refused++
			continue
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		closing = closing || r.code == 421
		switch {
		case mr.code != 250:
			// Refused as a consequence of MAIL; reported as MAIL's refusal.
		case r.code == 250 || r.code == 251:
			accepted++
		default:
			refused++
			results[i].Err = replyErr("upstream refused recipient <"+rc+">", r, false)
		}
	}
	dr, err := c.readReply(false)
	if err != nil {
		return outcome{err: netErr(ctx, "DATA", err)}
	}
	closing = closing || dr.code == 421
	if dr.code == 354 && (mr.code != 250 || accepted == 0) {
		// The server wants data it has nowhere to put: end it empty.
		c.deadline(c.u.o.CommandTimeout)
		c.bw.WriteString(".\r\n")
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "DATA", err)}
		}
		if _, err := c.readReply(false); err != nil {
			return outcome{err: netErr(ctx, "DATA", err)}
		}
	}
	if mr.code != 250 {
		return outcome{err: replyErr("upstream refused MAIL FROM", mr, false), keep: !closing}
	}
	if accepted == 0 {
		return outcome{results: results, keep: !closing}
	}
	if dr.code != 354 {
		return c.dataFailed(replyErr("upstream refused DATA", dr, false), results, refused, !closing)
	}
	return c.body(ctx, msg, results, refused)
}

// finishStepwise continues a transaction without PIPELINING once MAIL
// was accepted.
func (c *conn) finishStepwise(ctx context.Context, msg *upstream.Message, to []string, send []bool, results []upstream.RcptResult) outcome {
	accepted, refused := 0, 0
	for i, rc := range to {
		if !send[i] {
			refused++
			continue
		}
		c.bw.WriteString("RCPT TO:<")
		c.bw.WriteString(rc)
		c.bw.WriteString(">\r\n")
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		if r.code == 421 {
			return outcome{err: replyErr("upstream closing at RCPT TO", r, false)}
		}
		if r.code == 250 || r.code == 251 {
			accepted++
		} else {
			refused++
			results[i].Err = replyErr("upstream refused recipient <"+rc+">", r, false)
		}
	}
	if accepted == 0 {
		return outcome{results: results, keep: true}
	}
	r, err := c.cmd(false, "DATA")
	if err != nil {
		return outcome{err: netErr(ctx, "DATA", err)}
	}
	if r.code != 354 {
		return c.dataFailed(replyErr("upstream refused DATA", r, false), results, refused, r.code != 421)
	}
	return c.body(ctx, msg, results, refused)
}

// dataFailed reports a failure that struck every accepted recipient: as the
// call's error when no recipient had its own refusal, else per recipient.
func (c *conn) dataFailed(err error, results []upstream.RcptResult, refused int, keep bool) outcome {
	if refused == 0 {
		return outcome{err: err, keep: keep}
	}
	for i := range results {
		if results[i].Err == nil {
			results[i].Err = err
		}
	}
	return outcome{results: results, keep: keep}
}

// body sends the message and reads the final reply.
func (c *conn) body(ctx context.Context, msg *upstream.Message, results []upstream.RcptResult, refused int) outcome {
	c.deadline(c.u.o.DataTimeout)
	d := newDotWriter(c.bw)
	if err := d.copyBody(msg.Body, msg.Size, c.buf[:]); err != nil {
		// Either way the data must not end as if whole: drop the
		// connection without the final dot.
		return c.dataFailed(netErr(ctx, "sending message "+msg.QueueID, err), results, refused, false)
	}
	d.Close()
	if err := c.bw.Flush(); err != nil {
		return c.dataFailed(netErr(ctx, "sending the message", err), results, refused, false)
	}
	r, err := c.readReply(false)
	if err != nil {
		return c.dataFailed(netErr(ctx, "waiting for the reply to the message", err), results, refused, false)
	}
	if r.code != 250 {
		return c.dataFailed(replyErr("upstream refused the message", r, false), results, refused, r.code != 421)
	}
	c.dirty = false
	c.sent++
	return outcome{results: results, keep: true}
}
