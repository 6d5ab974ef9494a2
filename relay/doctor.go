package relay

import (
	"context"
	"errors"
	"sort"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Doctor checks the configured upstream end to end through doctor.Run (DNS
// records, connection, TLS, token, login, and a test message when testTo is
// set); each failing step says what to change. An upstream that cannot be
// built (a secret not provisioned yet: a new box's normal state) does not
// stop the checks that need no upstream: its steps say why they could not
// run. With forward.syslog, the collector is checked too (last). The error
// is kept for callers; it is always nil now.
func Doctor(ctx context.Context, cfg *config.Config, dir string, d Deps, testTo string) ([]upstream.Step, error) {
	steps, err := doctorUpstreams(ctx, cfg, dir, d, testTo)
	return append(steps, doctorForward(ctx, cfg, dir)...), err
}

func doctorUpstreams(ctx context.Context, cfg *config.Config, dir string, d Deps, testTo string) ([]upstream.Step, error) {
	d.defaults()
	dd := doctor.Deps{Resolver: d.Resolver, TestTo: testTo, Clock: d.Clock}
	if len(cfg.Routes) > 0 {
		return doctorRoutes(ctx, cfg, dir, d, testTo)
	}
	var waiting []Waiting
	d.waiting = func(ws []Waiting) { waiting = append(waiting, ws...) }
	up, _, err := newUpstream(cfg, dir, d, nil)
	switch {
	case err != nil:
		dd.UpstreamErr = err
	case len(waiting) > 0:
		up.Close()
		dd.UpstreamErr = errors.New(why(waiting))
	default:
		defer up.Close()
		dd.Upstream = up
	}
	// What the upstream waits for first, each with the command that
	// provides it: the one thing to do before any other step can pass.
	var steps []upstream.Step
	for _, w := range waiting {
		what := "secret " + w.Secret
		if w.Secret == "" {
			what = "file " + w.File
		}
		steps = append(steps, upstream.Step{Name: what + " (" + w.Key + ")", Detail: w.Reason + ": " + w.Detail + " — " + w.Fix})
	}
	steps = append(steps, secretExpirySteps(cfg, d)...)
	return append(steps, doctor.Run(ctx, cfg, dd)...), nil
}

// doctorRoutes checks each named upstream as if it were the only one, its
// steps named after it; with testTo each upstream sends its own test
// message, so that every path (failover ones too) is proven.
func doctorRoutes(ctx context.Context, cfg *config.Config, dir string, d Deps, testTo string) ([]upstream.Step, error) {
	names := make([]string, 0, len(cfg.Upstreams))
	for n := range cfg.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	var steps []upstream.Step
	for _, n := range names {
		c := *cfg
		c.Upstream, c.Upstreams, c.Routes = cfg.Upstreams[n], nil, nil
		ss, _ := doctorUpstreams(ctx, &c, dir, d, testTo)
		for _, s := range ss {
			s.Name = n + ": " + s.Name
			steps = append(steps, s)
		}
	}
	return steps, nil
}
