package trace

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// openSmall opens a store whose index segments hold only seg keys, so a
// few hundred events make several segments and a tail.
func openSmall(t *testing.T, dir string, c *clock, seg int) *Store {
	t.Helper()
	s, err := newStore(dir, Options{Clock: c.now, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s.segEntries = seg
	go s.writer()
	s.rebuild()
	t.Cleanup(func() { s.Close() })
	return s
}

// synthetic is event i of a day of traffic: 10 devices, 50 recipients,
// three events a message, every fifth sender rewritten.
func synthetic(day time.Time, i int) Event {
	msg := i / 3
	e := Event{
		Time: day.Add(time.Duration(i) * time.Second), Kind: []Kind{Received, Deferred, Delivered}[i%3],
		QueueID: fmt.Sprintf("Q%07d", msg), MessageID: fmt.Sprintf("<m%d@mfp%d>", msg, msg%10),
		ClientIP: fmt.Sprintf("10.0.0.%d", msg%10), Listener: "plant", From: fmt.Sprintf("mfp%d@plant.example", msg%10),
		To: []string{fmt.Sprintf("user%d@example.com", msg%50)}, Subject: fmt.Sprintf("scan %d", msg), Size: 4096,
	}
	if msg%10 == 3 {
		e.Account = "scanner3"
	}
	if msg%10 != 7 { // one client is no device
		e.Device = fmt.Sprintf("mfp-%d", msg%10)
	}
	if msg%5 == 0 {
		e.FromReceived, e.From = e.From, "relay@example.com"
	}
	if e.Kind != Received {
		// As the scheduler records them: the envelope as spooled.
		e.Attempt, e.Upstream = 1, "m365-oauth contoso"
		e.Listener, e.FromReceived = "", ""
	}
	return e
}

// Lookups through the index give exactly what the scan gives: over
// several segments, the unindexed tail, two days, every filter that uses
// a key and some that do not.
func TestIndexAgreesWithScan(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t0.Add(48 * time.Hour)}
	s := openSmall(t, dir, c, 64)
	ctx := context.Background()
	for i := range 600 {
		s.Record(synthetic(t0, i))
		if i%50 == 0 {
			if err := s.Flush(ctx); err != nil { // many writes, several segments
				t.Fatal(err)
			}
		}
	}
	for i := range 300 {
		s.Record(synthetic(t0.Add(24*time.Hour-600*time.Second), 600+i)) // messages 200..299, the next day
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Filter{
		{QueueID: "q0000042"},
		{MessageID: "m42@mfp2"},
		{MessageID: "<M42@MFP2>"},
		{Recipient: "user7@example.com"},
		{Recipient: "USER7@example.com", Kind: Delivered},
		{Sender: "mfp5@plant.example"}, // only ever as received (rewritten)
		{Sender: "relay@example.com"},  // as sent
		{Sender: "mfp3@plant.example", Device: "scanner3"},
		{Sender: "@plant.example", Limit: 100000}, // a part: scanned
		{Recipient: "user7", Since: t0.Add(100 * time.Second), Until: t0.Add(24*time.Hour + 50*time.Second)},
		{Device: "plant", Limit: 5},
		{Device: "mfp-4"},
		{Device: "MFP-4", Kind: Delivered},
		{Device: "scanner3", Limit: 10},
		{Device: "mfp-4", Recipient: "user4"},
		{QueueID: "nosuch"},
	} {
		got, err := s.Query(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := search(ctx, dir, f, false)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%+v: index gives %d events, scan %d", f, len(got), len(want))
		}
		if f.QueueID == "" && f.MessageID == "" && len(want) == 0 {
			t.Errorf("%+v: nothing found: the test proves nothing", f)
		}
	}
	// The sender as received finds the message's delivery although its
	// From was rewritten and the delivery event has only the new one.
	got, err := s.Query(ctx, Filter{Sender: "mfp5@plant.example", Kind: Delivered})
	if err != nil || len(got) != 30 || got[0].Kind != Delivered || got[0].From != "relay@example.com" {
		t.Errorf("deliveries by the sender as received: got %d (%v), want 30", len(got), err)
	}
	got, err = s.Query(ctx, Filter{Device: "plant", Kind: Deferred, Limit: 1000})
	if err != nil || len(got) != 300 {
		t.Errorf("deferrals by listener: got %d (%v), want 300", len(got), err)
	}
	// The sender as received finds the message although its From was
	// rewritten.
	got, err = s.Query(ctx, Filter{Sender: "mfp0@plant.example", Kind: Received, Limit: 1})
	if err != nil || len(got) != 1 || got[0].From != "relay@example.com" || got[0].FromReceived != "mfp0@plant.example" {
		t.Errorf("rewritten sender: got %+v, %v", got, err)
	}
}

// A missing or damaged index costs time, never answers: the scan covers
// what the index does not, and the next start rebuilds it.
func TestIndexDamagedOrMissing(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		damage func(path string) error
	}{
		{"missing (an old box's day)", os.Remove},
		{"an stx1 index, without device keys", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			copy(b, "stx1")
			return os.WriteFile(p, b, 0o640)
		}},
		{"truncated mid-segment", func(p string) error { return os.Truncate(p, segHeader+5) }},
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("not an index at all, not at all"), 0o640) }},
		{"entries flipped", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for i := segHeader; i < len(b); i++ {
				b[i] ^= 0x5a
			}
			return os.WriteFile(p, b, 0o640)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := &clock{t0}
			s := openSmall(t, dir, c, 1<<20)
			for i := range 90 {
				s.Record(synthetic(t0, i))
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			idx := filepath.Join(dir, indexName(dayOf(t0)))
			if err := tt.damage(idx); err != nil {
				t.Fatal(err)
			}
			f := Filter{Recipient: "user3@example.com"}
			want, _ := search(ctx, dir, f, false)
			got, err := Search(ctx, dir, f)
			if len(want) != 3 || err != nil || tt.name != "entries flipped" && !reflect.DeepEqual(got, want) {
				t.Errorf("damaged: got %d, want %d (%v)", len(got), len(want), err)
			}
			// A day later the store rebuilds the past day's index.
			c.t = t0.Add(24 * time.Hour)
			s = openSmall(t, dir, c, 1<<20)
			s.rebuilds.Wait()
			df, _ := os.Open(filepath.Join(dir, dayName(dayOf(t0))))
			defer df.Close()
			st, _ := df.Stat()
			xf, err := os.Open(idx)
			if err != nil {
				t.Fatal(err)
			}
			defer xf.Close()
			if _, covered, _, _ := readChain(xf, st.Size(), true); covered != st.Size() {
				t.Errorf("rebuilt index covers %d of %d bytes", covered, st.Size())
			}
			if got, err := Search(ctx, dir, f); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("rebuilt: got %d, want %d (%v)", len(got), len(want), err)
			}
		})
	}
}

// After a crash the index lacks the last lines written: the writer indexes
// them when it opens the day again, and new segments chain on.
func TestIndexGapAfterCrash(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t0}
	s := openSmall(t, dir, c, 64)
	for i := range 200 {
		s.Record(synthetic(t0, i))
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 200; i < 210; i++ { // fewer keys than a segment holds
		s.Record(synthetic(t0, i))
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(s.index.pending) == 0 {
		t.Fatal("no keys pending: the test proves nothing")
	}
	// A crash: the writer's pending keys never reach the index.
	s.index.pending = s.index.pending[:0]
	s.index.off = true
	s.Close()

	s = openSmall(t, dir, c, 64)
	for i := 210; i < 300; i++ {
		s.Record(synthetic(t0, i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	df, _ := os.Open(filepath.Join(dir, dayName(dayOf(t0))))
	defer df.Close()
	st, _ := df.Stat()
	xf, err := os.Open(filepath.Join(dir, indexName(dayOf(t0))))
	if err != nil {
		t.Fatal(err)
	}
	defer xf.Close()
	segs, covered, _, _ := readChain(xf, st.Size(), true)
	if covered != st.Size() || len(segs) < 2 {
		t.Errorf("index covers %d of %d bytes in %d segments", covered, st.Size(), len(segs))
	}
	// Every message's three events, found by index alone.
	for _, q := range []string{"Q0000000", "Q0000066", "Q0000099"} {
		got, err := searchIndexOnly(dir, Filter{QueueID: q}, t0)
		if err != nil || len(got) != 3 {
			t.Errorf("%s: %d events by index, %v", q, len(got), err)
		}
	}
}

// A device's events come from the index: its name, the login and the
// listener are keys of it.
func TestIndexHoldsDevices(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t0}
	s := openSmall(t, dir, c, 64)
	for i := range 300 {
		s.Record(synthetic(t0, i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		device string
		want   int
	}{
		{"mfp-4", 30},    // messages 4, 14, ... 94: three events each
		{"scanner3", 30}, // the login of mfp-3
		{"plant", 100},   // the listener: every received event
		{"mfp-7", 0},     // no device
	} {
		got, err := searchIndexOnly(dir, Filter{Device: tc.device, Limit: 1000}, t0)
		if err != nil || len(got) != tc.want {
			t.Errorf("device %s: %d events by index alone (%v), want %d", tc.device, len(got), err, tc.want)
		}
	}
}

func searchIndexOnly(dir string, f Filter, day time.Time) ([]Event, error) {
	d := dayOf(day)
	df, err := os.Open(filepath.Join(dir, dayName(d)))
	if err != nil {
		return nil, err
	}
	defer df.Close()
	st, _ := df.Stat()
	m := newMatcher(f)
	h, ok := m.key()
	if !ok {
		return nil, fmt.Errorf("%+v has no index key", f)
	}
	got, _, err := indexed(df, filepath.Join(dir, indexName(d)), st.Size(), h, m)
	return got, err
}

func TestRetentionRemovesIndexes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"2026-10-24.jsonl", "2026-10-24.idx", "2026-11-23.jsonl", "2026-11-23.idx"} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 10), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := newStore(dir, Options{Clock: (&clock{t0}).now}); err != nil {
		t.Fatal(err)
	}
	if got, want := names(t, dir), []string{"2026-11-23.idx", "2026-11-23.jsonl"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// Whatever the index file holds, a search gives what the scan gives (an
// entry pointing at the wrong place is read, fails to match, and is
// skipped) and nothing panics.
func FuzzIndex(f *testing.F) {
	dir := f.TempDir()
	c := &clock{t0}
	s, err := newStore(dir, Options{Clock: c.now, FlushInterval: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	s.segEntries = 16
	go s.writer()
	for i := range 30 {
		s.Record(synthetic(t0, i))
		if i%7 == 0 {
			s.Flush(context.Background())
		}
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	idx := filepath.Join(dir, indexName(dayOf(t0)))
	good, err := os.ReadFile(idx)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("stx1"))
	filter := Filter{QueueID: "Q0000004"}
	want, err := search(context.Background(), dir, filter, false)
	if err != nil || len(want) != 3 {
		f.Fatalf("scan found %d, %v", len(want), err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := t.TempDir()
		day, _ := os.ReadFile(filepath.Join(dir, dayName(dayOf(t0))))
		os.WriteFile(filepath.Join(d, dayName(dayOf(t0))), day, 0o640)
		os.WriteFile(filepath.Join(d, indexName(dayOf(t0))), b, 0o640)
		got, err := Search(context.Background(), d, filter)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			if e.QueueID != "Q0000004" {
				t.Fatalf("a wrong event: %+v", e)
			}
		}
		if len(got) > len(want) {
			t.Fatalf("%d events, the scan finds %d", len(got), len(want))
		}
	})
}
