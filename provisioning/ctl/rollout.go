package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/rollout"
)

const rolloutUsage = "relayctl rollout plan -out PLAN (-config FILE | -patch FILE | -dir DIR | -image IMAGE [-sig FILE]) [flags] | run PLAN [-dry-run] | resume PLAN | retry-failed PLAN [-dry-run] | abort PLAN | status PLAN"

// rolloutOffline runs the roll-out commands that touch no relay: plan
// writes a plan file, abort and status read and mark the state beside it.
func (e *env) rolloutOffline(args []string) int {
	op := args[0]
	fs := sub("rollout "+op, e)
	if op == "plan" {
		return e.rolloutPlan(fs, args[1:])
	}
	pos, err := parse(fs, args[1:])
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("%s", rolloutUsage))
	}
	plan := pos[0]
	switch op {
	case "abort":
		if _, err := os.Stat(plan); err != nil {
			return e.fail(usageErr("no plan %s", plan))
		}
		if err := rollout.Abort(plan); err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.Stderr, "relayctl: %s aborted: a run stops before its next step; relays changed so far stay as they are (relayctl rollout status %s)\n", plan, plan)
		return ExitOK
	default: // status
		st, err := rollout.LoadState(plan)
		if err != nil {
			return e.fail(err)
		}
		if rollout.Aborted(plan) && st.Phase == rollout.PhaseRunning {
			st.Phase = rollout.PhaseAborted
		}
		return e.rolloutReport(st)
	}
}

// rolloutPlan writes a plan file from flags, so nobody has to write its
// JSON by hand (the file may be edited afterwards; docs/fleet.md has its
// keys).
func (e *env) rolloutPlan(fs *flag.FlagSet, args []string) int {
	out := fs.String("out", "", "the plan file to write (its state goes beside it)")
	tag := fs.String("tag", e.relayTag, "relays carrying this tailnet tag")
	sites := fs.String("sites", "", "only these sites (comma-separated)")
	names := fs.String("names", "", "only relays whose tailnet name matches this pattern (plant-*)")
	cfg := fs.String("config", "", "one configuration for every relay")
	patch := fs.String("patch", "", "a JSON merge patch (RFC 7396) applied to each relay's own configuration")
	dir := fs.String("dir", "", "one configuration per site: DIR/SITE.json")
	image := fs.String("image", "", "a sitegen image to send (firmware)")
	sig := fs.String("sig", "", "the image's signature (default IMAGE.sig)")
	down := fs.Bool("allow-downgrade", false, "firmware: take a version older than a relay's running one")
	waves := fs.String("waves", rollout.DefaultWaves, "cumulative wave sizes, a number of relays or a percentage")
	soak := fs.Duration("soak", 5*time.Minute, "how long each wave runs before its gates are judged")
	back := fs.Duration("back-within", rollout.DefaultBackWithin, "how long a changed relay has to answer again")
	gates := fs.String("gates", strings.Join(rollout.AllGates, ","), "the gates judged")
	slack := fs.Int("queue-slack", rollout.DefaultQueueSlack, "queue gate: this many more queued messages than before still pass")
	maxFailed := fs.Float64("max-failed", rollout.DefaultMaxFailed, "stop when more than this percentage of a wave failed or did not answer")
	parallel := fs.Int("parallel", rollout.DefaultParallel, "relays of a wave changed at once")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 || *out == "" {
		return e.fail(usageErr("%s", rolloutUsage))
	}
	p := rollout.Plan{Select: rollout.Select{Tag: *tag, Names: *names}, Waves: *waves, Soak: rollout.Duration(*soak),
		Gates: rollout.Gates{Require: splitList(*gates), BackWithin: rollout.Duration(*back), QueueSlack: slack},
		Stop:  rollout.StopRules{MaxFailedPercent: maxFailed}, Parallel: *parallel}
	p.Select.Sites = splitList(*sites)
	switch {
	case *image != "":
		p.Firmware = &rollout.FirmwareSpec{Image: *image, Signature: *sig, AllowDowngrade: *down}
		if *cfg != "" || *patch != "" || *dir != "" {
			p.Config = &rollout.ConfigSpec{}
		}
	case *cfg != "" || *patch != "" || *dir != "":
		p.Config = &rollout.ConfigSpec{File: *cfg, MergePatch: *patch, Dir: *dir}
	}
	if err := p.Check(); err != nil {
		return e.fail(usageErr("%v", err))
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return e.fail(err)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return e.fail(fmt.Errorf("writing the plan (an existing plan is never overwritten): %w", err))
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return e.fail(err)
	}
	fmt.Fprintf(e.Stderr, "relayctl: wrote %s; relayctl rollout run %s -dry-run shows every step\n", *out, *out)
	_, err = e.Stdout.Write(append(jsonSafe(b), '\n'))
	return e.fail(err)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// rollout runs, resumes or retries a plan over the tailnet.
func (e *env) rollout(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return e.fail(usageErr("%s", rolloutUsage))
	}
	op := args[0]
	fs := sub("rollout "+op, e)
	dry := fs.Bool("dry-run", false, "read every relay and print every step; change nothing")
	pos, err := parse(fs, args[1:])
	if err != nil || len(pos) != 1 || (*dry && op == "resume") {
		return e.fail(usageErr("%s", rolloutUsage))
	}
	switch op {
	case "run", "resume", "retry-failed":
	default:
		return e.fail(usageErr("%s", rolloutUsage))
	}
	return e.runPlan(ctx, op, pos[0], *dry)
}

// runPlan is rollout run|resume|retry-failed of the plan file planFile
// (relayctl apply runs the plan it writes through it too).
func (e *env) runPlan(ctx context.Context, op, planFile string, dry bool) int {
	p, err := rollout.LoadPlan(planFile)
	if err != nil {
		return e.fail(usageErr("%v", err))
	}
	var st *rollout.State
	if op != "run" {
		if st, err = rollout.LoadState(planFile); err != nil {
			return e.fail(err)
		}
	}
	var fw *fwImage
	ver := ""
	if p.Firmware != nil {
		if fw, err = loadFirmware(p.Firmware); err != nil {
			return e.fail(err)
		}
		ver = fw.version
	}
	cands, relays, err := e.rolloutFleet(ctx, p.Tag(), fw)
	if err != nil {
		return e.fail(err)
	}
	defer closeIdle(relays)
	eng := rollout.New(rollout.Options{PlanFile: planFile, Plan: p, Relays: relays, FirmwareVersion: ver, DryRun: dry, Event: e.rolloutEvent})
	switch {
	case op == "run" && dry:
		in, left := p.Selected(cands)
		st, err = eng.Dry(ctx, in, left)
	case op == "run":
		in, left := p.Selected(cands)
		if len(in) == 0 {
			return e.fail(fmt.Errorf("the plan selects no relay of the %d carrying %s", len(cands), p.Tag()))
		}
		fmt.Fprintf(e.Stderr, "relayctl: %s: %s roll-out over %d relay(s) in waves %s; state in %s\n", planFile, p.Kind(), len(in), p.Waves, rollout.StatePath(planFile))
		st, err = eng.Start(ctx, in, left)
	case op == "resume":
		err = eng.Resume(ctx, st)
	default:
		err = eng.RetryFailed(ctx, st)
	}
	switch {
	case errors.Is(err, rollout.ErrState):
		fmt.Fprintf(e.Stderr, "relayctl: %v\n", err)
		return ExitFailed
	case st == nil || (err != nil && !errors.Is(err, rollout.ErrAborted) && !errors.Is(err, context.Canceled)):
		return e.fail(err)
	}
	code := e.rolloutReport(st)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(e.Stderr, "relayctl: interrupted; relayctl rollout resume %s continues where it stopped\n", planFile)
		return ExitFailed
	case err != nil:
		return ExitFailed
	}
	return code
}

// rolloutEvent is the live table: one line a step, on stderr (stdout
// keeps the report, and -json output stays clean).
func (e *env) rolloutEvent(ev rollout.Event) {
	if e.IO.RolloutEvent != nil {
		e.IO.RolloutEvent(ev)
	}
	switch ev.Step {
	case "wave":
		row(e.Stderr, "%s  wave %s: %s\n", ev.Time.Format(time.TimeOnly), ev.Wave, ev.Note)
	case "soak":
		row(e.Stderr, "%s  wave %s: soaking %s\n", ev.Time.Format(time.TimeOnly), ev.Wave, ev.Note)
	case "stop":
		row(e.Stderr, "%s  STOPPED: %s\n", ev.Time.Format(time.TimeOnly), ev.Note)
	default:
		if ev.Result == rollout.Applying {
			return
		}
		ft := ""
		if ev.From != "" || ev.To != "" {
			ft = ev.From + " -> " + ev.To
		}
		row(e.Stderr, "%s  wave %-3s %-24s %-12s %-20s %s\n", ev.Time.Format(time.TimeOnly), ev.Wave, ev.Relay, ev.Result, ft, ev.Note)
	}
}

// RolloutReport is what relayctl rollout prints at the end (and status
// prints any time), with -json.
type RolloutReport struct {
	Plan    string            `json:"plan"`
	Kind    string            `json:"kind"`
	Phase   string            `json:"phase"`
	Stop    string            `json:"stop,omitempty"`
	Started time.Time         `json:"started"`
	Updated time.Time         `json:"updated"`
	Counts  map[string]int    `json:"counts"`
	Waves   []WaveReport      `json:"waves"`
	Relays  []RelayReport     `json:"relays"`
	Left    map[string]string `json:"left_out,omitempty"`
}

// WaveReport is one wave: its relays and how long it took (changes, soak
// and gates).
type WaveReport struct {
	Name     string    `json:"name"`
	Relays   int       `json:"relays"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Seconds  float64   `json:"seconds,omitempty"`
	Done     bool      `json:"done"`
}

// RelayReport is one relay's outcome.
type RelayReport struct {
	Name   string `json:"name"`
	Site   string `json:"site,omitempty"`
	Wave   string `json:"wave"`
	Result string `json:"result"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
	Note   string `json:"note,omitempty"`
}

func report(st *rollout.State) *RolloutReport {
	r := &RolloutReport{Plan: st.Plan, Kind: st.Kind, Phase: st.Phase, Stop: st.Stop, Started: st.Started, Updated: st.Updated, Counts: st.Counts(), Left: st.Left}
	for _, w := range st.Waves {
		wr := WaveReport{Name: w.Name, Relays: len(w.Relays), Started: w.Started, Finished: w.Finished, Done: w.Done}
		if !w.Finished.IsZero() {
			wr.Seconds = w.Finished.Sub(w.Started).Seconds()
		}
		r.Waves = append(r.Waves, wr)
	}
	for _, x := range st.Relays {
		wave := ""
		if x.Wave >= 0 && x.Wave < len(st.Waves) {
			wave = st.Waves[x.Wave].Name
		}
		r.Relays = append(r.Relays, RelayReport{Name: x.Name, Site: x.Site, Wave: wave, Result: x.Result, From: x.From, To: x.To, Note: x.Note})
	}
	return r
}

// rolloutReport prints the report; its exit code is 0 for a roll-out
// that neither stopped nor was aborted, with no relay failed.
func (e *env) rolloutReport(st *rollout.State) int {
	r := report(st)
	err := e.out(r, func(t *tabwriter.Writer) {
		fmt.Fprintln(t, "WAVE\tNAME\tSITE\tRESULT\tFROM\tTO\tNOTE")
		for _, x := range r.Relays {
			row(t, "%s\t%s\t%s\t%s\t%s\t%s\t%.120s\n", x.Wave, x.Name, dash(x.Site), x.Result, dash(x.From), dash(x.To), x.Note)
		}
		t.Flush()
		for _, w := range r.Waves {
			took := "-"
			if w.Done {
				took = (time.Duration(w.Seconds * 1e9)).Round(time.Millisecond).String()
			}
			row(t, "wave %s\t%d relay(s)\t%s\n", w.Name, w.Relays, took)
		}
		var counts []string
		for _, k := range []string{rollout.OK, rollout.Skipped, rollout.WouldApply, rollout.Failed, rollout.RolledBack, rollout.FellBack, rollout.Unreachable, rollout.Applying, rollout.Applied, rollout.Pending} {
			if n := r.Counts[k]; n > 0 {
				counts = append(counts, fmt.Sprintf("%d %s", n, k))
			}
		}
		row(t, "%s: %s\n", r.Phase, strings.Join(counts, ", "))
		if r.Stop != "" {
			row(t, "why: %s\n", r.Stop)
		}
	})
	if err != nil {
		return e.fail(err)
	}
	// Running with nothing failed: a retry-failed that passed, with
	// waves left for resume.
	if (st.Phase == rollout.PhaseDone || st.Phase == rollout.PhaseRunning) && len(st.Failed()) == 0 {
		return ExitOK
	}
	return ExitFailed
}
