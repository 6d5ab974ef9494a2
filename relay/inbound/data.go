package inbound

// DATA and the message's way into the spool, with the replies to its failures.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/learn"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/safetext"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

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
	ss.replyText(354, smtp.NoEnhancedCode, "end data with <CR><LF>.<CR><LF>")
	if ss.w.Flush() != nil {
		return false
	}
	d := newDataReader(ss.r, ss.maxBytes())
	d.in = &ss.in
	reply, readErr := ss.store(d, func() bool { return d.done })
	if errors.Is(readErr, errDataTooLarge) {
		if readErr = d.drain(); readErr == nil {
			reply = ss.refuse("too_big", ss.tooBig(ss.maxBytes()))
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
	// The message's logger (with its queue_id) is built only when a line is
	// logged: ss.log.With costs an allocation and the handlers' WithAttrs
	// work on every message, and the happy path logs nothing at Info.
	var logq *slog.Logger
	log := func() *slog.Logger {
		if logq == nil {
			logq = ss.log.With("queue_id", id)
		}
		return logq
	}

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
		MaxHeaderBytes:  o.MaxHeaderBytes,
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
	// The spool keeps what the device sent, byte for byte; the trace (and
	// what reads it: metrics, status, relayctl) gets it with control
	// characters escaped.
	ev := trace.Event{Time: start, Kind: trace.Received, QueueID: id, MessageID: safetext.Escape(info.MessageID),
		ClientIP: env.ClientIP, From: safetext.Escape(env.From), To: safetext.EscapeAll(ss.rcpts),
		Subject: safetext.Escape(info.Subject), Size: info.Size, Listener: o.Name, Account: safetext.Escape(ss.login),
		FromReceived: safetext.Escape(env.FromReceived), Device: env.Device}
	if ev.FromReceived == "" && env.From != ss.from {
		ev.FromReceived = safetext.Escape(ss.from) // senders.rewrite_from replaced it
	}
	if st := ss.tlsState; st != nil {
		ev.TLSVersion, ev.TLSCipher = tlsVersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	}
	o.Record(ev)
	if ss.log.Enabled(context.Background(), slog.LevelDebug) {
		log().Debug("queued", "device", env.Device, "from", ev.From, "rcpts", len(ss.rcpts), "size", info.Size, "message_id", ev.MessageID)
	}
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
	v := learn.Sighting{Address: ss.ip.Unmap().String(), Helo: safetext.Escape(ss.helo), Login: safetext.Escape(ss.login),
		AuthTried: safetext.Escape(ss.authTried), From: safetext.Escape(from), HeaderFrom: safetext.Escape(headerFrom), Message: message}
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
func (ss *session) dataError(log func() *slog.Logger, err error) error {
	if errors.Is(err, spool.ErrFull) {
		log().Warn("spool full; device told to retry", "err", err)
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
	log().Error("cannot spool message; device told to retry", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "relay could not store the message; try again later"}
}

// tooBig is the 552 for a message over max bytes, naming the setting
// behind max: the device's own devices[].max_message_bytes when that is
// the lower, else the listener's (limits.max_message_bytes, or what
// lowered it).
func (ss *session) tooBig(max int64) error {
	setting := ss.o.MaxMessageBytesSetting
	if d := ss.dev; d != nil && d.MaxMessageBytes > 0 && d.MaxMessageBytes == max && (ss.o.MaxMessageBytes <= 0 || d.MaxMessageBytes < ss.o.MaxMessageBytes) {
		setting = fmt.Sprintf("devices[].max_message_bytes of device %s", d.Name)
	}
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("message too big: the limit is %d bytes (%s); send a smaller scan or lower the resolution", max, setting)}
}
