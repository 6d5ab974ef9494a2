package message

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The header section: recognising the device's fields, rewriting From, and
// the fields the relay adds (Received, Message-ID, Date) so Microsoft 365
// accepts what sloppy devices send.

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
