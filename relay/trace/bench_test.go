package trace

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// go test -run '^$' -bench . -benchmem ./relay/trace/
func BenchmarkRecord(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.Subscribe(func(Event) {})
	e := sample()[1]
	e.Time = time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s.Record(e)
	}
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(st.Dropped)/float64(st.Recorded+st.Dropped), "dropped/op")
}

func BenchmarkRecordParallel(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	e := sample()[0]
	e.Time = time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Record(e)
		}
	})
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(st.Dropped)/float64(st.Recorded+st.Dropped), "dropped/op")
}

// BenchmarkRecordSustained flushes every 1000 events, so ns/op includes the
// writer's share (encoding plus the write to the page cache) and nothing is
// dropped: the rate one core sustains.
func BenchmarkRecordSustained(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	e := sample()[1]
	e.Time = time.Now()
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		s.Record(e)
		if n++; n%1000 == 0 {
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	if st := s.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d", st.Dropped)
	}
}

// BenchmarkLookup: one day of 1,000,000 events (TRACE_BENCH_EVENTS to
// change), looked up by queue ID, message ID, recipient, sender and device, through
// the index and by the linear scan the trace did before it:
//
//	go test -run '^$' -bench Lookup -benchtime 5x -v ./relay/trace/
func BenchmarkLookup(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("TRACE_BENCH_EVENTS")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	now := t0.Add(time.Duration(n) * 50 * time.Millisecond)
	s, err := newStore(dir, Options{Clock: func() time.Time { return now }, FlushInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	go s.writer()
	ctx := context.Background()
	start := time.Now()
	for i := range n {
		e := synthetic(t0, i)
		e.Time = t0.Add(time.Duration(i) * 50 * time.Millisecond)
		e.To[0] = fmt.Sprintf("user%d@example.com", (i/3)%5000)
		s.Record(e)
		if i%2000 == 1999 {
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if st := s.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d events while filling", st.Dropped)
	}
	took := time.Since(start)
	day, _ := os.Stat(filepath.Join(dir, dayName(dayOf(t0))))
	idx, _ := os.Stat(filepath.Join(dir, indexName(dayOf(t0))))
	b.Logf("%d events: day file %d MiB, index %d MiB (%.1f bytes an event), written in %v (%.2f µs an event)",
		n, day.Size()>>20, idx.Size()>>20, float64(idx.Size())/float64(n), took.Round(time.Millisecond),
		float64(took.Microseconds())/float64(n))
	mid := n / 3 / 2 // a message in the middle of the day
	for _, q := range []struct {
		name string
		f    Filter
	}{
		{"queue-id", Filter{QueueID: fmt.Sprintf("Q%07d", mid)}},
		{"message-id", Filter{MessageID: fmt.Sprintf("<m%d@mfp%d>", mid, mid%10)}},
		{"recipient", Filter{Recipient: "user4242@example.com"}},
		{"sender", Filter{Sender: "mfp3@plant.example", Limit: 100}},
		// A rewritten sender: the received events by index, then each
		// message's later events by its queue ID (the scan does that as
		// ten more scans).
		{"sender-as-received", Filter{Sender: "mfp5@plant.example", Limit: 10}},
		// The newest 100 of a device's 100,000 events, by its name.
		{"device", Filter{Device: "mfp-3", Limit: 100}},
	} {
		for _, mode := range []struct {
			name  string
			index bool
		}{{"index", true}, {"scan", false}} {
			b.Run(q.name+"/"+mode.name, func(b *testing.B) {
				var got int
				for b.Loop() {
					ev, err := search(ctx, dir, q.f, mode.index)
					if err != nil {
						b.Fatal(err)
					}
					got = len(ev)
				}
				if got == 0 {
					b.Fatal("nothing found")
				}
				b.ReportMetric(float64(got), "events")
			})
		}
	}
}
