package pace

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// windowTimes are the times of a restored pacer's places in its windows,
// latest first, one per message (minute) or per recipient (day).
func windowTimes(p *Paced) (minute, day []time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Clock()
	for _, s := range prune(p.minute, now.Add(-time.Minute)) {
		minute = append(minute, s.t)
	}
	for _, s := range prune(p.day, now.Add(-24*time.Hour)) {
		for range s.n {
			day = append(day, s.t)
		}
	}
	desc := func(a, b time.Time) int { return b.Compare(a) }
	slices.SortFunc(minute, desc)
	slices.SortFunc(day, desc)
	return minute, day
}

// dominates says whether the restored places hold every true one, none
// leaving the window sooner: with both sorted latest first, the restored
// list is at least as long and each of its entries at least as late.
func dominates(restored, truth []time.Time) bool {
	if len(restored) < len(truth) {
		return false
	}
	for i, t := range truth {
		if restored[i].Before(t) {
			return false
		}
	}
	return true
}

// sentWithin are the true acceptance times within window before now,
// latest first, one per message (rcpts nil) or per recipient.
func sentWithin(times []time.Time, rcpts []int, now time.Time, window time.Duration) []time.Time {
	var out []time.Time
	for i, t := range times {
		if t.After(now.Add(-window)) && !t.After(now) {
			n := 1
			if rcpts != nil {
				n = rcpts[i]
			}
			for range n {
				out = append(out, t)
			}
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return b.Compare(a) })
	return out
}

// A crash between writes loses the places of the messages sent since the
// last write; the restore must still count every one of them. Messages go
// faster than one a second here, so most are sent without a write of their
// own. A naive once-a-second write (the file without its allowance) fails
// this: it restores only the messages of the last write.
func TestCrashBetweenWrites(t *testing.T) {
	tests := []struct {
		name  string
		o     Options
		n     int           // messages before the crash
		rcpts int           // recipients each
		step  time.Duration // between messages
	}{
		{"minute, all in one second", Options{MessagesPerMinute: 30}, 10, 1, 0},
		{"minute, every 300ms", Options{MessagesPerMinute: 30}, 12, 1, 300 * time.Millisecond},
		{"minute, a full burst", Options{MessagesPerMinute: 30}, 30, 1, 0},
		{"day, all in one second", Options{RecipientsPerDay: 10000}, 20, 5, 0},
		{"day, every 100ms", Options{RecipientsPerDay: 10000}, 50, 3, 100 * time.Millisecond},
		{"both, a burst of many recipients", Options{MessagesPerMinute: 30, RecipientsPerDay: 10000}, 25, 40, 10 * time.Millisecond},
		{"high limits, every 10ms", Options{MessagesPerMinute: 6000, RecipientsPerDay: 1 << 20}, 300, 2, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			f := &fake{c: c}
			o := tt.o
			o.Clock, o.Sleep, o.StateFile = c.Now, c.Sleep, filepath.Join(t.TempDir(), "m365.json")
			p := Wrap(f, o)
			var rcpts []int
			for range tt.n {
				if _, err := p.Deliver(context.Background(), msg(tt.rcpts)); err != nil {
					t.Fatal(err)
				}
				rcpts = append(rcpts, tt.rcpts)
				c.Advance(tt.step)
			}
			if p.writes >= tt.n && tt.n > 2 {
				t.Errorf("%d writes for %d messages: the file is written before every message", p.writes, tt.n)
			}
			// The crash: no Close; a new pacer reads what is on disk.
			r := Wrap(f, o)
			minute, day := windowTimes(r)
			now := c.Now()
			if o.MessagesPerMinute > 0 {
				if truth := sentWithin(f.times, nil, now, time.Minute); !dominates(minute, truth) {
					t.Errorf("after the crash the minute holds %d places, %d messages were sent in it", len(minute), len(truth))
				}
			}
			if o.RecipientsPerDay > 0 {
				if truth := sentWithin(f.times, rcpts, now, 24*time.Hour); !dominates(day, truth) {
					t.Errorf("after the crash the day holds %d places, %d recipients were sent in it", len(day), len(truth))
				}
			}
			// And the limit holds across the crash.
			if o.MessagesPerMinute > 0 {
				run(t, r, c, 5, tt.rcpts)
				if got := maxInWindow(f.times, time.Minute); got > o.MessagesPerMinute {
					t.Errorf("%d messages in one minute across the crash, limit %d", got, o.MessagesPerMinute)
				}
			}
		})
	}
}

// The file is written at most once a second while messages stay within the
// allowance, and the allowance follows the rate; Close writes the exact
// state.
func TestStateWritesPerSecond(t *testing.T) {
	tests := []struct {
		name       string
		o          Options
		n          int
		step       time.Duration
		rcpts      int
		wantWrites int // before Close
	}{
		// 10 a second for 10 seconds: the first, then one a second.
		{"10 a second", Options{MessagesPerMinute: 6000, RecipientsPerDay: 1 << 20}, 100, 100 * time.Millisecond, 1, 10},
		// One every two seconds (Microsoft's 30 a minute): each finds a
		// write due, as before.
		{"one every 2 s", Options{MessagesPerMinute: 30, RecipientsPerDay: 10000}, 10, 2 * time.Second, 1, 10},
		// No window has a limit (the MX kinds): nothing to count, no
		// writes until Close.
		{"no limits", Options{}, 50, 10 * time.Millisecond, 1, 0},
		// A burst of 30 at once: the first write's allowance (7 of 30)
		// is used up, the next write's covers the rest.
		{"a burst", Options{MessagesPerMinute: 30}, 30, 0, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			path := filepath.Join(t.TempDir(), "m365.json")
			o := tt.o
			o.Clock, o.Sleep, o.StateFile = c.Now, c.Sleep, path
			p := Wrap(&fake{c: c}, o)
			for range tt.n {
				if _, err := p.Deliver(context.Background(), msg(tt.rcpts)); err != nil {
					t.Fatal(err)
				}
				c.Advance(tt.step)
			}
			if p.writes != tt.wantWrites {
				t.Errorf("%d writes for %d messages, want %d", p.writes, tt.n, tt.wantWrites)
			}
			p.Close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var st state
			if err := json.Unmarshal(b, &st); err != nil || st.Ahead != nil {
				t.Errorf("after Close the file holds an allowance (%v, err %v), want the exact state", st.Ahead, err)
			}
		})
	}
}

// A write in progress may or may not reach the disk before a crash: a
// message sent while it runs must be covered by the file before it too.
// Workers deliver at once on a shared virtual clock; as each message is
// accepted the file on disk is read (a crash at that moment), and a pacer
// restored from it must hold every message and recipient sent so far in
// its windows, none leaving sooner than it should. Run with -race.
func TestCrashAtAnyMoment(t *testing.T) {
	type send struct {
		at    time.Time
		rcpts int
	}
	type crash struct {
		at   time.Time
		file []byte
		sent int // sends[:sent] were handed to the upstream before the read
	}
	for seed := range uint64(4) {
		c := &clock{now: time.Unix(1e9, 0)}
		path := filepath.Join(t.TempDir(), "m365.json")
		o := Options{MessagesPerMinute: 300, RecipientsPerDay: 5000, Clock: c.Now, Sleep: c.Sleep, StateFile: path, MaxWait: time.Hour}
		var (
			mu      sync.Mutex
			sends   []send
			crashes []crash
		)
		f := &fake{c: c}
		f.onSend = func(at time.Time, n int) {
			mu.Lock()
			defer mu.Unlock()
			sends = append(sends, send{at, n})
			b, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("no state file on disk when a message was sent: %v", err)
				return
			}
			crashes = append(crashes, crash{c.Now(), b, len(sends)})
		}
		p := Wrap(f, o)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(w)))
				for range 60 {
					if _, err := p.Deliver(context.Background(), msg(1+rng.IntN(8))); err != nil {
						t.Error(err)
						return
					}
					c.Advance(time.Duration(rng.IntN(400)) * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		p.Close()
		if len(sends) != 240 {
			t.Fatalf("seed %d: %d sent, want 240", seed, len(sends))
		}
		if p.writes >= len(sends) {
			t.Errorf("seed %d: %d writes for %d messages", seed, p.writes, len(sends))
		}
		for i, cr := range crashes {
			cpath := filepath.Join(t.TempDir(), "m365.json")
			if err := os.WriteFile(cpath, cr.file, 0o600); err != nil {
				t.Fatal(err)
			}
			cc := &clock{now: cr.at}
			ro := o
			ro.Clock, ro.Sleep, ro.StateFile = cc.Now, cc.Sleep, cpath
			minute, day := windowTimes(Wrap(&fake{c: cc}, ro))
			var times []time.Time
			var rcpts []int
			for _, s := range sends[:cr.sent] {
				times, rcpts = append(times, s.at), append(rcpts, s.rcpts)
			}
			if truth := sentWithin(times, nil, cr.at, time.Minute); !dominates(minute, truth) {
				t.Errorf("seed %d, crash %d: the minute holds %d places, %d messages were sent in it", seed, i, len(minute), len(truth))
			}
			if truth := sentWithin(times, rcpts, cr.at, 24*time.Hour); !dominates(day, truth) {
				t.Errorf("seed %d, crash %d: the day holds %d places, %d recipients were sent in it", seed, i, len(day), len(truth))
			}
		}
	}
}
