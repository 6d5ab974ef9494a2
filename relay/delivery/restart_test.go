package delivery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/smarthost"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// barrierBody holds every reader until n of them read at once: n Deliver
// calls are then in DATA together, so the pool ends up with n connections
// without depending on timing.
type barrierBody struct {
	body string
	wg   *sync.WaitGroup
	once sync.Once
}

func (b *barrierBody) ReadAt(p []byte, off int64) (int, error) {
	b.once.Do(func() { b.wg.Done(); b.wg.Wait() })
	return strings.NewReader(b.body).ReadAt(p, off)
}

// A smarthost that restarted leaves every pooled connection dead; that
// must cost no retry delay: no message is deferred.
func TestSmarthostRestartCostsNoDeferral(t *testing.T) {
	const pooled, n = 10, 50
	f := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	up, err := smarthost.New(smarthost.Options{Addr: f.Addr, TLS: smarthost.TLSNone, Concurrency: pooled,
		DialTimeout: 10 * time.Second, CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })

	// Fill the pool with `pooled` connections.
	const body = "Subject: t\r\n\r\nbody\r\n"
	var barrier sync.WaitGroup
	barrier.Add(pooled)
	var prime sync.WaitGroup
	for i := range pooled {
		prime.Add(1)
		go func() {
			defer prime.Done()
			msg := &upstream.Message{QueueID: fmt.Sprint("prime", i), From: "a@plant.example", To: []string{"b@example.com"},
				Size: int64(len(body)), Body: &barrierBody{body: body, wg: &barrier}}
			if _, err := up.Deliver(context.Background(), msg); err != nil {
				t.Errorf("priming: %v", err)
			}
		}()
	}
	prime.Wait()
	if got := f.Stats().Connections; got != pooled {
		t.Fatalf("pool primed with %d connections, want %d", got, pooled)
	}
	f.DropAll() // the smarthost restarts: every pooled connection is dead
	f.WaitClosed(t)

	sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan trace.Event, 4*n)
	sched := New(Options{Spool: sp, Upstream: up, Record: func(e trace.Event) { events <- e },
		FirstRetry: time.Minute, MaxRetry: time.Hour, Lifetime: 24 * time.Hour})
	for range n {
		m := sp.NewMessage()
		m.Write([]byte(body))
		id, err := m.Commit(spool.Envelope{From: "scanner@plant.example", Received: time.Now(), To: []spool.Rcpt{{Addr: "ops@example.com"}}})
		if err != nil {
			t.Fatal(err)
		}
		sched.Enqueue(id)
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sched.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; sp.Close() })

	// Every message ends delivered or deferred; count both.
	delivered, deferred := 0, 0
	timeout := time.After(time.Until(relaytest.Deadline(t)))
	for delivered+deferred < n {
		select {
		case e := <-events:
			switch e.Kind {
			case trace.Delivered:
				delivered++
			case trace.Deferred:
				deferred++
				t.Errorf("deferred after the restart: %s", e.Reply)
			}
		case <-timeout:
			t.Fatalf("only %d delivered and %d deferred of %d", delivered, deferred, n)
		}
	}
	t.Logf("%d messages after a smarthost restart with %d dead pooled connections: %d delivered, %d deferred, in %v",
		n, pooled, delivered, deferred, time.Since(start).Round(time.Millisecond))
}
