package trace

import (
	"context"
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
