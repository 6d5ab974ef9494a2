package relay

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

// run starts a relay on cfg with its listeners on free loopback ports and
// returns the first listener's address.
func run(t testing.TB, cfg *config.Config, dir string) (*Relay, string) {
	t.Helper()
	for i := range cfg.Listeners {
		cfg.Listeners[i].Address = "127.0.0.1:0"
	}
	r, err := New(cfg, dir, Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r, r.Addrs()[0].String()
}

func send(t testing.TB, addr, from string, to []string, body string) error {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.SendMail(from, to, strings.NewReader(body))
}

func TestDevDefaultDeliversToOutbox(t *testing.T) {
	dir := relaytest.StateDir(t)
	_, addr := run(t, config.Default(), dir)
	if err := send(t, addr, "scanner@plant.example", []string{"a@example.com"}, "Subject: scan 1\r\n\r\npage\r\n"); err != nil {
		t.Fatalf("send: %v", err)
	}
	var files []string
	relaytest.Eventually(t, "a message in outbox/", func() bool {
		files, _ = filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
		return len(files) == 1
	})
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Return-Path: <scanner@plant.example>\r\n", "Delivered-To: a@example.com\r\n", "Received: from ", "Subject: scan 1\r\n", "\r\n\r\npage\r\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("delivered message lacks %q:\n%s", want, b)
		}
	}
}

func TestListenerAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := config.Default()
	cfg.Listeners[0].Address = busy.Addr().String()
	r, err := New(cfg, relaytest.StateDir(t), Deps{})
	if err == nil {
		r.close()
		t.Fatal("New on a port in use: got no error")
	}
	if got := err.Error(); !strings.Contains(got, "listeners[0] (smtp)") || !strings.Contains(got, "address already in use") {
		t.Errorf("error %q does not name the listener and the cause", got)
	}
}

// A relay stopped the moment it starts must stop: a Shutdown that comes
// before a listener's Serve has begun must still end it.
func TestStopRightAfterStart(t *testing.T) {
	for i := 0; i < 20; i++ {
		cfg := config.Default()
		cfg.Listeners[0].Address = "127.0.0.1:0"
		r, err := New(cfg, relaytest.StateDir(t), Deps{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(time.Until(relaytest.Deadline(t))):
			t.Fatalf("round %d: Run did not return after its context ended", i)
		}
	}
}

func TestNotAnOpenRelay(t *testing.T) {
	cfg := config.Default()
	cfg.Listeners[0].AllowedNetworks = []string{"127.0.0.1/32"}
	r, addr := run(t, cfg, relaytest.StateDir(t))
	// 127.0.0.2 is loopback too, but not in the allowed network.
	c := relaytest.DialFrom(t, net.IPv4(127, 0, 0, 2), addr)
	defer c.Close()
	if err := c.Mail("spam@evil.example", nil); err != nil {
		t.Fatal(err)
	}
	err := c.Rcpt("victim@example.com", nil)
	var se *smtp.SMTPError
	if !asSMTP(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("RCPT from a disallowed address: got %v, want 554 5.7.1", err)
	}
	if !strings.Contains(se.Message, "allowed_networks") {
		t.Errorf("refusal does not say what to change: %q", se.Message)
	}
	if got := r.Spool().Stats().Messages; got != 0 {
		t.Errorf("%d messages spooled", got)
	}
}

func TestTraceRecordsReceivedAndDelivered(t *testing.T) {
	dir := relaytest.StateDir(t)
	r, addr := run(t, config.Default(), dir)
	if err := send(t, addr, "plc7@plant.example", []string{"ops@example.com"}, "Subject: alarm 17\r\n\r\nlevel high\r\n"); err != nil {
		t.Fatal(err)
	}
	var got []trace.Event
	relaytest.Eventually(t, "received and delivered in the trace", func() bool {
		r.Trace().Flush(context.Background())
		got, _ = r.Trace().Query(context.Background(), trace.Filter{Subject: "alarm 17"})
		return len(got) == 2
	})
	kinds := map[trace.Kind]bool{}
	for _, e := range got {
		kinds[e.Kind] = true
		if e.From != "plc7@plant.example" || e.ClientIP != "127.0.0.1" || e.MessageID == "" || e.QueueID == "" {
			t.Errorf("event lacks facts: %+v", e)
		}
	}
	if !kinds[trace.Received] || !kinds[trace.Delivered] {
		t.Errorf("kinds = %v, want received and delivered", kinds)
	}
}

func TestBrokenConfigNamesKeys(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"},"limts":{}}`, []string{"limts: unknown key"}},
		{"bad network and mode", `{"listeners":[{"address":":25","mode":"smpt","allowed_networks":["10.0.0.0/33"]}],"upstream":{"kind":"capture"}}`,
			[]string{`listeners[0].mode: "smpt"`, `listeners[0].allowed_networks[0]: "10.0.0.0/33"`}},
		{"wrong type", `{"listeners":[],"limits":{"max_recipients":"ten"},"upstream":{"kind":"capture"}}`, []string{"limits.max_recipients"}},
		{"bad duration", `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"},"delivery":{"lifetime":"5 days"}}`, []string{"5 days"}},
		{"smarthost without password secret", `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"smtp","smtp":{"address":"mail.example.com:587","auth":"login","username":"u"}}}`,
			[]string{"upstream.smtp.password_secret"}},
		{"no upstream", `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}]}`, []string{"upstream.kind: missing"}},
		{"not json", `{"listeners": [`, []string{"(document)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("accepted a broken configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("../docs/examples/*.json")
	if len(files) == 0 {
		t.Fatal("no examples found")
	}
	for _, f := range files {
		if _, err := config.Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func asSMTP(err error, target **smtp.SMTPError) bool {
	se, ok := err.(*smtp.SMTPError)
	if ok {
		*target = se
	}
	return ok
}

var _ = time.Second

// TestStatusCertificateAndClock: the status carries the listeners' STARTTLS
// certificate's end (the self-signed one, made in the background at start) and, on
// Linux, whether the clock is synchronised; without STARTTLS there is no
// certificate to expire.
func TestStatusCertificateAndClock(t *testing.T) {
	for _, tc := range []struct {
		name     string
		starttls bool
		wantCert bool
	}{
		{name: "starttls", starttls: true, wantCert: true},
		{name: "plain", starttls: false, wantCert: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Listeners[0].StartTLS = new(tc.starttls)
			r, _ := run(t, cfg, relaytest.StateDir(t))
			st := r.Status()
			if tc.wantCert {
				// The self-signed certificate is made in the background.
				relaytest.Eventually(t, "the STARTTLS certificate", func() bool {
					st = r.Status()
					return !st.TLSCertificateExpires.IsZero()
				})
			}
			if got := !st.TLSCertificateExpires.IsZero(); got != tc.wantCert {
				t.Errorf("got certificate expiry %v, want one: %v", st.TLSCertificateExpires, tc.wantCert)
			}
			if tc.wantCert && !st.TLSCertificateExpires.After(time.Now()) {
				t.Errorf("certificate expires %v, in the past", st.TLSCertificateExpires)
			}
			if st.ClockSynchronised == nil && runtime.GOOS == "linux" {
				t.Error("clock synchronisation unknown on Linux")
			}
		})
	}
}
