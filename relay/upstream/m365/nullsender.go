package m365

import (
	"bytes"
	"errors"
	"io"
	"net/mail"
	"strings"

	"github.com/siterelay/siterelay/relay/upstream"
)

// maxHead is the most header bytes fromMailbox reads to find From.
const maxHead = 256 << 10

// fromMailbox returns msg as a mailbox kind can send it when its envelope
// sender is null (a bounce, or a device's own notification). Client
// submission and Graph take mail only from the authenticated mailbox (or
// one it may send as): MAIL FROM:<> and a From: of MAILER-DAEMON@relay are
// refused (5.7.60), and the bounce would be lost. So the message goes from
// the mailbox: envelope sender the mailbox, and the From header's address
// replaced by the mailbox under the same display name ("Mail Delivery
// System"). Every other header stays as the DSN wrote it (Auto-Submitted:
// auto-replied keeps auto-responders from answering; the multipart/report
// still carries the delivery status). Only the header section is copied;
// the body is read from the spool as it is.
func fromMailbox(msg *upstream.Message, mailbox string) (*upstream.Message, error) {
	return sendAs(msg, mailbox, false)
}

// sendAs is fromMailbox for any message; with replyTo, the address the
// From header had goes to a Reply-To header when the message has none, so
// that answers still reach the device's owner (upstream.m365.from_mailbox).
func sendAs(msg *upstream.Message, mailbox string, replyTo bool) (*upstream.Message, error) {
	head := make([]byte, min(msg.Size, maxHead))
	n, err := msg.Body.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	head = head[:n]
	end := bytes.Index(head, []byte("\r\n\r\n"))
	if end < 0 {
		return nil, errors.New("no end of the header section in the first 256 KiB")
	}
	end += 2 // keep the header section's last CRLF with it
	var out bytes.Buffer
	name, replaced := "Mail Delivery System", false
	orig, hasReplyTo := "", false
	lines := bytes.SplitAfter(head[:end], []byte("\r\n"))
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if hasField(l, "reply-to") {
			hasReplyTo = true
		}
		if !hasField(l, "from") {
			out.Write(l)
			continue
		}
		field := bytes.Clone(l)
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			field = append(field, lines[i]...)
		}
		_, value, _ := bytes.Cut(field, []byte(":"))
		if a, err := mail.ParseAddress(strings.TrimSpace(string(value))); err == nil {
			if a.Name != "" {
				name = a.Name
			}
			if orig == "" {
				orig = a.Address
			}
		}
		if !replaced {
			out.WriteString("From: " + (&mail.Address{Name: name, Address: mailbox}).String() + "\r\n")
			replaced = true
		}
	}
	if !replaced {
		hdr := "From: " + (&mail.Address{Name: name, Address: mailbox}).String() + "\r\n"
		out = *bytes.NewBuffer(append([]byte(hdr), out.Bytes()...))
	}
	if replyTo && !hasReplyTo && orig != "" && !strings.EqualFold(orig, mailbox) {
		out.WriteString("Reply-To: " + (&mail.Address{Address: orig}).String() + "\r\n")
	}
	h := out.Bytes()
	c := *msg
	c.From = mailbox
	c.Body = &joined{head: h, rest: msg.Body, at: int64(end)}
	c.Size = int64(len(h)) + msg.Size - int64(end)
	return &c, nil
}

func hasField(line []byte, name string) bool {
	k, _, ok := bytes.Cut(line, []byte(":"))
	return ok && strings.EqualFold(strings.TrimRight(string(k), " \t"), name)
}

// joined reads head, then rest from offset at.
type joined struct {
	head []byte
	rest io.ReaderAt
	at   int64
}

func (j *joined) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	if off < int64(len(j.head)) {
		n = copy(p, j.head[off:])
		if n == len(p) {
			return n, nil
		}
		off += int64(n)
	}
	m, err := j.rest.ReadAt(p[n:], j.at+off-int64(len(j.head)))
	return n + m, err
}
