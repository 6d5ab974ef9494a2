package pace

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"slices"
	"time"
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
// # Writes
//
// An SD card pays 5-50 ms for each flush, so the file is not written
// before every message: at most once a second while mail goes (the write
// due goes to disk before the message that finds it due is sent), before
// a message that the file on disk does not cover, at once when a cooldown
// starts, and at Close. A crash may therefore lose the places of the
// messages that started after the last write; the read-back covers them
// with an allowance that each write (but Close's) holds ahead:
//
//   - "ahead" is how many more messages and recipients may take their
//     places before the next write: twice what started in the last
//     interval, scaled to one second when the interval was shorter (a
//     burst), at least a quarter of the minute's limit and a hundredth of
//     the day's, never more than a limit. A window without a limit is not
//     counted and never makes a write.
//   - A message is sent without a write only if every file that may be on
//     disk covers it: the last completed write, and a write in progress
//     (the rename may or may not have reached the disk when the crash
//     comes). Otherwise it waits for a write of its own, as every message
//     did before. A write that fails covers nothing.
//   - The restore counts the allowance as sent at the restore, like an
//     attempt in flight: whatever started after the write and was lost
//     with the crash started before the restore and within the allowance,
//     so the windows hold at least every message sent, none leaving sooner
//     than it should. A crash thus costs at most the allowance: for
//     Microsoft's 30 messages a minute at least 7 (more after a burst) for
//     a minute, for its 10,000 recipients a day at least 100 for a day.
//   - Close writes the exact state, with no allowance.
//
// A naive once-a-second write without the allowance would restore a
// window missing up to a second of messages (TestCrashBetweenWrites).
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
	// Ahead is the allowance (see "Writes"); absent after Close.
	Ahead *tally `json:"ahead,omitempty"`
}

// tally counts places in the windows: messages (transactions) for the
// minute, recipients for the day.
type tally struct {
	Msgs  int `json:"messages"`
	Rcpts int `json:"recipients"`
}

// ledger is what one write covers: the places taken up to seq, and the
// allowance ahead of them.
type ledger struct{ seq, ahead tally }

// covers says whether places taken up to r are within l.
func (l *ledger) covers(r tally) bool {
	return l != nil && r.Msgs-l.seq.Msgs <= l.ahead.Msgs && r.Rcpts-l.seq.Rcpts <= l.ahead.Rcpts
}

// flushEvery is how often at most the file is written while mail goes
// within the allowance.
const flushEvery = time.Second

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
	if a := st.Ahead; a != nil && (a.Msgs < 0 || a.Rcpts < 0) {
		return nil, fmt.Errorf("pacing state has an allowance of %d messages and %d recipients", a.Msgs, a.Rcpts)
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
		p.repair = true
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
	if a := st.Ahead; a != nil {
		// What may have started after the write counts as sent now (its
		// time in the file no earlier than the write's, like an entry
		// from the future).
		file := time.Time{}
		if saved.After(now) {
			file = saved
		}
		for range min(a.Msgs, p.o.MessagesPerMinute) {
			p.minute = append(p.minute, &slot{t: now, n: 1, done: true, file: file})
		}
		if n := min(a.Rcpts, p.o.RecipientsPerDay); n > 0 {
			p.day = append(p.day, &slot{t: now, n: n, done: true, file: file})
		}
	}
	if until := time.UnixMilli(st.CoolUntil); st.CoolUntil > 0 && until.After(now) {
		longest := max(p.o.ConnectionCooldown, p.o.RateCooldown, p.o.QuotaCooldown)
		p.coolUntil, p.coolWhy = now.Add(min(until.Sub(now), longest)), st.CoolWhy
	}
	var ahead tally
	if st.Ahead != nil {
		ahead = *st.Ahead
	}
	log.Info("pacing state restored", "minute", len(st.Minute), "day_entries", len(st.Day),
		"allowance_messages", ahead.Msgs, "allowance_recipients", ahead.Rcpts,
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

// counted says whether a window is counted in a state file: the places
// messages take then need writes.
func (p *Paced) counted() bool {
	return p.o.StateFile != "" && (p.o.MessagesPerMinute > 0 || p.o.RecipientsPerDay > 0)
}

// writeDueLocked says whether the place just taken (counted in reserved)
// needs a write before its message is sent: the file on disk does not
// cover it, or the last write is a second old. It notes a due write as
// taken, so that concurrent messages do not all write.
func (p *Paced) writeDueLocked(now time.Time) bool {
	if p.repair {
		p.repair = false // the unreadable file is replaced at once
		p.nextWrite = now.Add(flushEvery)
		return p.o.StateFile != ""
	}
	if !p.counted() {
		return false
	}
	covered := p.onDisk.covers(p.reserved) && (p.writing == nil || p.writing.covers(p.reserved))
	if covered && now.Before(p.nextWrite) {
		return false
	}
	p.nextWrite = now.Add(flushEvery)
	return true
}

// aheadLocked is the allowance for a write now (see "Writes").
func (p *Paced) aheadLocked(now time.Time) tally {
	since := tally{p.reserved.Msgs - p.lastSeq.Msgs, p.reserved.Rcpts - p.lastSeq.Rcpts}
	// A burst (the allowance used up in less than a second): the rate
	// per second, at most 16 times what started.
	scale := 1
	if el := now.Sub(p.lastWrite); p.writes > 0 && el < flushEvery {
		scale = int(flushEvery / max(el, flushEvery/16))
	}
	allow := func(n, limit, least int) int {
		if limit <= 0 {
			return math.MaxInt32 // not counted
		}
		return min(limit, max(least, 1, 2*n*scale))
	}
	return tally{
		Msgs:  allow(since.Msgs, p.o.MessagesPerMinute, p.o.MessagesPerMinute/4),
		Rcpts: allow(since.Rcpts, p.o.RecipientsPerDay, p.o.RecipientsPerDay/100),
	}
}

// snapshotLocked renders the state file for now, with the allowance ahead
// (nil at Close).
func (p *Paced) snapshotLocked(now time.Time, ahead *tally) []byte {
	st := state{Version: stateVersion, Saved: now.UnixMilli()}
	if ahead != nil && p.counted() {
		// Only the counted windows' allowance means anything.
		a := *ahead
		if p.o.MessagesPerMinute <= 0 {
			a.Msgs = 0
		}
		if p.o.RecipientsPerDay <= 0 {
			a.Rcpts = 0
		}
		st.Ahead = &a
	}
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

// save writes the state file, when there is one, with an allowance ahead
// unless it is the last write (Close). A failure is logged (once until a
// write succeeds again) and mail goes on: the limits still hold while the
// relay runs, only a restart would forget them.
func (p *Paced) save(withAhead bool) {
	if p.o.StateFile == "" {
		return
	}
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	now := p.o.Clock()
	l := &ledger{seq: p.reserved}
	var ahead *tally
	if withAhead {
		l.ahead = p.aheadLocked(now)
		ahead = &l.ahead
	}
	b := p.snapshotLocked(now, ahead)
	p.lastWrite, p.lastSeq = now, p.reserved
	p.nextWrite = later(p.nextWrite, now.Add(flushEvery))
	p.writing = l
	p.mu.Unlock()
	err := p.writeFile(p.o.StateFile, b, 0o600)
	p.mu.Lock()
	p.writes++
	p.writing = nil
	p.onDisk = l
	if err != nil {
		// The rename may or may not have happened: cover nothing, so
		// that each message writes until a write succeeds.
		p.onDisk = nil
	}
	p.mu.Unlock()
	switch {
	case err != nil && !p.saveFailed:
		p.o.Logger.Error("cannot keep the pacing state: a restart now forgets how much was sent", "file", p.o.StateFile, "err", err)
	case err == nil && p.saveFailed:
		p.o.Logger.Info("pacing state written again", "file", p.o.StateFile)
	}
	p.saveFailed = err != nil
}
