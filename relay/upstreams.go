package relay

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/capture"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/pace"
	"github.com/siterelay/siterelay/relay/upstream/smarthost"
)

// newUpstream builds the configured upstream, of any kind, and a name for
// traces. This file is the one place that turns upstream configuration
// into an upstream; doctor.go and relay.go only call it.
func newUpstream(cfg *config.Config, dir string, d Deps) (upstream.Upstream, string, error) {
	u := cfg.Upstream
	switch u.Kind {
	case config.KindCapture:
		out := filepath.Join(dir, u.Capture.Directory)
		up, err := capture.New(out)
		return up, "capture " + out, err
	case config.KindSMTP:
		s := u.SMTP
		opts := smarthost.Options{
			Addr: s.Address, TLS: s.TLS, MinTLS: config.TLSVersions[s.MinTLS], ServerName: s.ServerName,
			LocalName: cfg.Hostname, Concurrency: s.Concurrency, MaxRecipients: s.MaxRecipients,
			MaxSize: s.MaxMessageBytes, MessagesPerMinute: s.MessagesPerMinute, Clock: d.Clock, Logger: d.Logger,
		}
		if s.CAFile != "" {
			pem, err := os.ReadFile(layout.Dir(dir).Resolve(s.CAFile))
			if err != nil {
				return nil, "", fmt.Errorf("upstream.smtp.ca_file: %w", err)
			}
			opts.RootCAs = x509.NewCertPool()
			if !opts.RootCAs.AppendCertsFromPEM(pem) {
				return nil, "", fmt.Errorf("upstream.smtp.ca_file: no PEM certificate in %s", s.CAFile)
			}
		}
		if s.Auth != "" {
			pw, err := d.Secret(s.PasswordSecret)
			if err != nil {
				return nil, "", fmt.Errorf("upstream.smtp.password_secret: %w", err)
			}
			opts.Auth = smarthost.Auth{Mechanism: s.Auth, Username: s.Username, Password: string(pw)}
		}
		up, err := smarthost.New(opts)
		if err != nil {
			return nil, "", fmt.Errorf("upstream.smtp: %w", err)
		}
		if s.MessagesPerMinute > 0 {
			// Pace below the smarthost's limit rather than be throttled.
			return pace.Wrap(up, pace.Options{MessagesPerMinute: s.MessagesPerMinute, Clock: d.Clock, Logger: d.Logger}), "smtp " + s.Address, nil
		}
		return up, "smtp " + s.Address, nil
	}
	if !u.Kind.Microsoft() {
		return nil, "", fmt.Errorf("upstream.kind %q: not a kind this relay knows", u.Kind)
	}
	// The Microsoft 365 kinds, already paced to Microsoft's limits.
	up, err := m365.New(u.Kind, u.M365, m365.Deps{
		Secret: d.Secret, Clock: d.Clock, Logger: d.Logger, Resolver: d.Resolver, Dir: dir, LocalName: cfg.Hostname,
		TokenRenewed: d.tokenRenewed, ClientCertificate: d.clientCertificate,
	})
	if err != nil {
		return nil, "", fmt.Errorf("upstream (%s): %w", u.Kind, err)
	}
	return up, string(u.Kind) + " " + u.M365.Tenant, nil
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

// upstreamConnections is the metrics' siterelay_upstream_connections: open
// connections to the upstream, 0 for those that hold none (capture, Graph).
func (r *Relay) upstreamConnections() float64 { return float64(r.up.Connections()) }
