package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// Relay is one relay as the engine sees it: the admin API's calls it needs
// (provisioning/ctl implements it over the tailnet, the tests with fakes).
// Each call has its own timeout; an error that is not an *api.Error means
// the relay did not answer.
type Relay interface {
	Status(ctx context.Context) (*api.Status, error)
	Config(ctx context.Context) (*api.ConfigDoc, error)
	// PutConfig puts doc based on version base (If-Match): another
	// version in force is a 409 stale_version.
	PutConfig(ctx context.Context, doc json.RawMessage, base int, dryRun bool) (*api.ConfigResult, error)
	// Update sends the plan's signed image with a test boot and a reboot.
	Update(ctx context.Context) (*api.UpdateResult, error)
}

// Clock is the engine's time: the soak and the wait for a relay to come
// back go through it, so tests run a day's roll-out in no time.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx ends (then it returns ctx's error).
	Sleep(ctx context.Context, d time.Duration) error
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }
func (RealClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Event is one step of a roll-out, for the live table.
type Event struct {
	Time  time.Time `json:"time"`
	Wave  string    `json:"wave"`
	Relay string    `json:"relay,omitempty"`
	// Step is "change", "judge", "soak", "wave" or "stop".
	Step   string `json:"step"`
	Result string `json:"result,omitempty"`
	Note   string `json:"note,omitempty"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
}

// Options run a plan.
type Options struct {
	// PlanFile is where the plan is; the state goes beside it.
	PlanFile string
	Plan     *Plan
	// Relays are the relays the engine may reach, by name; a relay of the
	// state that is not here is unreachable.
	Relays map[string]Relay
	// FirmwareVersion is the version the plan's image carries (from its
	// signed manifest): a relay running it is skipped.
	FirmwareVersion string
	Clock           Clock
	// DryRun reads every relay and says what each step would do; nothing
	// is changed and no state is written.
	DryRun bool
	// Event, when set, is called after every step (from several
	// goroutines, one at a time).
	Event func(Event)
	// PollEvery is how often a changed relay is asked again while it is
	// not back (default 2s).
	PollEvery time.Duration
}

// Engine runs one plan.
type Engine struct {
	o   Options
	mu  sync.Mutex // the state, its file and Event
	st  *State
	cfg configSource
}

// ErrAborted ends a run that relayctl rollout abort stopped.
var ErrAborted = errors.New("the roll-out was aborted")

// ErrState is a run that cannot start from the state it finds.
var ErrState = errors.New("roll-out state")

func New(o Options) *Engine {
	if o.Clock == nil {
		o.Clock = RealClock{}
	}
	if o.PollEvery <= 0 {
		o.PollEvery = 2 * time.Second
	}
	return &Engine{o: o}
}

// Start begins the plan over the selected relays (in order; the waves are
// cut from it) and runs it. It refuses when the plan has a state already
// (resume or retry-failed continue it; remove the state file to start
// afresh).
func (e *Engine) Start(ctx context.Context, selected []Candidate, left map[string]string) (*State, error) {
	if !e.o.DryRun {
		if _, err := LoadState(e.o.PlanFile); err == nil {
			return nil, fmt.Errorf("%w: %s exists: this plan was run already (relayctl rollout resume|retry-failed|status PLAN; remove the file to start again)", ErrState, StatePath(e.o.PlanFile))
		} else if !errors.Is(err, ErrNoState) {
			return nil, err
		}
		os.Remove(AbortPath(e.o.PlanFile))
	}
	ws, err := ParseWaves(e.o.Plan.waves())
	if err != nil {
		return nil, err
	}
	now := e.o.Clock.Now().UTC()
	st := &State{Plan: filepath.Base(e.o.PlanFile), Kind: e.o.Plan.Kind(), Started: now, Updated: now, Phase: PhaseRunning, Left: left}
	names := make([]string, len(selected))
	for i, c := range selected {
		names[i] = c.Name
	}
	for i, w := range Split(names, ws) {
		st.Waves = append(st.Waves, &WaveState{Name: fmt.Sprint(i + 1), Relays: w})
		for _, n := range w {
			site := ""
			for _, c := range selected {
				if c.Name == n {
					site = c.Site
				}
			}
			st.Relays = append(st.Relays, &RelayState{Name: n, Site: site, Wave: i, Result: Pending})
		}
	}
	e.st = st
	if err := e.save(); err != nil {
		return st, err
	}
	return st, e.run(ctx, -1)
}

// Resume continues a roll-out whose run ended before its last wave
// (relayctl was killed, the laptop slept). A stopped or aborted one is
// not continued.
func (e *Engine) Resume(ctx context.Context, st *State) error {
	e.st = st
	switch {
	case Aborted(e.o.PlanFile) || st.Phase == PhaseAborted:
		return fmt.Errorf("%w: the roll-out was aborted; nothing more is done (remove %s to start again)", ErrState, StatePath(e.o.PlanFile))
	case st.Phase == PhaseStopped:
		return fmt.Errorf("%w: the roll-out stopped by itself: %s (relayctl rollout retry-failed redoes the failed relays)", ErrState, st.Stop)
	case st.Phase == PhaseDone:
		return fmt.Errorf("%w: the roll-out is done; nothing to resume", ErrState)
	}
	return e.run(ctx, -1)
}

// RetryFailed makes a new wave of the relays that failed, did not answer,
// were rolled back or fell back, and runs only it, with the same gates and
// stop rules (a stop rule of the retry wave stops the roll-out again).
func (e *Engine) RetryFailed(ctx context.Context, st *State) error {
	e.st = st
	if Aborted(e.o.PlanFile) || st.Phase == PhaseAborted {
		return fmt.Errorf("%w: the roll-out was aborted; nothing more is done (remove %s to start again)", ErrState, StatePath(e.o.PlanFile))
	}
	failed := st.Failed()
	if len(failed) == 0 {
		return fmt.Errorf("%w: no relay failed; nothing to retry", ErrState)
	}
	n := 1
	for _, w := range st.Waves {
		if strings.HasPrefix(w.Name, "retry") {
			n++
		}
	}
	w := &WaveState{Name: fmt.Sprintf("retry %d", n)}
	if !e.o.DryRun {
		st.Waves = append(st.Waves, w)
	}
	for _, r := range failed {
		w.Relays = append(w.Relays, r.Name)
		if !e.o.DryRun {
			r.Wave, r.Result, r.Note, r.Before, r.PrevConfig, r.PrevVersion, r.NewVersion, r.AppliedAt = len(st.Waves)-1, Pending, "retry of: "+r.Result+": "+r.Note, nil, nil, 0, 0, time.Time{}
		}
	}
	if e.o.DryRun {
		return e.dryWave(ctx, w, failed)
	}
	// Only the retry wave runs; once it passes, resume continues the
	// waves a stop rule had left (the roll-out is running again).
	st.Phase, st.Stop = PhaseRunning, ""
	return e.run(ctx, len(st.Waves)-1)
}

// Dry runs the plan without changing anything (Options.DryRun).
func (e *Engine) Dry(ctx context.Context, selected []Candidate, left map[string]string) (*State, error) {
	e.o.DryRun = true
	ws, err := ParseWaves(e.o.Plan.waves())
	if err != nil {
		return nil, err
	}
	names := make([]string, len(selected))
	for i, c := range selected {
		names[i] = c.Name
	}
	e.st = &State{Plan: filepath.Base(e.o.PlanFile), Kind: e.o.Plan.Kind(), Started: e.o.Clock.Now().UTC(), Phase: PhaseRunning, Left: left}
	for i, w := range Split(names, ws) {
		ws := &WaveState{Name: fmt.Sprint(i + 1), Relays: w}
		e.st.Waves = append(e.st.Waves, ws)
		var rs []*RelayState
		for _, n := range w {
			r := &RelayState{Name: n, Wave: i, Result: Pending}
			for _, c := range selected {
				if c.Name == n {
					r.Site = c.Site
				}
			}
			e.st.Relays = append(e.st.Relays, r)
			rs = append(rs, r)
		}
		if err := e.dryWave(ctx, ws, rs); err != nil {
			return e.st, err
		}
	}
	return e.st, nil
}

func (e *Engine) dryWave(ctx context.Context, w *WaveState, rs []*RelayState) error {
	e.event(Event{Wave: w.Name, Step: "wave", Note: fmt.Sprintf("would change %d relay(s), then soak %v and judge the gates", len(rs), time.Duration(e.o.Plan.Soak))})
	for _, r := range rs {
		cp := *r
		cp.Result = Pending
		if err := e.change(ctx, w, &cp); err != nil {
			return err
		}
		*r = cp
	}
	return nil
}

// run runs the waves not done (only wave only, when it is not -1).
func (e *Engine) run(ctx context.Context, only int) error {
	st := e.st
	for i, w := range st.Waves {
		if w.Done || (only >= 0 && i != only) {
			continue
		}
		if err := e.wave(ctx, i, w); err != nil {
			return err
		}
		if st.Phase != PhaseRunning {
			return nil
		}
	}
	// Done once no relay waits (a retry wave leaves the later waves to
	// resume).
	e.mu.Lock()
	st.Phase = PhaseDone
	for _, r := range st.Relays {
		if r.Result == Pending {
			st.Phase = PhaseRunning
		}
	}
	e.mu.Unlock()
	return e.save()
}

func (e *Engine) relays(w int) []*RelayState {
	var out []*RelayState
	for _, r := range e.st.Relays {
		if r.Wave == w {
			out = append(out, r)
		}
	}
	return out
}

// wave changes a wave's relays, soaks, judges the gates and applies the
// stop rules.
func (e *Engine) wave(ctx context.Context, i int, w *WaveState) error {
	rs := e.relays(i)
	if w.Started.IsZero() {
		w.Started = e.o.Clock.Now().UTC()
		e.event(Event{Wave: w.Name, Step: "wave", Note: fmt.Sprintf("%d relay(s)", len(rs))})
	}
	// Change every relay of the wave not yet changed.
	if err := e.each(ctx, rs, func(r *RelayState) bool { return r.Result == Pending || r.Result == Applying }, func(r *RelayState) error { return e.change(ctx, w, r) }); err != nil {
		return err
	}
	// Soak: from the last change of the wave.
	if w.SoakUntil.IsZero() {
		last := w.Started
		for _, r := range rs {
			if r.AppliedAt.After(last) {
				last = r.AppliedAt
			}
		}
		e.mu.Lock()
		w.SoakUntil = last.Add(time.Duration(e.o.Plan.Soak)).UTC()
		e.mu.Unlock()
		if err := e.save(); err != nil {
			return err
		}
	}
	if left := w.SoakUntil.Sub(e.o.Clock.Now()); left > 0 && e.any(rs, Applied) {
		e.event(Event{Wave: w.Name, Step: "soak", Note: fmt.Sprintf("%v until %s", left.Round(time.Second), w.SoakUntil.Format(time.RFC3339))})
		if err := e.o.Clock.Sleep(ctx, left); err != nil {
			return err
		}
	}
	if err := e.checkAbort(); err != nil {
		return err
	}
	// Judge the gates.
	if err := e.each(ctx, rs, func(r *RelayState) bool { return r.Result == Applied }, func(r *RelayState) error { return e.judge(ctx, w, r) }); err != nil {
		return err
	}
	// The stop rules.
	var bad []string
	for _, r := range rs {
		if failedResult(r.Result) {
			bad = append(bad, fmt.Sprintf("%s (%s: %s)", r.Name, r.Result, r.Note))
		}
	}
	e.mu.Lock()
	w.Done, w.Finished = true, e.o.Clock.Now().UTC()
	pct := 0.0
	if len(rs) > 0 {
		pct = float64(len(bad)) * 100 / float64(len(rs))
	}
	switch {
	case len(bad) > 0 && i == 0 && !strings.HasPrefix(w.Name, "retry"):
		e.st.Phase = PhaseStopped
		e.st.Stop = fmt.Sprintf("the canary (wave %s) failed: %s", w.Name, strings.Join(bad, "; "))
	case pct > e.o.Plan.maxFailed():
		e.st.Phase = PhaseStopped
		e.st.Stop = fmt.Sprintf("wave %s: %d of %d relays failed or did not answer (%.0f%%, over the %.0f%% of stop.max_failed_percent): %s",
			w.Name, len(bad), len(rs), pct, e.o.Plan.maxFailed(), strings.Join(bad, "; "))
	}
	stop := e.st.Stop
	stopped := e.st.Phase == PhaseStopped
	e.mu.Unlock()
	if stopped {
		e.event(Event{Wave: w.Name, Step: "stop", Note: stop})
	}
	return e.save()
}

func (e *Engine) any(rs []*RelayState, result string) bool {
	for _, r := range rs {
		if r.Result == result {
			return true
		}
	}
	return false
}

// each runs fn for the relays of rs that want says need it, at most
// Plan.Parallel at once; it stops at the first error (a cancelled run,
// an abort, a state file that cannot be written).
func (e *Engine) each(ctx context.Context, rs []*RelayState, want func(*RelayState) bool, fn func(*RelayState) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, e.o.Plan.parallel())
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for _, r := range rs {
		e.mu.Lock()
		ok := want(r)
		e.mu.Unlock()
		if !ok {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		if err := e.checkAbort(); err != nil {
			once.Do(func() { first = err })
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(r); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func (e *Engine) checkAbort() error {
	if e.o.DryRun || !Aborted(e.o.PlanFile) {
		return nil
	}
	e.mu.Lock()
	if e.st.Phase == PhaseRunning {
		e.st.Phase, e.st.Stop = PhaseAborted, "aborted by relayctl rollout abort"
	}
	e.mu.Unlock()
	e.event(Event{Step: "stop", Note: "aborted by relayctl rollout abort"})
	if err := e.save(); err != nil {
		return err
	}
	return ErrAborted
}

// set records a relay's result, writes the state and reports the step.
func (e *Engine) set(w *WaveState, r *RelayState, step, result, note string) error {
	e.mu.Lock()
	r.Result, r.Note = result, note
	ev := Event{Wave: w.Name, Relay: r.Name, Step: step, Result: result, Note: note, From: r.From, To: r.To}
	e.mu.Unlock()
	if !e.o.DryRun {
		if err := e.save(); err != nil {
			return err
		}
	}
	e.event(ev)
	return nil
}

func (e *Engine) event(ev Event) {
	if e.o.Event == nil {
		return
	}
	ev.Time = e.o.Clock.Now().UTC()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.o.Event(ev)
}

func (e *Engine) save() error {
	if e.o.DryRun {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.Updated = e.o.Clock.Now().UTC()
	if Aborted(e.o.PlanFile) && e.st.Phase == PhaseRunning {
		e.st.Phase, e.st.Stop = PhaseAborted, "aborted by relayctl rollout abort"
	}
	if err := SaveState(e.o.PlanFile, e.st); err != nil {
		return fmt.Errorf("writing the roll-out state: %w", err)
	}
	return nil
}

// refusals are the messages the upstream refused for good since the
// relay started: bounced and failed.
func refusals(s *api.Status) uint64 { return s.Counts["bounced"] + s.Counts["failed"] }

// grew is how much a count since relayd's start rose from before; after
// a restart the count began again at 0, so all of it is new.
func grew(now, before uint64, restarted bool) uint64 {
	switch {
	case restarted:
		return now
	case now > before:
		return now - before
	}
	return 0
}

// reach is Relay r, or nil when the engine was not given it.
func (e *Engine) reach(name string) Relay { return e.o.Relays[name] }

func cut(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
