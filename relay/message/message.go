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
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"
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

// readSize is the read buffer's and the output buffer's size: pooled,
// one pair a session in DATA (50 sessions held 3 MiB at 32 KiB each, for
// no gain in CPU: lines are short, and the spool copies the output
// once whatever the chunk's size).
const readSize = 8 << 10

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
	}
	if len(w.buf) == 0 && len(b) >= directWrite {
		// A large run of body lines with nothing buffered before it goes
		// to dst as it is, without a copy into buf first.
		w.emit(b)
		return
	}
	w.buf = append(w.buf, b...)
}

// directWrite is the smallest write countWriter passes on unbuffered.
const directWrite = 4 << 10

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
