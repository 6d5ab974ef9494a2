package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/trace"
)

// deviceMetrics are the per-device series: trace events by device and
// kind, and each device's ready backlog. The device label is a configured
// device's name or "unknown" (never an address), so the series are bounded
// by the configuration. They are registered on the relay's registry beside
// relay/metrics' own, which stay untouched.
type deviceMetrics struct {
	messages *prometheus.CounterVec
	backlog  *prometheus.Desc
	r        *Relay
	// children are messages' series by device and kind: a map lookup
	// instead of WithLabelValues' hashing on every trace event.
	children metrics.ChildCache[deviceKind, prometheus.Counter]
}

func newDeviceMetrics(r *Relay, reg *prometheus.Registry) *deviceMetrics {
	m := &deviceMetrics{
		r: r,
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "siterelay_device_messages_total",
			Help: "Trace events by device (devices[].name, or unknown) and kind.",
		}, []string{"device", "kind"}),
		backlog: prometheus.NewDesc("siterelay_device_backlog_messages",
			"Messages ready and waiting for the upstream's pace, by device (unknown: clients that are no device) and class.",
			[]string{"device", "class"}, nil),
	}
	reg.MustRegister(m.messages, m)
	return m
}

func (m *deviceMetrics) observe(e trace.Event) {
	if !e.Kind.Message() {
		return // a renewal step: no device's
	}
	d := e.Device
	if d == "" {
		d = "unknown"
	}
	m.children.Get(deviceKind{d, e.Kind}, func(k deviceKind) prometheus.Counter {
		return m.messages.WithLabelValues(k.device, string(k.kind))
	}).Inc()
}

type deviceKind struct {
	device string
	kind   trace.Kind
}

func (m *deviceMetrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.backlog }

func (m *deviceMetrics) Collect(ch chan<- prometheus.Metric) {
	if m.r.sched == nil || m.r.gen.Load() == nil {
		return
	}
	// Every configured device has its series, 0 when nothing waits, so
	// that a query or an alert sees it before the first backlog.
	type key struct{ device, class string }
	n := map[key]int{{"unknown", "normal"}: 0}
	for _, d := range m.r.gen.Load().cfg.Devices {
		c := d.Class
		if c == "" {
			c = "normal"
		}
		n[key{d.Name, c}] = 0
	}
	for _, b := range m.r.backlog() {
		d := b.Device
		if d == unknownClients {
			d = "unknown"
		}
		n[key{d, b.Class}] += b.Messages
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(m.backlog, prometheus.GaugeValue, float64(v), k.device, k.class)
	}
}
