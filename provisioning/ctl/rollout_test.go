package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/rollout"
)

// fleetSize is the relays of TestFleetRollout: 10 here, 30 with the
// integration tag (rollout_integration_test.go): thirty nodes take 25-30 s
// to come up on this machine and the whole test about two minutes under
// load.
var fleetSize = 10

// runctl runs relayctl on the rig's laptop; ev sees each roll-out step.
func (rig *fleetRig) run(t *testing.T, ctx context.Context, ev func(rollout.Event), args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	code := ctl.Main(ctx, append([]string{"-timeout", "10s"}, args...),
		ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Node: rig.laptop, RolloutEvent: ev})
	t.Logf("relayctl %s: exit %d in %v\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), out.String(), errb.String())
	return code, out.String(), errb.String()
}

func (rig *fleetRig) report(t *testing.T, code int, out string) *ctl.RolloutReport {
	t.Helper()
	var r ctl.RolloutReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("exit %d, report: %v\n%s", code, err, out)
	}
	return &r
}

func resultOf(r *ctl.RolloutReport, name string) ctl.RelayReport {
	for _, x := range r.Relays {
		if x.Name == name {
			return x
		}
	}
	return ctl.RelayReport{}
}

// directory of a box's configuration in force.
func outbox(b *rigBox) string {
	_, doc, _, _ := b.get()
	var c struct {
		Upstream struct{ Capture struct{ Directory string } }
	}
	json.Unmarshal(doc, &c)
	return c.Upstream.Capture.Directory
}

// plan writes a merge patch setting the capture directory to dir and a
// plan for it with the flags.
func (rig *fleetRig) plan(t *testing.T, dir string, flags ...string) string {
	t.Helper()
	patch := filepath.Join(t.TempDir(), "patch.json")
	os.WriteFile(patch, []byte(fmt.Sprintf(`{"upstream":{"capture":{"directory":%q}}}`, dir)), 0o600)
	p := filepath.Join(t.TempDir(), "plan.json")
	args := append([]string{"rollout", "plan", "-out", p, "-patch", patch, "-soak", "0s", "-back-within", "5s"}, flags...)
	if code, _, _ := rig.run(t, context.Background(), nil, args...); code != ctl.ExitOK {
		t.Fatalf("rollout plan: exit %d", code)
	}
	return p
}

func (rig *fleetRig) reloads() map[string]int {
	m := map[string]int{}
	for _, r := range rig.relays {
		_, _, n, _ := r.box.get()
		m[r.name] = n
	}
	return m
}

func waveTimes(r *ctl.RolloutReport) string {
	var s []string
	for _, w := range r.Waves {
		s = append(s, fmt.Sprintf("wave %s: %d relays in %.2f s", w.Name, w.Relays, w.Seconds))
	}
	return strings.Join(s, ", ")
}

// TestFleetRollout rolls configuration and firmware out to a fleet of real
// tsnet nodes serving the real admin API: a clean roll-out in three
// waves, a second run that skips every relay, a failing canary, a wave in
// which 2 of 10 go dark, retry-failed, resume after relayctl is killed
// mid-wave, and firmware through the fake gokrazy socket with a test boot
// that falls back.
func TestFleetRollout(t *testing.T) {
	n := fleetSize
	rig := newFleetRig(t, n)
	bg := context.Background()

	t.Run("fleet query", func(t *testing.T) {
		start := time.Now()
		code, out, _ := rig.run(t, bg, nil, "-json", "fleet")
		var rows []ctl.FleetRow
		if code != ctl.ExitOK || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != n {
			t.Fatalf("fleet: exit %d, %d rows", code, len(rows))
		}
		t.Logf("FIGURE fleet query of %d relays: %v", n, time.Since(start).Round(time.Millisecond))
	})

	t.Run("config in three waves", func(t *testing.T) {
		waves := "1,10%,100%" // 1, 2, 27 of 30
		if n < 20 {
			waves = "1,30%,100%"
		}
		p := rig.plan(t, "outbox-a", "-waves", waves)
		// The dry run changes nothing and shows every relay's step.
		before := rig.reloads()
		code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "run", p, "-dry-run")
		r := rig.report(t, code, out)
		if code != ctl.ExitOK || r.Counts[rollout.WouldApply] != n {
			t.Errorf("dry run: exit %d, %v", code, r.Counts)
		}
		if got := rig.reloads(); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Errorf("the dry run changed relays: %v -> %v", before, got)
		}
		if _, err := os.Stat(rollout.StatePath(p)); err == nil {
			t.Error("the dry run wrote a state")
		}
		start := time.Now()
		code, out, errs := rig.run(t, bg, nil, "-json", "rollout", "run", p)
		r = rig.report(t, code, out)
		if code != ctl.ExitOK || r.Phase != rollout.PhaseDone || r.Counts[rollout.OK] != n {
			t.Fatalf("run: exit %d, %s %v", code, r.Phase, r.Counts)
		}
		if len(r.Waves) != 3 || r.Waves[0].Relays != 1 {
			t.Errorf("waves %+v", r.Waves)
		}
		for _, x := range rig.relays {
			if d := outbox(x.box); d != "outbox-a" {
				t.Errorf("%s runs %s", x.name, d)
			}
		}
		if !strings.Contains(errs, "wave 1") || !strings.Contains(errs, "plant-01") {
			t.Errorf("no live table on stderr:\n%s", errs)
		}
		t.Logf("FIGURE config roll-out of %d relays in %v: %s", n, time.Since(start).Round(time.Millisecond), waveTimes(r))
		// status reads the state file.
		if code, out, _ := rig.run(t, bg, nil, "rollout", "status", p); code != ctl.ExitOK || !strings.Contains(out, "done: ") {
			t.Errorf("status: exit %d\n%s", code, out)
		}
		// Idempotent: the same change again skips every relay and says so.
		p2 := rig.plan(t, "outbox-a")
		before = rig.reloads()
		code, out, _ = rig.run(t, bg, nil, "-json", "rollout", "run", p2)
		r = rig.report(t, code, out)
		if code != ctl.ExitOK || r.Counts[rollout.Skipped] != n || !strings.Contains(resultOf(r, "plant-03").Note, "already at this configuration") {
			t.Errorf("second run: exit %d %v %+v", code, r.Counts, resultOf(r, "plant-03"))
		}
		if got := rig.reloads(); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Errorf("a second run changed relays")
		}
	})

	t.Run("failing canary stops everything", func(t *testing.T) {
		canary := rig.relay("plant-01").box
		canary.set(func(b *rigBox) { b.bad = func(doc []byte) bool { return bytes.Contains(doc, []byte("outbox-b")) } })
		defer canary.set(func(b *rigBox) { b.bad = nil })
		before := rig.reloads()
		p := rig.plan(t, "outbox-b")
		code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "run", p)
		r := rig.report(t, code, out)
		if code != ctl.ExitFailed || r.Phase != rollout.PhaseStopped || !strings.Contains(r.Stop, "the canary (wave 1) failed: plant-01") || !strings.Contains(r.Stop, "the upstream refuses every login") {
			t.Errorf("exit %d %s: %s", code, r.Phase, r.Stop)
		}
		if c := resultOf(r, "plant-01"); c.Result != rollout.RolledBack {
			t.Errorf("canary %+v", c)
		}
		if d := outbox(canary); d != "outbox-a" {
			t.Errorf("canary runs %s after its rollback", d)
		}
		after := rig.reloads()
		for _, x := range rig.relays[1:] {
			if after[x.name] != before[x.name] {
				t.Errorf("%s was changed after the canary failed", x.name)
			}
		}
		if code, _, errs := rig.run(t, bg, nil, "rollout", "resume", p); code != ctl.ExitFailed || !strings.Contains(errs, "stopped by itself") {
			t.Errorf("resume of a stopped roll-out: exit %d %s", code, errs)
		}
	})

	t.Run("two of ten go dark", func(t *testing.T) {
		dark := []string{"plant-04", "plant-08"}
		for _, d := range dark {
			rig.relay(d).box.set(func(b *rigBox) { b.darkOn = func(doc []byte) bool { return bytes.Contains(doc, []byte("outbox-c")) } })
		}
		before := rig.reloads()
		wave2 := min(10, n-1) // plant-02 … plant-11
		p := rig.plan(t, "outbox-c", "-waves", fmt.Sprintf("1,%d,100%%", 1+wave2), "-max-failed", "10")
		code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "run", p)
		r := rig.report(t, code, out)
		if code != ctl.ExitFailed || r.Phase != rollout.PhaseStopped || !strings.Contains(r.Stop, fmt.Sprintf("wave 2: 2 of %d relays failed or did not answer", wave2)) {
			t.Fatalf("exit %d %s: %s", code, r.Phase, r.Stop)
		}
		for _, d := range dark {
			if x := resultOf(r, d); x.Result != rollout.Unreachable {
				t.Errorf("%s: %+v", d, x)
			}
		}
		after := rig.reloads()
		for _, x := range rig.relays[1+wave2:] {
			if after[x.name] != before[x.name] {
				t.Errorf("%s of wave 3 was changed after wave 2 stopped", x.name)
			}
		}
		// They come back; retry-failed does only them (the change is in
		// force there), then resume does wave 3.
		for _, d := range dark {
			rig.relay(d).box.set(func(b *rigBox) { b.dark, b.darkOn = false, nil })
		}
		var touched []string
		code, out, _ = rig.run(t, bg, func(ev rollout.Event) {
			if ev.Step == "change" {
				touched = append(touched, ev.Relay)
			}
		}, "-json", "rollout", "retry-failed", p)
		r = rig.report(t, code, out)
		if code != ctl.ExitOK || strings.Join(touched, ",") != "plant-04,plant-08" && strings.Join(touched, ",") != "plant-08,plant-04" {
			t.Errorf("retry-failed: exit %d, touched %v", code, touched)
		}
		if x := resultOf(r, "plant-04"); x.Result != rollout.Skipped || !strings.Contains(x.Note, "already at this configuration") {
			t.Errorf("plant-04 after retry: %+v", x)
		}
		if 1+wave2 < n { // a wave 3 is left
			code, out, _ = rig.run(t, bg, nil, "-json", "rollout", "resume", p)
			r = rig.report(t, code, out)
		}
		if code != ctl.ExitOK || r.Phase != rollout.PhaseDone {
			t.Errorf("resume: exit %d %s %v", code, r.Phase, r.Counts)
		}
		for _, x := range rig.relays {
			if d := outbox(x.box); d != "outbox-c" {
				t.Errorf("%s runs %s", x.name, d)
			}
		}
	})

	t.Run("resume after relayctl is killed mid-wave", func(t *testing.T) {
		p := rig.plan(t, "outbox-d", "-waves", "1,10%,100%", "-parallel", "2")
		before := rig.reloads()
		ctx, kill := context.WithCancel(bg)
		applied := 0
		stopAt := n/2 + 1
		code, _, errs := rig.run(t, ctx, func(ev rollout.Event) {
			if ev.Step == "change" && ev.Result == rollout.Applied {
				if applied++; applied == stopAt {
					kill()
				}
			}
		}, "-json", "rollout", "run", p)
		kill()
		if code != ctl.ExitFailed || !strings.Contains(errs, "relayctl rollout resume") {
			t.Errorf("killed run: exit %d %s", code, errs)
		}
		st, err := rollout.LoadState(p)
		if err != nil || st.Phase != rollout.PhaseRunning {
			t.Fatalf("state after the kill: %v %+v", err, st)
		}
		mid := st.Counts()
		code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "resume", p)
		r := rig.report(t, code, out)
		if code != ctl.ExitOK || r.Phase != rollout.PhaseDone || r.Counts[rollout.OK] != n {
			t.Fatalf("resume: exit %d %s %v (after the kill: %v)", code, r.Phase, r.Counts, mid)
		}
		after := rig.reloads()
		for _, x := range rig.relays {
			if d := outbox(x.box); d != "outbox-d" || after[x.name] != before[x.name]+1 {
				t.Errorf("%s runs %s after %d changes, want outbox-d after exactly one", x.name, d, after[x.name]-before[x.name])
			}
		}
		t.Logf("killed after %d changes (state then: %v); resumed to %v", stopAt, mid, r.Counts)
	})

	t.Run("abort from another terminal", func(t *testing.T) {
		p := rig.plan(t, "outbox-x", "-waves", "1,2,100%", "-parallel", "1")
		aborted := false
		code, out, errs := rig.run(t, bg, func(ev rollout.Event) {
			if ev.Step == "change" && ev.Result == rollout.Applied && ev.Wave == "3" && !aborted {
				aborted = true
				var o, e bytes.Buffer
				if c := ctl.Main(bg, []string{"rollout", "abort", p}, ctl.IO{Stdout: &o, Stderr: &e}); c != ctl.ExitOK {
					t.Errorf("abort: exit %d %s", c, e.String())
				}
			}
		}, "-json", "rollout", "run", p)
		r := rig.report(t, code, out)
		if code != ctl.ExitFailed || r.Phase != rollout.PhaseAborted || r.Counts[rollout.Pending] == 0 {
			t.Errorf("aborted run: exit %d %s %v\n%s", code, r.Phase, r.Counts, errs)
		}
		if code, out, _ := rig.run(t, bg, nil, "rollout", "status", p); code != ctl.ExitFailed || !strings.Contains(out, "aborted: ") {
			t.Errorf("status: exit %d\n%s", code, out)
		}
		if code, _, errs := rig.run(t, bg, nil, "rollout", "resume", p); code != ctl.ExitFailed || !strings.Contains(errs, "aborted") {
			t.Errorf("resume after abort: exit %d %s", code, errs)
		}
		// Put every relay back on one configuration for what follows.
		p2 := rig.plan(t, "outbox-d")
		if code, _, _ := rig.run(t, bg, nil, "rollout", "run", p2); code != ctl.ExitOK {
			t.Fatalf("back to outbox-d: exit %d", code)
		}
	})

	t.Run("firmware", func(t *testing.T) {
		img := rig.image(t, t.TempDir(), "v2.0.0")
		canary := rig.relay("plant-01").box
		canary.set(func(b *rigBox) { b.fallBack = true })
		p := filepath.Join(t.TempDir(), "fw.json")
		if code, _, _ := rig.run(t, bg, nil, "rollout", "plan", "-out", p, "-image", img, "-soak", "0s", "-back-within", "10s"); code != ctl.ExitOK {
			t.Fatal("plan")
		}
		code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "run", p)
		r := rig.report(t, code, out)
		if code != ctl.ExitFailed || r.Phase != rollout.PhaseStopped || resultOf(r, "plant-01").Result != rollout.FellBack || !strings.Contains(r.Stop, "did not commit") {
			t.Fatalf("fall back: exit %d %s %+v", code, r.Stop, resultOf(r, "plant-01"))
		}
		if v, _, _, _ := canary.get(); v != "v1.0.0" {
			t.Errorf("canary runs %s", v)
		}
		for _, x := range rig.relays[1:] {
			if _, _, _, u := x.box.get(); u != 0 {
				t.Errorf("%s updated after the canary fell back", x.name)
			}
		}
		canary.set(func(b *rigBox) { b.fallBack = false })
		if code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "retry-failed", p); code != ctl.ExitOK || resultOf(rig.report(t, code, out), "plant-01").Result != rollout.OK {
			t.Fatalf("retry-failed: exit %d", code)
		}
		start := time.Now()
		code, out, _ = rig.run(t, bg, nil, "-json", "rollout", "resume", p)
		r = rig.report(t, code, out)
		if code != ctl.ExitOK || r.Phase != rollout.PhaseDone {
			t.Fatalf("resume: exit %d %v", code, r.Counts)
		}
		t.Logf("FIGURE firmware roll-out of the other %d relays in %v: %s", n-1, time.Since(start).Round(time.Millisecond), waveTimes(r))
		for _, x := range rig.relays {
			v, _, _, u := x.box.get()
			want := 1
			if x.name == "plant-01" {
				want = 2
			}
			x.gok.mu.Lock()
			calls := strings.Join(x.gok.calls, ",")
			x.gok.mu.Unlock()
			if v != "v2.0.0" || u != want || !strings.Contains(calls, "PUT /update/root,POST /update/testboot,POST /reboot") {
				t.Errorf("%s runs %s after %d updates; gokrazy saw %s", x.name, v, u, calls)
			}
		}
		p2 := filepath.Join(t.TempDir(), "fw.json")
		rig.run(t, bg, nil, "rollout", "plan", "-out", p2, "-image", img, "-soak", "0s")
		if code, out, _ := rig.run(t, bg, nil, "-json", "rollout", "run", p2); code != ctl.ExitOK || rig.report(t, code, out).Counts[rollout.Skipped] != n {
			t.Errorf("the same firmware again: exit %d %s", code, out)
		}
	})

	t.Run("pull and apply", func(t *testing.T) {
		dir := t.TempDir()
		code, out, _ := rig.run(t, bg, nil, "-json", "pull", dir)
		var rows []ctl.PullRow
		if code != ctl.ExitOK || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != n || rows[0].Result != "written" {
			t.Fatalf("pull: exit %d %s", code, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "plant-05.json"))
		if err != nil || !strings.Contains(string(b), "outbox-d") {
			t.Fatalf("plant-05.json: %v %s", err, b)
		}
		// Nothing differs: apply changes nothing.
		before := rig.reloads()
		if code, out, _ := rig.run(t, bg, nil, "apply", dir, "-dry-run"); code != ctl.ExitOK || !strings.Contains(out, "plant-05 (plant-05): runs plant-05.json already") {
			t.Errorf("apply -dry-run of what runs: exit %d\n%s", code, out)
		}
		// One site edited: its diff, then only it changes.
		os.WriteFile(filepath.Join(dir, "plant-05.json"), bytes.Replace(b, []byte("outbox-d"), []byte("outbox-e"), 1), 0o600)
		code, out, _ = rig.run(t, bg, nil, "apply", dir, "-dry-run")
		if code != ctl.ExitOK || !strings.Contains(out, `upstream.capture.directory  "outbox-d"  ->  "outbox-e"`) {
			t.Errorf("apply -dry-run: exit %d\n%s", code, out)
		}
		code, out, errs := rig.run(t, bg, nil, "apply", dir, "-soak", "0s", "-back-within", "5s")
		if code != ctl.ExitOK || !strings.Contains(errs, `upstream.capture.directory  "outbox-d"  ->  "outbox-e"`) || !strings.Contains(out, "done: 1 ok, "+fmt.Sprint(n-1)+" skipped") {
			t.Errorf("apply: exit %d\n%s\n%s", code, out, errs)
		}
		after := rig.reloads()
		for _, x := range rig.relays {
			want := before[x.name]
			if x.name == "plant-05" {
				want++
			}
			if after[x.name] != want {
				t.Errorf("%s changed %d times", x.name, after[x.name]-before[x.name])
			}
		}
		// A site file the relay refuses is named with the relay's words.
		os.WriteFile(filepath.Join(dir, "plant-06.json"), []byte(`{"upstream":{"kind":"pigeon"}}`), 0o600)
		if code, out, _ := rig.run(t, bg, nil, "apply", dir, "-dry-run"); code != ctl.ExitFailed || !strings.Contains(out, "the relay refuses plant-06.json") {
			t.Errorf("apply -dry-run of a bad file: exit %d\n%s", code, out)
		}
	})
}
