package relay

import (
	"context"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Doctor checks the configured upstream end to end through doctor.Run (DNS
// records, connection, TLS, token, login, and a test message when testTo is
// set); each failing step says what to change. An upstream that cannot be
// built (a secret not provisioned yet: a new box's normal state) does not
// stop the checks that need no upstream: its steps say why they could not
// run. The error is kept for callers; it is always nil now.
func Doctor(ctx context.Context, cfg *config.Config, dir string, d Deps, testTo string) ([]upstream.Step, error) {
	d.defaults()
	dd := doctor.Deps{Resolver: d.Resolver, TestTo: testTo, Clock: d.Clock}
	up, _, err := newUpstream(cfg, dir, d)
	if err != nil {
		dd.UpstreamErr = err
	} else {
		defer up.Close()
		dd.Upstream = up
	}
	return doctor.Run(ctx, cfg, dd), nil
}
