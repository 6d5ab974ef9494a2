//go:build integration

package metrics

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

// A real scrape over HTTP, judged by Prometheus' own linter.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (Debian package prometheus, in .ci/apt-packages): %v", err)
	}
	g := allGauges()
	g.TLSCertificateExpiry = func() (time.Time, bool) { return time.Now().Add(90 * 24 * time.Hour), true }
	g.DeviceQueues = func() []DeviceQueue {
		return []DeviceQueue{{Messages: 2, Oldest: time.Now().Add(-time.Minute)}, {Device: "mfp-hall-7"}}
	}
	g.ClockSynchronised = ClockSynchronised
	m := New(g)
	m.Upstreams("m365-oauth")
	for _, k := range trace.Kinds {
		m.Observe(trace.Event{Kind: k, To: []string{"a@example.com"}, Size: 100, Upstream: "m365-oauth contoso", Listener: "plant", TLSVersion: "1.0", TLSCipher: "TLS_RSA_WITH_AES_128_CBC_SHA"})
	}
	in := m.Instrument(&scripted{limits: upstream.Limits{MessagesPerMinute: 30, RecipientsPerDay: 10000}, script: []func(*upstream.Message) ([]upstream.RcptResult, error){ok}},
		func() string { return "m365-oauth" })
	in.Deliver(context.Background(), &upstream.Message{To: []string{"a@example.com"}})
	m.TokenRenewed(time.Now().Add(time.Hour), nil)
	m.ClientCertificate(time.Now().Add(300 * 24 * time.Hour))
	refused := m.RefusedOn("plant")
	for _, r := range Reasons {
		refused(r, "")
		refused(r, "mfp-hall-7")
	}
	m.ObserveAccept(4 * time.Millisecond)
	m.ObserveDelivery(3 * time.Second)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: status %d, %v", resp.StatusCode, err)
	}
	for _, name := range []string{"siterelay_queue_oldest_message_age_seconds", "siterelay_deliveries_total", "siterelay_upstream_allowance_used_ratio",
		"siterelay_credential_expires_in_seconds", "siterelay_device_queue_messages", "siterelay_device_tls_messages_total",
		"siterelay_clock_synchronised", "siterelay_build_info", "siterelay_upstream_attempt_duration_seconds_bucket"} {
		if !bytes.Contains(body, []byte("\n"+name)) {
			t.Errorf("scrape lacks %s", name)
		}
	}
	if !bytes.Contains(body, []byte("siterelay_queue_oldest_message_age_seconds")) {
		t.Fatalf("scrape lacks the relay's metrics:\n%s", body)
	}

	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// docs/alerts.yml passes Prometheus' own checks, and its cases in
// docs/alerts_test.yml (alerts that fire and that do not) pass.
func TestPromtoolRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (Debian package prometheus, in .ci/apt-packages): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = "../../docs"
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("SUCCESS")) {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
