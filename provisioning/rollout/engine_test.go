package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

type fleet struct {
	dir    string
	plan   string
	clock  *fakeClock
	relays map[string]*fakeRelay
	names  []string
}

// newFleet is n relays plant-01… running {"a":1} and v1.0.0, and a plan
// file (p, with its files written into the directory).
func newFleet(t *testing.T, n int, p Plan) *fleet {
	t.Helper()
	f := &fleet{dir: t.TempDir(), clock: newClock(), relays: map[string]*fakeRelay{}}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("plant-%02d", i)
		f.relays[name] = newFake(f.clock, name, `{"a":1}`)
		f.names = append(f.names, name)
	}
	os.WriteFile(filepath.Join(f.dir, "want.json"), []byte(`{"a": 2}`), 0o600)
	os.WriteFile(filepath.Join(f.dir, "patch.json"), []byte(`{"b": {"c": true}}`), 0o600)
	os.WriteFile(filepath.Join(f.dir, "plant.img"), []byte("image"), 0o600)
	f.plan = filepath.Join(f.dir, "plan.json")
	b, _ := json.Marshal(p)
	if err := os.WriteFile(f.plan, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) engine(t *testing.T, events *[]Event, stopAfter int, cancel func()) *Engine {
	t.Helper()
	p, err := LoadPlan(f.plan)
	if err != nil {
		t.Fatal(err)
	}
	rs := map[string]Relay{}
	for n, r := range f.relays {
		rs[n] = r
	}
	steps := 0
	return New(Options{PlanFile: f.plan, Plan: p, Relays: rs, FirmwareVersion: "v2.0.0", Clock: f.clock, PollEvery: 10 * time.Second,
		Event: func(ev Event) {
			if events != nil {
				*events = append(*events, ev)
			}
			if ev.Step == "change" && ev.Result == Applied {
				steps++
				if steps == stopAfter {
					cancel()
				}
			}
		}})
}

func (f *fleet) candidates() []Candidate {
	var c []Candidate
	for _, n := range f.names {
		c = append(c, Candidate{Name: n, Site: n, Tags: []string{DefaultTag}})
	}
	return c
}

func (f *fleet) start(t *testing.T) (*State, error) {
	t.Helper()
	return f.engine(t, nil, 0, nil).Start(context.Background(), f.candidates(), nil)
}

func results(st *State) string {
	var b strings.Builder
	for _, r := range st.Relays {
		fmt.Fprintf(&b, "%s:%s ", r.Name, r.Result)
	}
	return strings.TrimSpace(b.String())
}

func waveSizes(st *State) []int {
	var out []int
	for _, w := range st.Waves {
		out = append(out, len(w.Relays))
	}
	return out
}

func cfgPlan(waves string) Plan {
	return Plan{Config: &ConfigSpec{File: "want.json"}, Waves: waves, Soak: Duration(10 * time.Minute)}
}

func TestRun(t *testing.T) {
	down := func(f *fakeRelay, _ json.RawMessage) { f.health = "down" }
	dark := func(f *fakeRelay, _ json.RawMessage) { f.dark = true }
	slack := 0
	cases := []struct {
		name  string
		n     int
		plan  Plan
		setup func(f *fleet)
		// want: phase, result per relay in order, wave sizes
		phase   string
		results string
		waves   []int
		stop    string
		check   func(t *testing.T, f *fleet, st *State)
	}{
		{name: "clean in three waves", n: 10, plan: cfgPlan("1,30%,100%"), phase: PhaseDone,
			results: "plant-01:ok plant-02:ok plant-03:ok plant-04:ok plant-05:ok plant-06:ok plant-07:ok plant-08:ok plant-09:ok plant-10:ok", waves: []int{1, 2, 7},
			check: func(t *testing.T, f *fleet, st *State) {
				for n, r := range f.relays {
					if !SameJSON([]byte(r.doc()), []byte(`{"a":2}`)) || r.cur != 2 {
						t.Errorf("%s runs version %d %s", n, r.cur, r.doc())
					}
				}
				// Each wave soaked 10 minutes after its last change.
				if d := st.Waves[2].Finished.Sub(st.Started); d < 30*time.Minute {
					t.Errorf("three waves took %v on the clock, want at least 3 soaks", d)
				}
			}},
		{name: "already there is skipped", n: 3, plan: cfgPlan("1,100%"), phase: PhaseDone,
			setup: func(f *fleet) {
				f.relays["plant-02"].docs = append(f.relays["plant-02"].docs, json.RawMessage("{\n  \"a\": 2\n}\n"))
				f.relays["plant-02"].cur = 2
			},
			results: "plant-01:ok plant-02:skipped plant-03:ok", waves: []int{1, 2},
			check: func(t *testing.T, f *fleet, st *State) {
				if p, _ := f.relays["plant-02"].count(); p != 0 {
					t.Errorf("plant-02 was put %d times", p)
				}
				if n := st.Relay("plant-02").Note; !strings.Contains(n, "already at this configuration (version 2)") {
					t.Errorf("skip note %q", n)
				}
			}},
		{name: "failing canary stops everything and is rolled back", n: 10, plan: cfgPlan("1,30%,100%"), phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-01"].after = down },
			results: "plant-01:rolled-back plant-02:pending plant-03:pending plant-04:pending plant-05:pending plant-06:pending plant-07:pending plant-08:pending plant-09:pending plant-10:pending",
			waves:   []int{1, 2, 7}, stop: "the canary (wave 1) failed: plant-01 (rolled-back: gate failed: health down, was ok",
			check: func(t *testing.T, f *fleet, st *State) {
				r := f.relays["plant-01"]
				if !SameJSON([]byte(r.doc()), []byte(`{"a":1}`)) || r.cur != 3 {
					t.Errorf("canary runs version %d %s, want version 1 put back as 3", r.cur, r.doc())
				}
				for _, n := range f.names[1:] {
					if p, _ := f.relays[n].count(); p != 0 {
						t.Errorf("%s was changed after the canary failed", n)
					}
				}
			}},
		{name: "two of ten go dark: the wave stops at its threshold", n: 21, plan: cfgPlan("1,11,100%"), phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-04"].after = dark
				f.relays["plant-09"].after = dark
			},
			waves: []int{1, 10, 10}, stop: "wave 2: 2 of 10 relays failed or did not answer (20%, over the 10% of stop.max_failed_percent): plant-04 (unreachable: not back within 5m0s",
			check: func(t *testing.T, f *fleet, st *State) {
				c := st.Counts()
				if c[OK] != 9 || c[Unreachable] != 2 || c[Pending] != 10 {
					t.Errorf("counts %v", c)
				}
			}},
		{name: "one of ten dark stays under the threshold", n: 21, plan: cfgPlan("1,11,100%"), phase: PhaseDone,
			setup: func(f *fleet) { f.relays["plant-04"].after = dark },
			waves: []int{1, 10, 10},
			check: func(t *testing.T, f *fleet, st *State) {
				if c := st.Counts(); c[OK] != 20 || c[Unreachable] != 1 {
					t.Errorf("counts %v", c)
				}
			}},
		{name: "dark before the change", n: 3, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-02"].dark = true },
			results: "plant-01:ok plant-02:unreachable plant-03:ok", waves: []int{1, 2}, stop: "plant-02 (unreachable: before the change"},
		{name: "queue grows", n: 2, plan: func() Plan { p := cfgPlan("1,100%"); p.Gates.QueueSlack = &slack; return p }(), phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.queue = 5; f.lastDel = f.clock.Now().Add(time.Minute) }
			},
			results: "plant-01:rolled-back plant-02:pending", waves: []int{1, 1}, stop: "queue grew from 0 to 5 messages"},
		{name: "nothing delivered while mail waits", n: 2, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-01"].queue = 3 },
			results: "plant-01:rolled-back plant-02:pending", waves: []int{1, 1}, stop: "3 message(s) wait and none was delivered since the change"},
		{name: "delivered since the change passes", n: 2, plan: cfgPlan("1,100%"), phase: PhaseDone,
			setup: func(f *fleet) {
				for _, r := range f.relays {
					r.queue = 3
					r.after = func(f *fakeRelay, _ json.RawMessage) { f.lastDel = f.clock.Now().Add(time.Second) }
				}
			},
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1}},
		{name: "new refusals", n: 2, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.counts["bounced"] = 2 }
			},
			results: "plant-01:rolled-back plant-02:pending", waves: []int{1, 1}, stop: "2 new bounced or failed message(s)"},
		{name: "new device refusals", n: 2, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-01"].refused = 4
				f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.refused = 7 }
			},
			results: "plant-01:rolled-back plant-02:pending", waves: []int{1, 1}, stop: "3 new refusal(s) of devices' commands or messages"},
		{name: "device refusals from before the change do not count", n: 2, plan: cfgPlan("1,100%"), phase: PhaseDone,
			setup: func(f *fleet) {
				for _, r := range f.relays {
					r.refused = 4
				}
			},
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1}},
		{name: "device refusals after a restart are all new", n: 2, plan: Plan{Firmware: &FirmwareSpec{Image: "plant.img"}, Waves: "1,100%"}, phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-01"].refused = 9
				f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.refused = 1 }
			},
			results: "plant-01:failed plant-02:pending", waves: []int{1, 1}, stop: "1 new refusal(s) of devices' commands or messages"},
		{name: "device refusals left out of the gates", n: 2, plan: func() Plan {
			p := cfgPlan("1,100%")
			p.Gates.Require = []string{GateHealthy}
			return p
		}(), phase: PhaseDone,
			setup:   func(f *fleet) { f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.refused = 5 } },
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1}},
		{name: "a gate left out is not judged", n: 2, plan: func() Plan {
			p := cfgPlan("1,100%")
			p.Gates.Require = []string{GateHealthy}
			return p
		}(), phase: PhaseDone,
			setup: func(f *fleet) {
				f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.counts["bounced"] = 2 }
			},
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1}},
		{name: "warning before stays warning", n: 2, plan: cfgPlan("1,100%"), phase: PhaseDone,
			setup:   func(f *fleet) { f.relays["plant-01"].health = "warning" },
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1}},
		{name: "rollback refused when someone changed it since", n: 2, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup: func(f *fleet) {
				f.relays["plant-01"].after = func(f *fakeRelay, doc json.RawMessage) {
					// Someone else puts version 3 while the wave soaks.
					f.health, f.after = "down", nil
					f.docs = append(f.docs, json.RawMessage(`{"a":3}`))
					f.cur = len(f.docs)
				}
			},
			results: "plant-01:failed plant-02:pending", waves: []int{1, 1}, stop: "rolling back failed: stale_version"},
		{name: "the relay refuses the configuration", n: 2, plan: cfgPlan("1,100%"), phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-01"].refuse = true },
			results: "plant-01:failed plant-02:pending", waves: []int{1, 1}, stop: "the relay refused the configuration: invalid_config"},
		{name: "merge patch of each site's own", n: 2, plan: Plan{Config: &ConfigSpec{MergePatch: "patch.json"}, Waves: "1,100%"}, phase: PhaseDone,
			setup:   func(f *fleet) { f.relays["plant-02"].docs[0] = json.RawMessage(`{"a":7,"b":{"d":1}}`) },
			results: "plant-01:ok plant-02:ok", waves: []int{1, 1},
			check: func(t *testing.T, f *fleet, st *State) {
				if d := f.relays["plant-02"].doc(); !SameJSON([]byte(d), []byte(`{"a":7,"b":{"c":true,"d":1}}`)) {
					t.Errorf("plant-02 got %s", d)
				}
			}},
		{name: "one file per site", n: 3, plan: Plan{Config: &ConfigSpec{Dir: "sites"}, Waves: "100%"}, phase: PhaseDone,
			setup: func(f *fleet) {
				os.MkdirAll(filepath.Join(f.dir, "sites"), 0o700)
				os.WriteFile(filepath.Join(f.dir, "sites", "plant-01.json"), []byte(`{"a":11}`), 0o600)
				os.WriteFile(filepath.Join(f.dir, "sites", "plant-03.json"), []byte(`{"a":1}`), 0o600)
			},
			results: "plant-01:ok plant-02:skipped plant-03:skipped", waves: []int{3},
			check: func(t *testing.T, f *fleet, st *State) {
				if d := f.relays["plant-01"].doc(); d != `{"a":11}` {
					t.Errorf("plant-01 got %s", d)
				}
				if n := st.Relay("plant-02").Note; !strings.Contains(n, "no plant-02.json in") {
					t.Errorf("plant-02: %s", n)
				}
			}},
		{name: "firmware in three waves", n: 10, plan: Plan{Firmware: &FirmwareSpec{Image: "plant.img"}, Waves: "1,30%,100%"}, phase: PhaseDone,
			setup:   func(f *fleet) { f.relays["plant-05"].version = "v2.0.0" },
			results: "plant-01:ok plant-02:ok plant-03:ok plant-04:ok plant-05:skipped plant-06:ok plant-07:ok plant-08:ok plant-09:ok plant-10:ok", waves: []int{1, 2, 7},
			check: func(t *testing.T, f *fleet, st *State) {
				if _, u := f.relays["plant-05"].count(); u != 0 {
					t.Errorf("plant-05, already at v2.0.0, was updated")
				}
			}},
		{name: "firmware falls back by test boot", n: 3, plan: Plan{Firmware: &FirmwareSpec{Image: "plant.img"}, Waves: "1,100%"}, phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-01"].fallBack = true },
			results: "plant-01:fell-back plant-02:pending plant-03:pending", waves: []int{1, 2}, stop: "came back running v1.0.0: the test boot of v2.0.0 did not commit"},
		{name: "firmware relay dark after the update", n: 3, plan: Plan{Firmware: &FirmwareSpec{Image: "plant.img"}, Waves: "1,100%"}, phase: PhaseStopped,
			setup:   func(f *fleet) { f.relays["plant-01"].after = dark },
			results: "plant-01:unreachable plant-02:pending plant-03:pending", waves: []int{1, 2}, stop: "a power cycle boots v1.0.0 again"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, tc.n, tc.plan)
			if tc.setup != nil {
				tc.setup(f)
			}
			st, err := f.start(t)
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != tc.phase {
				t.Errorf("phase %s (%s), want %s", st.Phase, st.Stop, tc.phase)
			}
			if tc.results != "" && results(st) != tc.results {
				t.Errorf("results\n got %s\nwant %s", results(st), tc.results)
			}
			if got := waveSizes(st); !reflect.DeepEqual(got, tc.waves) {
				t.Errorf("waves %v, want %v", got, tc.waves)
			}
			if !strings.Contains(st.Stop, tc.stop) || (tc.stop == "") != (st.Stop == "") {
				t.Errorf("stop %q, want it to say %q", st.Stop, tc.stop)
			}
			// What is on disk is what the run ended with.
			disk, err := LoadState(f.plan)
			if err != nil || results(disk) != results(st) || disk.Phase != st.Phase {
				t.Errorf("state file: %v %s %s", err, disk.Phase, results(disk))
			}
			if tc.check != nil {
				tc.check(t, f, st)
			}
		})
	}
}

// TestResume: a run killed after N changes (its context cancelled: the
// laptop slept, relayctl was killed) resumes from the state file and
// changes every relay exactly once.
func TestResume(t *testing.T) {
	for _, after := range []int{1, 2, 3, 5, 9} {
		t.Run(fmt.Sprint(after), func(t *testing.T) {
			p := cfgPlan("1,30%,100%")
			p.Parallel = 1
			f := newFleet(t, 10, p)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := f.engine(t, nil, after, cancel).Start(ctx, f.candidates(), nil)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("the killed run: %v", err)
			}
			st, err := LoadState(f.plan)
			if err != nil || st.Phase != PhaseRunning {
				t.Fatalf("state after the kill: %v %+v", err, st)
			}
			if _, err := f.engine(t, nil, 0, nil).Start(context.Background(), f.candidates(), nil); err == nil || !errors.Is(err, ErrState) {
				t.Errorf("run again over a state: %v", err)
			}
			if err := f.engine(t, nil, 0, nil).Resume(context.Background(), st); err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseDone || st.Counts()[OK] != 10 {
				t.Errorf("after resume: %s %v", st.Phase, st.Counts())
			}
			for n, r := range f.relays {
				if p, _ := r.count(); p != 1 {
					t.Errorf("%s was put %d times", n, p)
				}
			}
			if err := f.engine(t, nil, 0, nil).Resume(context.Background(), st); !errors.Is(err, ErrState) {
				t.Errorf("resume of a finished roll-out: %v", err)
			}
		})
	}
}

// TestResumeAfterPut: killed after the put went through but before its
// answer was written: resume finds it in force and judges it (and still
// knows what to roll back to).
func TestResumeAfterPut(t *testing.T) {
	f := newFleet(t, 2, cfgPlan("1,100%"))
	f.relays["plant-01"].after = func(f *fakeRelay, _ json.RawMessage) { f.health = "down" }
	ctx, cancel := context.WithCancel(context.Background())
	e := f.engine(t, nil, 0, nil)
	e.o.Event = func(ev Event) {
		if ev.Result == Applying {
			// The put is made, then the run dies before it hears back.
			f.relays["plant-01"].PutConfig(context.Background(), json.RawMessage(`{"a":2}`), 1, false)
			cancel()
		}
	}
	e.Start(ctx, f.candidates(), nil)
	st, _ := LoadState(f.plan)
	if r := st.Relay("plant-01"); r.Result != Applying {
		t.Fatalf("plant-01 %s", r.Result)
	}
	if err := f.engine(t, nil, 0, nil).Resume(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if r := st.Relay("plant-01"); r.Result != RolledBack || !strings.Contains(r.Note, "version 1 put back") {
		t.Errorf("plant-01 %s %s", r.Result, r.Note)
	}
	if d := f.relays["plant-01"].doc(); !SameJSON([]byte(d), []byte(`{"a":1}`)) {
		t.Errorf("plant-01 runs %s", d)
	}
}

// TestLatePut: a put of a killed run that the relay finished only after
// the resumed run read its configuration: the resumed put is refused as
// stale, and the configuration in force is the desired one: applied,
// once.
func TestLatePut(t *testing.T) {
	f := newFleet(t, 1, cfgPlan("100%"))
	r := f.relays["plant-01"]
	e := f.engine(t, nil, 0, nil)
	e.o.Event = func(ev Event) {
		if ev.Result == Applying {
			r.PutConfig(context.Background(), json.RawMessage(`{"a":2}`), 1, false) // the late one
		}
	}
	st, err := e.Start(context.Background(), f.candidates(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if x := st.Relay("plant-01"); x.Result != OK || x.NewVersion != 2 {
		t.Errorf("%+v", x)
	}
	if p, _ := r.count(); p != 1 {
		t.Errorf("put %d times", p)
	}
}

// TestRetryFailed redoes only the relays that failed.
func TestRetryFailed(t *testing.T) {
	f := newFleet(t, 21, cfgPlan("1,11,100%"))
	for _, n := range []string{"plant-04", "plant-09"} {
		f.relays[n].after = func(f *fakeRelay, _ json.RawMessage) { f.dark = true }
	}
	st, _ := f.start(t)
	if st.Phase != PhaseStopped {
		t.Fatalf("phase %s", st.Phase)
	}
	// They come back with the change in force; a retry finds them there.
	for _, n := range []string{"plant-04", "plant-09"} {
		f.relays[n].mu.Lock()
		f.relays[n].dark, f.relays[n].after = false, nil
		f.relays[n].mu.Unlock()
	}
	var evs []Event
	if err := f.engine(t, &evs, 0, nil).RetryFailed(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	var touched []string
	for _, ev := range evs {
		if ev.Step == "change" {
			touched = append(touched, ev.Relay+":"+ev.Result)
		}
	}
	slices.Sort(touched)
	if want := []string{"plant-04:skipped", "plant-09:skipped"}; !reflect.DeepEqual(touched, want) {
		t.Errorf("retry touched %v, want %v", touched, want)
	}
	if c := st.Counts(); c[Pending] != 10 || c[Skipped] != 2 || st.Phase != PhaseRunning || len(st.Waves) != 4 || st.Waves[3].Name != "retry 1" {
		t.Errorf("after retry: %s %v, %d waves", st.Phase, st.Counts(), len(st.Waves))
	}
	// resume continues the wave the stop rule had left.
	if err := f.engine(t, nil, 0, nil).Resume(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if c := st.Counts(); c[OK] != 19 || c[Skipped] != 2 || st.Phase != PhaseDone {
		t.Errorf("after resume: %s %v", st.Phase, c)
	}
	if err := f.engine(t, nil, 0, nil).RetryFailed(context.Background(), st); !errors.Is(err, ErrState) {
		t.Errorf("a second retry with nothing failed: %v", err)
	}
}

// TestAbort: abort from another process stops the run before its next
// step; resume refuses afterwards.
func TestAbort(t *testing.T) {
	f := newFleet(t, 10, cfgPlan("1,30%,100%"))
	e := f.engine(t, nil, 0, nil)
	e.o.Event = func(ev Event) {
		if ev.Relay == "plant-02" && ev.Result == Applied {
			if err := Abort(f.plan); err != nil {
				t.Error(err)
			}
		}
	}
	_, err := e.Start(context.Background(), f.candidates(), nil)
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("run: %v", err)
	}
	st, _ := LoadState(f.plan)
	if st.Phase != PhaseAborted {
		t.Errorf("phase %s", st.Phase)
	}
	changed := 0
	for _, r := range f.relays {
		p, _ := r.count()
		changed += p
	}
	if changed > 3 {
		t.Errorf("%d relays changed after an abort in wave 2", changed)
	}
	if err := f.engine(t, nil, 0, nil).Resume(context.Background(), st); !errors.Is(err, ErrState) {
		t.Errorf("resume after abort: %v", err)
	}
}

// TestDryRun changes nothing and writes no state, and says what each
// relay would get.
func TestDryRun(t *testing.T) {
	f := newFleet(t, 4, cfgPlan("1,100%"))
	f.relays["plant-03"].docs[0] = json.RawMessage(`{"a":2}`)
	var evs []Event
	st, err := f.engine(t, &evs, 0, nil).Dry(context.Background(), f.candidates(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := results(st), "plant-01:would-change plant-02:would-change plant-03:skipped plant-04:would-change"; got != want {
		t.Errorf("got %s want %s", got, want)
	}
	for n, r := range f.relays {
		if p, _ := r.count(); p != 0 {
			t.Errorf("%s changed by a dry run", n)
		}
	}
	if _, err := os.Stat(StatePath(f.plan)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry run wrote the state: %v", err)
	}
	if len(evs) != 6 { // two waves, four relays
		t.Errorf("%d events: %+v", len(evs), evs)
	}
}
