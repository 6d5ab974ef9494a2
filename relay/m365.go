package relay

import (
	"context"
	"fmt"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// newM365 builds the Microsoft 365 upstream kinds (already paced to
// Microsoft's limits).
func newM365(cfg *config.Config, dir string, d Deps) (upstream.Upstream, string, error) {
	up, err := m365.New(cfg.Upstream.Kind, cfg.Upstream.M365, m365.Deps{
		Secret: d.Secret, Clock: d.Clock, Logger: d.Logger, Resolver: d.Resolver, Dir: dir, LocalName: cfg.Hostname,
	})
	if err != nil {
		return nil, "", fmt.Errorf("upstream (%s): %w", cfg.Upstream.Kind, err)
	}
	return up, string(cfg.Upstream.Kind) + " " + cfg.Upstream.M365.Tenant, nil
}

// explain gives the scheduler a plain-language hint for upstream replies:
// Microsoft's table for the Microsoft kinds, and for a smarthost too (many
// sites relay through one to Microsoft 365, and the codes are the same).
func explain(kind config.Kind) func(error) string {
	if kind == config.KindCapture {
		return nil
	}
	return m365.Explain
}

// Doctor checks the configured upstream end to end (DNS records for the
// Microsoft kinds, connection, TLS, login) and optionally sends a test
// message; each failing step says what to change.
func Doctor(ctx context.Context, cfg *config.Config, dir string, d Deps, testTo string) ([]upstream.Step, error) {
	d.defaults()
	up, _, err := newUpstream(cfg, dir, d)
	if err != nil {
		return nil, err
	}
	defer up.Close()
	if cfg.Upstream.Kind.Microsoft() {
		return doctor.Run(ctx, cfg, doctor.Deps{Resolver: d.Resolver, Upstream: up, TestTo: testTo, Now: d.Clock}), nil
	}
	// A smarthost: no tenant DNS to check, only the path to it.
	p, ok := up.(upstream.Prober)
	if !ok {
		return []upstream.Step{{Name: "upstream", OK: true, Detail: "the " + string(cfg.Upstream.Kind) + " upstream has nothing to check"}}, nil
	}
	steps, err := p.Probe(ctx)
	if err != nil && (len(steps) == 0 || steps[len(steps)-1].OK) {
		steps = append(steps, upstream.Step{Name: "upstream", Detail: err.Error()})
	}
	return steps, nil
}
