package metrics

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/upstream"
)

// upstreamMetrics are what the relay sees of its upstream's attempts.
type upstreamMetrics struct {
	attempt   *prometheus.HistogramVec // upstream
	throttled *prometheus.CounterVec   // upstream
	paced     *prometheus.CounterVec   // upstream
	allowance *allowance
}

func newUpstreamMetrics(reg *prometheus.Registry) upstreamMetrics {
	u := upstreamMetrics{
		attempt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "siterelay_upstream_attempt_duration_seconds",
			Help:    "Time one delivery attempt to the upstream took (connect, TLS, login, transaction), by upstream kind; pacing holds are not attempts.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"upstream"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "siterelay_upstream_throttled_total",
			Help: "Throttling replies from the upstream (4.3.2 too many connections, 4.7.5xx/4.7.6xx IP throttling, 5.2.0 quota, Graph 429), by upstream kind.",
		}, []string{"upstream"}),
		paced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "siterelay_upstream_paced_total",
			Help: "Attempts the relay held back itself to stay within the upstream's limits (no attempt made), by upstream kind.",
		}, []string{"upstream"}),
		allowance: &allowance{},
	}
	reg.MustRegister(u.attempt, u.throttled, u.paced, u.allowance)
	return u
}

func (u upstreamMetrics) init(kind string) {
	u.attempt.WithLabelValues(kind)
	u.throttled.WithLabelValues(kind)
	u.paced.WithLabelValues(kind)
}

// Instrument wraps the upstream the scheduler delivers through: it times
// every attempt, counts throttling replies and pacing holds, and keeps the
// windows siterelay_upstream_allowance_used_ratio is computed from. kind
// names the upstream in force (a label: config.Kind, never a host).
func (m *Metrics) Instrument(up upstream.Upstream, kind func() string) upstream.Upstream {
	m.up.allowance.limits = up.Limits
	m.up.allowance.kind = kind
	m.up.allowance.clock = m.clock
	return &instrumented{Upstream: up, m: m.up, kind: kind, clock: m.clock}
}

type instrumented struct {
	upstream.Upstream
	m     upstreamMetrics
	kind  func() string
	clock func() time.Time
	// attempts are attempt's children by kind: a map lookup instead of
	// WithLabelValues' hashing on every delivery.
	attempts ChildCache[string, prometheus.Observer]
}

func (u *instrumented) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	start := time.Now() // a duration: the monotonic clock, not the injected one
	results, err := u.Upstream.Deliver(ctx, msg)
	kind := u.kind()
	if errors.Is(err, upstream.ErrPaced) {
		u.m.paced.WithLabelValues(kind).Inc()
		return results, err
	}
	u.attempts.Get(kind, func(k string) prometheus.Observer { return u.m.attempt.WithLabelValues(k) }).Observe(time.Since(start).Seconds())
	u.m.allowance.add(u.clock(), len(msg.To))
	throttled := Throttling(err)
	for _, r := range results {
		throttled = throttled || Throttling(r.Err)
	}
	if throttled {
		u.m.throttled.WithLabelValues(kind).Inc()
	}
	return results, err
}

// Throttling reports whether err is the upstream throttling the relay: too
// many connections (432, 4.3.2), IP throttling (4.7.5xx, 4.7.6xx), the
// daily quota (5.2.0 "quota"), or a reply asking to wait (Graph's 429 with
// Retry-After). The relay's own pacing (upstream.ErrPaced) and a failing
// token endpoint are not.
func Throttling(err error) bool {
	if err == nil || errors.Is(err, upstream.ErrPaced) {
		return false
	}
	ue := upstream.Classify(err)
	r := ue.Reply
	if r == nil {
		return false
	}
	c := r.EnhancedCode
	switch {
	case r.Code == 432 || c == (smtp.EnhancedCode{4, 3, 2}):
		return true
	case c[0] == 4 && c[1] == 7 && c[2] >= 500 && c[2] <= 699:
		return true
	case c == (smtp.EnhancedCode{5, 2, 0}) && strings.Contains(strings.ToLower(r.Message), "quota"):
		return true
	}
	return !ue.Permanent && ue.RetryAfter > 0
}

var allowanceDesc = prometheus.NewDesc("siterelay_upstream_allowance_used_ratio",
	"Share of the upstream's allowance used (window minute: messages sent in the last 60 s against its messages per minute; day: recipients in the last 24 h against its recipients per day). 1 is the limit. Left out for limits the upstream does not have.",
	[]string{"upstream", "window"}, nil)

// allowance counts messages a second over the last minute and recipients
// a minute over the last day.
type allowance struct {
	limits func() upstream.Limits
	kind   func() string
	clock  func() time.Time

	mu        sync.Mutex
	perSecond ring // messages
	perMinute ring // recipients
}

func (a *allowance) add(now time.Time, rcpts int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.perSecond.add(now.Unix(), 60, 1)
	a.perMinute.add(now.Unix()/60, 1440, float64(rcpts))
}

func (a *allowance) Describe(ch chan<- *prometheus.Desc) { ch <- allowanceDesc }

func (a *allowance) Collect(ch chan<- prometheus.Metric) {
	if a.limits == nil {
		return
	}
	lim, kind, now := a.limits(), a.kind(), a.clock()
	a.mu.Lock()
	msgs := a.perSecond.sum(now.Unix(), 60)
	rcpts := a.perMinute.sum(now.Unix()/60, 1440)
	a.mu.Unlock()
	if lim.MessagesPerMinute > 0 {
		ch <- prometheus.MustNewConstMetric(allowanceDesc, prometheus.GaugeValue, msgs/float64(lim.MessagesPerMinute), kind, "minute")
	}
	if lim.RecipientsPerDay > 0 {
		ch <- prometheus.MustNewConstMetric(allowanceDesc, prometheus.GaugeValue, rcpts/float64(lim.RecipientsPerDay), kind, "day")
	}
}

// ring is a sliding window of n slots; slot is the time divided by the
// slot's length.
type ring struct {
	counts []float64
	slots  []int64
}

func (r *ring) add(slot int64, n int, v float64) {
	if r.counts == nil {
		r.counts, r.slots = make([]float64, n), make([]int64, n)
		for i := range r.slots {
			r.slots[i] = -1
		}
	}
	i := int(((slot % int64(n)) + int64(n)) % int64(n))
	if r.slots[i] != slot {
		r.slots[i], r.counts[i] = slot, 0
	}
	r.counts[i] += v
}

// sum is the total of the n slots ending with slot.
func (r *ring) sum(slot int64, n int) float64 {
	var t float64
	for i, s := range r.slots {
		if s > slot-int64(n) && s <= slot {
			t += r.counts[i]
		}
	}
	return t
}
