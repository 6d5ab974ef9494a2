package metrics

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// lines returns the scrape's sample lines that start with name.
func lines(body, name string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func wantLines(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, "\n"+w+"\n") {
			name, _, _ := strings.Cut(w, "{")
			name, _, _ = strings.Cut(name, " ")
			t.Errorf("scrape lacks %q; has:\n%s", w, lines(body, name))
		}
	}
}

func TestDeliveriesAndTLSFromTrace(t *testing.T) {
	m := New(Gauges{})
	m.Upstreams("m365-oauth")
	for _, e := range []trace.Event{
		{Kind: trace.Received, Listener: "plant", To: []string{"a"}, TLSVersion: "1.0", TLSCipher: "TLS_RSA_WITH_AES_128_CBC_SHA"},
		{Kind: trace.Received, Listener: "plant", To: []string{"a"}, TLSVersion: "1.0", TLSCipher: "TLS_RSA_WITH_AES_128_CBC_SHA"},
		{Kind: trace.Received, Listener: "submission", Account: "mfp7", Device: "mfp-hall-7", To: []string{"a"}, TLSVersion: "1.3", TLSCipher: "TLS_AES_128_GCM_SHA256"},
		{Kind: trace.Received, Listener: "plant", To: []string{"a"}},
		{Kind: trace.Delivered, Upstream: "m365-oauth contoso.onmicrosoft.com", To: []string{"a", "b"}},
		{Kind: trace.Deferred, Upstream: "m365-oauth contoso.onmicrosoft.com", To: []string{"c"}},
		{Kind: trace.Bounced, Upstream: "m365-oauth contoso.onmicrosoft.com", To: []string{"d"}},
		{Kind: trace.Delivered, Upstream: "smtp mail.example.com:587", To: []string{"e"}},
		{Kind: trace.Expired, Upstream: "10.1.2.3:25", To: []string{"f"}}, // never a host as a label
	} {
		m.Observe(e)
	}
	wantLines(t, scrape(t, m),
		`siterelay_deliveries_total{result="delivered",upstream="m365-oauth"} 2`,
		`siterelay_deliveries_total{result="deferred",upstream="m365-oauth"} 1`,
		`siterelay_deliveries_total{result="bounced",upstream="m365-oauth"} 1`,
		`siterelay_deliveries_total{result="expired",upstream="m365-oauth"} 0`,
		`siterelay_deliveries_total{result="delivered",upstream="smtp"} 1`,
		`siterelay_deliveries_total{result="expired",upstream="other"} 1`,
		`siterelay_device_tls_messages_total{cipher="TLS_RSA_WITH_AES_128_CBC_SHA",device="unknown",listener="plant",version="1.0"} 2`,
		`siterelay_device_tls_messages_total{cipher="TLS_AES_128_GCM_SHA256",device="mfp-hall-7",listener="submission",version="1.3"} 1`,
		`siterelay_device_tls_messages_total{cipher="",device="unknown",listener="plant",version="none"} 1`,
	)
}

// scripted is an upstream that answers from a script, one entry a call.
type scripted struct {
	limits upstream.Limits
	script []func(msg *upstream.Message) ([]upstream.RcptResult, error)
	calls  int
}

func (s *scripted) Deliver(_ context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	f := s.script[s.calls%len(s.script)]
	s.calls++
	return f(msg)
}
func (s *scripted) Limits() upstream.Limits { return s.limits }
func (s *scripted) Close() error            { return nil }

func ok(msg *upstream.Message) ([]upstream.RcptResult, error) {
	var r []upstream.RcptResult
	for _, to := range msg.To {
		r = append(r, upstream.RcptResult{Rcpt: to})
	}
	return r, nil
}

func TestInstrumentedUpstream(t *testing.T) {
	c := &fakeClock{time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	m := New(Gauges{Clock: c.now})
	m.Upstreams("m365-oauth")
	busy := &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy. Please try again later"}
	up := &scripted{limits: upstream.Limits{MessagesPerMinute: 30, RecipientsPerDay: 10000}, script: []func(*upstream.Message) ([]upstream.RcptResult, error){
		ok, ok, ok,
		func(*upstream.Message) ([]upstream.RcptResult, error) { return nil, upstream.FromReply(busy) },
		func(msg *upstream.Message) ([]upstream.RcptResult, error) { // one recipient throttled
			return []upstream.RcptResult{{Rcpt: msg.To[0], Err: &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "too many connections"}}}, nil
		},
		func(*upstream.Message) ([]upstream.RcptResult, error) {
			return nil, &upstream.Error{Err: fmt.Errorf("%w: 30 a minute", upstream.ErrPaced), RetryAfter: time.Second}
		},
		func(*upstream.Message) ([]upstream.RcptResult, error) { // a refusal is not throttling
			return nil, upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "RecipientNotFound"})
		},
	}}
	in := m.Instrument(up, func() string { return "m365-oauth" })
	ctx := context.Background()
	for i := range 7 {
		in.Deliver(ctx, &upstream.Message{To: []string{fmt.Sprintf("r%d@example.com", i), "x@example.com"}})
		c.t = c.t.Add(time.Second)
	}
	wantLines(t, scrape(t, m),
		`siterelay_upstream_attempt_duration_seconds_count{upstream="m365-oauth"} 6`,
		`siterelay_upstream_throttled_total{upstream="m365-oauth"} 2`,
		`siterelay_upstream_paced_total{upstream="m365-oauth"} 1`,
		`siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="minute"} 0.2`, // 6 of 30
		`siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="day"} 0.0012`, // 12 of 10000
	)
	c.t = c.t.Add(time.Minute) // the minute's window empties, the day's does not
	wantLines(t, scrape(t, m),
		`siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="minute"} 0`,
		`siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="day"} 0.0012`,
	)
	c.t = c.t.Add(24 * time.Hour)
	wantLines(t, scrape(t, m), `siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="day"} 0`)
	// Without limits the ratio is left out.
	m2 := New(Gauges{Clock: c.now})
	m2.Instrument(&scripted{script: up.script}, func() string { return "smtp" })
	if body := scrape(t, m2); strings.Contains(body, "siterelay_upstream_allowance_used_ratio{") {
		t.Errorf("allowance without limits:\n%s", lines(body, "siterelay_upstream_allowance"))
	}
}

func TestThrottling(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"ip throttling", upstream.FromReply(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}}), true},
		{"too many connections", &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}}, true},
		{"daily quota", upstream.FromReply(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}), true},
		{"graph 429", &upstream.Error{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}}, RetryAfter: 7 * time.Second}, true},
		{"paced", &upstream.Error{Err: upstream.ErrPaced, RetryAfter: time.Second}, false},
		{"token endpoint down", &upstream.Error{Err: errors.New("token endpoint: 503"), RetryAfter: 5 * time.Second}, false},
		{"recipient unknown", upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}}), false},
		{"network", errors.New("connection refused"), false},
	} {
		if got := Throttling(tt.err); got != tt.want {
			t.Errorf("%s: Throttling = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestCredentialsAndDevices(t *testing.T) {
	c := &fakeClock{time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	m := New(Gauges{
		Clock:                c.now,
		TLSCertificateExpiry: func() (time.Time, bool) { return c.t.Add(10 * 24 * time.Hour), true },
		DeviceQueues: func() []DeviceQueue {
			return []DeviceQueue{{Device: "", Messages: 3, Oldest: c.t.Add(-90 * time.Second)}, {Device: "mfp-hall-7", Messages: 1, Oldest: c.t.Add(-2 * time.Hour)},
				{Device: Unknown, Messages: 1, Oldest: c.t.Add(-60 * time.Second)}} // "" and unknown are one series
		},
		ClockSynchronised: func() (bool, bool) { return false, true },
	})
	body := scrape(t, m)
	if strings.Contains(body, `credential="token"`) || strings.Contains(body, `credential="client_certificate"`) {
		t.Errorf("a token or client certificate before there is one:\n%s", lines(body, "siterelay_credential"))
	}
	m.TokenRenewed(time.Time{}, errors.New("AADSTS7000215"))
	m.TokenRenewed(c.t.Add(3599*time.Second), nil)
	m.ClientCertificate(c.t.Add(-time.Hour))
	wantLines(t, scrape(t, m),
		`siterelay_token_renewals_total{result="ok"} 1`,
		`siterelay_token_renewals_total{result="failed"} 1`,
		`siterelay_credential_expires_in_seconds{credential="token"} 3599`,
		`siterelay_credential_expires_in_seconds{credential="client_certificate"} -3600`,
		`siterelay_credential_expires_in_seconds{credential="tls_certificate"} 864000`,
		`siterelay_device_queue_messages{device="unknown"} 4`,
		`siterelay_device_queue_messages{device="mfp-hall-7"} 1`,
		`siterelay_device_queue_oldest_message_age_seconds{device="unknown"} 90`,
		`siterelay_device_queue_oldest_message_age_seconds{device="mfp-hall-7"} 7200`,
		`siterelay_clock_synchronised 0`,
	)
	m.ForgetToken()
	if body := scrape(t, m); strings.Contains(body, `credential="token"`) {
		t.Error("the token's expiry stays after ForgetToken")
	}
	if body := scrape(t, m); !strings.Contains(body, "\nsiterelay_build_info{") {
		t.Errorf("no build info:\n%s", lines(body, "siterelay_build"))
	}
}

// On Linux the kernel answers adjtimex; whatever it says, it says it.
func TestClockSynchronisedAsks(t *testing.T) {
	synced, known := ClockSynchronised()
	t.Logf("adjtimex: synchronised %v, known %v", synced, known)
	if runtime.GOOS == "linux" && !known {
		t.Error("adjtimex did not answer on Linux")
	}
}
