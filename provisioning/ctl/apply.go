package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/rollout"
	"github.com/siterelay/siterelay/relay/durable"
)

// Configuration as code across sites: a directory holds one configuration
// per site (DIR/SITE.json, the site as the relay's status names it).
// apply shows each relay's difference against what it runs and rolls the
// directory out through the roll-out engine (waves, gates, stop rules,
// rollback, resume); pull writes what the fleet runs now.

// applyPlan is the plan apply writes into the directory (hidden, so it is
// never taken for a site); its state is beside it.
const applyPlan = ".apply.json"

// siteFiles lists DIR's site files: SITE.json, no dot files.
func siteFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var sites []string
	for _, d := range ents {
		site, ok := strings.CutSuffix(d.Name(), ".json")
		if !ok || d.IsDir() || !rollout.SiteName(site) {
			continue
		}
		sites = append(sites, site)
	}
	return sites, nil
}

// ApplyDiff is one relay's difference against its site file, as the
// relay itself judges it (a dry run of the put: validated, nothing
// changed).
type ApplyDiff struct {
	Site    string             `json:"site"`
	Name    string             `json:"name"`
	Version int                `json:"version,omitempty"`
	Same    bool               `json:"same"`
	Changes []api.ConfigChange `json:"changes,omitempty"`
	Error   string             `json:"error,omitempty"`
}

func (e *env) apply(ctx context.Context, args []string) int {
	fs := sub("apply", e)
	dry := fs.Bool("dry-run", false, "only show each relay's difference")
	names := fs.String("names", "", "only relays whose tailnet name matches this pattern")
	waves := fs.String("waves", rollout.DefaultWaves, "cumulative wave sizes")
	soak := fs.Duration("soak", time.Minute, "how long each wave runs before its gates are judged")
	back := fs.Duration("back-within", time.Minute, "how long a changed relay has to answer again")
	maxFailed := fs.Float64("max-failed", rollout.DefaultMaxFailed, "stop when more than this percentage of a wave failed or did not answer")
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("relayctl apply DIR [-dry-run] [-names PATTERN] [-waves W] [-soak D] [-back-within D] [-max-failed P]"))
	}
	dir := pos[0]
	sites, err := siteFiles(dir)
	if err != nil {
		return e.fail(usageErr("%v", err))
	}
	if len(sites) == 0 {
		return e.fail(usageErr("%s holds no SITE.json", dir))
	}
	p := rollout.Plan{Select: rollout.Select{Tag: e.relayTag, Sites: sites, Names: *names}, Config: &rollout.ConfigSpec{Dir: "."},
		Waves: *waves, Soak: rollout.Duration(*soak), Gates: rollout.Gates{BackWithin: rollout.Duration(*back)},
		Stop: rollout.StopRules{MaxFailedPercent: maxFailed}}
	if err := p.Check(); err != nil {
		return e.fail(usageErr("%v", err))
	}
	cands, relays, err := e.rolloutFleet(ctx, e.relayTag, nil)
	if err != nil {
		return e.fail(err)
	}
	defer closeIdle(relays)
	in, _ := p.Selected(cands)
	// Each relay's difference, from the relay (it validates the file too).
	diffs := make([]ApplyDiff, len(in))
	var wg sync.WaitGroup
	for i, c := range in {
		wg.Add(1)
		go func() {
			defer wg.Done()
			diffs[i] = e.applyDiff(ctx, dir, c, relays[c.Name])
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, d := range diffs {
		seen[d.Site] = true
	}
	var orphans []string
	for _, s := range sites {
		if !seen[s] {
			orphans = append(orphans, s)
		}
	}
	if e.json && *dry {
		return e.fail(e.out(map[string]any{"relays": diffs, "sites_without_relay": orphans}, nil))
	}
	w := e.Stderr
	if *dry {
		w = e.Stdout
	}
	t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	bad := 0
	for _, d := range diffs {
		switch {
		case d.Error != "":
			bad++
			row(t, "%s (%s): %s\n", d.Site, d.Name, d.Error)
		case d.Same:
			row(t, "%s (%s): runs %s.json already (version %d)\n", d.Site, d.Name, d.Site, d.Version)
		default:
			row(t, "%s (%s): version %d, %d change(s)\n", d.Site, d.Name, d.Version, len(d.Changes))
			for _, c := range d.Changes {
				old, nw := string(c.Old), string(c.New)
				if old == "" {
					old = "(none)"
				}
				if nw == "" {
					nw = "(removed)"
				}
				row(t, "  %s\t%s\t->\t%s\n", c.Key, old, nw)
			}
		}
	}
	for _, s := range orphans {
		row(t, "%s: no relay with this site carries %s (a new box not joined yet?)\n", s, e.relayTag)
	}
	t.Flush()
	if *dry {
		if bad > 0 {
			return ExitFailed
		}
		return ExitOK
	}
	planFile := filepath.Join(dir, applyPlan)
	if st, err := rollout.LoadState(planFile); err == nil && st.Phase == rollout.PhaseRunning && !rollout.Aborted(planFile) {
		return e.fail(fmt.Errorf("an apply of %s is under way (or was killed): relayctl rollout resume %s continues it, relayctl rollout abort %s ends it", dir, planFile, planFile))
	}
	// A finished apply's state gives way: an apply is always the
	// directory as it is now, and relays already at it are skipped.
	os.Remove(rollout.StatePath(planFile))
	os.Remove(rollout.AbortPath(planFile))
	b, _ := json.MarshalIndent(p, "", "  ")
	if err := durable.WriteFile(planFile, append(b, '\n'), 0o600); err != nil {
		return e.fail(err)
	}
	return e.runPlan(ctx, "run", planFile, false)
}

func (e *env) applyDiff(ctx context.Context, dir string, c rollout.Candidate, r rollout.Relay) ApplyDiff {
	d := ApplyDiff{Site: c.Site, Name: c.Name}
	if d.Site == "" {
		d.Site = c.Name
	}
	if r == nil {
		d.Error = "not reachable"
		return d
	}
	want, err := rollout.ReadJSON(filepath.Join(dir, d.Site+".json"))
	if err != nil {
		d.Error = err.Error()
		return d
	}
	doc, err := r.Config(ctx)
	if err != nil {
		d.Error = err.Error()
		return d
	}
	d.Version = doc.Version
	if rollout.SameJSON(want, doc.Config) {
		d.Same = true
		return d
	}
	res, err := r.PutConfig(ctx, want, doc.Version, true)
	if err != nil {
		d.Error = "the relay refuses " + d.Site + ".json: " + err.Error()
		return d
	}
	d.Changes = res.Changes
	return d
}

// PullRow is one relay in relayctl pull.
type PullRow struct {
	Site    string `json:"site"`
	Name    string `json:"name"`
	Version int    `json:"version,omitempty"`
	File    string `json:"file,omitempty"`
	// Result: "written", "unchanged", or why not.
	Result string `json:"result"`
}

func (e *env) pull(ctx context.Context, args []string) int {
	fs := sub("pull", e)
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return e.fail(usageErr("relayctl pull DIR"))
	}
	dir := pos[0]
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return e.fail(err)
	}
	cands, relays, err := e.rolloutFleet(ctx, e.relayTag, nil)
	if err != nil {
		return e.fail(err)
	}
	defer closeIdle(relays)
	rows := make([]*PullRow, len(cands))
	docs := make([]*api.ConfigDoc, len(cands))
	var wg sync.WaitGroup
	for i, c := range cands {
		rows[i] = &PullRow{Site: c.Site, Name: c.Name}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := relays[c.Name].Config(ctx)
			if err != nil {
				rows[i].Result = err.Error()
				var ae *api.Error
				if !errors.As(err, &ae) {
					rows[i].Result = "unreachable"
				}
				return
			}
			docs[i], rows[i].Version = d, d.Version
		}()
	}
	wg.Wait()
	bySite := map[string]int{}
	for i, r := range rows {
		if docs[i] != nil {
			bySite[r.Site]++
		}
	}
	failed := 0
	for i, r := range rows {
		if docs[i] == nil {
			failed++
			continue
		}
		switch {
		case !rollout.SiteName(r.Site):
			r.Result = fmt.Sprintf("site %q cannot be a file name", r.Site)
			failed++
			continue
		case bySite[r.Site] > 1:
			r.Result = fmt.Sprintf("%d relays say they are site %s: not written (remove the old node from the tailnet)", bySite[r.Site], r.Site)
			failed++
			continue
		}
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, docs[i].Config, "", "  "); err != nil {
			r.Result = err.Error()
			failed++
			continue
		}
		pretty.WriteByte('\n')
		r.File = filepath.Join(dir, r.Site+".json")
		if old, err := os.ReadFile(r.File); err == nil && rollout.SameJSON(old, pretty.Bytes()) {
			r.Result = "unchanged"
			continue
		}
		if err := durable.WriteFile(r.File, pretty.Bytes(), 0o600); err != nil {
			return e.fail(err)
		}
		r.Result = "written"
	}
	slices.SortFunc(rows, func(a, b *PullRow) int { return strings.Compare(a.Site+a.Name, b.Site+b.Name) })
	err = e.out(rows, func(t *tabwriter.Writer) {
		fmt.Fprintln(t, "SITE\tNAME\tVERSION\tFILE\tRESULT")
		for _, r := range rows {
			row(t, "%s\t%s\t%d\t%s\t%s\n", dash(r.Site), r.Name, r.Version, dash(r.File), r.Result)
		}
	})
	if err != nil {
		return e.fail(err)
	}
	if failed > 0 {
		row(e.Stderr, "relayctl: %d of %d relays not pulled\n", failed, len(rows))
		return ExitUnreachable
	}
	return ExitOK
}
