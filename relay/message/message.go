// Package message turns the DATA a device sends into exactly the bytes that
// are spooled and later handed to the upstream.
//
// The relay's rule against SMTP smuggling lives here: whatever line endings a
// device uses, the output has canonical CRLF only (or the message is refused),
// so no upstream can ever see an end of data the relay did not see. Devices
// are sloppy (printers send no Message-ID, no Date, sometimes no header at
// all), so the package also adds what Microsoft 365 needs, and it streams:
// only the header section is held in memory, never the body.
package message

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// BareLineEndings says what to do with a CR or LF that is not part of a
// CRLF pair.
type BareLineEndings int

const (
	// Normalise rewrites every bare CR and bare LF to CRLF (the default).
	Normalise BareLineEndings = iota
	// Refuse fails the message with a *BareLineEndingError.
	Refuse
)

// NULBytes says what to do with a NUL byte in the data. RFC 5322 allows
// none, and some servers drop NULs before they look for the end of data, so
// a NUL passed on could let an upstream see a line the relay did not.
type NULBytes int

const (
	// RemoveNUL drops every NUL byte (the default).
	RemoveNUL NULBytes = iota
	// RefuseNUL fails the message with a *NULError.
	RefuseNUL
)

// DefaultMaxHeaderBytes bounds the header section when Options leaves it 0.
const DefaultMaxHeaderBytes = 1 << 20

// Options say what Prepare adds and enforces. The zero value normalises line
// endings, adds nothing and bounds the header section at 1 MiB.
type Options struct {
	BareLineEndings BareLineEndings
	// NUL is what to do with a NUL byte anywhere in the data.
	NUL NULBytes
	// Received, when not nil, is written as the first header field.
	Received *Received
	// QueueID is the relay's id of the message, used in Received and in a
	// generated Message-ID.
	QueueID string
	// Now is the time of reception (Received, and Date when added).
	// Zero means time.Now().
	Now time.Time
	// AddMessageID, when not empty, is the domain of a Message-ID added to
	// a message that has none.
	AddMessageID string
	// AddDate adds a Date field to a message that has none.
	AddDate bool
	// RewriteFrom, when not empty, replaces the header From with this
	// address. The device's display name is kept (recipients still see
	// which device wrote), and the original From moves to Reply-To unless
	// the message has a Reply-To.
	RewriteFrom string
	// MaxHeaderBytes bounds the device's header section; 0 means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxLineLength bounds every line (without its line ending); 0 means
	// no limit.
	MaxLineLength int
	// AddFrom, when not empty, is the address of a From field added to a
	// message that has none (a device fix).
	AddFrom string
	// CleanDisplayName rewrites the From display name without what
	// Microsoft 365 refuses: control characters, quotes, backslashes,
	// bytes above 127 that are not valid UTF-8, an address posing as a
	// name (a device fix).
	CleanDisplayName bool
	// SubjectPrefix is put in front of the Subject unless it starts with
	// it already; a message without a Subject gets one (a device fix).
	SubjectPrefix string
}

// Received holds the facts of one reception for the Received field.
type Received struct {
	// Helo is the name the client gave in HELO/EHLO.
	Helo     string
	ClientIP netip.Addr
	// By is the relay's host name.
	By string
	// Protocol is "SMTP", "ESMTP", "ESMTPS" (TLS) or "ESMTPSA" (TLS and
	// login), per RFC 3848.
	Protocol string
	// TLSVersion and TLSCipher are crypto/tls constants; 0 means no TLS.
	TLSVersion uint16
	TLSCipher  uint16
	// Recipient is named only when the message has exactly one, so that a
	// copy does not disclose the other recipients.
	Recipient string
}

// Info describes what Prepare wrote.
type Info struct {
	// MessageID is the Message-ID field's value (the device's, or the one
	// added), with its angle brackets.
	MessageID string
	// Subject is decoded from RFC 2047 for the trace.
	Subject string
	// HeaderFrom is the address in the device's From field (before any
	// rewriting), or its raw text when that does not parse.
	HeaderFrom string
	// Size is the number of bytes written.
	Size int64
	// EightBit reports a byte above 127 anywhere in the message.
	EightBit bool
	// HeaderBytes is the length of the header section in the output,
	// including the empty line that ends it.
	HeaderBytes int64
}

// BareLineEndingError refuses a message with a bare CR or LF (Refuse mode).
type BareLineEndingError struct {
	// Line is the 1-based line of the message where it was found.
	Line int
}

func (e *BareLineEndingError) Error() string {
	return fmt.Sprintf("bare CR or LF in message data (line %d)", e.Line)
}

// SMTPError is the reply for the device.
func (e *BareLineEndingError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 11},
		Message: `bare CR or LF in message data; fix the sender or set limits.bare_line_endings to "normalise"`}
}

// NULError refuses a message with a NUL byte (RefuseNUL mode).
type NULError struct {
	// Line is the 1-based line of the message where it was found.
	Line int
}

func (e *NULError) Error() string {
	return fmt.Sprintf("NUL byte in message data (line %d)", e.Line)
}

// SMTPError is the reply for the device.
func (e *NULError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf(`NUL byte in message data (line %d); fix the sender or set limits.nul_bytes to "remove"`, e.Line)}
}

// HeaderTooLargeError refuses a header section over Options.MaxHeaderBytes.
type HeaderTooLargeError struct{ Limit int }

func (e *HeaderTooLargeError) Error() string {
	return fmt.Sprintf("message header section is larger than %d bytes", e.Limit)
}

// SMTPError is the reply for the device.
func (e *HeaderTooLargeError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("message header section is larger than %d bytes; send fewer or shorter header fields", e.Limit)}
}

// LineTooLongError refuses a line over Options.MaxLineLength.
type LineTooLongError struct{ Line, Limit int }

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("line %d of the message is longer than %d bytes", e.Line, e.Limit)
}

// SMTPError is the reply for the device.
func (e *LineTooLongError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf("line %d of the message is longer than %d bytes; make the sender encode attachments (base64 or quoted-printable) or raise limits.max_line_length", e.Line, e.Limit)}
}

// Reply returns the SMTP reply for an error from Prepare when it has one:
// the package's own refusals, or a *smtp.SMTPError from the DATA reader
// (such as smtp.ErrDataTooLarge). Other errors (a vanished client, a
// failed write to the spool) have none; the session answers those with a
// temporary failure of its own.
func Reply(err error) (*smtp.SMTPError, bool) {
	var r interface{ SMTPError() *smtp.SMTPError }
	if errors.As(err, &r) {
		return r.SMTPError(), true
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return nil, false
}

// Prepare copies the message from src (a DATA reader: dot-unstuffed, ending
// at the end-of-data line) to dst with canonical CRLF line endings, the
// Received field first and the additions Options ask for.
//
// A message with no header section, or whose header section is not ended by
// an empty line, gets an empty line between the header fields and the first
// line that is not one, so that the upstream reads the same header the
// relay did. On a refusal (bare line ending in Refuse mode, header section
// or line too long) Prepare still reads src to its end, so that the SMTP
// dialogue stays in step, and returns an error for which Reply gives the
// answer. Errors from src are returned wrapped and take precedence.
func Prepare(dst io.Writer, src io.Reader, opts Options) (Info, error) {
	p := pool.Get().(*preparer)
	defer p.release()
	p.reset(dst, opts)
	info, err := p.run(src)
	return info, err
}

const readSize = 32 << 10

// maxPooledHeader keeps a rare huge header section from pinning memory.
const maxPooledHeader = 64 << 10

var pool = sync.Pool{New: func() any {
	return &preparer{
		rbuf: make([]byte, readSize),
		hb:   make([]byte, 0, 8<<10),
		w:    &countWriter{buf: make([]byte, 0, readSize)},
	}
}}

// preparer is the state of one Prepare; pooled so that a message costs
// only the few strings of its Info.
type preparer struct {
	opts    Options
	rbuf    []byte
	w       *countWriter
	hb      []byte // header section from the device, CRLF-normalised
	scratch []byte

	inBody    bool
	cr        bool // the previous byte was a CR
	lineLen   int
	line      int // lines completed
	lineStart int // start of the current line in hb
	field     int // start of the field being read in hb, or -1
	err       error

	seenFrom, seenReplyTo, seenDate, seenMsgID, seenSubject bool
	origFrom                                                []byte
	info                                                    Info
}

func (p *preparer) reset(dst io.Writer, opts Options) {
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	p.opts = opts
	p.w.reset(dst)
	p.hb = p.hb[:0]
	p.inBody, p.cr = false, false
	p.lineLen, p.line, p.lineStart, p.field = 0, 0, 0, -1
	p.err = nil
	p.seenFrom, p.seenReplyTo, p.seenDate, p.seenMsgID, p.seenSubject = false, false, false, false, false
	p.origFrom = p.origFrom[:0]
	p.info = Info{}
}

func (p *preparer) release() {
	p.w.reset(nil)
	if cap(p.hb) > maxPooledHeader {
		p.hb = make([]byte, 0, 8<<10)
	}
	if cap(p.origFrom) > maxPooledHeader {
		p.origFrom = nil
	}
	p.opts = Options{}
	pool.Put(p)
}

func (p *preparer) run(src io.Reader) (Info, error) {
	var srcErr error
	for {
		n, err := src.Read(p.rbuf)
		if n > 0 {
			b := p.rbuf[:n]
			if !p.info.EightBit {
				p.info.EightBit = hasEightBit(b)
			}
			if p.err == nil {
				p.feedNUL(b)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			srcErr = err
			break
		}
	}
	if srcErr != nil {
		return p.info, fmt.Errorf("reading message data: %w", srcErr)
	}
	if p.err == nil {
		p.finish()
	}
	if p.err == nil {
		p.err = p.w.flush()
	}
	p.info.Size = p.w.n
	return p.info, p.err
}

func hasEightBit(b []byte) bool {
	for len(b) >= 32 {
		v := binary.LittleEndian.Uint64(b) | binary.LittleEndian.Uint64(b[8:]) |
			binary.LittleEndian.Uint64(b[16:]) | binary.LittleEndian.Uint64(b[24:])
		if v&0x8080808080808080 != 0 {
			return true
		}
		b = b[32:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// feedNUL removes or refuses the NUL bytes of b, then feeds the rest.
func (p *preparer) feedNUL(b []byte) {
	for len(b) > 0 && p.err == nil {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			p.feed(b)
			return
		}
		if i > 0 {
			p.feed(b[:i])
		}
		if p.err != nil {
			return
		}
		if p.opts.NUL == RefuseNUL {
			p.err = &NULError{Line: p.line + 1}
			return
		}
		b = b[i+1:]
	}
}

// feed splits b into line content and line endings. A CR at the end of b
// waits for the next byte to tell CRLF from a bare CR.
func (p *preparer) feed(b []byte) {
	for len(b) > 0 && p.err == nil {
		if p.inBody && !p.cr {
			// Fast path: whole CRLF lines are copied in one write.
			n := p.crlfLines(b)
			if n > 0 {
				p.w.write(b[:n])
				b = b[n:]
				continue
			}
		}
		if p.cr {
			p.cr = false
			if b[0] == '\n' {
				p.eol(false)
				b = b[1:]
			} else {
				p.eol(true)
			}
			continue
		}
		i := indexLineEnd(b)
		if i < 0 {
			p.data(b)
			return
		}
		if i > 0 {
			p.data(b[:i])
			if p.err != nil {
				return
			}
		}
		switch {
		case b[i] == '\n':
			p.eol(true)
			b = b[i+1:]
		case i+1 == len(b):
			p.cr = true
			return
		case b[i+1] == '\n':
			p.eol(false)
			b = b[i+2:]
		default:
			p.eol(true)
			b = b[i+1:]
		}
	}
}

// crlfLines returns the length of the run of complete, well-formed CRLF
// lines at the start of b that are within the line length limit, counting
// them.
func (p *preparer) crlfLines(b []byte) int {
	end := 0
	max := p.opts.MaxLineLength
	for {
		j := bytes.IndexByte(b[end:], '\n')
		if j < 1 || b[end+j-1] != '\r' || bytes.IndexByte(b[end:end+j-1], '\r') >= 0 {
			return end
		}
		if max > 0 && p.lineLen+j-1 > max {
			return end
		}
		p.lineLen = 0
		p.line++
		end += j + 1
	}
}

// indexLineEnd finds the first CR or LF with two vectorised searches.
func indexLineEnd(b []byte) int {
	j := bytes.IndexByte(b, '\n')
	if j < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if k := bytes.IndexByte(b[:j], '\r'); k >= 0 {
		return k
	}
	return j
}

func (p *preparer) data(b []byte) {
	if !p.inBody && p.lineLen == 0 && b[0] != ' ' && b[0] != '\t' {
		p.endField()
	}
	p.lineLen += len(b)
	if max := p.opts.MaxLineLength; max > 0 && p.lineLen > max {
		p.err = &LineTooLongError{Line: p.line + 1, Limit: max}
		return
	}
	if p.inBody {
		p.w.write(b)
		return
	}
	if len(p.hb)+len(b) > p.opts.MaxHeaderBytes {
		p.err = &HeaderTooLargeError{Limit: p.opts.MaxHeaderBytes}
		return
	}
	p.hb = append(p.hb, b...)
}

func (p *preparer) eol(bare bool) {
	if bare && p.opts.BareLineEndings == Refuse {
		p.err = &BareLineEndingError{Line: p.line + 1}
		return
	}
	p.line++
	n := p.lineLen
	p.lineLen = 0
	if p.inBody {
		p.w.writeString("\r\n")
		return
	}
	if n == 0 {
		// The empty line that ends the header section.
		p.endField()
		p.startBody()
		return
	}
	l := p.hb[p.lineStart:]
	switch {
	case l[0] == ' ' || l[0] == '\t':
		if p.field < 0 {
			p.bodyLine()
			return
		}
	case isFieldStart(l):
		p.field = p.lineStart
	default:
		p.bodyLine()
		return
	}
	if len(p.hb)+2 > p.opts.MaxHeaderBytes {
		p.err = &HeaderTooLargeError{Limit: p.opts.MaxHeaderBytes}
		return
	}
	p.hb = append(p.hb, '\r', '\n')
	p.lineStart = len(p.hb)
}

// bodyLine ends the header section at a line that is not a header field:
// the line becomes the first of the body, after an inserted empty line.
func (p *preparer) bodyLine() {
	line := p.hb[p.lineStart:]
	p.hb = p.hb[:p.lineStart]
	p.startBody()
	p.w.write(line)
	p.w.writeString("\r\n")
}

// isFieldStart reports a field name (printable ASCII but colon), optional
// white space (RFC 5322's obsolete syntax), then a colon.
func isFieldStart(l []byte) bool {
	i := 0
	for i < len(l) && l[i] > ' ' && l[i] < 127 && l[i] != ':' {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(l) && (l[i] == ' ' || l[i] == '\t') {
		i++
	}
	return i < len(l) && l[i] == ':'
}

// endField looks at the field just completed (hb[p.field:]) and, for From
// when rewriting, replaces it in place.
func (p *preparer) endField() {
	if p.field < 0 {
		return
	}
	f := p.hb[p.field:]
	p.field = -1
	defer func() { p.lineStart = len(p.hb) }()
	colon := bytes.IndexByte(f, ':')
	name := bytes.TrimRight(f[:colon], " \t")
	value := f[colon+1 : len(f)-2]
	switch {
	case asciiEqualFold(name, "From"):
		if p.seenFrom {
			if p.opts.RewriteFrom != "" {
				// A second From would contradict the rewritten one.
				p.hb = p.hb[:len(p.hb)-len(f)]
			}
			return
		}
		p.seenFrom = true
		addr, display, ok := parseMailbox(value)
		if ok {
			p.info.HeaderFrom = addr
		} else {
			p.info.HeaderFrom = unfold(value)
		}
		if p.opts.CleanDisplayName && !ok {
			// A name net/mail cannot read (raw 8-bit bytes, stray
			// quotes) in front of a good <address>.
			u := unfold(value)
			if lt := strings.LastIndexByte(u, '<'); lt >= 0 && strings.HasSuffix(u, ">") && simpleAddr(u[lt+1:len(u)-1]) {
				addr, display, ok = u[lt+1:len(u)-1], u[:lt], true
				p.info.HeaderFrom = addr
			}
		}
		if p.opts.CleanDisplayName && ok {
			if clean := cleanDisplayName(display); clean != display {
				display = clean
				if p.opts.RewriteFrom == "" {
					p.hb = appendFrom(p.hb[:len(p.hb)-len(f)], display, addr)
				}
			}
		}
		if p.opts.RewriteFrom != "" {
			if ok {
				p.origFrom = append(p.origFrom[:0], value...)
			}
			p.hb = p.hb[:len(p.hb)-len(f)]
			p.hb = appendFrom(p.hb, display, p.opts.RewriteFrom)
		}
	case asciiEqualFold(name, "Reply-To"):
		p.seenReplyTo = true
	case asciiEqualFold(name, "Date"):
		p.seenDate = true
	case asciiEqualFold(name, "Message-ID"):
		if !p.seenMsgID {
			p.seenMsgID = true
			p.info.MessageID = unfold(value)
		}
	case asciiEqualFold(name, "Subject"):
		if !p.seenSubject {
			p.seenSubject = true
			p.info.Subject = decodeSubject(value)
			if pre := p.opts.SubjectPrefix; pre != "" && !strings.HasPrefix(p.info.Subject, pre) {
				rest := slices.Clone(bytes.TrimLeft(value, " \t")) // value is in hb
				p.hb = append(p.hb[:len(p.hb)-len(f)], "Subject: "+pre+" "...)
				p.hb = append(p.hb, rest...)
				p.hb = append(p.hb, '\r', '\n')
				p.info.Subject = pre + " " + p.info.Subject
			}
		}
	}
}

func (p *preparer) finish() {
	if p.cr {
		p.cr = false
		p.eol(true)
	}
	if p.err == nil && p.lineLen > 0 {
		// A last line without an ending gets one.
		p.eol(false)
	}
	if p.err == nil && !p.inBody {
		p.endField()
		p.startBody()
	}
}

// startBody writes the header section: Received, the device's fields, the
// additions, and the empty line.
func (p *preparer) startBody() {
	p.inBody = true
	o := &p.opts
	if o.Received != nil {
		p.scratch = appendReceived(p.scratch[:0], o.Received, o.QueueID, o.Now)
		p.w.write(p.scratch)
	}
	p.w.write(p.hb)
	if o.RewriteFrom != "" {
		if !p.seenFrom {
			p.w.write(appendFrom(p.scratch[:0], "", o.RewriteFrom))
		} else if !p.seenReplyTo && len(p.origFrom) > 0 {
			p.w.writeString("Reply-To:")
			p.w.write(p.origFrom)
			p.w.writeString("\r\n")
		}
	}
	if !p.seenFrom && o.RewriteFrom == "" && o.AddFrom != "" {
		p.w.write(appendFrom(p.scratch[:0], "", o.AddFrom))
		p.info.HeaderFrom = o.AddFrom
	}
	if !p.seenSubject && o.SubjectPrefix != "" {
		p.w.writeString("Subject: " + o.SubjectPrefix + "\r\n")
		p.info.Subject = o.SubjectPrefix
	}
	if !p.seenMsgID && o.AddMessageID != "" {
		p.info.MessageID = newMessageID(o.QueueID, o.AddMessageID)
		p.w.writeString("Message-ID: " + p.info.MessageID + "\r\n")
	}
	if !p.seenDate && o.AddDate {
		p.w.writeString("Date: " + o.Now.Format(time.RFC1123Z) + "\r\n")
	}
	p.w.writeString("\r\n")
	p.info.HeaderBytes = p.w.n + int64(len(p.w.buf))
}

// cleanDisplayName keeps the letters, digits, spaces and harmless
// punctuation of a display name; what Microsoft 365 refuses or misreads
// ("printer@plant" as a name, quotes, control bytes, broken UTF-8) goes.
func cleanDisplayName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError, r < ' ', r == 127, strings.ContainsRune("\"\\<>@;:,[]()", r):
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

func appendFrom(b []byte, display, addr string) []byte {
	b = append(b, "From: "...)
	if _, _, ok := simpleMailbox(display + " <" + addr + ">"); ok && display != "" {
		b = append(b, '"')
		b = append(b, display...)
		b = append(b, "\" <"...)
		b = append(b, addr...)
		return append(b, ">\r\n"...)
	}
	if display != "" {
		b = append(b, (&mail.Address{Name: display, Address: addr}).String()...)
	} else {
		b = append(b, '<')
		b = append(b, addr...)
		b = append(b, '>')
	}
	return append(b, '\r', '\n')
}

// appendReceived writes the trace field as RFC 5321 section 4.4 has it, with
// the TLS parameters in a comment as Postfix does.
func appendReceived(b []byte, r *Received, queueID string, now time.Time) []byte {
	b = append(b, "Received: from "...)
	b = appendClean(b, r.Helo, "unknown")
	b = append(b, " ("...)
	if r.ClientIP.IsValid() {
		ip := r.ClientIP.Unmap()
		b = append(b, '[')
		if ip.Is6() {
			b = append(b, "IPv6:"...)
		}
		b = ip.AppendTo(b)
		b = append(b, ']')
	} else {
		b = append(b, "unknown"...)
	}
	b = append(b, ")\r\n"...)
	if r.TLSVersion != 0 {
		b = append(b, "\t(using "...)
		b = append(b, strings.ReplaceAll(tls.VersionName(r.TLSVersion), " ", "")...)
		b = append(b, " with cipher "...)
		b = append(b, tls.CipherSuiteName(r.TLSCipher)...)
		b = append(b, ")\r\n"...)
	}
	b = append(b, "\tby "...)
	b = appendClean(b, r.By, "localhost")
	b = append(b, " (siterelay) with "...)
	b = appendClean(b, r.Protocol, "ESMTP")
	if queueID != "" {
		b = append(b, " id "...)
		b = appendClean(b, queueID, "")
	}
	if r.Recipient != "" {
		b = append(b, "\r\n\tfor <"...)
		b = appendClean(b, r.Recipient, "")
		b = append(b, '>')
	}
	b = append(b, "; "...)
	b = now.AppendFormat(b, time.RFC1123Z)
	return append(b, '\r', '\n')
}

// appendClean copies what a client told us (HELO name, address) into a
// header, leaving out anything that could end the field or a comment.
func appendClean(b []byte, s, empty string) []byte {
	start := len(b)
	for i := 0; i < len(s) && len(b)-start < 255; i++ {
		c := s[i]
		if c > ' ' && c < 127 && c != '(' && c != ')' && c != '\\' && c != '<' && c != '>' && c != ';' {
			b = append(b, c)
		}
	}
	if len(b) == start {
		b = append(b, empty...)
	}
	return b
}

func newMessageID(queueID, domain string) string {
	var r [8]byte
	rand.Read(r[:])
	var b []byte
	b = append(b, '<')
	for i := 0; i < len(queueID) && i < 64; i++ {
		if c := queueID[i]; c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' {
			b = append(b, c)
		}
	}
	if len(b) > 1 {
		b = append(b, '.')
	}
	b = hex.AppendEncode(b, r[:])
	b = append(b, '@')
	b = appendClean(b, domain, "localhost")
	b = append(b, '>')
	return string(b)
}

// parseMailbox returns the first address of a From value and its display
// name.
func parseMailbox(v []byte) (addr, display string, ok bool) {
	s := unfold(v)
	if addr, display, ok := simpleMailbox(s); ok {
		return addr, display, true
	}
	if a, err := mail.ParseAddress(s); err == nil {
		return a.Address, a.Name, true
	}
	if l, err := mail.ParseAddressList(s); err == nil && len(l) > 0 {
		return l[0].Address, l[0].Name, true
	}
	return "", "", false
}

// simpleMailbox parses the forms devices use ("a@b", "Name <a@b>",
// "\"Name\" <a@b>") without net/mail's allocations; anything else is left
// to net/mail.
func simpleMailbox(s string) (addr, display string, ok bool) {
	lt := strings.IndexByte(s, '<')
	if lt < 0 {
		return s, "", simpleAddr(s)
	}
	if !strings.HasSuffix(s, ">") || !simpleAddr(s[lt+1:len(s)-1]) {
		return "", "", false
	}
	display = strings.TrimSpace(s[:lt])
	if len(display) >= 2 && display[0] == '"' && display[len(display)-1] == '"' {
		display = display[1 : len(display)-1]
	}
	if strings.Contains(display, "=?") || strings.ContainsAny(display, "\"\\()<>@,;:[]") {
		return "", "", false
	}
	for i := 0; i < len(display); i++ {
		if display[i] < ' ' || display[i] > '~' {
			return "", "", false
		}
	}
	return s[lt+1 : len(s)-1], display, true
}

func simpleAddr(s string) bool {
	at := strings.IndexByte(s, '@')
	if at < 1 || at == len(s)-1 || strings.IndexByte(s[at+1:], '@') >= 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || strings.IndexByte("\"(),:;<>[]\\", c) >= 0 {
			return false
		}
	}
	return true
}

func unfold(v []byte) string {
	s := strings.TrimSpace(string(v))
	if strings.IndexByte(s, '\r') >= 0 {
		s = strings.ReplaceAll(s, "\r\n", "")
	}
	return s
}

var wordDecoder = mime.WordDecoder{}

func decodeSubject(v []byte) string {
	s := unfold(v)
	if strings.Contains(s, "=?") {
		if d, err := wordDecoder.DecodeHeader(s); err == nil {
			s = d
		}
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i]|0x20, s[i]|0x20
		if c != d {
			return false
		}
	}
	return true
}

// countWriter is a bufio.Writer that counts and keeps its first error.
type countWriter struct {
	dst io.Writer
	buf []byte
	n   int64 // flushed bytes
	err error
}

func (w *countWriter) reset(dst io.Writer) {
	w.dst, w.buf, w.n, w.err = dst, w.buf[:0], 0, nil
}

func (w *countWriter) write(b []byte) {
	if len(w.buf)+len(b) > cap(w.buf) {
		w.flush()
		if len(b) > cap(w.buf) {
			w.emit(b)
			return
		}
	}
	w.buf = append(w.buf, b...)
}

func (w *countWriter) writeString(s string) {
	if len(w.buf)+len(s) > cap(w.buf) {
		w.flush()
		if len(s) > cap(w.buf) {
			w.emit([]byte(s))
			return
		}
	}
	w.buf = append(w.buf, s...)
}

func (w *countWriter) flush() error {
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = w.buf[:0]
	}
	return w.err
}

func (w *countWriter) emit(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.dst.Write(b)
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("writing message: %w", err)
	}
}

// HeaderSection reads the header section of a prepared message (through
// its empty line) for a bounce, which quotes the header but not the body.
// It reads at most limit bytes.
func HeaderSection(r io.ReaderAt, limit int64) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	var off int64
	for off < limit {
		n, err := r.ReadAt(buf[:min(int64(len(buf)), limit-off)], off)
		from := max(0, len(out)-3)
		out = append(out, buf[:n]...)
		off += int64(n)
		if bytes.HasPrefix(out, []byte("\r\n")) {
			return out[:2], nil
		}
		if i := bytes.Index(out[from:], []byte("\r\n\r\n")); i >= 0 {
			return out[:from+i+4], nil
		}
		if err == io.EOF {
			return nil, errors.New("reading header section: no empty line ends it")
		}
		if err != nil {
			return nil, fmt.Errorf("reading header section: %w", err)
		}
	}
	return nil, errors.New("reading header section: longer than " + strconv.FormatInt(limit, 10) + " bytes")
}
