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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/siterelay/siterelay/relay/config"
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
	// DeviceQueues is the spool by device (one entry per configured
	// device, and Unknown for the clients that are none).
	DeviceQueues func() []DeviceQueue
	// TLSCertificateExpiry is when the listeners' STARTTLS certificate
	// expires; false when there is none (no listener offers STARTTLS).
	TLSCertificateExpiry func() (time.Time, bool)
	// ClockSynchronised says whether the kernel's clock is synchronised
	// (ClockSynchronised in this package on Linux); false, false when it
	// cannot tell, and the metric is left out.
	ClockSynchronised func() (synced, known bool)
	// Renewals are the certificates the box renews itself.
	Renewals func() []Renewal
	// Secrets are the client secrets and passwords in use whose expiry is
	// known (relayctl creds put -expires).
	Secrets func() []SecretExpiry
	// Clock is now, for the "expires in" gauges and the allowance windows
	// (default time.Now).
	Clock func() time.Time
}

// Unknown is the device label of a client that is no configured device:
// the device labels are devices[].name and this, never an address.
const Unknown = "unknown"

// DeviceLabel is the device label of a device name ("" is Unknown).
func DeviceLabel(name string) string {
	if name == "" {
		return Unknown
	}
	return name
}

// DeviceQueue is what one device has waiting in the spool.
type DeviceQueue struct {
	Device   string // devices[].name; Unknown (or "") for clients that are no device
	Messages int
	Oldest   time.Time // when the oldest of them was received
}

// Metrics is one relay's metrics.
type Metrics struct {
	reg           *prometheus.Registry
	clock         func() time.Time
	messages      map[trace.Kind]prometheus.Counter
	recipients    map[trace.Kind]prometheus.Counter
	receivedBytes prometheus.Counter
	accept        prometheus.Histogram
	delivery      prometheus.Histogram
	refused       *prometheus.CounterVec // listener, reason, device
	refusedTotal  atomic.Uint64          // the sum of refused's series: Refused
	deliveries    *prometheus.CounterVec // upstream, result
	tlsSeen       *prometheus.CounterVec // listener, device, version, cipher
	// The children Observe counts on, by their raw label values: a map
	// lookup instead of WithLabelValues' hashing on every event.
	tlsChildren      ChildCache[tlsKey, prometheus.Counter]
	deliveryChildren ChildCache[deliveryKey, prometheus.Counter]
	up               upstreamMetrics
	tokens           map[bool]prometheus.Counter
	creds            credentials
}

// New registers the relay's metrics, plus Go runtime and process metrics, on
// a new registry.
func New(g Gauges) *Metrics {
	reg := prometheus.NewRegistry()
	if g.Clock == nil {
		g.Clock = time.Now
	}
	m := &Metrics{
		reg:        reg,
		clock:      g.Clock,
		messages:   map[trace.Kind]prometheus.Counter{},
		recipients: map[trace.Kind]prometheus.Counter{},
	}
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_messages_total",
		Help: "Trace events by kind: messages received, and delivery outcomes (a message delivered to its recipients in several transactions counts once per transaction).",
	}, []string{"kind"})
	recipients := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_recipients_total",
		Help: "Recipients of trace events by kind (received: recipients accepted; the others: recipients with that outcome).",
	}, []string{"kind"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_refused_total",
		Help: "Commands or messages from devices refused, by listener, reason and device (devices[].name, or unknown).",
	}, []string{"listener", "reason", "device"})
	for _, k := range trace.Kinds {
		m.messages[k] = messages.WithLabelValues(string(k))
		m.recipients[k] = recipients.WithLabelValues(string(k))
	}
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_deliveries_total",
		Help: "Recipients by delivery outcome (result: delivered, deferred, bounced, failed, expired) and upstream kind.",
	}, []string{"upstream", "result"})
	m.tlsSeen = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_device_tls_messages_total",
		Help: "Messages received by listener, device (devices[].name, or unknown) and the TLS version and cipher the device used (version \"none\" without STARTTLS): where the old printers are.",
	}, []string{"listener", "device", "version", "cipher"})
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
	reg.MustRegister(messages, recipients, m.refused, m.deliveries, m.tlsSeen, m.receivedBytes, m.accept, m.delivery,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	m.up = newUpstreamMetrics(reg)
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_token_renewals_total",
		Help: "OAuth token requests to Microsoft Entra by result (ok, failed).",
	}, []string{"result"})
	m.tokens = map[bool]prometheus.Counter{true: tokens.WithLabelValues("ok"), false: tokens.WithLabelValues("failed")}
	reg.MustRegister(tokens)
	m.creds.clock = g.Clock
	m.creds.tls = g.TLSCertificateExpiry
	reg.MustRegister(&m.creds)
	if g.Renewals != nil {
		reg.MustRegister(&renewals{fn: g.Renewals, clock: g.Clock})
	}
	if g.Secrets != nil {
		reg.MustRegister(&secretExpiries{fn: g.Secrets, clock: g.Clock})
	}
	if g.DeviceQueues != nil {
		reg.MustRegister(&deviceQueues{fn: g.DeviceQueues, clock: g.Clock})
	}
	if g.ClockSynchronised != nil {
		if _, known := g.ClockSynchronised(); known {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "siterelay_clock_synchronised",
				Help: "1 when the kernel says its clock is synchronised (NTP), 0 when not: TLS, tokens and certificates need the right time.",
			}, func() float64 {
				if ok, _ := g.ClockSynchronised(); ok {
					return 1
				}
				return 0
			}))
		}
	}

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
	if e.Kind == trace.Received {
		if e.Size > 0 {
			m.receivedBytes.Add(float64(e.Size))
		}
		version, cipher := e.TLSVersion, e.TLSCipher
		if version == "" {
			version, cipher = "none", ""
		}
		m.tlsChildren.Get(tlsKey{e.Listener, e.Device, version, cipher}, func(k tlsKey) prometheus.Counter {
			return m.tlsSeen.WithLabelValues(k.listener, DeviceLabel(k.device), k.version, k.cipher)
		}).Inc()
		return
	}
	m.deliveryChildren.Get(deliveryKey{e.Upstream, e.Kind}, func(k deliveryKey) prometheus.Counter {
		return m.deliveries.WithLabelValues(UpstreamKind(k.upstream), string(k.kind))
	}).Add(float64(len(e.To)))
}

type tlsKey struct{ listener, device, version, cipher string }

type deliveryKey struct {
	upstream string
	kind     trace.Kind
}

// ChildCache keeps a metric vec's children by key. The keys are label
// values from the configuration (listeners, devices, upstreams) and the
// few TLS versions and ciphers, so it stays small; nothing deletes a
// child of the vecs it is used for, so a kept child is never stale.
type ChildCache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

// Get is k's child, made by child the first time.
func (c *ChildCache[K, V]) Get(k K, child func(K) V) V {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = child(k)
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[K]V)
	}
	c.m[k] = v
	c.mu.Unlock()
	return v
}

// UpstreamKind is the kind in an upstream's trace name ("m365-oauth
// contoso" is m365-oauth), one of config.Kinds, else "other": a label,
// never the host or tenant.
func UpstreamKind(name string) string {
	k, _, _ := strings.Cut(name, " ")
	if config.Kind(k).Known() {
		return k
	}
	return "other"
}

// Upstreams makes the delivery series of an upstream kind exist at 0, so
// that rates and alerts work before the first delivery.
func (m *Metrics) Upstreams(kind string) {
	for _, k := range trace.Kinds[1:] {
		m.deliveries.WithLabelValues(kind, string(k))
	}
	m.up.init(kind)
}

// ObserveAccept records how long the relay took to accept a message.
func (m *Metrics) ObserveAccept(d time.Duration) { m.accept.Observe(d.Seconds()) }

// ObserveDelivery records how long a message took from acceptance to
// delivery.
func (m *Metrics) ObserveDelivery(d time.Duration) { m.delivery.Observe(d.Seconds()) }

// RefusedOn is the refusal counter of one listener, for its sessions:
// reason is one of Reasons (any other counts as Other), device the
// configured device's name ("" for a client that is none: Unknown). Every
// reason's series of Unknown exists from the call on, at 0; a device's
// appear with its first refusal.
func (m *Metrics) RefusedOn(listener string) func(reason, device string) {
	byReason := make(map[string]prometheus.Counter, len(Reasons))
	for _, r := range Reasons {
		byReason[r] = m.refused.WithLabelValues(listener, r, Unknown)
	}
	return func(reason, device string) {
		m.refusedTotal.Add(1)
		if _, ok := byReason[reason]; !ok {
			reason = Other
		}
		if device == "" || device == Unknown {
			byReason[reason].Inc()
			return
		}
		m.refused.WithLabelValues(listener, reason, device).Inc()
	}
}

// TokenRenewed counts a token request and, when it succeeded, notes when
// the new token expires. m365.Deps.TokenRenewed takes it.
func (m *Metrics) TokenRenewed(expires time.Time, err error) {
	m.tokens[err == nil].Inc()
	if err == nil {
		m.creds.set(credToken, expires)
	}
}

// ClientCertificate notes when the upstream's client certificate (the
// OAuth assertion's or the connector's) expires; zero when the upstream in
// force has none.
func (m *Metrics) ClientCertificate(notAfter time.Time) { m.creds.set(credClient, notAfter) }

// ForgetToken drops the token's expiry (an upstream without OAuth is now in
// force).
func (m *Metrics) ForgetToken() { m.creds.set(credToken, time.Time{}) }

// Registry is the registry the metrics are on, for adding more.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text (or OpenMetrics) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}
