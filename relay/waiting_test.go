package relay

import (
	"context"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// secretMap is a secret store a test fills while the relay runs.
type secretMap struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *secretMap) get(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[name]
	if !ok {
		return nil, &os.PathError{Op: "open", Path: "secrets/" + name, Err: os.ErrNotExist}
	}
	return []byte(v), nil
}

func (s *secretMap) put(name, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[name] = v
}

func scrapeMetrics(r *Relay) string {
	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// TestMissingSecretWaits: a configuration naming a secret that is not
// provisioned yet starts (no error), accepts and holds mail without an
// attempt, a deferral or a bounce, says what it waits for and the command
// that provides it, and delivers the held mail on the reload that finds
// the secret.
func TestMissingSecretWaits(t *testing.T) {
	ca := upstreamtest.NewTestCA(t)
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{CA: ca, AuthMechanisms: []string{"PLAIN"}, RequireAuth: true})
	dir := relaytest.StateDir(t)
	cfg := smarthostConfig(fake)
	cfg.Upstream.SMTP.TLS, cfg.Upstream.SMTP.CAFile, cfg.Upstream.SMTP.ServerName = "starttls", ca.WriteFile(t), "localhost"
	cfg.Upstream.SMTP.Auth, cfg.Upstream.SMTP.Username, cfg.Upstream.SMTP.PasswordSecret = "plain", "relay@example.com", "smarthost-password"
	cfg.Listeners[0].Address = "127.0.0.1:0"
	store := &secretMap{m: map[string]string{}}
	r, err := New(cfg, dir, Deps{Secret: store.get, Name: "plant-a"})
	if err != nil {
		t.Fatalf("New with a secret not yet provisioned: %v, want a waiting upstream", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	st := r.Status()
	want := Waiting{Upstream: "upstream", Key: "upstream.smtp.password_secret", Secret: "smarthost-password", Reason: config.ReasonMissing,
		Detail: "secret smarthost-password is not there yet", Fix: "relayctl -relay plant-a creds put smarthost-password -kind password -from FILE"}
	if len(st.Waiting) != 1 || st.Waiting[0] != want {
		t.Fatalf("Status.Waiting = %+v, want [%+v]", st.Waiting, want)
	}
	if m := scrapeMetrics(r); !strings.Contains(m, `siterelay_upstream_waiting{reason="missing",upstream="upstream"} 1`) ||
		!strings.Contains(m, `siterelay_upstream_waiting{reason="malformed",upstream="upstream"} 0`) {
		t.Errorf("metrics do not say the upstream waits:\n%s", grepLines(m, "siterelay_upstream_waiting"))
	}

	if err := send(t, r.Addrs()[0].String(), "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("device got %v, want 250 (mail is accepted while the upstream waits)", err)
	}
	// The scheduler has had its go: the attempt came back "waiting" and
	// was not counted.
	relaytest.Eventually(t, "the held attempt", func() bool {
		return strings.Contains(scrapeMetrics(r), `siterelay_upstream_paced_total{upstream="smtp"} 1`)
	})
	r.Trace().Flush(context.Background())
	for _, k := range []trace.Kind{trace.Deferred, trace.Bounced, trace.Failed, trace.Expired} {
		if ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: k}); len(ev) > 0 {
			t.Errorf("a held message was traced %s: %+v", k, ev)
		}
	}
	if n := fake.Count(); n != 0 {
		t.Fatalf("the upstream got %d messages while it waited", n)
	}
	if q := r.Status().Queue.Messages; q != 1 {
		t.Fatalf("queue holds %d, want the 1 held", q)
	}

	store.put("smarthost-password", "s3cret")
	if err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1) // without a restart, and not an hour later
	if w := r.Status().Waiting; len(w) != 0 {
		t.Errorf("still waiting after the secret came: %+v", w)
	}
	if m := scrapeMetrics(r); !strings.Contains(m, `siterelay_upstream_waiting{reason="missing",upstream="upstream"} 0`) {
		t.Errorf("metrics still say waiting:\n%s", grepLines(m, "siterelay_upstream_waiting"))
	}
}

// TestNoConfigurationHolds: New(nil) is a relay with no listener that
// holds its queue and says why.
func TestNoConfigurationHolds(t *testing.T) {
	r, err := New(nil, relaytest.StateDir(t), Deps{Name: "plant-a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st := r.Status()
	if len(st.Listeners) != 0 || len(st.Waiting) != 1 || st.Waiting[0].Fix != "relayctl -relay plant-a config put FILE" {
		t.Errorf("status %+v, want no listener and a wait for a configuration", st)
	}
}

// TestListenerBindRetried: with Deps.BindRetry, a listener whose address
// is taken at start does not stop the relay: the others serve, the status
// says it is not bound, and the retry the (injected) backoff allows binds
// it once the address is free.
func TestListenerBindRetried(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Listeners[0].Address = "127.0.0.1:0"
	second := cfg.Listeners[0]
	second.Name, second.Address = "second", busy.Addr().String()
	cfg.Listeners = append(cfg.Listeners, second)
	retry := make(chan time.Time)
	asked := make(chan int, 4) // the attempts the backoff was asked for
	r, err := New(cfg, relaytest.StateDir(t), Deps{BindRetry: func(n int) <-chan time.Time { asked <- n; return retry }})
	if err != nil {
		t.Fatalf("New with an address in use: %v, want the other listener serving", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := send(t, r.Addrs()[0].String(), "plc@plant.example", []string{"ops@example.com"}, "Subject: a\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("the free listener: %v", err)
	}
	if p := r.Status().Listeners[1].Problem; !strings.Contains(p, "cannot bind "+busy.Addr().String()) {
		t.Errorf("listener problem %q, want the bind error", p)
	}
	<-asked
	retry <- time.Time{} // still taken: tried and failed
	if n := <-asked; n != 2 {
		t.Fatalf("backoff asked for attempt %d, want 2 after a failed first retry", n)
	}
	busy.Close()
	retry <- time.Time{} // free now
	relaytest.Eventually(t, "the second listener bound", func() bool { return r.Status().Listeners[1].Problem == "" })
	if err := send(t, second.Address, "plc@plant.example", []string{"ops@example.com"}, "Subject: b\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("the retried listener: %v", err)
	}
}
