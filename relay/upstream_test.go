package relay

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// smarthostConfig delivers to a fake smarthost, retrying fast.
func smarthostConfig(fake *upstreamtest.FakeServer) *config.Config {
	cfg := config.Default()
	cfg.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: fake.Addr, TLS: "none", MinTLS: "1.2", Concurrency: 2, MaxRecipients: 100}}
	cfg.Delivery.FirstRetry = config.Duration(20 * time.Millisecond)
	cfg.Delivery.MaxRetry = config.Duration(50 * time.Millisecond)
	cfg.Bounce.Admin = "it@plant.example"
	return cfg
}

func TestPermanentFailureBouncesOnlyThatRecipient(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.RefuseRcpt("gone@example.com", upstreamtest.Reply(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"))
	r, addr := run(t, smarthostConfig(fake), relaytest.StateDir(t))
	if err := send(t, addr, "mfp2@plant.example", []string{"ok@example.com", "gone@example.com"}, "Subject: scan 7\r\n\r\npages\r\n"); err != nil {
		t.Fatalf("device got %v, want 250 (the failure is the upstream's, later)", err)
	}
	// The message to ok@ and then the bounce to the sender (and the admin).
	msgs := fake.WaitMessages(t, 2)
	if got := msgs[0].To; len(got) != 1 || got[0] != "ok@example.com" {
		t.Errorf("first delivery to %v, want only ok@example.com", got)
	}
	b := msgs[1]
	if b.From != "" {
		t.Errorf("bounce envelope sender %q, want the null sender", b.From)
	}
	if got := strings.Join(b.To, ","); got != "mfp2@plant.example,it@plant.example" {
		t.Errorf("bounce to %s, want the device's sender and the admin", got)
	}
	for _, want := range []string{"multipart/report", "report-type=delivery-status", "gone@example.com", "Status: 5.1.10\r\n", "Subject: scan 7"} {
		if !strings.Contains(string(b.Data), want) {
			t.Errorf("bounce lacks %q", want)
		}
	}
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Bounced})
	if len(ev) != 1 || ev[0].To[0] != "gone@example.com" || !strings.Contains(ev[0].Reply, "5.1.10") {
		t.Errorf("bounced trace events = %+v", ev)
	}
}

func TestDroppedConnectionIsRetried(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.DropNextData(2)
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later from [192.0.2.7]"))
	r, addr := run(t, smarthostConfig(fake), relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nhigh\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs := fake.WaitMessages(t, 1)
	if !strings.Contains(string(msgs[0].Data), "Subject: alarm") {
		t.Errorf("delivered %q", msgs[0].Data)
	}
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Deferred})
	if len(ev) < 2 {
		t.Errorf("deferred events = %d, want at least 2 (drops and the 451)", len(ev))
	}
	if got := fake.Count(); got != 1 {
		t.Errorf("upstream accepted %d copies, want 1", got)
	}
}

func TestUpstreamDownNeverFailsTheDevice(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(fake)
	fake.Close() // nothing answers there now
	r, addr := run(t, cfg, relaytest.StateDir(t))
	for i := 0; i < 5; i++ {
		if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nhigh\r\n"); err != nil {
			t.Fatalf("message %d: device got %v with the upstream down, want 250", i, err)
		}
	}
	r.Trace().Flush(context.Background())
	relaytest.Eventually(t, "deferrals traced", func() bool {
		r.Trace().Flush(context.Background())
		ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Deferred})
		return len(ev) >= 5
	})
	if got := r.Spool().Stats().Messages; got != 5 {
		t.Errorf("queued %d, want 5 kept", got)
	}
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{})
	for _, e := range ev {
		if e.Kind == trace.Bounced || e.Kind == trace.Failed || e.Kind == trace.Expired {
			t.Errorf("a temporary failure became %s: %+v", e.Kind, e)
		}
	}
}

// TestRelativePathsResolveBelowTheStateDirectory: a relative ca_file is
// read from the state directory, wherever relayd was started.
func TestRelativePathsResolveBelowTheStateDirectory(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "starttls"})
	dir := relaytest.StateDir(t)
	if err := os.WriteFile(filepath.Join(dir, "smarthost-ca.pem"), fake.CA.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := smarthostConfig(fake)
	cfg.Upstream.SMTP.TLS, cfg.Upstream.SMTP.CAFile, cfg.Upstream.SMTP.ServerName = "starttls", "smarthost-ca.pem", "localhost"
	t.Chdir(t.TempDir()) // not the state directory
	_, addr := run(t, cfg, dir)
	if err := send(t, addr, "mfp@plant.example", []string{"x@example.com"}, "Subject: tls\r\n\r\n1\r\n"); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1)
}
