package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
)

func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	if opts.statfs == nil {
		opts.statfs = func(string) (int64, error) { return 1 << 40, nil }
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t *testing.T, s *Spool, content []byte, rcpts ...string) string {
	t.Helper()
	m := s.NewMessage()
	if _, err := m.Write(content); err != nil {
		t.Fatal(err)
	}
	env := Envelope{From: "printer@plant.example", Received: time.Unix(1700000000, 0).UTC(), ClientIP: "10.0.0.7", MessageID: "<x@y>"}
	for _, r := range rcpts {
		env.To = append(env.To, Rcpt{Addr: r})
	}
	id, err := m.Commit(env)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return id
}

func content(t *testing.T, s *Spool, id string) []byte {
	t.Helper()
	c, err := s.Open(id)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	defer c.Close()
	b := make([]byte, c.Size)
	if _, err := c.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCommitSurvivesReopen(t *testing.T) {
	dir := relaytest.StateDir(t)
	small := []byte("Subject: small\r\n\r\nhello\r\n")
	large := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640 KB: own file
	s := open(t, dir, Options{})
	idSmall := put(t, s, small, "a@x.example", "b@x.example")
	idLarge := put(t, s, large, "c@x.example")
	if err := s.Update(idSmall, 1, Delivered, "250 ok"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, dir, Options{})
	for _, tc := range []struct {
		id   string
		want []byte
	}{{idSmall, small}, {idLarge, large}} {
		if got := content(t, s, tc.id); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: content differs after reopen (%d vs %d bytes)", tc.id, len(got), len(tc.want))
		}
	}
	info, ok := s.Get(idSmall)
	if !ok {
		t.Fatal("small message lost")
	}
	got := []State{info.Envelope.To[0].State, info.Envelope.To[1].State}
	if want := []State{Pending, Delivered}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("states = %v, want %v", got, want)
	}
	if got, want := info.Envelope.To[1].Reply, "250 ok"; got != want {
		t.Errorf("reply = %q, want %q", got, want)
	}
	if got, want := info.Envelope.ClientIP, "10.0.0.7"; got != want {
		t.Errorf("client ip = %q, want %q", got, want)
	}
	if err := s.Done(idLarge); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", idLarge)); !os.IsNotExist(err) {
		t.Errorf("large message file still there after Done: %v", err)
	}
	s.Close()
	s = open(t, dir, Options{})
	if got, want := len(s.List()), 1; got != want {
		t.Errorf("messages after Done and reopen = %d, want %d", got, want)
	}
}

func TestTornTailIsDropped(t *testing.T) {
	rec := messageRec{ID: "A", Env: Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}, Data: []byte("hi\r\n")}
	good := frame(nil, 1, encodeMessage(nil, &rec))
	torn := frame(nil, 1, encodeDone(nil, "A"))
	stale := frame(nil, 7, encodeDone(nil, "A")) // left over from a recycled file's previous life
	for _, tc := range []struct {
		name string
		tail []byte
	}{
		{"zeros after the last frame", make([]byte, 64)},
		{"stale frame from another segment", stale},
		{"file ends after the last frame", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check(t, append(bytes.Clone(good), tc.tail...))
		})
	}
	// A crash mid-write: every proper prefix of the Done frame is torn,
	// so the message it would have finished must still be there.
	for cut := 1; cut < len(torn); cut++ {
		t.Run(fmt.Sprintf("torn at %d", cut), func(t *testing.T) {
			check(t, append(append(bytes.Clone(good), torn[:cut]...), make([]byte, 32)...))
		})
	}
}

// check opens a spool whose only segment holds data and expects message A.
func check(t *testing.T, data []byte) {
	t.Helper()
	dir := relaytest.StateDir(t)
	os.MkdirAll(filepath.Join(dir, "log"), 0o700)
	os.WriteFile(filepath.Join(dir, "log", "0000000000000001.seg"), data, 0o600)
	s := open(t, dir, Options{SegmentBytes: 64 << 10})
	info, ok := s.Get("A")
	if !ok {
		t.Fatalf("message lost")
	}
	if got, want := string(content(t, s, info.ID)), "hi\r\n"; got != want {
		t.Errorf("content %q, want %q", got, want)
	}
}

func TestSegmentsAreRecycled(t *testing.T) {
	dir := relaytest.StateDir(t)
	opts := Options{SegmentBytes: 16 << 10}
	s := open(t, dir, opts)
	body := bytes.Repeat([]byte("r"), 1000)
	for round := 0; round < 5; round++ {
		var ids []string
		for i := 0; i < 40; i++ { // several segments' worth
			ids = append(ids, put(t, s, body, "a@x.example"))
		}
		for _, id := range ids {
			if err := s.Done(id); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.compact(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "log", "spare")); err != nil {
		t.Errorf("no spare segment after compaction: %v", err)
	}
	keep := put(t, s, body, "b@x.example")
	s.Close()
	s = open(t, dir, opts)
	list := s.List()
	if len(list) != 1 || list[0].ID != keep {
		t.Fatalf("after recycling and reopen: %d messages, want only %s", len(list), keep)
	}
	if got := content(t, s, keep); !bytes.Equal(got, body) {
		t.Error("content differs")
	}
}

func TestLeftoversAreCleaned(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{})
	m := s.NewMessage()
	m.Write(bytes.Repeat([]byte("x"), 300<<10)) // spills to a temporary file, never committed
	s.Close()
	s = open(t, dir, Options{})
	left, _ := os.ReadDir(filepath.Join(dir, "msg"))
	if len(left) != 0 {
		t.Errorf("leftover files after recovery: %v", left)
	}
	if got := len(s.List()); got != 0 {
		t.Errorf("half-written message recovered: %d messages", got)
	}
}

// fixedClock stands still unless moved: the spool's free-space cache is
// then judged by the test, not by how busy the machine is.
type fixedClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFixedClock() *fixedClock { return &fixedClock{now: time.Unix(1700000000, 0)} }

func (c *fixedClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fixedClock) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestLimits(t *testing.T) {
	// The file system has room for one message above the floor, and then
	// (freed by someone else) plenty: only a fresh statfs sees that.
	lowThenPlenty := func() func(string) (int64, error) {
		var calls atomic.Int32
		return func(string) (int64, error) {
			if calls.Add(1) == 1 {
				return 1<<20 + 100, nil
			}
			return 1 << 40, nil
		}
	}
	for _, tc := range []struct {
		name    string
		opts    Options
		size    int
		advance time.Duration // between the two commits
		wantErr error
	}{
		{"max messages", Options{MaxMessages: 1}, 10, 0, ErrFull},
		{"max bytes", Options{MaxBytes: 100}, 60, 0, ErrFull},
		{"free space floor", Options{MinFreeBytes: 1 << 20, statfs: lowThenPlenty()}, 60, 0, ErrFull},
		{"free space floor, cache within its window", Options{MinFreeBytes: 1 << 20, statfs: lowThenPlenty()}, 60, 100 * time.Millisecond, ErrFull},
		{"free space asked again after the window", Options{MinFreeBytes: 1 << 20, statfs: lowThenPlenty()}, 60, 101 * time.Millisecond, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFixedClock()
			tc.opts.Clock = clock.Now
			s := open(t, relaytest.StateDir(t), tc.opts)
			put(t, s, bytes.Repeat([]byte("a"), tc.size), "a@x.example")
			clock.advance(tc.advance)
			m := s.NewMessage()
			m.Write(bytes.Repeat([]byte("b"), tc.size))
			_, err := m.Commit(Envelope{To: []Rcpt{{Addr: "a@x.example"}}})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("second commit: got %v, want %v", err, tc.wantErr)
			}
			want := 1
			if tc.wantErr == nil {
				want = 2
			}
			if got := len(s.List()); got != want {
				t.Errorf("messages = %d, want %d", got, want)
			}
		})
	}
}

func TestCompactionKeepsLingeringMessages(t *testing.T) {
	dir := relaytest.StateDir(t)
	opts := Options{SegmentBytes: 8 << 10}
	s := open(t, dir, opts)
	body := bytes.Repeat([]byte("z"), 1000)
	var ids []string
	for i := 0; i < 60; i++ {
		ids = append(ids, put(t, s, body, "a@x.example"))
	}
	// All but the first are delivered: the first lingers in the oldest segment.
	for _, id := range ids[1:] {
		if err := s.Done(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Segments; got > 2 {
		t.Errorf("segments after compaction = %d, want at most 2", got)
	}
	if got := content(t, s, ids[0]); !bytes.Equal(got, body) {
		t.Error("lingering message content changed by compaction")
	}
	s.Update(ids[0], 0, Pending, "451 4.7.500 try later")
	s.Close()
	s = open(t, dir, opts)
	list := s.List()
	if len(list) != 1 || list[0].ID != ids[0] {
		t.Fatalf("after reopen: %v, want only %s", list, ids[0])
	}
	if got, want := list[0].Envelope.To[0].Reply, "451 4.7.500 try later"; got != want {
		t.Errorf("reply after compaction and reopen = %q, want %q", got, want)
	}
}

func TestConcurrentCommits(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{SegmentBytes: 64 << 10})
	const workers, each = 8, 50
	var wg sync.WaitGroup
	ids := make(chan string, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				m := s.NewMessage()
				fmt.Fprintf(m, "worker %d message %d\r\n", w, i)
				id, err := m.Commit(Envelope{To: []Rcpt{{Addr: "a@x.example"}}})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("duplicate queue id %s", id)
		}
		seen[id] = true
	}
	s.Close()
	s = open(t, dir, Options{SegmentBytes: 64 << 10})
	if got, want := len(s.List()), workers*each; got != want {
		t.Errorf("recovered %d messages, want %d", got, want)
	}
}

func FuzzReplay(f *testing.F) {
	f.Add(frame(nil, 1, encodeMessage(nil, &messageRec{ID: "A", Env: Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}, Data: []byte("hi")})))
	f.Add(frame(nil, 1, encodeUpdate(nil, &updateRec{ID: "A", Index: 0, State: Delivered, Reply: "250"})))
	f.Add(frame(nil, 1, encodeDone(nil, "A")))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "log"), 0o700)
		os.WriteFile(filepath.Join(dir, "log", "0000000000000001.seg"), data, 0o600)
		s, err := Open(dir, Options{SegmentBytes: 64 << 10, statfs: func(string) (int64, error) { return 1 << 40, nil }})
		if err != nil {
			return
		}
		for _, info := range s.List() {
			if c, err := s.Open(info.ID); err == nil {
				b := make([]byte, c.Size)
				c.ReadAt(b, 0)
				c.Close()
			}
		}
		s.Close()
	})
}

// BenchmarkCommit10 commits 4 KiB messages from 10 writers at once, as 10
// device sessions would: the figure shows what group commit buys.
func BenchmarkCommit10(b *testing.B) {
	s, err := Open(b.TempDir(), Options{statfs: func(string) (int64, error) { return 1 << 40, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := bytes.Repeat([]byte("x"), 4096)
	b.SetParallelism(5) // 2 CPUs x 5 = 10 writers
	b.SetBytes(int64(len(body)))
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := s.NewMessage()
			m.Write(body)
			if _, err := m.Commit(Envelope{From: "a@b", To: []Rcpt{{Addr: "c@d"}}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
}

// TestConcurrentCompactions: compactions racing each other (the
// background one and one asked for, as TestDiskReallyFull does) retire
// each dead segment once and never drop a live one from the list. Before
// they were serialised, the second took the segment after the one it had
// checked for the one to retire: "retiring segment: … no such file", and
// a segment left open and out of the list.
func TestConcurrentCompactions(t *testing.T) {
	dir := relaytest.StateDir(t)
	opts := Options{SegmentBytes: 8 << 10}
	body := bytes.Repeat([]byte("c"), 1000)
	for round := range 20 {
		s := open(t, dir, opts)
		var ids []string
		for range 60 {
			ids = append(ids, put(t, s, body, "a@x.example"))
		}
		keep := ids[len(ids)-1] // live, in the newest segment
		for _, id := range ids[:len(ids)-1] {
			if err := s.Done(id); err != nil {
				t.Fatal(err)
			}
		}
		errs := make(chan error, 4)
		for range cap(errs) {
			go func() { errs <- s.compact() }()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: compaction: %v", round, err)
			}
		}
		if got := content(t, s, keep); !bytes.Equal(got, body) {
			t.Fatalf("round %d: the live message changed", round)
		}
		segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
		if got := s.Stats().Segments; got != len(segs) {
			t.Fatalf("round %d: the spool lists %d segments, %d are on disk", round, got, len(segs))
		}
		s.Done(keep)
		s.Close()
	}
}

// The delivery side's bookkeeping (Update, DoneLater) causes no flush of
// its own: the next group commit carries it, and once that commit is
// durable so is the bookkeeping (a crash image then holds neither done
// message) and a large message's file is gone.
func TestBookkeepingRidesTheNextCommit(t *testing.T) {
	dir := relaytest.StateDir(t)
	s := open(t, dir, Options{LazyFlush: time.Hour})
	small := []byte("Subject: small\r\n\r\nhello\r\n")
	large := bytes.Repeat([]byte("0123456789abcdef"), 40000) // own file
	a := put(t, s, small, "a@x.example")
	b := put(t, s, large, "b@x.example")
	largeFile := filepath.Join(dir, "msg", b)
	if _, err := os.Stat(largeFile); err != nil {
		t.Fatal(err)
	}
	before := s.w.flushes.Load()
	if err := s.Update(a, 0, Delivered, "250 ok"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a, b} {
		if err := s.DoneLater(id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(largeFile); err != nil {
		t.Errorf("the large file went before its done record was durable: %v", err)
	}
	c := put(t, s, small, "c@x.example")
	if got := s.w.flushes.Load() - before; got != 1 {
		t.Errorf("an update, two done records and a commit took %d flushes, want 1", got)
	}
	if _, err := os.Stat(largeFile); !os.IsNotExist(err) {
		t.Errorf("the large file is still there after its done record was durable: %v", err)
	}
	crash := relaytest.StateDir(t)
	if err := os.CopyFS(crash, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	r := open(t, crash, Options{})
	var got []string
	for _, m := range r.List() {
		got = append(got, m.ID)
	}
	if want := []string{c}; !slices.Equal(got, want) {
		t.Errorf("after a crash the spool holds %v, want %v", got, want)
	}
}

// A bookkeeping record only arms the lazy flush; a message wakes the
// writer at once. (The writer goroutine is not running here, so what each
// append signalled stays in the channels.)
func TestBookkeepingDoesNotWakeTheWriter(t *testing.T) {
	tests := []struct {
		name           string
		lazy           bool
		wantKick, want int
	}{
		{"bookkeeping", true, 0, 1},
		{"message", false, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w writer
			w.init(&Spool{opts: Options{SegmentBytes: 1 << 20}, needSpare: make(chan struct{}, 1)}, &segment{})
			if _, _, _, err := w.appendFrame(framed([]byte("x")), nil, tt.lazy, nil); err != nil {
				t.Fatal(err)
			}
			if got := [2]int{len(w.kick), len(w.lazy)}; got != [2]int{tt.wantKick, tt.want} {
				t.Errorf("kick, lazy = %v, want %v", got, [2]int{tt.wantKick, tt.want})
			}
		})
	}
}
