package inbound

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
)

// testPolicy lets loopback relay when open is set, and knows one account.
type testPolicy struct{ open bool }

func (p testPolicy) Connect(ip netip.Addr) (Client, func(), error) {
	return Client{Relay: p.open, Known: p.open}, func() {}, nil
}
func (p testPolicy) Login(ip netip.Addr, user, pass string) (*policy.Account, error) {
	if user == "printer" && pass == "s3cret" {
		return &policy.Account{Username: user}, nil
	}
	return nil, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad login"}
}
func (p testPolicy) Device(ip netip.Addr, acct *policy.Account, helo string) (*policy.Device, error) {
	return nil, nil
}
func (p testPolicy) Sender(ip netip.Addr, acct *policy.Account, dev *policy.Device, from string) error {
	return nil
}
func (p testPolicy) Recipient(ip netip.Addr, dev *policy.Device, rcpt string, relay bool) error {
	if !relay {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied"}
	}
	return nil
}

var testCert = sync.OnceValue(func() func(t testing.TB) tls.Certificate {
	certPEM, keyPEM, err := certs.SelfSigned("relay.test", time.Now())
	cert, err2 := tls.X509KeyPair(certPEM, keyPEM)
	return func(t testing.TB) tls.Certificate {
		if err != nil || err2 != nil {
			t.Fatal(err, err2)
		}
		return cert
	}
})

type fixture struct {
	srv      *Server
	addr     string
	sp       *spool.Spool
	mu       sync.Mutex
	accepted []string
}

func start(t testing.TB, mod func(*Options)) *fixture {
	t.Helper()
	sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1, MaxMessages: 100})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{sp: sp}
	cert := testCert()(t)
	o := Options{
		Name: "test", Hostname: "relay.test", TLS: TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, tls.VersionTLS12),
		Auth: true, MaxMessageBytes: 10000, MaxRecipients: 3, MaxLineLength: 4000,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		Policy: testPolicy{open: true}, Spool: sp,
		Accepted: func(id string) { f.mu.Lock(); f.accepted = append(f.accepted, id); f.mu.Unlock() },
	}
	if mod != nil {
		mod(&o)
	}
	s := New(o)
	f.srv = s
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() { s.Shutdown(t.Context()); sp.Close() })
	return f
}

func (f *fixture) content(t *testing.T, id string) string {
	c, err := f.sp.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, c.Size)
	c.ReadAt(b, 0)
	return string(b)
}

// raw is an SMTP dialogue written byte for byte, for what a client library
// would clean up (bare line endings, smuggling payloads).
type raw struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *raw {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(relaytest.Deadline(t))
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, c: c, r: bufio.NewReader(c)}
	r.expect("220")
	return r
}

// reply reads one whole (possibly multi-line) reply.
func (r *raw) reply() string {
	var b strings.Builder
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("reading reply: %v (so far %q)", err, b.String())
		}
		b.WriteString(line)
		if len(line) < 4 || line[3] != '-' {
			return b.String()
		}
	}
}

func (r *raw) expect(prefix string) string {
	r.t.Helper()
	got := r.reply()
	if !strings.HasPrefix(got, prefix) {
		r.t.Fatalf("reply %q, want %s", got, prefix)
	}
	return got
}

func (r *raw) send(s string) { r.c.Write([]byte(s)) }

func (r *raw) cmd(s, want string) string {
	r.t.Helper()
	r.send(s + "\r\n")
	return r.expect(want)
}

func TestAcceptedMessageIsSpooledWithHeaders(t *testing.T) {
	f := start(t, nil)
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail("scanner@plant.example", []string{"a@example.com", "b@example.com"}, strings.NewReader("Subject: scan\r\n\r\npage 1\r\n")); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	f.mu.Lock()
	ids := f.accepted
	f.mu.Unlock()
	if len(ids) != 1 {
		t.Fatalf("accepted %d messages, want 1", len(ids))
	}
	info, _ := f.sp.Get(ids[0])
	if got, want := fmt.Sprint(info.Envelope.To), "[{a@example.com pending } {b@example.com pending }]"; got != want {
		t.Errorf("recipients = %s, want %s", got, want)
	}
	body := f.content(t, ids[0])
	for _, want := range []string{"Received: from ", "Message-ID: <", "Subject: scan\r\n", "\r\n\r\npage 1\r\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("spooled message lacks %q:\n%s", want, body)
		}
	}
	if !strings.HasPrefix(body, "Received: ") {
		t.Errorf("Received is not the first header:\n%s", body)
	}
	if !strings.Contains(info.Envelope.MessageID, "@relay.test>") {
		t.Errorf("generated Message-ID %q is not in the relay's domain", info.Envelope.MessageID)
	}
}

func TestQueueIDInReply(t *testing.T) {
	f := start(t, nil)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	got := r.cmd("Subject: x\r\n\r\nhi\r\n.", "250 2.0.0 OK queued as ")
	f.mu.Lock()
	defer f.mu.Unlock()
	if !strings.Contains(got, f.accepted[0]) {
		t.Errorf("reply %q does not name queue id %s", got, f.accepted[0])
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*Options)
		dialog [][2]string // command, expected reply prefix
	}{
		{"open relay probe", func(o *Options) { o.Policy = testPolicy{open: false} }, [][2]string{
			{"EHLO probe", "250"}, {"MAIL FROM:<x@evil.example>", "250"}, {"RCPT TO:<victim@example.com>", "554 5.7.1"}}},
		{"declared size too big", nil, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:<p@plant.example> SIZE=20000", "552 5.3.4"}}},
		{"too many recipients", nil, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:<p@plant.example>", "250"},
			{"RCPT TO:<a@example.com>", "250"}, {"RCPT TO:<b@example.com>", "250"}, {"RCPT TO:<c@example.com>", "250"},
			{"RCPT TO:<d@example.com>", "452 4.5.3"}}},
		{"tls required", func(o *Options) { o.RequireTLS = true }, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:<p@plant.example>", "530 5.7.0"}}},
		{"login required", func(o *Options) { o.RequireAuth = true }, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:<p@plant.example>", "530 5.7.0"}}},
		{"auth without tls", nil, [][2]string{
			{"EHLO printer", "250"}, {"AUTH PLAIN AHByaW50ZXIAczNjcmV0", "5"}}},
		{"malformed MAIL", nil, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:p@plant.example>", "50"}}},
		{"DATA before RCPT", nil, [][2]string{
			{"EHLO printer", "250"}, {"MAIL FROM:<p@plant.example>", "250"}, {"DATA", "503 5.5.1"}}},
		{"unknown command", nil, [][2]string{{"EHLO printer", "250"}, {"XYZZY", "50"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, tc.mod)
			r := dialRaw(t, f.addr)
			for _, d := range tc.dialog {
				r.cmd(d[0], d[1])
			}
			if got := len(f.sp.List()); got != 0 {
				t.Errorf("%d messages spooled, want none", got)
			}
		})
	}
}

func TestOversizedDataIsRefusedAndSessionContinues(t *testing.T) {
	f := start(t, nil)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	r.send(strings.Repeat("0123456789012345678901234567890123456789\r\n", 500))
	if got := r.cmd(".", "552 5.3.4"); !strings.Contains(got, "10000 bytes (limits.max_message_bytes)") {
		t.Errorf("reply %q does not name limits.max_message_bytes", got)
	}
	// The session is still usable: the next message goes through.
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	r.cmd("Subject: small\r\n\r\nok\r\n.", "250")
	if got := len(f.sp.List()); got != 1 {
		t.Errorf("%d messages spooled, want 1", got)
	}
}

func TestSpoolFullIsTemporary(t *testing.T) {
	f := start(t, nil)
	f.sp.Close()
	sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1, MaxMessages: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	f2 := start(t, func(o *Options) { o.Spool = sp })
	r := dialRaw(t, f2.addr)
	r.cmd("EHLO printer", "250")
	for i, want := range []string{"250", "452 4.3.1"} {
		r.cmd("MAIL FROM:<p@plant.example>", "250")
		r.cmd("RCPT TO:<a@example.com>", "250")
		r.cmd("DATA", "354")
		r.cmd(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n.", i), want)
	}
}

// The published SMTP smuggling payloads (SEC Consult, December 2023): an
// end-of-data with a bare LF or CR, followed by a second transaction.
var smuggling = []string{"\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n", "\n.\r"}

func TestSmugglingNormalisedIntoOneMessage(t *testing.T) {
	for _, p := range smuggling {
		t.Run(fmt.Sprintf("%q", p), func(t *testing.T) {
			f := start(t, nil)
			r := dialRaw(t, f.addr)
			r.cmd("EHLO printer", "250")
			r.cmd("MAIL FROM:<p@plant.example>", "250")
			r.cmd("RCPT TO:<a@example.com>", "250")
			r.cmd("DATA", "354")
			r.send("Subject: first\r\n\r\nhello" + p + "MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n")
			r.cmd(".", "250")
			list := f.sp.List()
			if len(list) != 1 {
				t.Fatalf("%d messages spooled, want exactly 1", len(list))
			}
			body := f.content(t, list[0].ID)
			if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\r") || strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
				t.Errorf("bare CR or LF survived in the spool: %q", body)
			}
			if !strings.Contains(body, "MAIL FROM:<admin@example.com>") {
				t.Errorf("smuggled lines should stay inside the one message as data: %q", body)
			}
		})
	}
}

func TestSmugglingRefused(t *testing.T) {
	f := start(t, func(o *Options) { o.BareLineEndings = message.Refuse })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	r.send("Subject: first\r\n\r\nhello\n.\nMAIL FROM:<admin@example.com>\r\n")
	r.cmd(".", "550 5.6.11")
	if got := len(f.sp.List()); got != 0 {
		t.Errorf("%d messages spooled, want none", got)
	}
}

func TestLoginOverSTARTTLS(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth sasl.Client
		want error
	}{
		{"plain", sasl.NewPlainClient("", "printer", "s3cret"), nil},
		{"login", sasl.NewLoginClient("printer", "s3cret"), nil},
		{"wrong password", sasl.NewPlainClient("", "printer", "nope"), errors.New("535")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, func(o *Options) { o.RequireAuth = true })
			c, err := smtp.DialStartTLS(f.addr, &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Auth(tc.auth)
			if (err == nil) != (tc.want == nil) || (err != nil && !strings.Contains(err.Error(), "535")) {
				t.Fatalf("Auth: got %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			if err := c.SendMail("p@plant.example", []string{"a@example.com"}, strings.NewReader("Subject: x\r\n\r\ny\r\n")); err != nil {
				t.Fatal(err)
			}
			list := f.sp.List()
			if len(list) != 1 || list[0].Envelope.Login != "printer" {
				t.Fatalf("spooled %+v, want one message from login printer", list)
			}
			if body := f.content(t, list[0].ID); !strings.Contains(body, "with ESMTPSA") {
				t.Errorf("Received does not say ESMTPSA: %q", body[:min(300, len(body))])
			}
		})
	}
}

func TestOldTLSForLegacyDevices(t *testing.T) {
	for _, tc := range []struct {
		name          string
		min, clientV  uint16
		wantHandshake bool
	}{
		{"tls1.0 allowed", tls.VersionTLS10, tls.VersionTLS10, true},
		{"tls1.0 refused by default", tls.VersionTLS12, tls.VersionTLS10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, func(o *Options) { o.TLS = TLSConfig(o.TLS.GetCertificate, tc.min) })
			c, err := smtp.DialStartTLS(f.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tc.clientV, MaxVersion: tc.clientV,
				CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}}) // what old printers speak
			if err == nil {
				defer c.Close()
				err = c.Noop() // the handshake happens on first use
			}
			if got := err == nil; got != tc.wantHandshake {
				t.Fatalf("handshake ok = %v (%v), want %v", got, err, tc.wantHandshake)
			}
			if err == nil {
				if st, _ := c.TLSConnectionState(); st.Version != tc.clientV {
					t.Errorf("negotiated %s, want %s", tls.VersionName(st.Version), tls.VersionName(tc.clientV))
				}
			}
		})
	}
}

func TestEightBitAndUTF8PassThrough(t *testing.T) {
	f := start(t, nil)
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := "Subject: =?utf-8?q?St=C3=B6rung?=\r\n\r\nStörung an Linie 3 – Temperatur 85 °C\r\n"
	if err := c.Mail("störung@plant.example", &smtp.MailOptions{UTF8: true, Body: smtp.Body8BitMIME}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("leitstand@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Data()
	w.Write([]byte(body))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	list := f.sp.List()
	if len(list) != 1 {
		t.Fatalf("spooled %d", len(list))
	}
	env := list[0].Envelope
	if !env.UTF8 || !env.EightBit || env.From != "störung@plant.example" {
		t.Errorf("envelope = %+v, want UTF8, 8bit and the UTF-8 sender", env)
	}
	if got := f.content(t, list[0].ID); !bytes.Contains([]byte(got), []byte("Störung an Linie 3 – Temperatur 85 °C")) {
		t.Errorf("8-bit body changed: %q", got)
	}
	if got, want := env.Subject, "Störung"; got != want {
		t.Errorf("trace subject = %q, want %q", got, want)
	}
}

// Every size refusal names the setting behind the limit: the listener's
// (limits.max_message_bytes, or what the relay says lowered it), declared
// in MAIL's SIZE or found in DATA or BDAT.
func TestSizeRefusalNamesItsSetting(t *testing.T) {
	big := strings.Repeat("0123456789012345678901234567890123456789\r\n", 500)
	for _, tc := range []struct {
		name, setting, want string
	}{
		{"listener", "", "the limit is 10000 bytes (limits.max_message_bytes)"},
		{"lowered by the upstream", "the upstream's own limit", "the limit is 10000 bytes (the upstream's own limit)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, func(o *Options) { o.MaxMessageBytesSetting = tc.setting })
			r := dialRaw(t, f.addr)
			r.cmd("EHLO printer", "250")
			var got []string
			got = append(got, r.cmd("MAIL FROM:<p@plant.example> SIZE=20000", "552 5.3.4"))
			r.cmd("MAIL FROM:<p@plant.example>", "250")
			r.cmd("RCPT TO:<a@example.com>", "250")
			r.cmd("DATA", "354")
			r.send(big)
			got = append(got, r.cmd(".", "552 5.3.4"))
			r.cmd("MAIL FROM:<p@plant.example>", "250")
			r.cmd("RCPT TO:<a@example.com>", "250")
			r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(big), big))
			got = append(got, r.expect("552 5.3.4"))
			for i, g := range got {
				if !strings.Contains(g, tc.want) {
					t.Errorf("refusal %d: %q, want it to say %q", i, g, tc.want)
				}
			}
		})
	}
}
