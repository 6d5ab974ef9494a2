package smarthost

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

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

func (c *conn) has(ext string) bool { _, ok := c.ext[ext]; return ok }
