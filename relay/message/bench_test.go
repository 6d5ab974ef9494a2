package message

import (
	"io"
	"net/netip"
	"strings"
	"testing"
)

// msg4KiB is a typical device message: a short header and a base64 body.
var msg4KiB = func() string {
	h := "From: \"Scanner 2F\" <scan@printer.local>\r\nTo: ops@contoso.com\r\nSubject: Scan from MFP 2F\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
	line := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2", 2)[:76] + "\r\n"
	var b strings.Builder
	b.WriteString(h)
	for b.Len()+len(line) <= 4096 {
		b.WriteString(line)
	}
	return b.String()
}()

func BenchmarkPrepare4KiB(b *testing.B) {
	opts := Options{
		Received:     &Received{Helo: "mfp-2f", ClientIP: netip.MustParseAddr("10.20.1.5"), By: "relay.example", Protocol: "ESMTP", Recipient: "ops@contoso.com"},
		QueueID:      "01JB8Q2X3Y4Z",
		Now:          t0,
		AddMessageID: "relay.example",
		AddDate:      true,
		RewriteFrom:  "relay@contoso.com",
	}
	r := strings.NewReader(msg4KiB)
	b.SetBytes(int64(len(msg4KiB)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg4KiB)
		if _, err := Prepare(io.Discard, r, opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPrepareBareLF4KiB(b *testing.B) {
	msg := strings.ReplaceAll(msg4KiB, "\r\n", "\n")
	r := strings.NewReader(msg)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg)
		if _, err := Prepare(io.Discard, r, Options{Now: t0}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPrepare10MiB(b *testing.B) {
	body := strings.Repeat(msg4KiB[strings.Index(msg4KiB, "\r\n\r\n")+4:], 2560)
	msg := "Subject: big\r\n\r\n" + body
	r := strings.NewReader(msg)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg)
		if _, err := Prepare(io.Discard, r, Options{Now: t0}); err != nil {
			b.Fatal(err)
		}
	}
}
