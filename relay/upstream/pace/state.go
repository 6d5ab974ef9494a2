package pace

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// The state file holds the windows as wall-clock times (Unix milliseconds)
// and the cooldown's end. Restoring it has to be conservative, because the
// clock it was written with may not be the clock it is read with: a
// Raspberry Pi has no real-time clock and boots with a wrong time until NTP
// sets it, and NTP may also step a clock that ran ahead back.
//
//   - An entry keeps its age as of the restore (now minus its time); from
//     then on ages are measured on the process's monotonic clock, so a
//     later step of the wall clock neither frees nor extends the windows.
//   - An entry "from the future" (later than now: the clock went back, or
//     is not set yet) counts as sent at the restore: it leaves the window
//     one window length later, never later than that, and never sooner
//     than it would have with a correct clock. Its time in the file is
//     written back unchanged, so a restore with a correct clock sees it as
//     it was.
//   - An attempt in flight when the file was written may have been accepted
//     at any moment up to the restore: it counts as accepted at the
//     restore.
//   - A cooldown lasts at most its longest configured length from the
//     restore.
//   - A file that cannot be read or parsed is an error in the log and
//     counts as both windows full at the moment it was last written: the
//     relay cannot know what was sent, and Microsoft's answer to a day over
//     the limit is a day without mail from the mailbox.
//
// The day window is stored in 5-minute buckets (each at its latest
// entry's time, so that it leaves the window no sooner than its entries),
// which keeps the file to a few kilobytes however much mail went.
type state struct {
	Version   int         `json:"version"`
	Saved     int64       `json:"saved"`
	Minute    []stateSlot `json:"minute,omitempty"`
	Day       []stateSlot `json:"day,omitempty"`
	CoolUntil int64       `json:"cool_until,omitempty"`
	CoolWhy   string      `json:"cool_why,omitempty"`
}

type stateSlot struct {
	T        int64 `json:"t"`
	N        int   `json:"n"`
	InFlight bool  `json:"in_flight,omitempty"`
}

const (
	stateVersion = 1
	dayBucket    = 5 * time.Minute
)

// parseState reads a state file and checks what it says.
func parseState(b []byte) (*state, error) {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("not a pacing state: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("pacing state version %d, this relay reads version %d", st.Version, stateVersion)
	}
	for _, list := range [][]stateSlot{st.Minute, st.Day} {
		for _, e := range list {
			if e.N < 0 || e.T <= 0 {
				return nil, fmt.Errorf("pacing state has an entry with time %d and count %d", e.T, e.N)
			}
		}
	}
	return &st, nil
}

// restore loads the state file; see the comment on state.
func (p *Paced) restore() {
	path := p.o.StateFile
	log := p.o.Logger.With("file", path)
	now := p.o.Clock()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return // first start: nothing was sent
	}
	var st *state
	if err == nil {
		st, err = parseState(b)
	}
	if err != nil {
		at := now
		if fi, serr := os.Stat(path); serr == nil && fi.ModTime().Before(now) {
			at = fi.ModTime()
		}
		p.mu.Lock()
		p.assumeFullLocked(now, at)
		p.mu.Unlock()
		log.Error("the pacing state cannot be read: counting the sending limits as reached when it was last written; it is replaced at the next message",
			"err", err, "written", at.UTC().Format(time.RFC3339), "day_window_until", at.Add(24*time.Hour).UTC().Format(time.RFC3339))
		return
	}
	saved := time.UnixMilli(st.Saved)
	if saved.After(now) {
		log.Warn("the pacing state is from the future (the clock went back, or is not set yet): counting its messages as sent now",
			"written", saved.UTC().Format(time.RFC3339), "now", now.UTC().Format(time.RFC3339))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range st.Minute {
		p.minute = append(p.minute, restored(now, e))
	}
	for _, e := range st.Day {
		p.day = append(p.day, restored(now, e))
	}
	if until := time.UnixMilli(st.CoolUntil); st.CoolUntil > 0 && until.After(now) {
		longest := max(p.o.ConnectionCooldown, p.o.RateCooldown, p.o.QuotaCooldown)
		p.coolUntil, p.coolWhy = now.Add(min(until.Sub(now), longest)), st.CoolWhy
	}
	log.Info("pacing state restored", "minute", len(st.Minute), "day_entries", len(st.Day),
		"cooldown", max(0, p.coolUntil.Sub(now)).Round(time.Second))
}

// restored is a slot from the file, aged as of now (see state).
func restored(now time.Time, e stateSlot) *slot {
	t := time.UnixMilli(e.T)
	age := max(0, now.Sub(t))
	if e.InFlight {
		age = 0
	}
	return &slot{t: now.Add(-age), n: e.N, done: true, file: t}
}

// assumeFullLocked counts both windows as full at the time at.
func (p *Paced) assumeFullLocked(now, at time.Time) {
	t := now.Add(-max(0, now.Sub(at)))
	for range p.o.MessagesPerMinute {
		p.minute = append(p.minute, &slot{t: t, n: 1, done: true, file: at})
	}
	if p.o.RecipientsPerDay > 0 {
		p.day = append(p.day, &slot{t: t, n: p.o.RecipientsPerDay, done: true, file: at})
	}
	if p.o.MessagesPerMinute == 0 && p.o.RecipientsPerDay == 0 {
		p.coolUntil, p.coolWhy = now.Add(time.Minute), "the pacing state could not be read"
	}
}

// snapshotLocked renders the state file for now.
func (p *Paced) snapshotLocked(now time.Time) []byte {
	st := state{Version: stateVersion, Saved: now.UnixMilli()}
	wall := func(s *slot) int64 {
		// Re-anchor the slot's age (monotonic) to the wall clock of now.
		t := now.Add(-now.Sub(s.t))
		if s.file.After(t) {
			t = s.file
		}
		return t.UnixMilli()
	}
	for _, s := range p.minute {
		st.Minute = append(st.Minute, stateSlot{T: wall(s), N: s.n, InFlight: !s.done})
	}
	var day []stateSlot
	for _, s := range p.day {
		day = append(day, stateSlot{T: wall(s), N: s.n, InFlight: !s.done})
	}
	slices.SortFunc(day, func(a, b stateSlot) int { return int(a.T - b.T) })
	var start int64 // the first entry's time in the last bucket
	for _, e := range day {
		if k := len(st.Day) - 1; k >= 0 && !e.InFlight && !st.Day[k].InFlight && e.T-start < dayBucket.Milliseconds() {
			// Bucket at the latest time: leaves the window no sooner.
			st.Day[k].T, st.Day[k].N = e.T, st.Day[k].N+e.N
			continue
		}
		st.Day, start = append(st.Day, e), e.T
	}
	if p.coolUntil.After(now) {
		st.CoolUntil, st.CoolWhy = now.Add(p.coolUntil.Sub(now)).UnixMilli(), p.coolWhy
	}
	b, _ := json.Marshal(st)
	return b
}

// save writes the state file, when there is one. A failure is logged (once
// until a write succeeds again) and mail goes on: the limits still hold
// while the relay runs, only a restart would forget them.
func (p *Paced) save() {
	if p.o.StateFile == "" {
		return
	}
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	b := p.snapshotLocked(p.o.Clock())
	p.mu.Unlock()
	err := durable.WriteFile(p.o.StateFile, b, 0o600)
	switch {
	case err != nil && !p.saveFailed:
		p.o.Logger.Error("cannot keep the pacing state: a restart now forgets how much was sent", "file", p.o.StateFile, "err", err)
	case err == nil && p.saveFailed:
		p.o.Logger.Info("pacing state written again", "file", p.o.StateFile)
	}
	p.saveFailed = err != nil
}
