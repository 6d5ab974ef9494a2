package message

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

// normalise is the reference for line endings: NULs go, every CRLF, bare CR
// and bare LF becomes CRLF, and a last line without an ending gets one.
func normalise(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\r':
			if i+1 < len(s) && s[i+1] == '\n' {
				i++
			}
			b.WriteString("\r\n")
		case '\n':
			b.WriteString("\r\n")
		default:
			b.WriteByte(c)
		}
	}
	if n := b.Len(); n > 0 && !strings.HasSuffix(b.String(), "\r\n") {
		b.WriteString("\r\n")
	}
	return b.String()
}

func FuzzPrepare(f *testing.F) {
	f.Add("From: a@b.c\r\nSubject: x\r\n\r\nbody\r\n", false)
	f.Add("Subject: x\nno separator\n.\n", true)
	f.Add("\r\n.\r\rx", false)
	f.Add(" cont\r\n", true)
	for _, eod := range smuggling {
		f.Add("Subject: s\r\n\r\nbody"+eod+"MAIL FROM:<a@b>\r\n", false)
	}
	rcv := &Received{Helo: "h", ClientIP: netip.MustParseAddr("10.0.0.1"), By: "r", Protocol: "ESMTP"}
	f.Fuzz(func(t *testing.T, in string, add bool) {
		// With nothing added but Received, the output is Received, then the
		// normalised input, with at most an empty line inserted where the
		// header section ends.
		var out bytes.Buffer
		info, err := Prepare(&out, strings.NewReader(in), Options{Received: rcv, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		got := out.String()
		if !onlyCRLF(got) {
			t.Fatalf("bare CR or LF in output %q", got)
		}
		if info.Size != int64(len(got)) || info.HeaderBytes > info.Size || !strings.HasSuffix(got[:info.HeaderBytes], "\r\n") {
			t.Fatalf("Info %+v for %d bytes", info, len(got))
		}
		if !strings.HasPrefix(got, "Received: ") {
			t.Fatalf("no Received first: %q", got)
		}
		rest := got[strings.Index(got, "+0000\r\n")+7:]
		want := normalise(in)
		sep := len(rest) - (len(got) - int(info.HeaderBytes)) - 2
		if rest != want && rest[:sep]+rest[sep+2:] != want {
			t.Fatalf("in %q\ngot  %q\nwant %q (modulo an empty line at %d)", in, rest, want, sep)
		}
		h, err := HeaderSection(strings.NewReader(got), int64(len(got)))
		if err != nil || len(h) != int(info.HeaderBytes) {
			t.Fatalf("HeaderSection %d bytes, %v; HeaderBytes %d", len(h), err, info.HeaderBytes)
		}

		// Everything on: never a panic, only CRLF.
		opts := Options{Received: rcv, Now: t0, AddMessageID: "r.example", AddDate: true, RewriteFrom: "relay@contoso.com", MaxHeaderBytes: 200, MaxLineLength: 100}
		if add {
			opts.BareLineEndings = Refuse
			opts.NUL = RefuseNUL
		}
		out.Reset()
		if _, err := Prepare(&out, strings.NewReader(in), opts); err == nil && (!onlyCRLF(out.String()) || strings.IndexByte(out.String(), 0) >= 0) {
			t.Fatalf("bare CR or LF, or NUL, in output %q", out.String())
		} else if _, ok := Reply(err); err != nil && !ok {
			t.Fatalf("error without a reply: %v", err)
		}
	})
}
