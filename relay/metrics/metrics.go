// Package metrics exports the relay's Prometheus metrics on a registry of its
// own (never the global one, so that tests and several relays in one process
// do not collide).
//
// Counters of messages are fed from trace events (Observe is a trace
// subscriber), so the metrics and the trace cannot disagree. Gauges are read
// through callbacks at scrape time; nothing on the hot path allocates.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/siterelay/siterelay/relay/trace"
)

// Reasons a device's mail is refused, the values of Refused. Any other
// reason is counted as "other".
const (
	NotAllowed   = "not_allowed"
	AuthFailed   = "auth_failed"
	TooBig       = "too_big"
	TooManyRcpts = "too_many_rcpts"
	RateLimited  = "rate_limited"
	StorageFull  = "storage_full"
	BadSender    = "bad_sender"
	BadRecipient = "bad_recipient"
	Smuggling    = "smuggling"
	Other        = "other"
)

// Reasons lists every refusal reason.
var Reasons = []string{NotAllowed, AuthFailed, TooBig, TooManyRcpts, RateLimited, StorageFull, BadSender, BadRecipient, Smuggling, Other}

// Gauges are read when Prometheus scrapes. A nil function leaves its metric
// out. They are called concurrently with the relay and must be cheap.
type Gauges struct {
	QueueMessages       func() float64       // messages in the spool
	QueueBytes          func() float64       // their size
	OldestMessageAge    func() time.Duration // age of the oldest spooled message, 0 if none
	SpoolFreeBytes      func() float64       // free space for the spool
	UpstreamConnections func() float64       // open connections to the upstream
	TraceDropped        func() uint64        // trace.Store.Stats().Dropped
}

// Metrics is one relay's metrics.
type Metrics struct {
	reg           *prometheus.Registry
	messages      map[trace.Kind]prometheus.Counter
	recipients    map[trace.Kind]prometheus.Counter
	receivedBytes prometheus.Counter
	accept        prometheus.Histogram
	delivery      prometheus.Histogram
	refused       map[string]prometheus.Counter
}

// New registers the relay's metrics, plus Go runtime and process metrics, on
// a new registry.
func New(g Gauges) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg:        reg,
		messages:   map[trace.Kind]prometheus.Counter{},
		recipients: map[trace.Kind]prometheus.Counter{},
		refused:    map[string]prometheus.Counter{},
	}
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_messages_total",
		Help: "Trace events by kind: messages received, and delivery outcomes (a message delivered to its recipients in several transactions counts once per transaction).",
	}, []string{"kind"})
	recipients := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_recipients_total",
		Help: "Recipients of trace events by kind (received: recipients accepted; the others: recipients with that outcome).",
	}, []string{"kind"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_refused_total",
		Help: "Commands or messages from devices refused, by reason.",
	}, []string{"reason"})
	for _, k := range trace.Kinds {
		m.messages[k] = messages.WithLabelValues(string(k))
		m.recipients[k] = recipients.WithLabelValues(string(k))
	}
	for _, r := range Reasons {
		m.refused[r] = refused.WithLabelValues(r)
	}
	m.receivedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "siterelay_received_bytes_total",
		Help: "Size of the messages accepted from devices.",
	})
	m.accept = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "siterelay_accept_duration_seconds",
		Help:    "Time from a device's end of data to the relay's reply, spool writes and fsync included.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.delivery = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "siterelay_delivery_duration_seconds",
		Help:    "Time from acceptance to delivery to the upstream, retries included.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 48 * 3600},
	})
	reg.MustRegister(messages, recipients, refused, m.receivedBytes, m.accept, m.delivery,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	gauge := func(name, help string, fn func() float64) {
		if fn != nil {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
		}
	}
	gauge("siterelay_queue_messages", "Messages in the spool waiting for delivery.", g.QueueMessages)
	gauge("siterelay_queue_bytes", "Size of the messages in the spool.", g.QueueBytes)
	if g.OldestMessageAge != nil {
		gauge("siterelay_queue_oldest_message_age_seconds", "Age of the oldest message in the spool (0 when empty).",
			func() float64 { return g.OldestMessageAge().Seconds() })
	}
	gauge("siterelay_spool_free_bytes", "Free space on the spool's file system for new messages.", g.SpoolFreeBytes)
	gauge("siterelay_upstream_connections", "Open connections to the upstream.", g.UpstreamConnections)
	if g.TraceDropped != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "siterelay_trace_dropped_events_total",
			Help: "Trace events dropped because the trace could not be written fast enough (the mail itself is unaffected).",
		}, func() float64 { return float64(g.TraceDropped()) }))
	}
	return m
}

// Observe counts one trace event. Pass it to trace.Store.Subscribe.
func (m *Metrics) Observe(e trace.Event) {
	c, ok := m.messages[e.Kind]
	if !ok {
		return
	}
	c.Inc()
	m.recipients[e.Kind].Add(float64(len(e.To)))
	if e.Kind == trace.Received && e.Size > 0 {
		m.receivedBytes.Add(float64(e.Size))
	}
}

// ObserveAccept records how long the relay took to accept a message.
func (m *Metrics) ObserveAccept(d time.Duration) { m.accept.Observe(d.Seconds()) }

// ObserveDelivery records how long a message took from acceptance to
// delivery.
func (m *Metrics) ObserveDelivery(d time.Duration) { m.delivery.Observe(d.Seconds()) }

// Refused counts a refusal; reason is one of Reasons.
func (m *Metrics) Refused(reason string) {
	c, ok := m.refused[reason]
	if !ok {
		c = m.refused[Other]
	}
	c.Inc()
}

// Registry is the registry the metrics are on, for adding more.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text (or OpenMetrics) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}
