// Package dsn builds the bounce a device's sender gets when the relay gives
// up on (or is still trying) some recipients: an RFC 3464 delivery status
// notification whose first part explains, in plain words for the site's IT
// admin, what happened and what to change.
//
// Only the original header section is returned, never the body: scans and
// reports can be large and confidential.
package dsn

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Action is what the relay did for a recipient (RFC 3464 section 2.3.3).
type Action string

// The actions a relay reports.
const (
	Failed  Action = "failed"  // given up: permanent failure or lifetime over
	Delayed Action = "delayed" // still trying; this is a warning
)

// Recipient is the outcome for one recipient.
type Recipient struct {
	Recipient      string    // the envelope recipient
	Action         Action    // Failed or Delayed
	Status         string    // enhanced status, e.g. "5.1.1"; default 5.0.0, 4.4.7 (expired) or 4.0.0 (delayed)
	DiagnosticCode string    // the upstream's reply, e.g. "smtp; 550 5.1.1 user unknown" ("smtp; " is added if missing)
	Hint           string    // what to change, in plain words
	LastAttempt    time.Time // zero if never attempted
	WillRetryUntil time.Time // for Delayed: when the relay gives up
}

// Report is everything a DSN says.
type Report struct {
	ReportingMTA string    // this relay's host name
	QueueID      string    // the spool's ID for the message
	EnvelopeFrom string    // the original MAIL FROM
	ArrivalDate  time.Time // when the relay accepted the message
	Headers      []byte    // the original header section (a body after a blank line is cut off)
	Recipients   []Recipient
	Expired      bool // the message's lifetime ran out

	From string    // sender of the DSN; default MAILER-DAEMON@ReportingMTA
	To   string    // recipient of the DSN; default EnvelopeFrom
	Date time.Time // default time.Now()
}

// Limits on what is copied from the original message.
const (
	MaxHeaderBytes = 64 << 10 // original header section kept
	maxLine        = 900      // one field in the delivery-status part
	maxSubject     = 200
)

// ErrNotRoutable is returned for a DSN that must not be sent: its recipient
// is the null sender or a mailer daemon, and a bounce to it could loop.
var ErrNotRoutable = errors.New("bounce recipient is not routable (null sender or mailer daemon)")

var (
	statusRE   = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)
	hostnameRE = regexp.MustCompile(`^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?)$`)
)

// Build returns the DSN as a complete message with CRLF line endings, ready
// to be spooled with the null envelope sender ("MAIL FROM:<>").
func Build(r Report) ([]byte, error) {
	if !hostnameRE.MatchString(r.ReportingMTA) || len(r.ReportingMTA) > 253 {
		return nil, fmt.Errorf("building DSN: reporting MTA %q is not a host name", r.ReportingMTA)
	}
	if len(r.Recipients) == 0 {
		return nil, errors.New("building DSN: no recipients to report")
	}
	if r.To == "" {
		r.To = r.EnvelopeFrom
	}
	if !IsRoutable(r.To) {
		return nil, fmt.Errorf("building DSN to %q: %w", r.To, ErrNotRoutable)
	}
	if r.From == "" {
		r.From = "MAILER-DAEMON@" + strings.TrimSuffix(r.ReportingMTA, ".")
	}
	if r.Date.IsZero() {
		r.Date = time.Now()
	}
	rcpts := make([]Recipient, len(r.Recipients))
	allDelayed := true
	for i, rc := range r.Recipients {
		if rc.Recipient == "" {
			return nil, fmt.Errorf("building DSN: recipient %d has no address", i+1)
		}
		switch rc.Action {
		case Failed:
			allDelayed = false
			if rc.Status == "" {
				rc.Status = "5.0.0"
				if r.Expired {
					rc.Status = "4.4.7"
				}
			}
		case Delayed:
			if rc.Status == "" {
				rc.Status = "4.0.0"
			}
			if rc.Status[0] != '4' {
				return nil, fmt.Errorf("building DSN: recipient %q is delayed but status %q is not 4.x.x", rc.Recipient, rc.Status)
			}
		default:
			return nil, fmt.Errorf("building DSN: recipient %q has action %q, want failed or delayed", rc.Recipient, rc.Action)
		}
		if !statusRE.MatchString(rc.Status) || rc.Status[0] == '2' {
			return nil, fmt.Errorf("building DSN: recipient %q has status %q, want 4.x.x or 5.x.x", rc.Recipient, rc.Status)
		}
		if rc.DiagnosticCode != "" && !strings.Contains(rc.DiagnosticCode, ";") {
			rc.DiagnosticCode = "smtp; " + rc.DiagnosticCode
		}
		rcpts[i] = rc
	}
	headers := originalHeaders(r.Headers)
	subject := originalSubject(headers)

	human := humanPart(&r, rcpts, subject, allDelayed)
	status := statusPart(&r, rcpts)
	boundary := newBoundary(human, status, headers)

	var b bytes.Buffer
	verb := "Undelivered mail"
	if allDelayed {
		verb = "Delivery delayed"
	}
	if subject != "" {
		verb += ": " + subject
	}
	writeHeader(&b, "From", formatAddress("Mail Delivery System", r.From))
	writeHeader(&b, "To", formatAddress("", r.To))
	writeHeader(&b, "Subject", mime.QEncoding.Encode("utf-8", verb))
	writeHeader(&b, "Date", r.Date.Format(time.RFC1123Z))
	writeHeader(&b, "Message-ID", "<"+randomHex(12)+idPart(r.QueueID)+"@"+strings.TrimSuffix(r.ReportingMTA, ".")+">")
	writeHeader(&b, "Auto-Submitted", "auto-replied")
	writeHeader(&b, "MIME-Version", "1.0")
	writeHeader(&b, "Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`)
	b.WriteString("\r\nThis is a delivery status notification in MIME format.\r\n")

	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n")
	b.WriteString("Content-Description: Notification\r\n\r\n")
	b.Write(human)

	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n")
	b.Write(status)

	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: text/rfc822-headers\r\n")
	if needsQP(headers) {
		b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n")
		headers = qp(headers)
	}
	b.WriteString("Content-Description: Headers of the undelivered message\r\n\r\n")
	b.Write(headers)

	b.WriteString("\r\n--" + boundary + "--\r\n")
	return b.Bytes(), nil
}

// idPart is ".queueid" with only characters safe in a Message-ID, or "".
func idPart(q string) string {
	q = strings.Map(func(r rune) rune {
		if r < 0x7f && (r == '-' || r == '_' || r == '.' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return r
		}
		return -1
	}, q)
	q = strings.Trim(q, ".")
	for strings.Contains(q, "..") {
		q = strings.ReplaceAll(q, "..", ".")
	}
	if q == "" || len(q) > 64 {
		return ""
	}
	return "." + q
}

func writeHeader(b *bytes.Buffer, name, value string) {
	b.WriteString(name + ": " + value + "\r\n")
}

// formatAddress renders an address for a header, falling back to the
// bracketed form when the address does not parse.
func formatAddress(name, addr string) string {
	addr = strings.TrimSpace(strings.Trim(asciiLine(addr, 320), "<>"))
	a := mail.Address{Name: name, Address: addr}
	s := a.String()
	if _, err := mail.ParseAddress(s); err == nil {
		return s
	}
	return "<" + addr + ">"
}

// humanPart is the explanation for a person, quoted-printable encoded.
func humanPart(r *Report, rcpts []Recipient, subject string, allDelayed bool) []byte {
	var t strings.Builder
	host := strings.TrimSuffix(r.ReportingMTA, ".")
	fmt.Fprintf(&t, "This is the mail relay %s.\n\n", host)
	var what string
	switch {
	case allDelayed:
		what = "Your message has not been delivered yet to the recipients below. The relay keeps " +
			"trying; you do not need to send it again. This is only a warning."
	case r.Expired:
		what = "Your message could not be delivered to the recipients below. The relay kept " +
			"trying, but the receiving side kept answering with a temporary error until the " +
			"message's time limit ran out, so the relay has given up. The message was not delivered."
	default:
		what = "Your message could not be delivered to the recipients below: the receiving " +
			"side refused it permanently. The relay will not try again. The message was not delivered."
	}
	t.WriteString(wrap(what, "", 72) + "\n")
	t.WriteString("\n")
	row := func(k, v string) {
		if v != "" {
			t.WriteString(wrap(fmt.Sprintf("  %-14s%s", k+":", v), strings.Repeat(" ", 16), 72) + "\n")
		}
	}
	row("Sender", bare(oneLine(r.EnvelopeFrom, 320)))
	row("Subject", subject)
	if !r.ArrivalDate.IsZero() {
		row("Received", r.ArrivalDate.Format(time.RFC1123Z))
	}
	row("Queue ID", oneLine(r.QueueID, 64))
	for _, rc := range rcpts {
		t.WriteString("\n")
		row("Recipient", bare(oneLine(rc.Recipient, 320)))
		if rc.Action == Delayed {
			row("Status", "delayed, still trying")
			if !rc.WillRetryUntil.IsZero() {
				row("Gives up at", rc.WillRetryUntil.Format(time.RFC1123Z))
			}
		} else {
			row("Status", "failed")
		}
		if d := rc.DiagnosticCode; d != "" {
			if _, text, ok := strings.Cut(d, ";"); ok {
				d = text
			}
			row("Server said", oneLine(strings.TrimSpace(d), maxLine))
		}
		if !rc.LastAttempt.IsZero() {
			row("Last attempt", rc.LastAttempt.Format(time.RFC1123Z))
		}
		row("What to do", oneLine(rc.Hint, 2000))
	}
	t.WriteString("\n" + wrap("The technical report and the headers of your message are attached. "+
		"The message itself is not included.", "", 72) + "\n")
	return qp([]byte(t.String()))
}

// statusPart is the machine-readable message/delivery-status body.
func statusPart(r *Report, rcpts []Recipient) []byte {
	var b bytes.Buffer
	field := func(name, value string) {
		b.WriteString(name + ": " + value + "\r\n")
	}
	field("Reporting-MTA", "dns; "+strings.TrimSuffix(r.ReportingMTA, "."))
	if r.QueueID != "" {
		field("X-Siterelay-Queue-ID", asciiLine(r.QueueID, 64))
	}
	if !r.ArrivalDate.IsZero() {
		field("Arrival-Date", r.ArrivalDate.Format(time.RFC1123Z))
	}
	for _, rc := range rcpts {
		b.WriteString("\r\n")
		field("Final-Recipient", "rfc822; "+bare(asciiLine(rc.Recipient, 320)))
		field("Action", string(rc.Action))
		field("Status", rc.Status)
		if rc.DiagnosticCode != "" {
			field("Diagnostic-Code", asciiLine(rc.DiagnosticCode, maxLine))
		}
		if !rc.LastAttempt.IsZero() {
			field("Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z))
		}
		if rc.Action == Delayed && !rc.WillRetryUntil.IsZero() {
			field("Will-Retry-Until", rc.WillRetryUntil.Format(time.RFC1123Z))
		}
	}
	return b.Bytes()
}

// originalHeaders returns the header section of h with CRLF line endings:
// cut at the first empty line, at MaxHeaderBytes (on a line boundary), NUL
// bytes dropped, and ending in CRLF.
func originalHeaders(h []byte) []byte {
	h = bytes.ReplaceAll(h, []byte("\r\n"), []byte("\n"))
	h = bytes.ReplaceAll(h, []byte("\r"), []byte("\n"))
	h = bytes.ReplaceAll(h, []byte{0}, nil)
	if bytes.HasPrefix(h, []byte("\n")) { // an empty header section
		return nil
	}
	if i := bytes.Index(h, []byte("\n\n")); i >= 0 {
		h = h[:i+1]
	}
	if len(h) > MaxHeaderBytes {
		h = h[:MaxHeaderBytes]
		if i := bytes.LastIndexByte(h, '\n'); i >= 0 {
			h = h[:i+1]
		}
	}
	if len(h) > 0 && h[len(h)-1] != '\n' {
		h = append(h, '\n')
	}
	return bytes.ReplaceAll(h, []byte("\n"), []byte("\r\n"))
}

// originalSubject returns the decoded Subject of the header section, on one
// line, or "".
func originalSubject(h []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(append(h[:len(h):len(h)], "\r\n"...)))
	if err != nil {
		return ""
	}
	raw := msg.Header.Get("Subject")
	s, err := new(mime.WordDecoder).DecodeHeader(raw)
	if err != nil {
		s = raw
	}
	return oneLine(s, maxSubject)
}

// wrap breaks s at spaces into lines of at most width bytes where it can
// (a longer word stays whole), continuing with indent.
func wrap(s, indent string, width int) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Split(s, " ") {
		if i > 0 {
			if line > len(indent) && line+1+len(word) > width {
				b.WriteString("\n" + indent)
				line = len(indent)
			} else {
				b.WriteByte(' ')
				line++
			}
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}

// bare strips the angle brackets of an envelope address.
func bare(addr string) string {
	addr = strings.TrimSpace(addr)
	if strings.HasPrefix(addr, "<") && strings.HasSuffix(addr, ">") {
		addr = addr[1 : len(addr)-1]
	}
	return addr
}

// oneLine makes s safe for one line of text: valid UTF-8, no control
// characters, at most max bytes.
func oneLine(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0x2028 || r == 0x2029 {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// asciiLine is oneLine restricted to printable ASCII (the delivery-status
// part and header fields are 7-bit): other characters become '?'.
func asciiLine(s string, max int) string {
	s = oneLine(s, max)
	return strings.Map(func(r rune) rune {
		if r >= 0x7f {
			return '?'
		}
		return r
	}, s)
}

func needsQP(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\r\n")) {
		if len(line) > 998 {
			return true
		}
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// qp encodes b as quoted-printable with CRLF line endings.
func qp(b []byte) []byte {
	var out bytes.Buffer
	w := quotedprintable.NewWriter(&out)
	w.Write(b)
	w.Close()
	// The writer emits CRLF for hard breaks and soft breaks alike.
	return out.Bytes()
}

// newBoundary returns a boundary that occurs in none of the parts.
func newBoundary(parts ...[]byte) string {
	for {
		b := "siterelay-dsn-" + randomHex(12)
		clash := false
		for _, p := range parts {
			if bytes.Contains(p, []byte(b)) {
				clash = true
			}
		}
		if !clash {
			return b
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b)
}

// IsRoutable reports whether a bounce may be sent to sender. It is false for
// the null sender ("" or "<>"), for mailer daemons and postmasters (their
// mail is itself a bounce or report; answering it risks a loop), and for
// anything that is not a plain local@domain address.
func IsRoutable(sender string) bool {
	s := strings.TrimSpace(sender)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = s[1 : len(s)-1]
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	local := strings.ToLower(s[:at])
	if plus := strings.IndexByte(local, '+'); plus > 0 {
		local = local[:plus]
	}
	switch local {
	case "mailer-daemon", "postmaster", "double-bounce", "mail-daemon", "mailerdaemon":
		return false
	}
	return true
}
