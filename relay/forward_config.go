package relay

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/layout"
)

// forwardTarget is forward.syslog in cfg as the forwarder takes it (nil
// without); a CA file that cannot be read fails the configuration, naming
// the key.
func forwardTarget(cfg *config.Config, hostname string, dir layout.Dir) (*forward.Target, error) {
	s := cfg.Forward.Syslog
	if s == nil {
		return nil, nil
	}
	t := &forward.Target{
		Address: s.Address, Facility: config.SyslogFacilities[s.Facility], AppName: s.AppName,
		Hostname: hostname, Streams: s.Streams, MaxBytes: s.BufferBytes,
	}
	if s.TLS {
		host, _, _ := net.SplitHostPort(s.Address)
		t.TLS = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if s.ServerName != "" {
			t.TLS.ServerName = s.ServerName
		}
		if s.CAFile != "" {
			pool, err := certs.Roots(dir.Resolve(s.CAFile), nil)
			if err != nil {
				return nil, fmt.Errorf("forward.syslog.ca_file: %w", err)
			}
			t.TLS.RootCAs = pool
		}
	}
	return t, nil
}

// forwardStatus is the syslog forwarding's state, nil when it is off.
func (r *Relay) forwardStatus() *forward.Stats {
	if r.gen.Load().forward == nil {
		return nil
	}
	s := r.fwd.Stats()
	return &s
}

// Forwarder is the relay's syslog forwarding, for the streams that come
// from outside the relay: the appliance hands it the audit log's entries
// (forward.Forwarder.SendAudit). It forwards only the streams
// forward.syslog names, and nothing while that is unset.
func (r *Relay) Forwarder() *forward.Forwarder { return r.fwd }
