package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

var (
	arrival = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)
	last    = time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)
	now     = time.Date(2026, 11, 24, 8, 0, 5, 0, time.UTC)
)

const origHeaders = "Received: from scanner (10.1.2.3) by relay.plant.example\r\n" +
	"From: Scanner Hall 2 <scanner@plant.example>\r\n" +
	"To: anna@example.com\r\n" +
	"Subject: Scan 0042\r\n" +
	"Message-ID: <a1@scanner>\r\n" +
	"\r\n" +
	"SECRET BODY that must never be copied\r\n"

// parsed is a DSN taken apart with the standard library only.
type parsed struct {
	header    mail.Header
	preamble  string
	types     []string // content types of the parts, in order
	human     string   // decoded text of the first part
	perMsg    textproto.MIMEHeader
	perRcpt   []textproto.MIMEHeader
	orig      string // the text/rfc822-headers part, decoded
	boundary  string
	rawLength int
}

var (
	contRE = regexp.MustCompile(`\n {16}`)
	paraRE = regexp.MustCompile(`([^\n])\n([^\n ])`)
)

func parse(t testing.TB, b []byte) parsed {
	t.Helper()
	if i := bytes.IndexByte(bytes.ReplaceAll(b, []byte("\r\n"), nil), '\n'); i >= 0 {
		t.Fatalf("bare LF in output near %q", b[max(0, i-20):])
	}
	if bytes.Contains(bytes.ReplaceAll(b, []byte("\r\n"), nil), []byte("\r")) {
		t.Fatal("bare CR in output")
	}
	for i, line := range bytes.Split(b, []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("line %d is %d bytes long", i+1, len(line))
		}
	}
	msg, err := mail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("net/mail: %v", err)
	}
	p := parsed{header: msg.Header, rawLength: len(b)}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("content type: %v", err)
	}
	if mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("content type %q %v", mt, params)
	}
	p.boundary = params["boundary"]
	mr := multipart.NewReader(msg.Body, p.boundary)
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("part %d: %v", len(p.types)+1, err)
		}
		ct, _, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if err != nil {
			t.Fatalf("part %d content type: %v", len(p.types)+1, err)
		}
		p.types = append(p.types, ct)
		body, err := io.ReadAll(part) // decodes quoted-printable
		if err != nil {
			t.Fatalf("part %d: %v", len(p.types), err)
		}
		switch ct {
		case "text/plain":
			// Undo the word wrap, so tests can look for whole sentences.
			p.human = contRE.ReplaceAllString(strings.ReplaceAll(string(body), "\r\n", "\n"), " ")
			p.human = paraRE.ReplaceAllString(p.human, "$1 $2")
		case "message/delivery-status":
			r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			p.perMsg, err = r.ReadMIMEHeader()
			if err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			for {
				h, err := r.ReadMIMEHeader()
				if len(h) > 0 {
					p.perRcpt = append(p.perRcpt, h)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("per-recipient fields: %v", err)
				}
			}
		case "text/rfc822-headers":
			p.orig = string(body)
		}
	}
	if want := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}; !reflect.DeepEqual(p.types, want) {
		t.Fatalf("parts %v, want %v", p.types, want)
	}
	return p
}

func TestBuildFailed(t *testing.T) {
	b, err := Build(Report{
		ReportingMTA: "relay.plant.example",
		QueueID:      "Q1A2",
		EnvelopeFrom: "scanner@plant.example",
		ArrivalDate:  arrival,
		Headers:      []byte(origHeaders),
		Recipients: []Recipient{{
			Recipient:      "anna@example.com",
			Action:         Failed,
			Status:         "5.1.10",
			DiagnosticCode: "smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
			Hint:           "The address anna@example.com does not exist in Microsoft 365. Correct the address in the scanner's address book.",
			LastAttempt:    last,
		}},
		Date: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, b)
	for _, tt := range []struct{ field, want string }{
		{"From", `"Mail Delivery System" <MAILER-DAEMON@relay.plant.example>`},
		{"To", "<scanner@plant.example>"},
		{"Subject", "Undelivered mail: Scan 0042"},
		{"Date", "Tue, 24 Nov 2026 08:00:05 +0000"},
		{"Auto-Submitted", "auto-replied"},
		{"MIME-Version", "1.0"},
	} {
		if got := p.header.Get(tt.field); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.field, got, tt.want)
		}
	}
	if id := p.header.Get("Message-ID"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, ".Q1A2@relay.plant.example>") {
		t.Errorf("Message-ID %q", id)
	}
	if d, err := p.header.Date(); err != nil || !d.Equal(now) {
		t.Errorf("Date parses to %v, %v", d, err)
	}
	if got, want := p.perMsg, (textproto.MIMEHeader{
		"Reporting-Mta":        {"dns; relay.plant.example"},
		"X-Siterelay-Queue-Id": {"Q1A2"},
		"Arrival-Date":         {"Mon, 23 Nov 2026 08:00:00 +0000"},
	}); !reflect.DeepEqual(got, want) {
		t.Errorf("per-message fields\n got %v\nwant %v", got, want)
	}
	if got, want := p.perRcpt, []textproto.MIMEHeader{{
		"Final-Recipient":   {"rfc822; anna@example.com"},
		"Action":            {"failed"},
		"Status":            {"5.1.10"},
		"Diagnostic-Code":   {"smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"},
		"Last-Attempt-Date": {"Tue, 24 Nov 2026 08:00:00 +0000"},
	}}; !reflect.DeepEqual(got, want) {
		t.Errorf("per-recipient fields\n got %v\nwant %v", got, want)
	}
	if got, want := p.orig, strings.Split(origHeaders, "\r\n\r\n")[0]+"\r\n"; got != want {
		t.Errorf("original headers\n got %q\nwant %q", got, want)
	}
	if bytes.Contains(b, []byte("SECRET BODY")) {
		t.Error("the original body leaked into the DSN")
	}
	for _, want := range []string{
		"This is the mail relay relay.plant.example.",
		"refused it permanently",
		"Sender:       scanner@plant.example",
		"Subject:      Scan 0042",
		"Queue ID:     Q1A2",
		"Recipient:    anna@example.com",
		"Status:       failed",
		"Server said:  550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
		"What to do:   The address anna@example.com does not exist in Microsoft 365. Correct the address in the scanner's address book.",
		"The message itself is not included.",
	} {
		if !strings.Contains(p.human, want) {
			t.Errorf("human part lacks %q:\n%s", want, p.human)
		}
	}
	if strings.Index(string(b), "text/plain") > strings.Index(string(b), "message/delivery-status") {
		t.Error("the human part is not first")
	}
}

// Round trip: what goes into a Report comes back out of a standard parser.
func TestRoundTrip(t *testing.T) {
	type rcpt struct{ final, action, status, diag, retry string }
	tests := []struct {
		name       string
		r          Report
		subject    string
		to         string
		rcpts      []rcpt
		orig       string
		humanWords []string
	}{
		{
			name: "expired, two recipients, default status",
			r: Report{ReportingMTA: "relay.local", QueueID: "Q2", EnvelopeFrom: "<alarm@scada.example>", Expired: true,
				Headers: []byte("Subject: Alarm\nFrom: alarm@scada.example\n"),
				Recipients: []Recipient{
					{Recipient: "ops@example.com", Action: Failed, DiagnosticCode: "451 4.7.500 Server busy. Please try again later", LastAttempt: last},
					{Recipient: "<boss@example.com>", Action: Failed, Status: "4.4.1", DiagnosticCode: "x-unix; connection timed out"},
				}},
			subject: "Undelivered mail: Alarm",
			to:      "<alarm@scada.example>",
			rcpts: []rcpt{
				{"rfc822; ops@example.com", "failed", "4.4.7", "smtp; 451 4.7.500 Server busy. Please try again later", ""},
				{"rfc822; boss@example.com", "failed", "4.4.1", "x-unix; connection timed out", ""},
			},
			orig:       "Subject: Alarm\r\nFrom: alarm@scada.example\r\n",
			humanWords: []string{"time limit ran out", "Recipient:    ops@example.com", "Recipient:    boss@example.com"},
		},
		{
			name: "delayed warning",
			r: Report{ReportingMTA: "relay.plant.example.", EnvelopeFrom: "printer@plant.example", To: "it-admin@plant.example",
				From:    "postmaster@relay.plant.example",
				Headers: []byte("Subject: =?utf-8?q?St=C3=B6rung_Linie_3?=\r\n\r\n"),
				Recipients: []Recipient{{Recipient: "ops@example.com", Action: Delayed, DiagnosticCode: "smtp; 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
					WillRetryUntil: last, Hint: "Microsoft limits a mailbox to 3 connections; the relay slows down by itself."}}},
			subject: "Delivery delayed: Störung Linie 3",
			to:      "<it-admin@plant.example>",
			rcpts: []rcpt{
				{"rfc822; ops@example.com", "delayed", "4.0.0", "smtp; 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", "Tue, 24 Nov 2026 08:00:00 +0000"},
			},
			orig:       "Subject: =?utf-8?q?St=C3=B6rung_Linie_3?=\r\n",
			humanWords: []string{"only a warning", "Subject:      Störung Linie 3", "Gives up at:  Tue, 24 Nov 2026 08:00:00 +0000", "3 connections"},
		},
		{
			name: "8-bit headers, long line, injection attempts",
			r: Report{ReportingMTA: "[192.0.2.7]", QueueID: "Q 3<>", EnvelopeFrom: "scanner@plant.example",
				Headers: []byte("Subject: Prüfbericht\r\nX-Long: " + strings.Repeat("y", 1200) + "\r\n"),
				Recipients: []Recipient{{Recipient: "a@example.com\r\nBcc: evil@example.net", Action: Failed, Status: "5.7.1",
					DiagnosticCode: "smtp; 550 5.7.1 bad\r\nAction: delivered", Hint: "line one\nline two"}}},
			subject: "Undelivered mail: Prüfbericht",
			to:      "<scanner@plant.example>",
			rcpts: []rcpt{
				{"rfc822; a@example.com Bcc: evil@example.net", "failed", "5.7.1", "smtp; 550 5.7.1 bad Action: delivered", ""},
			},
			orig:       "Subject: Prüfbericht\r\nX-Long: " + strings.Repeat("y", 1200) + "\r\n",
			humanWords: []string{"What to do:   line one line two"},
		},
		{
			name: "no headers at all",
			r: Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Headers: []byte("\r\nbody only\r\n"),
				Recipients: []Recipient{{Recipient: "c@d.example", Action: Failed}}},
			subject: "Undelivered mail",
			to:      "<a@b.example>",
			rcpts:   []rcpt{{"rfc822; c@d.example", "failed", "5.0.0", "", ""}},
			orig:    "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.r.Date = now
			b, err := Build(tt.r)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, b)
			subject, err := new(mime.WordDecoder).DecodeHeader(p.header.Get("Subject"))
			if err != nil {
				t.Fatal(err)
			}
			if subject != tt.subject {
				t.Errorf("subject %q, want %q", subject, tt.subject)
			}
			if got := p.header.Get("To"); got != tt.to {
				t.Errorf("To %q, want %q", got, tt.to)
			}
			if tt.r.From != "" {
				if a, err := mail.ParseAddress(p.header.Get("From")); err != nil || a.Address != tt.r.From {
					t.Errorf("From %q (%v), want %q", p.header.Get("From"), err, tt.r.From)
				}
			}
			if _, err := mail.ParseAddressList(p.header.Get("To")); err != nil {
				t.Errorf("To does not parse: %v", err)
			}
			if len(p.header["Bcc"]) > 0 {
				t.Error("a Bcc header was injected")
			}
			var got []rcpt
			for _, h := range p.perRcpt {
				got = append(got, rcpt{h.Get("Final-Recipient"), h.Get("Action"), h.Get("Status"), h.Get("Diagnostic-Code"), h.Get("Will-Retry-Until")})
			}
			if !reflect.DeepEqual(got, tt.rcpts) {
				t.Errorf("recipients\n got %q\nwant %q", got, tt.rcpts)
			}
			if p.orig != tt.orig {
				t.Errorf("original headers\n got %q\nwant %q", p.orig, tt.orig)
			}
			for _, w := range tt.humanWords {
				if !strings.Contains(p.human, w) {
					t.Errorf("human part lacks %q:\n%s", w, p.human)
				}
			}
		})
	}
}

func TestHeadersCapped(t *testing.T) {
	var h strings.Builder
	for h.Len() < 2*MaxHeaderBytes {
		h.WriteString("X-Filler: " + strings.Repeat("z", 60) + "\n")
	}
	b, err := Build(Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Headers: []byte(h.String()),
		Recipients: []Recipient{{Recipient: "c@d.example", Action: Failed}}})
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, b)
	if len(p.orig) > MaxHeaderBytes+MaxHeaderBytes/70*2 || !strings.HasSuffix(p.orig, strings.Repeat("z", 60)+"\r\n") {
		t.Errorf("original headers: %d bytes, ending %q", len(p.orig), p.orig[len(p.orig)-20:])
	}
}

func TestBuildErrors(t *testing.T) {
	ok := Recipient{Recipient: "c@d.example", Action: Failed}
	for _, tt := range []struct {
		name string
		r    Report
		want string
	}{
		{"no reporting MTA", Report{EnvelopeFrom: "a@b.example", Recipients: []Recipient{ok}}, `reporting MTA "" is not a host name`},
		{"bad reporting MTA", Report{ReportingMTA: "relay\r\nX: y", EnvelopeFrom: "a@b.example", Recipients: []Recipient{ok}}, "is not a host name"},
		{"no recipients", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example"}, "no recipients"},
		{"null sender", Report{ReportingMTA: "relay", EnvelopeFrom: "<>", Recipients: []Recipient{ok}}, "not routable"},
		{"mailer daemon", Report{ReportingMTA: "relay", EnvelopeFrom: "MAILER-DAEMON@x.example", Recipients: []Recipient{ok}}, "not routable"},
		{"empty recipient", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Recipients: []Recipient{{Action: Failed}}}, "recipient 1 has no address"},
		{"bad action", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Recipients: []Recipient{{Recipient: "c@d", Action: "delivered"}}}, `action "delivered", want failed or delayed`},
		{"bad status", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Recipients: []Recipient{{Recipient: "c@d", Action: Failed, Status: "550"}}}, `status "550", want 4.x.x or 5.x.x`},
		{"success status", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Recipients: []Recipient{{Recipient: "c@d", Action: Failed, Status: "2.0.0"}}}, "want 4.x.x or 5.x.x"},
		{"delayed with 5xx", Report{ReportingMTA: "relay", EnvelopeFrom: "a@b.example", Recipients: []Recipient{{Recipient: "c@d", Action: Delayed, Status: "5.1.1"}}}, "is delayed but status"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
	_, err := Build(Report{ReportingMTA: "relay", EnvelopeFrom: "<>", Recipients: []Recipient{ok}})
	if !errors.Is(err, ErrNotRoutable) {
		t.Errorf("null sender: %v is not ErrNotRoutable", err)
	}
}

func TestIsRoutable(t *testing.T) {
	for _, tt := range []struct {
		sender string
		want   bool
	}{
		{"", false},
		{"<>", false},
		{" <> ", false},
		{"MAILER-DAEMON@relay.example", false},
		{"<mailer-daemon@relay.example>", false},
		{"Postmaster@example.com", false},
		{"postmaster+bounces@example.com", false},
		{"double-bounce@mx.example", false},
		{"printer", false},
		{"@example.com", false},
		{"printer@", false},
		{"a b@example.com", false},
		{"a@b@c", true}, // last @ splits; the upstream judges the rest
		{"scanner@plant.example", true},
		{"<scanner@plant.example>", true},
		{"daemon@plant.example", true},
		{"noreply@plant.example", true},
	} {
		if got := IsRoutable(tt.sender); got != tt.want {
			t.Errorf("IsRoutable(%q) = %v, want %v", tt.sender, got, tt.want)
		}
	}
}

func FuzzBuild(f *testing.F) {
	f.Add([]byte(origHeaders), "anna@example.com", "smtp; 550 5.1.1 user unknown", "fix it", "Q1", false)
	f.Add([]byte("Subject: =?utf-8?b?////?=\n\n"), "\xff\x00@x", "\r\n--", "\u2028", "", true)
	f.Add([]byte("Subject:\r\n \r\n\r"), "a@b", ";", "", "Q..1", true)
	f.Fuzz(func(t *testing.T, headers []byte, rcpt, diag, hint, queueID string, delayed bool) {
		action := Failed
		if delayed {
			action = Delayed
		}
		b, err := Build(Report{ReportingMTA: "relay.example", QueueID: queueID, EnvelopeFrom: "a@b.example",
			Headers: headers, ArrivalDate: arrival, Date: now,
			Recipients: []Recipient{{Recipient: rcpt, Action: action, DiagnosticCode: diag, Hint: hint, LastAttempt: last}}})
		if err != nil {
			if rcpt == "" {
				return
			}
			t.Fatal(err)
		}
		p := parse(t, b)
		if len(p.perRcpt) != 1 || p.perRcpt[0].Get("Action") != string(action) {
			t.Fatalf("per-recipient fields %v", p.perRcpt)
		}
		if want := string(originalHeaders(headers)); p.orig != want {
			t.Fatalf("original headers\n got %q\nwant %q", p.orig, want)
		}
		if _, err := mail.ParseAddress(p.header.Get("To")); err != nil {
			t.Fatalf("To: %v", err)
		}
		if _, err := mail.ParseAddress(p.header.Get("From")); err != nil {
			t.Fatalf("From: %v", err)
		}
	})
}
