package metrics

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo is siterelay_build_info: 1, with the version and VCS revision
// the binary was built from (what the fleet runs, on one panel).
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "unknown", "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v := bi.Main.Version; v != "" {
			version = v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "siterelay_build_info",
		Help:        "Always 1; the labels say which build of siterelay runs.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	g.Set(1)
	return g
}

// The credentials whose expiry is exported.
const (
	credToken  = "token"              // the OAuth access token
	credClient = "client_certificate" // the OAuth assertion's or the connector's certificate
	credTLS    = "tls_certificate"    // the listeners' STARTTLS certificate
)

var credDesc = prometheus.NewDesc("siterelay_credential_expires_in_seconds",
	"Seconds until a credential expires (credential: token, client_certificate, tls_certificate); negative once it has. Left out for credentials the relay does not use.",
	[]string{"credential"}, nil)

// credentials is siterelay_credential_expires_in_seconds, read at scrape
// time against the clock.
type credentials struct {
	clock func() time.Time
	tls   func() (time.Time, bool)

	mu            sync.Mutex
	token, client time.Time
}

func (c *credentials) set(which string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch which {
	case credToken:
		c.token = t
	case credClient:
		c.client = t
	}
}

func (c *credentials) Describe(ch chan<- *prometheus.Desc) { ch <- credDesc }

func (c *credentials) Collect(ch chan<- prometheus.Metric) {
	now := c.clock()
	c.mu.Lock()
	exp := map[string]time.Time{credToken: c.token, credClient: c.client}
	c.mu.Unlock()
	if c.tls != nil {
		if t, ok := c.tls(); ok {
			exp[credTLS] = t
		}
	}
	for _, which := range []string{credToken, credClient, credTLS} {
		if t := exp[which]; !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(credDesc, prometheus.GaugeValue, t.Sub(now).Seconds(), which)
		}
	}
}

var (
	devMessagesDesc = prometheus.NewDesc("siterelay_device_queue_messages",
		"Messages waiting in the spool by device (devices[].name, or unknown).", []string{"device"}, nil)
	devOldestDesc = prometheus.NewDesc("siterelay_device_queue_oldest_message_age_seconds",
		"Age of the oldest message waiting in the spool by device (devices[].name, or unknown).", []string{"device"}, nil)
)

// deviceQueues is the spool by device, counted at scrape time.
type deviceQueues struct {
	fn    func() []DeviceQueue
	clock func() time.Time
}

func (d *deviceQueues) Describe(ch chan<- *prometheus.Desc) {
	ch <- devMessagesDesc
	ch <- devOldestDesc
}

func (d *deviceQueues) Collect(ch chan<- prometheus.Metric) {
	now := d.clock()
	// One series a label, whatever the callback gives ("" and Unknown
	// are the same clients).
	by := map[string]*DeviceQueue{}
	var order []string
	for _, q := range d.fn() {
		l := DeviceLabel(q.Device)
		have := by[l]
		if have == nil {
			have = &DeviceQueue{Device: l}
			by[l] = have
			order = append(order, l)
		}
		have.Messages += q.Messages
		if !q.Oldest.IsZero() && (have.Oldest.IsZero() || q.Oldest.Before(have.Oldest)) {
			have.Oldest = q.Oldest
		}
	}
	for _, l := range order {
		q := by[l]
		ch <- prometheus.MustNewConstMetric(devMessagesDesc, prometheus.GaugeValue, float64(q.Messages), l)
		age := 0.0
		if !q.Oldest.IsZero() {
			age = max(0, now.Sub(q.Oldest).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(devOldestDesc, prometheus.GaugeValue, age, l)
	}
}
