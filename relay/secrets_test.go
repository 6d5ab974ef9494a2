package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
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

// TestSecretsNeverLeak: the smarthost refuses the relay's password; the
// refusal must reach logs, trace and metrics without the password.
func TestSecretsNeverLeak(t *testing.T) {
	const password = "Hunter2-plant-SECRET-7f3a"
	ca := upstreamtest.NewTestCA(t)
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{CA: ca, AuthMechanisms: []string{"PLAIN", "LOGIN"}, RequireAuth: true,
		CheckAuth: func(mech, user, secret string) error { return errors.New("no") }})
	dir := relaytest.StateDir(t)
	cfg := config.Default()
	cfg.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: fake.Addr, TLS: "starttls", MinTLS: "1.2",
		CAFile: ca.WriteFile(t), ServerName: "localhost", Auth: "plain", Username: "relay@example.com", PasswordSecret: "smarthost", Concurrency: 1, MaxRecipients: 10}}
	cfg.Delivery.FirstRetry = config.Duration(20 * time.Millisecond)
	cfg.Delivery.MaxRetry = config.Duration(50 * time.Millisecond)
	cfg.Listeners[0].Address = "127.0.0.1:0"
	logs := &relaytest.Buffer{}
	r, err := New(cfg, dir, Deps{
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Secret: func(name string) ([]byte, error) { return []byte(password), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	addr := r.Addrs()[0].String()
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "login refusals", func() bool { return fake.Stats().AuthFailures >= 2 })
	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Deferred})
	cancel()
	<-done

	if len(ev) == 0 || !strings.Contains(ev[0].Reply, "535") {
		t.Fatalf("the refusal is not in the trace: %+v", ev)
	}
	places := map[string]string{"logs": logs.String(), "metrics": rec.Body.String()}
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			f, _ := os.Open(path)
			b, _ := io.ReadAll(f)
			f.Close()
			places[path] = string(b)
		}
		return nil
	})
	for where, text := range places {
		if strings.Contains(text, password) {
			t.Errorf("the password appears in %s", where)
		}
	}
}
