package relay

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// slowRetry waits an hour between attempts, so only RetryNow brings a
// deferred message back.
func slowRetry(fake *upstreamtest.FakeServer) *config.Config {
	cfg := smarthostConfig(fake)
	cfg.Delivery.FirstRetry = config.Duration(time.Hour)
	cfg.Delivery.MaxRetry = config.Duration(time.Hour)
	return cfg
}

func queuedOne(t *testing.T, r *Relay, addr string) string {
	t.Helper()
	if err := send(t, addr, "mfp@plant.example", []string{"ops@example.com"}, "Subject: scan 9\r\n\r\npages\r\n"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "a deferral", func() bool {
		r.Trace().Flush(context.Background())
		ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Deferred})
		return len(ev) > 0
	})
	l := r.Spool().List()
	if len(l) != 1 {
		t.Fatalf("queue holds %d", len(l))
	}
	return l[0].ID
}

func TestRetryNow(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy"))
	r, addr := run(t, slowRetry(fake), relaytest.StateDir(t))
	id := queuedOne(t, r, addr)
	h, err := r.Headers(id)
	if err != nil || !strings.Contains(string(h), "Subject: scan 9") {
		t.Errorf("headers = %q, %v", h, err)
	}
	if err := r.RetryNow(id); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1)
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	if err := r.RetryNow(id); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("retry of a delivered message: %v, want not found", err)
	}
}

func TestRemove(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy"))
	r, addr := run(t, slowRetry(fake), relaytest.StateDir(t))
	id := queuedOne(t, r, addr)
	if err := r.Remove(id, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	if n := r.Spool().Stats().Messages; n != 0 {
		t.Errorf("queue holds %d after delete", n)
	}
	r.sched.Kick()
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{QueueID: id, Kind: trace.Failed})
	if len(ev) != 1 || !strings.Contains(ev[0].Hint, "alice@example.com") {
		t.Errorf("trace = %+v, want the deletion with who did it", ev)
	}
	if got := fake.Count(); got != 0 {
		t.Errorf("upstream got %d messages after delete", got)
	}
}

func TestBounceNow(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy"))
	r, addr := run(t, slowRetry(fake), relaytest.StateDir(t))
	id := queuedOne(t, r, addr)
	if err := r.BounceNow(context.Background(), id, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	msgs := fake.WaitMessages(t, 1) // the bounce, not the message
	if msgs[0].From != "" || !strings.Contains(string(msgs[0].Data), "by an administrator") {
		t.Errorf("delivered from %q: %.300s", msgs[0].From, msgs[0].Data)
	}
	if _, ok := r.Spool().Get(id); ok {
		t.Error("bounced message still queued")
	}
}
