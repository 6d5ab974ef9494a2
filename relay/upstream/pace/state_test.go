package pace

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
)

// logBuf collects log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }
func (l *logBuf) logger() *slog.Logger        { return slog.New(slog.NewTextHandler(l, nil)) }

// A restart keeps the windows: 25 of 30 sent in a minute, a new pacer from
// the state file, then of the next 10 only 5 go in that minute.
func TestWindowsSurviveRestart(t *testing.T) {
	tests := []struct {
		name   string
		o      Options
		window time.Duration
		limit  int
		step   time.Duration
	}{
		{"minute", Options{MessagesPerMinute: 30}, time.Minute, 30, time.Second},
		{"day", Options{RecipientsPerDay: 30}, 24 * time.Hour, 30, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			f := &fake{c: c}
			o := tt.o
			o.Clock, o.Sleep, o.StateFile = c.Now, c.Sleep, filepath.Join(t.TempDir(), "pace", "m365.json")
			p := Wrap(f, o)
			for range 25 {
				if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
					t.Fatal(err)
				}
				c.Advance(tt.step)
			}
			// The restart: a new pacer over the same file and clock.
			p = Wrap(f, o)
			deferred := run(t, p, c, 10, 1)
			if got := maxInWindow(f.times, tt.window); got > tt.limit {
				t.Errorf("%d messages in one %v after the restart, limit %d", got, tt.window, tt.limit)
			}
			if got := len(f.times); got != 35 {
				t.Errorf("sent %d, want 35", got)
			}
			if deferred == 0 && tt.name == "day" {
				t.Error("no message waited for the day window")
			}
			// The minute's waits are short and happen inside Deliver; the
			// 31st message must still come a minute after the 1st.
			if gap := f.times[30].Sub(f.times[0]); gap < tt.window {
				t.Errorf("31st message %v after the 1st, want at least %v", gap, tt.window)
			}
		})
	}
}

func TestCooldownSurvivesRestart(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	quota := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}
	f := &fake{c: c, replies: []error{quota}}
	o := Options{Clock: c.Now, Sleep: c.Sleep, StateFile: filepath.Join(t.TempDir(), "m365.json")}
	p := Wrap(f, o)
	if _, err := p.Deliver(context.Background(), msg(1)); upstream.IsPermanent(err) || err == nil {
		t.Fatalf("got %v, want a hold", err)
	}
	c.Advance(10 * time.Minute)
	p = Wrap(f, o)
	_, err := p.Deliver(context.Background(), msg(1))
	var ue *upstream.Error
	if !errors.As(err, &ue) || !errors.Is(err, upstream.ErrPaced) || ue.RetryAfter != 50*time.Minute {
		t.Fatalf("after the restart: got %v, want paced for the 50 minutes left", err)
	}
}

// writeState writes a state file by hand.
func writeState(t *testing.T, path string, st state) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A corrupt file is an error in the log and counts as full windows at its
// modification time; it never stops the pacer from starting.
func TestCorruptState(t *testing.T) {
	tests := []struct {
		name    string
		content string
		age     time.Duration // of the file's modification time
		o       Options
		wait    time.Duration // for the first message after the restart
	}{
		{"garbage, minute", "{\"version\":1,\"minute\":[{\"t\":", 10 * time.Second, Options{MessagesPerMinute: 30}, 50 * time.Second},
		{"garbage, day", "\x00\x01 not json", 23 * time.Hour, Options{RecipientsPerDay: 10000}, time.Hour},
		{"other version", `{"version":99}`, 0, Options{MessagesPerMinute: 30}, time.Minute},
		{"negative count", `{"version":1,"day":[{"t":1000000000000,"n":-5}]}`, 0, Options{RecipientsPerDay: 100}, 24 * time.Hour},
		{"no limits", "garbage", 0, Options{}, time.Minute},
		{"old garbage", "garbage", 48 * time.Hour, Options{MessagesPerMinute: 30, RecipientsPerDay: 100}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			path := filepath.Join(t.TempDir(), "m365.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			mtime := c.Now().Add(-tt.age)
			if err := os.Chtimes(path, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			var logs logBuf
			o := tt.o
			o.Clock, o.Sleep, o.StateFile, o.Logger, o.MaxWait = c.Now, c.Sleep, path, logs.logger(), time.Millisecond
			p := Wrap(&fake{c: c}, o)
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "pacing state cannot be read") {
				t.Errorf("log %q, want a clear error", logs.String())
			}
			_, err := p.Deliver(context.Background(), msg(1))
			var ue *upstream.Error
			errors.As(err, &ue)
			switch {
			case tt.wait == 0 && err != nil:
				t.Errorf("got %v, want a delivery: the file is older than every window", err)
			case tt.wait > 0 && (!errors.Is(err, upstream.ErrPaced) || ue.RetryAfter != tt.wait):
				t.Errorf("got %v, want paced for %v", err, tt.wait)
			}
			// The next write replaces the corrupt file with a good one.
			c.Advance(tt.wait)
			if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
				t.Fatalf("after the wait: %v", err)
			}
			b, _ := os.ReadFile(path)
			if _, err := parseState(b); err != nil {
				t.Errorf("state file after a delivery: %v", err)
			}
		})
	}
}

// A file from the future (the clock went back, or is not set yet after a
// boot without a real-time clock) counts its messages as sent at the
// restart: for one window, not until the clock reaches them.
func TestStateFromTheFuture(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	path := filepath.Join(t.TempDir(), "m365.json")
	future := c.Now().Add(30 * 24 * time.Hour)
	st := state{Version: stateVersion, Saved: future.UnixMilli()}
	for i := range 30 {
		st.Minute = append(st.Minute, stateSlot{T: future.Add(time.Duration(i-30) * time.Second).UnixMilli(), N: 1})
	}
	st.Day = []stateSlot{{T: future.UnixMilli(), N: 60}}
	writeState(t, path, st)
	var logs logBuf
	f := &fake{c: c}
	o := Options{MessagesPerMinute: 30, RecipientsPerDay: 100, Clock: c.Now, Sleep: c.Sleep, StateFile: path, Logger: logs.logger()}
	p := Wrap(f, o)
	if !strings.Contains(logs.String(), "from the future") {
		t.Errorf("log %q, want a warning about the clock", logs.String())
	}
	_, err := p.Deliver(context.Background(), msg(1))
	var ue *upstream.Error
	if !errors.As(err, &ue) || !errors.Is(err, upstream.ErrPaced) || ue.RetryAfter != time.Minute {
		t.Fatalf("got %v, want paced for one minute from now", err)
	}
	c.Advance(time.Minute)
	if _, err := p.Deliver(context.Background(), msg(40)); err != nil {
		t.Fatalf("a minute after the restart: %v", err)
	}
	// The day entry still counts (60 + 40 of 100)...
	if _, err := p.Deliver(context.Background(), msg(1)); !errors.Is(err, upstream.ErrPaced) {
		t.Fatalf("got %v, want the day window full", err)
	}
	// ...and its own time is written back: a restore with the clock right
	// sees it where it was.
	b, _ := os.ReadFile(path)
	var got state
	json.Unmarshal(b, &got)
	found := false
	for _, e := range got.Day {
		found = found || (e.T == future.UnixMilli() && e.N == 60)
	}
	if !found {
		t.Errorf("the future entry was not written back: %s", b)
	}
	// One day after the restart it has left the window, whatever the clock.
	c.Advance(24 * time.Hour)
	if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
		t.Fatalf("a day after the restart: %v", err)
	}
}

// An attempt in flight at a crash may have been accepted: it counts.
func TestInFlightCounts(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	path := filepath.Join(t.TempDir(), "m365.json")
	st := state{Version: stateVersion, Saved: c.Now().Add(-time.Hour).UnixMilli(),
		Day: []stateSlot{{T: c.Now().Add(-25 * time.Hour).UnixMilli(), N: 10, InFlight: true}}}
	writeState(t, path, st)
	p := Wrap(&fake{c: c}, Options{RecipientsPerDay: 10, Clock: c.Now, Sleep: c.Sleep, StateFile: path})
	if _, err := p.Deliver(context.Background(), msg(1)); !errors.Is(err, upstream.ErrPaced) {
		t.Fatalf("got %v, want paced: the in-flight attempt may have been accepted at the crash", err)
	}
}

// The file stays small however much mail went: the day window is kept in
// 5-minute buckets, and no recipient is lost in them.
func TestStateFileSize(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	path := filepath.Join(t.TempDir(), "m365.json")
	f := &fake{c: c}
	o := Options{MessagesPerMinute: 30, RecipientsPerDay: 10000, Clock: c.Now, Sleep: c.Sleep, StateFile: path}
	p := Wrap(f, o)
	const n, step = 600, 2 * time.Minute
	for range n {
		if _, err := p.Deliver(context.Background(), msg(2)); err != nil {
			t.Fatal(err)
		}
		c.Advance(step)
	}
	p.Close() // the exact state, without an allowance ahead
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st state
	json.Unmarshal(b, &st)
	sum := 0
	for _, e := range st.Day {
		sum += e.N
	}
	t.Logf("state file after %d messages over %v: %d bytes, %d day entries, %d minute entries", n, n*step, len(b), len(st.Day), len(st.Minute))
	if got, want := sum, 2*n; got != want {
		t.Errorf("day window holds %d recipients, want %d", got, want)
	}
	if limit := int(24*time.Hour/dayBucket) + 2; len(st.Day) > limit {
		t.Errorf("%d day entries, want at most %d", len(st.Day), limit)
	}
	// After a restart the bucketed window still holds every recipient.
	p = Wrap(f, o)
	p.mu.Lock()
	p.day = prune(p.day, c.Now().Add(-24*time.Hour))
	restoredSum := 0
	for _, s := range p.day {
		restoredSum += s.n
	}
	p.mu.Unlock()
	if restoredSum != 2*n {
		t.Errorf("restored %d recipients, want %d", restoredSum, 2*n)
	}
}

func TestStateWriteFailureKeepsSending(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o600)
	var logs logBuf
	// The state file's directory is a regular file: it cannot be read
	// (so the pacer starts with the minute full, and waits inside
	// Deliver) and every write fails.
	p := Wrap(&fake{c: c}, Options{MessagesPerMinute: 30, Clock: c.Now, Sleep: c.Sleep, MaxWait: 2 * time.Minute,
		StateFile: filepath.Join(blocker, "m365.json"), Logger: logs.logger()})
	for range 3 {
		if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(logs.String(), "cannot keep the pacing state"); got != 1 {
		t.Errorf("logged the write failure %d times, want once:\n%s", got, logs.String())
	}
}

// FuzzRestore: whatever the state file holds, the pacer starts and paces.
func FuzzRestore(f *testing.F) {
	f.Add([]byte(`{"version":1,"saved":1000000000000,"minute":[{"t":999999990000,"n":1}],"day":[{"t":999999990000,"n":3,"in_flight":true}],"cool_until":1000000060000,"cool_why":"x"}`))
	f.Add([]byte(`{"version":1,"day":[{"t":9223372036854775807,"n":9223372036854775807}]}`))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &clock{now: time.Unix(1e9, 0)}
		path := filepath.Join(t.TempDir(), "m365.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		p := Wrap(&fake{c: c}, Options{MessagesPerMinute: 30, RecipientsPerDay: 100, Clock: c.Now, Sleep: c.Sleep, StateFile: path, MaxWait: time.Millisecond})
		_, err := p.Deliver(context.Background(), msg(1))
		if err != nil && !errors.Is(err, upstream.ErrPaced) {
			t.Fatalf("got %v", err)
		}
		if ue := upstream.Classify(err); ue != nil && (ue.RetryAfter <= 0 || ue.RetryAfter > 25*time.Hour) {
			t.Fatalf("wait %v out of bounds", ue.RetryAfter)
		}
	})
}

// A pacer that sent nothing (relayd doctor beside the daemon) does not
// write back the state it read when it closes.
func TestCloseWritesOnlyAfterSending(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	path := filepath.Join(t.TempDir(), "m365.json")
	o := Options{MessagesPerMinute: 30, Clock: c.Now, Sleep: c.Sleep, StateFile: path}
	Wrap(&fake{c: c}, o).Close()
	if _, err := os.Stat(path); err == nil {
		t.Error("an idle pacer wrote its state")
	}
	p := Wrap(&fake{c: c}, o)
	if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	p.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Close after sending did not write the state: %v", err)
	}
}
