package metrics

import (
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/trace"
)

// go test -run '^$' -bench . -benchmem ./relay/metrics/
func BenchmarkObserve(b *testing.B) {
	m := New(Gauges{})
	e := trace.Event{Kind: trace.Received, To: []string{"a@example.com", "b@example.com"}, Size: 4096}
	b.ReportAllocs()
	for b.Loop() {
		m.Observe(e)
	}
}

func BenchmarkObserveAccept(b *testing.B) {
	m := New(Gauges{})
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveAccept(3 * time.Millisecond)
	}
}

func BenchmarkRefused(b *testing.B) {
	refused := New(Gauges{}).RefusedOn("plant")
	b.ReportAllocs()
	for b.Loop() {
		refused(RateLimited, "boiler-scada")
	}
}

func BenchmarkObserveParallel(b *testing.B) {
	m := New(Gauges{})
	e := trace.Event{Kind: trace.Delivered, To: []string{"a@example.com"}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Observe(e)
			m.ObserveDelivery(time.Second)
		}
	})
}
