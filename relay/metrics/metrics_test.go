package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/siterelay/siterelay/relay/trace"
)

func allGauges() Gauges {
	return Gauges{
		QueueMessages:       func() float64 { return 7 },
		QueueBytes:          func() float64 { return 7000 },
		OldestMessageAge:    func() time.Duration { return 90 * time.Second },
		SpoolFreeBytes:      func() float64 { return 1 << 30 },
		UpstreamConnections: func() float64 { return 2 },
		TraceDropped:        func() uint64 { return 3 },
	}
}

func TestObserve(t *testing.T) {
	m := New(Gauges{})
	for _, e := range []trace.Event{
		{Kind: trace.Received, To: []string{"a", "b", "c"}, Size: 1000},
		{Kind: trace.Received, To: []string{"a"}, Size: 24},
		{Kind: trace.Deferred, To: []string{"a", "b"}},
		{Kind: trace.Delivered, To: []string{"a", "b"}},
		{Kind: trace.Bounced, To: []string{"c"}},
		{Kind: trace.Expired, To: []string{"d"}},
		{Kind: trace.Failed, To: []string{"e", "f"}},
		{Kind: "future-kind", To: []string{"x"}, Size: 5},
	} {
		m.Observe(e)
	}
	for _, tt := range []struct {
		kind            trace.Kind
		messages, rcpts float64
	}{
		{trace.Received, 2, 4},
		{trace.Deferred, 1, 2},
		{trace.Delivered, 1, 2},
		{trace.Bounced, 1, 1},
		{trace.Expired, 1, 1},
		{trace.Failed, 1, 2},
	} {
		if got := value(t, m.messages[tt.kind]); got != tt.messages {
			t.Errorf("messages{kind=%s} = %v, want %v", tt.kind, got, tt.messages)
		}
		if got := value(t, m.recipients[tt.kind]); got != tt.rcpts {
			t.Errorf("recipients{kind=%s} = %v, want %v", tt.kind, got, tt.rcpts)
		}
	}
	if got, want := value(t, m.receivedBytes), 1024.0; got != want {
		t.Errorf("received bytes %v, want %v", got, want)
	}
}

func TestRefused(t *testing.T) {
	m := New(Gauges{})
	plant, office := m.RefusedOn("plant"), m.RefusedOn("office")
	for _, r := range []string{TooBig, TooBig, Smuggling, "made-up", ""} {
		plant(r, "")
	}
	plant(TooBig, "boiler-scada")
	plant("made-up", "boiler-scada")
	plant(RateLimited, Unknown)
	office(NotAllowed, "")
	body := scrape(t, m)
	for _, want := range []string{
		`siterelay_refused_total{device="unknown",listener="plant",reason="too_big"} 2`,
		`siterelay_refused_total{device="unknown",listener="plant",reason="smuggling"} 1`,
		`siterelay_refused_total{device="unknown",listener="plant",reason="other"} 2`,
		`siterelay_refused_total{device="unknown",listener="plant",reason="rate_limited"} 1`,
		`siterelay_refused_total{device="unknown",listener="plant",reason="not_allowed"} 0`,
		`siterelay_refused_total{device="boiler-scada",listener="plant",reason="too_big"} 1`,
		`siterelay_refused_total{device="boiler-scada",listener="plant",reason="other"} 1`,
		`siterelay_refused_total{device="unknown",listener="office",reason="not_allowed"} 1`,
		`siterelay_refused_total{device="unknown",listener="office",reason="storage_full"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// The status's total is the sum of the series.
	if got, want := m.Refused(), uint64(9); got != want {
		t.Errorf("Refused() = %d, want %d", got, want)
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestHandler(t *testing.T) {
	m := New(allGauges())
	m.RefusedOn("plant")
	m.ObserveAccept(3 * time.Millisecond)
	m.ObserveDelivery(2 * time.Second)
	m.Observe(trace.Event{Kind: trace.Received, To: []string{"a"}, Size: 10})
	body := scrape(t, m)
	for _, want := range []string{
		`siterelay_messages_total{kind="received"} 1`,
		`siterelay_messages_total{kind="expired"} 0`,
		`siterelay_recipients_total{kind="received"} 1`,
		`siterelay_received_bytes_total 10`,
		`siterelay_refused_total{device="unknown",listener="plant",reason="storage_full"} 0`,
		`siterelay_accept_duration_seconds_bucket{le="0.005"} 1`,
		`siterelay_accept_duration_seconds_count 1`,
		`siterelay_delivery_duration_seconds_bucket{le="2.5"} 1`,
		`siterelay_delivery_duration_seconds_sum 2`,
		`siterelay_queue_messages 7`,
		`siterelay_queue_bytes 7000`,
		`siterelay_queue_oldest_message_age_seconds 90`,
		`siterelay_spool_free_bytes 1.073741824e+09`,
		`siterelay_upstream_connections 2`,
		`siterelay_trace_dropped_events_total 3`,
		`# HELP siterelay_queue_messages Messages in the spool`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestNilGaugesLeftOut(t *testing.T) {
	body := scrape(t, New(Gauges{}))
	for _, name := range []string{"siterelay_queue_messages", "siterelay_queue_oldest_message_age_seconds", "siterelay_trace_dropped_events_total"} {
		if strings.Contains(body, name) {
			t.Errorf("scrape has %s without a callback", name)
		}
	}
	// Two relays in one process (or tests side by side) do not collide.
	New(allGauges())
}

// value reads a counter (testutil would need another module).
func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// The way the relay wires them: metrics observe the trace.
func TestFedByTrace(t *testing.T) {
	store, err := trace.Open(t.TempDir(), trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := New(Gauges{TraceDropped: func() uint64 { return store.Stats().Dropped }})
	store.Subscribe(m.Observe)
	store.Record(trace.Event{Kind: trace.Received, To: []string{"a", "b"}, Size: 50})
	store.Record(trace.Event{Kind: trace.Bounced, To: []string{"b"}})
	if got := value(t, m.messages[trace.Received]) + value(t, m.messages[trace.Bounced]); got != 2 {
		t.Errorf("messages %v, want 2", got)
	}
	if got := value(t, m.receivedBytes); got != 50 {
		t.Errorf("received bytes %v, want 50", got)
	}
	if body := scrape(t, m); !strings.Contains(body, "siterelay_trace_dropped_events_total 0") {
		t.Error("scrape lacks the trace drop counter")
	}
}
