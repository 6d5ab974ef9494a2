package inbound

// STARTTLS and AUTH: the commands that change who the session is talking to.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/authlogin"
	"github.com/siterelay/siterelay/relay/safetext"
)

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
	ss.in.drop()
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
		ss.log.Info("TLS handshake failed", "err", safetext.Escape(err.Error())) // may quote the client's hello
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
			ss.log.Info("login refused", "user", safetext.Escape(user))
			return err
		}
		ss.login, ss.acct = user, acct
		ss.log = ss.log.With("login", safetext.Escape(user))
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
