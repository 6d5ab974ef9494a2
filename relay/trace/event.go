package trace

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Kind says what happened to a message (or to some of its recipients).
type Kind string

// The kinds of event. Received is written once per accepted message; the
// others once per delivery attempt outcome, for the recipients in Event.To.
const (
	Received  Kind = "received"  // accepted from a device and spooled
	Deferred  Kind = "deferred"  // temporary failure; will retry
	Delivered Kind = "delivered" // accepted by the upstream
	Bounced   Kind = "bounced"   // permanent failure; a DSN went to the sender
	Expired   Kind = "expired"   // lifetime ran out while deferred
	Failed    Kind = "failed"    // permanent failure with no DSN (unroutable sender)
)

// Kinds lists every kind of a message's event, in the order a message
// usually meets them (the status page's counts, the metrics' kind label).
var Kinds = []Kind{Received, Deferred, Delivered, Bounced, Expired, Failed}

// Renewal is a step of the renewal of a certificate made on the box (no
// message): Credential, Step, KeyID and Result say which, Reply what
// happened (Microsoft's answer on a failure), Hint what it means. It is in
// the trace so that relayctl trace -kind renewal finds every step beside
// the mail it concerns; it is not a message kind (not in Kinds).
const Renewal Kind = "renewal"

// SearchKinds are the kinds a search may ask for: every message kind and
// Renewal.
var SearchKinds = append(append([]Kind(nil), Kinds...), Renewal)

// Message says whether k is the kind of a message's event (one of Kinds).
func (k Kind) Message() bool { return slices.Contains(Kinds, k) }

// Event is one line of the trace. The field names in JSON are the ones
// relayctl and the documentation use (docs/trace.md).
type Event struct {
	Time      time.Time `json:"time"`
	Kind      Kind      `json:"kind"`
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`
	ClientIP  string    `json:"client_ip,omitempty"`
	// Listener is the listener the message came in on; Account the
	// device login it used ("" without). Device (below) names the device;
	// these two tell apart the clients of events from before it was one.
	Listener string `json:"listener,omitempty"`
	Account  string `json:"account,omitempty"`
	// TLSVersion ("1.2") and TLSCipher (Go's name of the suite) are the
	// device's TLS session, on received events; empty without STARTTLS.
	TLSVersion string `json:"tls_version,omitempty"`
	TLSCipher  string `json:"tls_cipher,omitempty"`
	// From is the envelope sender as sent upstream; FromReceived the one
	// the device gave, set only when senders.rewrite_from replaced it.
	From         string `json:"from"`
	FromReceived string `json:"from_received,omitempty"`
	// Device is the configured device that sent the message.
	Device   string   `json:"device,omitempty"`
	To       []string `json:"to,omitempty"`
	Subject  string   `json:"subject,omitempty"`
	Size     int64    `json:"size,omitempty"`
	Attempt  int      `json:"attempt,omitempty"`
	Reply    string   `json:"reply,omitempty"`
	Hint     string   `json:"hint,omitempty"`
	Upstream string   `json:"upstream,omitempty"`
	// Credential, Step, KeyID and Result are a Renewal event's: the secret
	// store's name of the certificate, the step ("new key pair",
	// "addKey", "token with the new key", "removeKey", "done", ...), the
	// key id at the app registration it concerns (public), and "ok" or
	// "failed". Never a key, a token or a proof.
	Credential string `json:"credential,omitempty"`
	Step       string `json:"step,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Result     string `json:"result,omitempty"`
}

// maxField caps each string field on disk, so one odd message (a 100 kB
// subject) cannot crowd out everything else in the buffer.
const maxField = 2000

// appendEvent writes e as one JSON line (with the trailing newline). It is
// hand-written instead of encoding/json because it runs on the hot path and
// must not allocate; parseLine reads it back with encoding/json.
func appendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendString(b, string(e.Kind))
	b = appendField(b, `,"queue_id":`, e.QueueID)
	b = appendField(b, `,"message_id":`, e.MessageID)
	b = appendField(b, `,"client_ip":`, e.ClientIP)
	b = appendField(b, `,"listener":`, e.Listener)
	b = appendField(b, `,"account":`, e.Account)
	b = appendField(b, `,"tls_version":`, e.TLSVersion)
	b = appendField(b, `,"tls_cipher":`, e.TLSCipher)
	b = append(b, `,"from":`...)
	b = appendString(b, e.From)
	b = appendField(b, `,"from_received":`, e.FromReceived)
	b = appendField(b, `,"device":`, e.Device)
	if len(e.To) > 0 {
		b = append(b, `,"to":[`...)
		for i, to := range e.To {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, to)
		}
		b = append(b, ']')
	}
	b = appendField(b, `,"subject":`, e.Subject)
	if e.Size != 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, e.Size, 10)
	}
	if e.Attempt != 0 {
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(e.Attempt), 10)
	}
	b = appendField(b, `,"reply":`, e.Reply)
	b = appendField(b, `,"hint":`, e.Hint)
	b = appendField(b, `,"upstream":`, e.Upstream)
	b = appendField(b, `,"credential":`, e.Credential)
	b = appendField(b, `,"step":`, e.Step)
	b = appendField(b, `,"key_id":`, e.KeyID)
	b = appendField(b, `,"result":`, e.Result)
	return append(b, "}\n"...)
}

func appendField(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, key...)
	return appendString(b, s)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: control characters escaped,
// invalid UTF-8 replaced by U+FFFD (as encoding/json does), at most maxField
// bytes of input.
func appendString(b []byte, s string) []byte {
	if len(s) > maxField {
		s = s[:maxField]
	}
	b = append(b, '"')
	for i := 0; i < len(s); {
		// A run of bytes that need no escaping goes in one append.
		j := i
		for j < len(s) && s[j] >= 0x20 && s[j] < 0x7f && s[j] != '"' && s[j] != '\\' {
			j++
		}
		if j > i {
			b = append(b, s[i:j]...)
			i = j
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

var (
	errNoTime = errors.New("trace line has no time")
	errNoKind = errors.New("trace line has no kind")
)

// parseLine reads one line written by appendEvent. Lines cut short by a
// crash, or damaged on disk, give an error; the caller skips them.
func parseLine(line []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(line, &e); err != nil {
		return Event{}, fmt.Errorf("parsing trace line: %w", err)
	}
	if e.Time.IsZero() {
		return Event{}, errNoTime
	}
	if e.Kind == "" {
		return Event{}, errNoKind
	}
	e.Time = e.Time.UTC()
	return e, nil
}
