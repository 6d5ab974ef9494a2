package relay

import (
	"context"
	"fmt"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/upstream"
)

// doctorForward checks forward.syslog's collector: it takes a connection
// (over TLS with the configured CA and name); nil when forwarding is off.
// Nothing is sent: a collector would file a test message as an event.
func doctorForward(ctx context.Context, cfg *config.Config, dir string) []upstream.Step {
	s := cfg.Forward.Syslog
	if s == nil {
		return nil
	}
	name := "syslog collector " + s.Address
	t, err := forwardTarget(cfg, cfg.Hostname, layout.Dir(dir))
	if err != nil {
		return []upstream.Step{{Name: name, Detail: err.Error() + " — put the collector's CA certificate there (PEM), or fix forward.syslog.ca_file"}}
	}
	if err := forward.Probe(ctx, t); err != nil {
		fix := "check that the collector listens there and that this box may reach it (forward.syslog.address)"
		if t.TLS != nil {
			fix += "; for TLS, that its certificate is signed by forward.syslog.ca_file's CA (or a public one) and names " + t.TLS.ServerName + " (forward.syslog.server_name)"
		}
		return []upstream.Step{{Name: name, Detail: err.Error() + " — " + fix + "; meanwhile messages wait in the buffer (forward.syslog.buffer_bytes)"}}
	}
	how := "over TCP"
	if t.TLS != nil {
		how = fmt.Sprintf("over TLS, its certificate verified for %s", t.TLS.ServerName)
	}
	return []upstream.Step{{Name: name, OK: true, Detail: "takes connections " + how}}
}
