package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// configSource makes each relay's desired configuration from the plan,
// reading the plan's files once.
type configSource struct {
	once  sync.Once
	file  json.RawMessage
	patch json.RawMessage
	err   error
}

// desired is the configuration relay r should run, given the one it runs
// (cur); skip, when set, says why it gets none.
func (e *Engine) desired(r *RelayState, cur json.RawMessage) (want json.RawMessage, skip string, err error) {
	c := e.o.Plan.Config
	e.cfg.once.Do(func() {
		switch {
		case c.File != "":
			e.cfg.file, e.cfg.err = ReadJSON(c.File)
		case c.MergePatch != "":
			e.cfg.patch, e.cfg.err = ReadJSON(c.MergePatch)
		}
	})
	if e.cfg.err != nil {
		return nil, "", e.cfg.err
	}
	switch {
	case c.File != "":
		return e.cfg.file, "", nil
	case c.MergePatch != "":
		out, err := MergePatch(cur, e.cfg.patch)
		return out, "", err
	}
	site := r.Site
	if site == "" {
		site = r.Name
	}
	if !SiteName(site) {
		return nil, fmt.Sprintf("site %q cannot be a file name", site), nil
	}
	doc, err := ReadJSON(filepath.Join(c.Dir, site+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("no %s.json in %s", site, c.Dir), nil
	}
	return doc, "", err
}

// SiteName says whether a site can name a file of a configuration
// directory (relayctl apply, pull): no path separators, no dot files.
func SiteName(s string) bool {
	return s != "" && !strings.ContainsAny(s, `/\`) && !strings.HasPrefix(s, ".") && s == filepath.Clean(s)
}

// SameJSON says whether two JSON documents hold the same values (the box
// stores its configuration indented; a file may be written otherwise).
func SameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}

// change makes the plan's change on one relay, unless it has it already.
// Every outcome is written to the state before the next step.
func (e *Engine) change(ctx context.Context, w *WaveState, r *RelayState) error {
	if err := e.checkAbort(); err != nil {
		return err
	}
	rl := e.reach(r.Name)
	if rl == nil {
		return e.set(w, r, "change", Unreachable, "not on the tailnet with "+e.o.Plan.tag()+" now")
	}
	start := e.o.Clock.Now()
	st, err := rl.Status(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return e.set(w, r, "change", Unreachable, "before the change: "+cut(err))
	}
	resumed := r.Result == Applying
	e.mu.Lock()
	if r.Site == "" {
		r.Site = st.Site
	}
	if !resumed || r.Before == nil {
		r.Before = &Before{Now: st.Now, Started: st.Started, Health: st.Health, Version: st.Version, Queue: st.Queue.Messages, Refusals: refusals(st), DeviceRefusals: st.Refused, Delivered: st.Upstream.LastDelivered}
	}
	e.mu.Unlock()
	if e.o.Plan.Firmware != nil {
		return e.changeFirmware(ctx, w, r, rl, st, resumed, start)
	}
	doc, err := rl.Config(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return e.set(w, r, "change", failedOrUnreachable(err), "reading its configuration: "+cut(err))
	}
	want, skip, err := e.desired(r, doc.Config)
	if err != nil {
		return e.set(w, r, "change", Failed, "making its configuration: "+cut(err))
	}
	if skip != "" {
		return e.set(w, r, "change", Skipped, skip)
	}
	if SameJSON(want, doc.Config) {
		if resumed && r.PrevConfig != nil && doc.Version != r.PrevVersion {
			// Killed after the put: it went through.
			e.mu.Lock()
			r.NewVersion, r.To, r.AppliedAt = doc.Version, fmt.Sprintf("v%d", doc.Version), e.o.Clock.Now().UTC()
			e.mu.Unlock()
			return e.set(w, r, "change", Applied, fmt.Sprintf("found in force on resume (version %d)", doc.Version))
		}
		e.mu.Lock()
		r.From, r.To = fmt.Sprintf("v%d", doc.Version), fmt.Sprintf("v%d", doc.Version)
		e.mu.Unlock()
		return e.set(w, r, "change", Skipped, fmt.Sprintf("already at this configuration (version %d)", doc.Version))
	}
	if e.o.DryRun {
		res, err := rl.PutConfig(ctx, want, doc.Version, true)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return e.set(w, r, "change", Failed, "the relay refuses it: "+cut(err))
		}
		e.mu.Lock()
		r.From, r.To, r.Changes = fmt.Sprintf("v%d", doc.Version), "new version", len(res.Changes)
		e.mu.Unlock()
		return e.set(w, r, "change", WouldApply, changeList(res.Changes))
	}
	e.mu.Lock()
	r.PrevConfig, r.PrevVersion, r.From = doc.Config, doc.Version, fmt.Sprintf("v%d", doc.Version)
	e.mu.Unlock()
	if err := e.set(w, r, "change", Applying, ""); err != nil {
		return err
	}
	res, err := rl.PutConfig(ctx, want, doc.Version, false)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeStale {
		// Another version came in force since the read: if it is this
		// very configuration (a put of a killed run that the relay
		// finished late), the change is made.
		if now, rerr := rl.Config(ctx); rerr == nil && SameJSON(want, now.Config) {
			res, err = &api.ConfigResult{Version: now.Version}, nil
		}
	}
	if err != nil {
		return e.set(w, r, "change", failedOrUnreachable(err), "the relay refused the configuration: "+cut(err))
	}
	e.mu.Lock()
	r.NewVersion, r.To, r.Changes, r.AppliedAt = res.Version, fmt.Sprintf("v%d", res.Version), len(res.Changes), e.o.Clock.Now().UTC()
	r.Took = Duration(e.o.Clock.Now().Sub(start))
	e.mu.Unlock()
	return e.set(w, r, "change", Applied, changeList(res.Changes))
}

func (e *Engine) changeFirmware(ctx context.Context, w *WaveState, r *RelayState, rl Relay, st *api.Status, resumed bool, start time.Time) error {
	want := e.o.FirmwareVersion
	if st.Version == want {
		if resumed {
			e.mu.Lock()
			r.AppliedAt = e.o.Clock.Now().UTC()
			e.mu.Unlock()
			return e.set(w, r, "change", Applied, "found running "+want+" on resume")
		}
		e.mu.Lock()
		r.From, r.To = st.Version, want
		e.mu.Unlock()
		return e.set(w, r, "change", Skipped, "already runs "+want)
	}
	e.mu.Lock()
	r.From, r.To = st.Version, want
	e.mu.Unlock()
	if e.o.DryRun {
		return e.set(w, r, "change", WouldApply, fmt.Sprintf("would send %s (test boot, reboot)", want))
	}
	if err := e.set(w, r, "change", Applying, ""); err != nil {
		return err
	}
	res, err := rl.Update(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return e.set(w, r, "change", failedOrUnreachable(err), "the update: "+cut(err))
	}
	e.mu.Lock()
	r.AppliedAt = e.o.Clock.Now().UTC()
	r.Took = Duration(e.o.Clock.Now().Sub(start))
	e.mu.Unlock()
	note := fmt.Sprintf("%s written (%s, signed by %s)", res.Version, res.Mode, res.KeyID)
	if res.Rebooting {
		note += ", rebooting"
	}
	return e.set(w, r, "change", Applied, note)
}

// failedOrUnreachable: the relay answered with an error, or did not
// answer.
func failedOrUnreachable(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return Failed
	}
	return Unreachable
}

func changeList(cs []api.ConfigChange) string {
	keys := make([]string, 0, len(cs))
	for _, c := range cs {
		keys = append(keys, c.Key)
	}
	s := fmt.Sprintf("%d key(s)", len(cs))
	if len(keys) > 0 {
		s += ": " + strings.Join(keys, ", ")
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// health ranks the box's health words (api.Status.Health).
func health(h string) int {
	switch h {
	case "ok":
		return 0
	case "warning":
		return 1
	}
	return 2
}

// judge waits for a changed relay to answer (within Gates.BackWithin of
// its change), judges the gates, and rolls a configuration back when one
// fails.
func (e *Engine) judge(ctx context.Context, w *WaveState, r *RelayState) error {
	if err := e.checkAbort(); err != nil {
		return err
	}
	rl := e.reach(r.Name)
	p := e.o.Plan
	deadline := r.AppliedAt.Add(p.backWithin())
	var st *api.Status
	var lastErr error
	fellBack := false
	for {
		var got *api.Status
		var err error
		if rl == nil {
			err = errors.New("not on the tailnet with " + p.tag() + " now")
		} else {
			got, err = rl.Status(ctx)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			st, lastErr = got, nil
			if p.Firmware == nil || got.Version == e.o.FirmwareVersion {
				break
			}
			if r.Before != nil && !got.Started.Equal(r.Before.Started) && got.Version == r.Before.Version {
				fellBack = true
				break
			}
		} else {
			lastErr = err
		}
		if !e.o.Clock.Now().Before(deadline) {
			break
		}
		if err := e.o.Clock.Sleep(ctx, min(e.o.PollEvery, max(deadline.Sub(e.o.Clock.Now()), time.Millisecond))); err != nil {
			return err
		}
	}
	back := p.backWithin()
	switch {
	case st == nil:
		note := fmt.Sprintf("not back within %v: %s", back, cut(lastErr))
		if p.Firmware != nil {
			note += "; its test boot is not committed until it is relaying and on the tailnet, so a power cycle boots " + r.From + " again"
		} else {
			note += "; not rolled back (it does not answer): relayctl config rollback " + fmt.Sprint(r.PrevVersion) + " once it does"
		}
		return e.set(w, r, "judge", Unreachable, note)
	case fellBack:
		return e.set(w, r, "judge", FellBack, fmt.Sprintf("came back running %s: the test boot of %s did not commit and gokrazy booted the old root", st.Version, r.To))
	case p.Firmware != nil && st.Version != e.o.FirmwareVersion:
		return e.set(w, r, "judge", Failed, fmt.Sprintf("still runs %s %v after the update: it did not reboot into %s", st.Version, back, r.To))
	}
	var why []string
	b := r.Before
	if p.gate(GateHealthy) && health(st.Health) > health(b.Health) {
		n := st.Health
		if len(st.HealthNotes) > 0 {
			n += " (" + strings.Join(st.HealthNotes, "; ") + ")"
		}
		why = append(why, fmt.Sprintf("health %s, was %s", n, b.Health))
	}
	if p.gate(GateQueue) && st.Queue.Messages > b.Queue+p.queueSlack() {
		why = append(why, fmt.Sprintf("queue grew from %d to %d messages", b.Queue, st.Queue.Messages))
	}
	if p.gate(GateDelivered) && (b.Queue > 0 || st.Queue.Messages > 0) && !st.Upstream.LastDelivered.After(b.Now) {
		why = append(why, fmt.Sprintf("%d message(s) wait and none was delivered since the change", st.Queue.Messages))
	}
	if p.gate(GateRefusals) {
		// The counts are since relayd started: after a restart (a
		// firmware update) every one is new.
		restarted := !st.Started.Equal(b.Started)
		if n := grew(refusals(st), b.Refusals, restarted); n > 0 {
			why = append(why, fmt.Sprintf("%d new bounced or failed message(s)", n))
		}
		if n := grew(st.Refused, b.DeviceRefusals, restarted); n > 0 {
			why = append(why, fmt.Sprintf("%d new refusal(s) of devices' commands or messages (siterelay_refused_total)", n))
		}
	}
	if len(why) == 0 {
		return e.set(w, r, "judge", OK, "gates passed")
	}
	gate := "gate failed: " + strings.Join(why, "; ")
	if p.Firmware != nil {
		return e.set(w, r, "judge", Failed, gate+"; the new firmware is committed (it was relaying and on the tailnet): send the previous image with relayctl update -allow-downgrade")
	}
	res, err := rl.PutConfig(ctx, r.PrevConfig, r.NewVersion, false)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return e.set(w, r, "judge", Failed, gate+"; rolling back failed: "+cut(err))
	}
	e.mu.Lock()
	r.To = fmt.Sprintf("v%d", res.Version)
	e.mu.Unlock()
	return e.set(w, r, "judge", RolledBack, fmt.Sprintf("%s; version %d put back as version %d", gate, r.PrevVersion, res.Version))
}
