package message

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"
)

var t0 = time.Date(2026, 11, 3, 14, 5, 6, 0, time.UTC)

func prepare(t *testing.T, in string, opts Options) (string, Info, error) {
	t.Helper()
	if opts.Now.IsZero() {
		opts.Now = t0
	}
	var out bytes.Buffer
	info, err := Prepare(&out, strings.NewReader(in), opts)
	if err == nil && info.Size != int64(out.Len()) {
		t.Errorf("Info.Size = %d, wrote %d", info.Size, out.Len())
	}
	return out.String(), info, err
}

// onlyCRLF reports whether every CR and LF in s is part of a CRLF pair.
func onlyCRLF(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+1 >= len(s) || s[i+1] != '\n' {
				return false
			}
			i++
		case '\n':
			return false
		}
	}
	return true
}

func TestPrepareShapes(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "Subject: hi\r\n\r\nbody\r\n", "Subject: hi\r\n\r\nbody\r\n"},
		{"bare LF everywhere", "Subject: hi\n\nbody\nmore\n", "Subject: hi\r\n\r\nbody\r\nmore\r\n"},
		{"bare CR everywhere", "Subject: hi\r\rbody\r", "Subject: hi\r\n\r\nbody\r\n"},
		{"CR CR LF is two lines", "Subject: hi\r\n\r\na\r\r\nb\r\n", "Subject: hi\r\n\r\na\r\n\r\nb\r\n"},
		{"no headers, text only", "Hello printer\r\nline 2\r\n", "\r\nHello printer\r\nline 2\r\n"},
		{"starts with empty line", "\r\nbody\r\n", "\r\nbody\r\n"},
		{"empty message", "", "\r\n"},
		{"headers only, no separator", "Subject: x\r\nFrom: a@b.c\r\n", "Subject: x\r\nFrom: a@b.c\r\n\r\n"},
		{"headers then text without separator", "Subject: x\r\nHello world\r\n", "Subject: x\r\n\r\nHello world\r\n"},
		{"last line without ending", "Subject: x\r\n\r\nabc", "Subject: x\r\n\r\nabc\r\n"},
		{"header without ending", "Subject: x", "Subject: x\r\n\r\n"},
		{"folded field", "Subject: a\r\n b\r\n\tc\r\n\r\nx\r\n", "Subject: a\r\n b\r\n\tc\r\n\r\nx\r\n"},
		{"first line folded is body", " indented\r\n", "\r\n indented\r\n"},
		{"obsolete space before colon", "Subject : x\r\n\r\ny\r\n", "Subject : x\r\n\r\ny\r\n"},
		{"mbox From_ line is body", "From x@y Mon Jan 1\r\nSubject: x\r\n", "\r\nFrom x@y Mon Jan 1\r\nSubject: x\r\n"},
		{"dot line stays data", "Subject: x\r\n\r\n.\r\n..\r\n", "Subject: x\r\n\r\n.\r\n..\r\n"},
		{"NUL removed", "Subject: x\r\n\r\na\x00b\r\n", "Subject: x\r\n\r\nab\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, info, err := prepare(t, tt.in, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if h := got[:info.HeaderBytes]; !strings.HasSuffix(h, "\r\n") || (h != "\r\n" && !strings.HasSuffix(h, "\r\n\r\n")) {
				t.Errorf("HeaderBytes %d cuts %q", info.HeaderBytes, h)
			}
		})
	}
}

// TestPrepareChunking feeds every test message one byte at a time, so CR
// and LF land on every read boundary.
func TestPrepareChunking(t *testing.T) {
	for _, in := range []string{"Subject: a\r\n\r\nb\r\nc\r", "Subject: a\r\rb\r\n\nc\n", "a\r\n.\r\r\n"} {
		var whole, split bytes.Buffer
		if _, err := Prepare(&whole, strings.NewReader(in), Options{Now: t0}); err != nil {
			t.Fatal(err)
		}
		if _, err := Prepare(&split, iotest.OneByteReader(strings.NewReader(in)), Options{Now: t0}); err != nil {
			t.Fatal(err)
		}
		if got, want := split.String(), whole.String(); got != want {
			t.Errorf("%q byte by byte: got %q, want %q", in, got, want)
		}
	}
}

func TestPrepareReceived(t *testing.T) {
	tests := []struct {
		name string
		r    Received
		qid  string
		want string
	}{
		{"plain with one recipient", Received{Helo: "printer-3", ClientIP: netip.MustParseAddr("10.1.2.3"), By: "relay.example", Protocol: "ESMTP", Recipient: "a@example.com"}, "Q1",
			"Received: from printer-3 ([10.1.2.3])\r\n\tby relay.example (siterelay) with ESMTP id Q1\r\n\tfor <a@example.com>; Tue, 03 Nov 2026 14:05:06 +0000\r\n"},
		{"TLS and login, IPv6", Received{Helo: "app", ClientIP: netip.MustParseAddr("2001:db8::1"), By: "relay", Protocol: "ESMTPSA", TLSVersion: tls.VersionTLS13, TLSCipher: tls.TLS_AES_128_GCM_SHA256}, "Q2",
			"Received: from app ([IPv6:2001:db8::1])\r\n\t(using TLS1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\tby relay (siterelay) with ESMTPSA id Q2; Tue, 03 Nov 2026 14:05:06 +0000\r\n"},
		{"mapped IPv4, hostile HELO", Received{Helo: "x)\r\nBcc: evil (a;b)", ClientIP: netip.MustParseAddr("::ffff:10.0.0.1"), By: "relay", Protocol: "ESMTP"}, "",
			"Received: from xBcc:evilab ([10.0.0.1])\r\n\tby relay (siterelay) with ESMTP; Tue, 03 Nov 2026 14:05:06 +0000\r\n"},
		{"empty HELO", Received{By: "relay", Protocol: "ESMTP"}, "",
			"Received: from unknown (unknown)\r\n\tby relay (siterelay) with ESMTP; Tue, 03 Nov 2026 14:05:06 +0000\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := prepare(t, "Subject: s\r\n\r\nb\r\n", Options{Received: &tt.r, QueueID: tt.qid})
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.want + "Subject: s\r\n\r\nb\r\n"; got != want {
				t.Errorf("got\n%q\nwant\n%q", got, want)
			}
		})
	}
}

func TestPrepareAdditions(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		opts       Options
		want       string // header section expected, "MSGID" standing for the generated id
		headerFrom string
	}{
		{"adds Message-ID and Date", "Subject: scan\r\n\r\nb\r\n", Options{AddMessageID: "relay.example", AddDate: true, QueueID: "Q9"},
			"Subject: scan\r\nMessage-ID: MSGID\r\nDate: Tue, 03 Nov 2026 14:05:06 +0000\r\n\r\n", ""},
		{"keeps existing ones", "Message-ID: <a@b>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n", Options{AddMessageID: "relay.example", AddDate: true},
			"Message-ID: <a@b>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n", ""},
		{"adds to a headerless message", "just text\r\n", Options{AddMessageID: "r.example", AddDate: true},
			"Message-ID: MSGID\r\nDate: Tue, 03 Nov 2026 14:05:06 +0000\r\n\r\n", ""},
		{"rewrite keeps display name, moves From to Reply-To", "From: \"Scanner 2F\" <scan@printer.local>\r\nSubject: s\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"From: \"Scanner 2F\" <relay@contoso.com>\r\nSubject: s\r\nReply-To: \"Scanner 2F\" <scan@printer.local>\r\n\r\n", "scan@printer.local"},
		{"rewrite without display name", "From: scan@printer.local\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"From: <relay@contoso.com>\r\nReply-To: scan@printer.local\r\n\r\n", "scan@printer.local"},
		{"rewrite keeps an existing Reply-To", "Reply-To: ops@contoso.com\r\nFrom: Scanner <scan@printer.local>\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"Reply-To: ops@contoso.com\r\nFrom: \"Scanner\" <relay@contoso.com>\r\n\r\n", "scan@printer.local"},
		{"rewrite of folded From, second From dropped", "From: Scanner\r\n <scan@printer.local>\r\nFrom: other@x.y\r\nSubject: s\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"From: \"Scanner\" <relay@contoso.com>\r\nSubject: s\r\nReply-To: Scanner\r\n <scan@printer.local>\r\n\r\n", "scan@printer.local"},
		{"rewrite of unparsable From: no Reply-To", "From: scanner\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"From: <relay@contoso.com>\r\n\r\n", "scanner"},
		{"rewrite adds From when missing", "Subject: s\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"Subject: s\r\nFrom: <relay@contoso.com>\r\n\r\n", ""},
		{"non-ASCII display name is encoded", "From: =?utf-8?q?Dr=C3=BCcker?= <p@x.local>\r\n\r\nb\r\n", Options{RewriteFrom: "relay@contoso.com"},
			"From: =?utf-8?q?Dr=C3=BCcker?= <relay@contoso.com>\r\nReply-To: =?utf-8?q?Dr=C3=BCcker?= <p@x.local>\r\n\r\n", "p@x.local"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, info, err := prepare(t, tt.in, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(tt.want, "MSGID", info.MessageID)
			if h := got[:info.HeaderBytes]; h != want {
				t.Errorf("header got\n%q\nwant\n%q", h, want)
			}
			if got[info.HeaderBytes:] != "b\r\n" && got[info.HeaderBytes:] != "just text\r\n" {
				t.Errorf("body %q", got[info.HeaderBytes:])
			}
			if info.HeaderFrom != tt.headerFrom {
				t.Errorf("HeaderFrom = %q, want %q", info.HeaderFrom, tt.headerFrom)
			}
			if tt.opts.AddMessageID != "" && !strings.HasPrefix(info.MessageID, "<") {
				t.Errorf("MessageID = %q", info.MessageID)
			}
		})
	}
}

func TestMessageIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		_, info, err := prepare(t, "x\r\n", Options{AddMessageID: "r.example", QueueID: "Q1"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(info.MessageID, "<Q1.") || !strings.HasSuffix(info.MessageID, "@r.example>") || seen[info.MessageID] {
			t.Fatalf("MessageID %q (duplicate: %v)", info.MessageID, seen[info.MessageID])
		}
		seen[info.MessageID] = true
	}
}

func TestPrepareInfo(t *testing.T) {
	in := "From: \"A\" <a@b.example>\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?= aus\r\n Halle\r\nMessage-ID:\r\n <x@y>\r\n\r\nb\xe9\r\n"
	got, info, err := prepare(t, in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Info{MessageID: "<x@y>", Subject: "Grüße aus Halle", HeaderFrom: "a@b.example", Size: int64(len(got)), EightBit: true, HeaderBytes: int64(len(in) - 4)}
	if info != want {
		t.Errorf("got %+v, want %+v", info, want)
	}
	if _, info, _ := prepare(t, "Subject: plain\r\n\r\nascii\r\n", Options{}); info.EightBit {
		t.Error("EightBit set for ASCII")
	}
}

func TestPrepareRefusals(t *testing.T) {
	long := strings.Repeat("x", 1001)
	tests := []struct {
		name string
		in   string
		opts Options
		want error
		code int
		enh  smtp.EnhancedCode
	}{
		{"bare LF refused", "Subject: x\r\n\r\na\nb\r\n", Options{BareLineEndings: Refuse}, &BareLineEndingError{Line: 3}, 550, smtp.EnhancedCode{5, 6, 11}},
		{"bare CR refused", "Subject: x\r\r\n", Options{BareLineEndings: Refuse}, &BareLineEndingError{Line: 1}, 550, smtp.EnhancedCode{5, 6, 11}},
		{"trailing CR refused", "Subject: x\r\n\r\nb\r", Options{BareLineEndings: Refuse}, &BareLineEndingError{Line: 3}, 550, smtp.EnhancedCode{5, 6, 11}},
		{"header too large", "Subject: " + long + "\r\n\r\nb\r\n", Options{MaxHeaderBytes: 1000}, &HeaderTooLargeError{Limit: 1000}, 552, smtp.EnhancedCode{5, 3, 4}},
		{"many fields too large", strings.Repeat("X-A: b\r\n", 200) + "\r\n", Options{MaxHeaderBytes: 1000}, &HeaderTooLargeError{Limit: 1000}, 552, smtp.EnhancedCode{5, 3, 4}},
		{"body line too long", "Subject: x\r\n\r\n" + long + "\r\n", Options{MaxLineLength: 1000}, &LineTooLongError{Line: 3, Limit: 1000}, 550, smtp.EnhancedCode{5, 6, 0}},
		{"header line too long", "Subject: " + long + "\r\n", Options{MaxLineLength: 1000}, &LineTooLongError{Line: 1, Limit: 1000}, 550, smtp.EnhancedCode{5, 6, 0}},
		{"NUL refused", "Subject: x\r\n\r\nok\r\n\x00.\r\n", Options{NUL: RefuseNUL}, &NULError{Line: 4}, 550, smtp.EnhancedCode{5, 6, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The rest of the stream must be read even after the refusal.
			r := strings.NewReader(tt.in + strings.Repeat("more data\r\n", 10000))
			_, err := Prepare(io.Discard, r, tt.opts)
			if err == nil || err.Error() != tt.want.Error() {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if r.Len() != 0 {
				t.Errorf("%d bytes of src left unread", r.Len())
			}
			se, ok := Reply(err)
			if !ok || se.Code != tt.code || se.EnhancedCode != tt.enh {
				t.Fatalf("Reply = %+v, %v; want %d %v", se, ok, tt.code, tt.enh)
			}
		})
	}
}

func TestNULRemoved(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Subject: x\r\n\r\nok\r\n\x00.\r\nMAIL FROM:<a@b>\r\n", "Subject: x\r\n\r\nok\r\n.\r\nMAIL FROM:<a@b>\r\n"},
		{"Sub\x00ject: x\r\x00\n\r\nb\x00\x00ody\r\n", "Subject: x\r\n\r\nbody\r\n"},
	} {
		got, _, err := prepare(t, tc.in, Options{})
		if err != nil || got != tc.want {
			t.Errorf("Prepare(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestBareLineEndingReplyText(t *testing.T) {
	se, _ := Reply(&BareLineEndingError{Line: 1})
	want := `bare CR or LF in message data; fix the sender or set limits.bare_line_endings to "normalise"`
	if se.Message != want {
		t.Errorf("got %q, want %q", se.Message, want)
	}
	se, _ = Reply(&LineTooLongError{Line: 1, Limit: 4000})
	if !strings.Contains(se.Message, "limits.max_line_length") {
		t.Errorf("line too long reply does not name the setting: %q", se.Message)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPrepareIOErrors(t *testing.T) {
	_, err := Prepare(io.Discard, io.MultiReader(strings.NewReader("Subject: x\r\n"), errReader{smtp.ErrDataTooLarge}), Options{})
	if se, ok := Reply(err); !ok || se.Code != 552 {
		t.Errorf("too large: got %v", err)
	}
	_, err = Prepare(io.Discard, errReader{io.ErrUnexpectedEOF}, Options{})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v", err)
	}
	if _, ok := Reply(err); ok {
		t.Error("a vanished client has no reply")
	}
	_, err = Prepare(errWriter{}, strings.NewReader("Subject: x\r\n\r\nb\r\n"), Options{})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("got %v", err)
	}
}

// Payloads from SEC Consult's "SMTP Smuggling" (December 2023) and the
// variants that followed: an end of data that some servers accept but the
// relay's DATA reader does not, followed by a second, smuggled message.
var smuggling = []string{
	"\n.\r\n",
	"\n.\n",
	"\r.\r\n",
	"\r\n.\n",
	"\r\n.\r",
	"\r.\r",
	"\n.\r",
	"\r\n\x00.\r\n",
	"\r\n.\r\r\n",
}

func TestSmuggling(t *testing.T) {
	const smuggled = "MAIL FROM:<admin@contoso.com>\r\nRCPT TO:<victim@contoso.com>\r\nDATA\r\nFrom: admin@contoso.com\r\n\r\nsmuggled\r\n"
	for _, eod := range smuggling {
		t.Run(strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(eod), func(t *testing.T) {
			in := "From: a@b.example\r\nSubject: s\r\n\r\nbody" + eod + smuggled
			got, _, err := prepare(t, in, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !onlyCRLF(got) {
				t.Fatalf("output has a bare CR or LF: %q", got)
			}
			// Send it the way the upstream client does (dot-stuffed) and
			// read it back the way a server does: it is one message, whole.
			var wire bytes.Buffer
			tw := textproto.NewWriter(bufio.NewWriter(&wire))
			dw := tw.DotWriter()
			io.WriteString(dw, got)
			dw.Close()
			tr := textproto.NewReader(bufio.NewReader(io.MultiReader(&wire, strings.NewReader("QUIT\r\n"))))
			back, err := io.ReadAll(tr.DotReader())
			if err != nil {
				t.Fatal(err)
			}
			if string(back) != strings.ReplaceAll(got, "\r\n", "\n") {
				t.Errorf("message changed on the wire:\n%q\n%q", back, got)
			}
			if rest, _ := tr.ReadLine(); rest != "QUIT" {
				t.Errorf("after the message the server reads %q, not the next command", rest)
			}

			_, err = Prepare(io.Discard, strings.NewReader(in), Options{BareLineEndings: Refuse})
			if _, ok := err.(*BareLineEndingError); !ok && eod != "\r\n\x00.\r\n" {
				t.Errorf("Refuse mode: got %v", err)
			}
		})
	}
}

func TestHeaderSection(t *testing.T) {
	var out bytes.Buffer
	info, err := Prepare(&out, strings.NewReader("Subject: x\r\nX-Y: z\r\n\r\n"+strings.Repeat("body\r\n", 5000)), Options{Received: &Received{By: "r"}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := HeaderSection(bytes.NewReader(out.Bytes()), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(h)) != info.HeaderBytes || !bytes.HasSuffix(h, []byte("X-Y: z\r\n\r\n")) {
		t.Errorf("got %d bytes %q, want %d", len(h), h, info.HeaderBytes)
	}
	if h, err := HeaderSection(strings.NewReader("\r\nbody\r\n"), 100); err != nil || string(h) != "\r\n" {
		t.Errorf("empty header: %q, %v", h, err)
	}
	if _, err := HeaderSection(strings.NewReader("Subject: x\r\n"), 100); err == nil {
		t.Error("no error for a header with no end")
	}
	if _, err := HeaderSection(bytes.NewReader(out.Bytes()), 10); err == nil {
		t.Error("no error beyond the limit")
	}
}

func TestPrepareStreamsLargeBody(t *testing.T) {
	const size = 64 << 20
	src := io.MultiReader(strings.NewReader("Subject: big\r\n\r\n"), io.LimitReader(repeatReader("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"), size))
	var n countingDiscard
	allocs := testing.AllocsPerRun(1, func() {
		if _, err := Prepare(&n, src, Options{}); err != nil {
			t.Fatal(err)
		}
	})
	if n < size {
		t.Fatalf("wrote %d", n)
	}
	if allocs > 20 {
		t.Errorf("%v allocations for a 64 MiB body", allocs)
	}
}

type repeatReader string

func (r repeatReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		n += copy(b[n:], r)
	}
	return n, nil
}

type countingDiscard int64

func (c *countingDiscard) Write(b []byte) (int, error) {
	*c += countingDiscard(len(b))
	return len(b), nil
}
