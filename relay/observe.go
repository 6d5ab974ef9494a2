package relay

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/alerts"
	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/metrics"
)

// registerAuditMetric exports the admin side's audit write failures: the
// relay does not keep the audit log, the appliance tells it where to read
// (SetAuditWriteFailures); 0 until then.
func (r *Relay) registerAuditMetric() {
	r.metrics.Registry().MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "siterelay_audit_write_failures_total",
		Help: "Audit entries that could not be written, and failed rotations, of the admin API's audit log: a change that cannot be audited is refused.",
	}, func() float64 {
		if fn := r.auditFailures.Load(); fn != nil {
			return float64((*fn)())
		}
		return 0
	}))
}

// SetAuditWriteFailures makes siterelay_audit_write_failures_total read fn.
func (r *Relay) SetAuditWriteFailures(fn func() uint64) { r.auditFailures.Store(&fn) }

// observability: what the metrics read of the relay beyond the trace
// (which they subscribe to), kept beside relay.go so that the root only
// wires.

// metricsGauges are the scrape-time readings of r.
func (r *Relay) metricsGauges() metrics.Gauges {
	return metrics.Gauges{
		QueueMessages: func() float64 { return float64(r.spool.Stats().Messages) },
		QueueBytes:    func() float64 { return float64(r.spool.Stats().Bytes) },
		OldestMessageAge: func() time.Duration {
			if o := r.spool.Stats().Oldest; !o.IsZero() {
				return r.d.Clock().Sub(o)
			}
			return 0
		},
		TraceDropped: func() uint64 { return r.trace.Stats().Dropped },
		SpoolFreeBytes: func() float64 {
			n, _ := r.spool.FreeBytes() // 0 when statfs fails: the alert on low space fires
			return float64(n)
		},
		UpstreamConnections:  r.upstreamConnections,
		DeviceQueues:         r.deviceQueues,
		TLSCertificateExpiry: r.tlsCertificateExpiry,
		ClockSynchronised: func() (synced, known bool) {
			if p := r.d.ClockSynchronised(); p != nil {
				return *p, true
			}
			return false, false
		},
		Renewals: r.renewalMetrics,
		Secrets:  r.secretExpiries,
		Clock:    r.d.Clock,
	}
}

// renewalMetrics are the renewers' states for the metrics.
func (r *Relay) renewalMetrics() []metrics.Renewal {
	var out []metrics.Renewal
	for _, st := range r.Renewals() {
		out = append(out, metrics.Renewal{Credential: st.Credential, NotAfter: st.NotAfter, Due: st.Due,
			Failures: st.Failures, Attempts: st.Attempts, Renewals: st.Renewals, OldKeys: len(st.OldKeys)})
	}
	return out
}

// deviceQueues is the spool by device: the device each message was
// recognised as (kept in its spool record), metrics.Unknown for clients
// that are no device.
func (r *Relay) deviceQueues() []metrics.DeviceQueue {
	by := map[string]*metrics.DeviceQueue{}
	for _, m := range r.spool.List() {
		d := metrics.DeviceLabel(m.Envelope.Device)
		q := by[d]
		if q == nil {
			q = &metrics.DeviceQueue{Device: d}
			by[d] = q
		}
		q.Messages++
		if q.Oldest.IsZero() || m.Envelope.Received.Before(q.Oldest) {
			q.Oldest = m.Envelope.Received
		}
	}
	// Every configured device has its series, and so have the unknown
	// clients, at 0 when nothing waits, so that a device's line on a
	// graph does not just stop.
	if by[metrics.Unknown] == nil {
		by[metrics.Unknown] = &metrics.DeviceQueue{Device: metrics.Unknown}
	}
	if g := r.gen.Load(); g != nil {
		for _, d := range g.cfg.Devices {
			if by[d.Name] == nil {
				by[d.Name] = &metrics.DeviceQueue{Device: d.Name}
			}
		}
	}
	out := make([]metrics.DeviceQueue, 0, len(by))
	for _, q := range by {
		out = append(out, *q)
	}
	slices.SortFunc(out, func(a, b metrics.DeviceQueue) int { return strings.Compare(a.Device, b.Device) })
	return out
}

// tlsCertificateExpiry is the listeners' STARTTLS certificate's end, when
// a listener offers STARTTLS and the certificate is there.
func (r *Relay) tlsCertificateExpiry() (time.Time, bool) {
	g := r.gen.Load()
	if g == nil || !slices.ContainsFunc(g.cfg.Listeners, func(l config.Listener) bool { return l.StartTLS != nil && *l.StartTLS }) {
		return time.Time{}, false
	}
	t, err := certs.NotAfter(r.dir.TLS(), r.dir.Resolve(g.cfg.TLS.CertFile))
	return t, err == nil
}

// upstreamKind is the kind of the upstream in force, the metrics' label.
func (r *Relay) upstreamKind() string {
	if g := r.gen.Load(); g != nil {
		return kindLabel(g.cfg)
	}
	return "other"
}

// kindLabel is the upstream kind as a metric label: the kind of the one
// upstream, or "routes" when mail goes several ways (each route's failovers
// have their own counter).
func kindLabel(cfg *config.Config) string {
	if len(cfg.Routes) > 0 {
		return "routes"
	}
	return string(cfg.Upstream.Kind)
}

// observeGeneration tells the metrics of a configuration now in force:
// its upstream kind's series and its routes', its client certificate
// (none clears it), and, for an upstream without OAuth, that there is no
// token to expire.
func (r *Relay) observeGeneration(g *generation) {
	r.metrics.Upstreams(kindLabel(g.cfg))
	r.fo.routes(g.cfg) // every route's failover series, at 0 from the start
	r.metrics.ClientCertificate(g.clientCertNotAfter)
	oauth := g.cfg.Upstream.Kind.OAuth()
	for _, u := range g.cfg.Upstreams {
		oauth = oauth || u.Kind.OAuth()
	}
	if !oauth {
		r.metrics.ForgetToken()
	}
	r.alerts.Update(g.alerts)
	r.waitingM.set(g)
	if err := r.fwd.Configure(g.forward); err != nil {
		r.log.Error("syslog forwarding is off", "err", err)
	}
}

// alertOptions are the webhook's settings in cfg, its URL read from the
// secret store (it carries a token); none without alerts.webhook.
func alertOptions(cfg *config.Config, hostname string, secret func(string) ([]byte, error)) (alerts.Options, error) {
	w := cfg.Alerts.Webhook
	if w == nil {
		return alerts.Options{}, nil
	}
	u, err := secret(w.URLSecret)
	if err != nil {
		return alerts.Options{}, fmt.Errorf("alerts.webhook.url_secret: %w", err)
	}
	return alerts.Options{
		Kind: w.Kind, URL: strings.TrimSpace(string(u)), Conditions: w.Conditions,
		MinInterval: w.MinInterval.D(), MaxPerHour: w.MaxPerHour,
		OldestMessageAge: w.OldestMessageAge.D(), MinFreeBytes: float64(w.MinFreeBytes),
		Relay: hostname,
	}, nil
}
