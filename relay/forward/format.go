package forward

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/siterelay/siterelay/relay/trace"
)

// The streams a relay can forward (config forward.syslog.streams); each is
// the MSGID of its messages.
const (
	StreamTrace = "trace"
	StreamAudit = "audit"
	StreamLogs  = "logs"
)

// Streams lists every stream.
var Streams = []string{StreamTrace, StreamAudit, StreamLogs}

// SDID is the structured data element every message carries. 32473 is the
// private enterprise number RFC 5612 reserves for documentation and
// examples; a collector matches on the name before the @.
const SDID = "siterelay@32473"

// Severities (RFC 5424 section 6.2.1).
const (
	SevError   = 3
	SevWarning = 4
	SevNotice  = 5
	SevInfo    = 6
)

// Param is one SD-PARAM of the structured data.
type Param struct{ Name, Value string }

// Entry is one message before it is framed: what the stream adapters below
// make of a trace event, an audit entry or a log record.
type Entry struct {
	Time     time.Time
	Severity int
	Params   []Param // empty values are left out
	Msg      string
}

// format appends the RFC 5424 message (without framing) for e.
func format(b []byte, t Target, hostname, stream string, e Entry) []byte {
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(t.Facility*8+e.Severity), 10)
	b = append(b, ">1 "...)
	b = e.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	b = appendToken(b, hostname, 255)
	b = append(b, ' ')
	b = appendToken(b, t.AppName, 48)
	b = append(b, " - "...)
	b = appendToken(b, stream, 32)
	b = append(b, " ["...)
	b = append(b, SDID...)
	for _, p := range e.Params {
		if p.Value == "" {
			continue
		}
		b = append(b, ' ')
		b = append(b, p.Name...)
		b = append(b, `="`...)
		b = appendParamValue(b, p.Value)
		b = append(b, '"')
	}
	b = append(b, ']')
	if e.Msg != "" {
		b = append(b, ' ')
		b = appendMsg(b, e.Msg)
	}
	return b
}

// appendToken appends a header field: printable US-ASCII without spaces,
// at most max bytes, "-" when empty (RFC 5424 NILVALUE).
func appendToken(b []byte, s string, max int) []byte {
	n := 0
	for i := 0; i < len(s) && n < max; i++ {
		if c := s[i]; c > 32 && c < 127 {
			b = append(b, c)
			n++
		}
	}
	if n == 0 {
		b = append(b, '-')
	}
	return b
}

// maxValue caps each parameter and the message text, so one odd subject
// cannot fill the buffer.
const maxValue = 2000

// appendParamValue escapes '"', '\' and ']' (RFC 5424 section 6.3.3) and
// replaces control characters and invalid UTF-8, so nothing a device sent
// can end the element or the frame early.
func appendParamValue(b []byte, s string) []byte {
	return appendClean(b, s, func(b []byte, c byte) []byte {
		if c == '"' || c == '\\' || c == ']' {
			b = append(b, '\\')
		}
		return append(b, c)
	})
}

func appendMsg(b []byte, s string) []byte {
	return appendClean(b, s, func(b []byte, c byte) []byte { return append(b, c) })
}

func appendClean(b []byte, s string, ascii func([]byte, byte) []byte) []byte {
	if len(s) > maxValue {
		s = s[:maxValue]
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				b = append(b, ' ')
			} else {
				b = ascii(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

// TraceEntry is a trace event as a syslog message. The trace holds no
// secret (docs/trace.md); the subject is left out all the same, as the
// trace's own summary leaves it to a query.
func TraceEntry(e trace.Event) Entry {
	sev := SevInfo
	switch e.Kind {
	case trace.Deferred:
		sev = SevWarning
	case trace.Bounced, trace.Expired, trace.Failed:
		sev = SevError
	}
	params := []Param{
		{"result", string(e.Kind)},
		{"queue_id", e.QueueID},
		{"message_id", e.MessageID},
		{"device", e.Device},
		{"client_ip", e.ClientIP},
		{"listener", e.Listener},
		{"upstream", e.Upstream},
		{"from", e.From},
		{"to", strings.Join(e.To, ",")},
	}
	if e.Size != 0 {
		params = append(params, Param{"size", strconv.FormatInt(e.Size, 10)})
	}
	if e.Attempt != 0 {
		params = append(params, Param{"attempt", strconv.Itoa(e.Attempt)})
	}
	if e.Kind == trace.Renewal {
		// A renewal step concerns no message: which credential, which
		// step, the key id at the app registration (public) and how it
		// ended; a failed step is a warning a SIEM can alert on.
		params = append(params, Param{"credential", e.Credential}, Param{"step", e.Step}, Param{"key_id", e.KeyID}, Param{"outcome", e.Result})
		if e.Result == "failed" {
			sev = SevWarning
		}
	}
	params = append(params, Param{"reply", e.Reply})
	msg := string(e.Kind) + " " + e.QueueID
	if e.Kind == trace.Renewal {
		msg = "renewal of " + e.Credential + ": " + e.Step + " " + e.Result
	}
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return Entry{Time: e.Time, Severity: sev, Params: params, Msg: msg}
}

// Handler tees log records to the logs stream of f and hands them on to
// next. Attributes become structured data (by their full key); the records
// are the ones the relay already writes, which carry no secret.
type Handler struct {
	next   slog.Handler
	f      *Forwarder
	attrs  []Param
	prefix string
}

// NewHandler wraps next.
func NewHandler(next slog.Handler, f *Forwarder) *Handler { return &Handler{next: next, f: f} }

// Enabled: the logs stream takes Info and above, whatever next takes.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l) || (l >= slog.LevelInfo && h.f.wants(StreamLogs))
}

func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo && h.f.wants(StreamLogs) {
		sev := SevInfo
		switch {
		case r.Level >= slog.LevelError:
			sev = SevError
		case r.Level >= slog.LevelWarn:
			sev = SevWarning
		}
		params := append([]Param{{"level", r.Level.String()}}, h.attrs...)
		r.Attrs(func(a slog.Attr) bool {
			params = appendAttr(params, h.prefix, a)
			return true
		})
		h.f.Send(StreamLogs, Entry{Time: r.Time, Severity: sev, Params: params, Msg: r.Message})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]Param(nil), h.attrs...)
	for _, a := range as {
		c.attrs = appendAttr(c.attrs, h.prefix, a)
	}
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	c.prefix = h.prefix + name + "."
	c.next = h.next.WithGroup(name)
	return &c
}

// appendAttr flattens a into params. SD-NAMEs are printable ASCII without
// '=', ' ', ']' or '"', at most 32 bytes.
func appendAttr(params []Param, prefix string, a slog.Attr) []Param {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			params = appendAttr(params, prefix+a.Key+".", g)
		}
		return params
	}
	name := []byte(nil)
	for _, c := range []byte(prefix + a.Key) {
		if c > 32 && c < 127 && c != '=' && c != ']' && c != '"' && len(name) < 32 {
			name = append(name, c)
		}
	}
	if len(name) == 0 {
		return params
	}
	return append(params, Param{string(name), v.String()})
}
