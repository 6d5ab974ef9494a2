package alerts

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// relayMetrics is a registry with the relay's metric names, set by hand.
type relayMetrics struct {
	reg                                     *prometheus.Registry
	queue, oldest, free, synced             prometheus.Gauge
	delivered, deferred, throttled, tokFail *prometheus.GaugeVec
	creds                                   *prometheus.GaugeVec
	allowance                               *prometheus.GaugeVec
}

func newRelayMetrics() *relayMetrics {
	m := &relayMetrics{reg: prometheus.NewRegistry()}
	g := func(name string) prometheus.Gauge {
		x := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: name})
		m.reg.MustRegister(x)
		return x
	}
	m.queue, m.oldest, m.free, m.synced = g("siterelay_queue_messages"), g("siterelay_queue_oldest_message_age_seconds"), g("siterelay_spool_free_bytes"), g("siterelay_clock_synchronised")
	m.free.Set(8e9)
	m.synced.Set(1)
	d := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_deliveries_total", Help: "d"}, []string{"upstream", "result"})
	m.delivered, m.deferred = d, d
	m.throttled = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_upstream_throttled_total", Help: "t"}, []string{"upstream"})
	m.tokFail = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_token_renewals_total", Help: "t"}, []string{"result"})
	m.creds = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_credential_expires_in_seconds", Help: "c"}, []string{"credential"})
	m.allowance = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_upstream_allowance_used_ratio", Help: "a"}, []string{"upstream", "window"})
	m.reg.MustRegister(d, m.throttled, m.tokFail, m.creds, m.allowance)
	return m
}

// receiver is the webhook: it records bodies and answers from a script.
type receiver struct {
	mu      sync.Mutex
	bodies  []string
	answers []int // status codes for the next requests; then 200
	srv     *httptest.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.bodies = append(r.bodies, string(b))
		code := 200
		if len(r.answers) > 0 {
			code, r.answers = r.answers[0], r.answers[1:]
		}
		if req.Header.Get("Content-Type") != "application/json" {
			code = 415
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

type env struct {
	m     *relayMetrics
	rcv   *receiver
	now   time.Time
	slept []time.Duration
	n     *Notifier
}

const token = "sig=SECRET-TOKEN-42"

func newEnv(t *testing.T, kind string, o Options) *env {
	e := &env{m: newRelayMetrics(), rcv: newReceiver(t), now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	o.Kind, o.URL, o.Relay, o.Metrics = kind, e.rcv.srv.URL+"/webhook?"+token, "plant-a", e.m.reg
	if o.Conditions == nil {
		o.Conditions = []string{"queue_stuck", "oldest_message", "upstream_failing", "throttled", "allowance_nearly_used", "token_renewal_failing",
			"credential_expiring", "disk_almost_full", "clock_not_synchronised"}
	}
	if o.MinInterval == 0 {
		o.MinInterval = time.Hour
	}
	if o.MaxPerHour == 0 {
		o.MaxPerHour = 12
	}
	o.OldestMessageAge, o.MinFreeBytes = time.Hour, 500e6
	o.Clock = func() time.Time { return e.now }
	o.Sleep = func(_ context.Context, d time.Duration) error { e.slept = append(e.slept, d); return nil }
	e.n = New(o)
	return e
}

// check advances the clock by d and checks.
func (e *env) check(d time.Duration) {
	e.now = e.now.Add(d)
	e.n.Check(context.Background())
}

func TestConditionsFireAndResolve(t *testing.T) {
	e := newEnv(t, "json", Options{})
	e.check(0)
	if got := e.rcv.got(); len(got) != 0 {
		t.Fatalf("a quiet relay alerted: %v", got)
	}
	// The upstream fails: deferrals, no deliveries, mail waits.
	e.m.queue.Set(5)
	e.m.delivered.WithLabelValues("m365-oauth", "delivered").Set(10)
	for i := range 35 {
		e.m.deferred.WithLabelValues("m365-oauth", "deferred").Set(float64(i))
		e.check(time.Minute)
	}
	var got []Alert
	for _, b := range e.rcv.got() {
		var a Alert
		if err := json.Unmarshal([]byte(b), &a); err != nil {
			t.Fatalf("not JSON: %s", b)
		}
		got = append(got, a)
	}
	if len(got) != 2 || got[0].Condition != "upstream_failing" || got[1].Condition != "queue_stuck" || got[0].Status != "firing" {
		t.Fatalf("got %+v, want upstream_failing then queue_stuck firing", got)
	}
	if a := got[0]; a.Relay != "plant-a" || a.Severity != "critical" || !strings.Contains(a.Hint, "Nothing is lost") || !strings.Contains(a.Summary, "deferred") {
		t.Errorf("alert lacks its facts: %+v", a)
	}
	// Deliveries resume; the hour since the firing has not passed, so
	// the resolution waits for the rate limit, then goes.
	e.m.delivered.WithLabelValues("m365-oauth", "delivered").Set(20)
	e.m.queue.Set(0)
	e.check(time.Minute)
	if n := len(e.rcv.got()); n != 2 {
		t.Fatalf("%d notifications, want the resolution held by the rate limit", n)
	}
	e.check(time.Hour)
	bodies := e.rcv.got()
	if len(bodies) != 4 || !strings.Contains(bodies[2]+bodies[3], `"status":"resolved"`) {
		t.Errorf("after the hour: %v", bodies)
	}
}

func TestEveryCondition(t *testing.T) {
	e := newEnv(t, "json", Options{MaxPerHour: 100})
	e.m.oldest.Set(2 * 3600)
	e.m.free.Set(100e6)
	e.m.synced.Set(0)
	e.m.creds.WithLabelValues("tls_certificate").Set(3 * 86400)
	e.m.creds.WithLabelValues("token").Set(600) // a token always expires soon: not an alert
	e.m.tokFail.WithLabelValues("failed").Set(0)
	e.check(0)
	e.m.tokFail.WithLabelValues("failed").Set(3)
	e.m.throttled.WithLabelValues("m365-oauth").Set(1)
	e.m.allowance.WithLabelValues("m365-oauth", "minute").Set(1) // the minute's allowance is paced, not an alert
	e.m.allowance.WithLabelValues("m365-oauth", "day").Set(0.95)
	e.m.allowance.WithLabelValues("graph", "day").Set(0.2)
	e.check(time.Minute)
	seen := map[string]bool{}
	for _, b := range e.rcv.got() {
		var a Alert
		json.Unmarshal([]byte(b), &a)
		seen[a.Condition] = true
		if a.Condition == "allowance_nearly_used" && a.Summary != "95% of the upstream's daily recipients are used." {
			t.Errorf("allowance summary %q", a.Summary)
		}
		if a.Condition == "credential_expiring" && !strings.Contains(a.Summary, "tls certificate in 3.0 days") {
			t.Errorf("credential summary %q", a.Summary)
		}
	}
	for _, c := range []string{"oldest_message", "disk_almost_full", "clock_not_synchronised", "credential_expiring", "token_renewal_failing", "throttled", "allowance_nearly_used"} {
		if !seen[c] {
			t.Errorf("%s did not fire", c)
		}
	}
	if seen["queue_stuck"] || seen["upstream_failing"] {
		t.Errorf("fired without cause: %v", seen)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, "json", Options{MinInterval: 10 * time.Minute, MaxPerHour: 3})
	// The clock flaps every minute for an hour.
	for i := range 60 {
		e.m.synced.Set(float64(i % 2))
		e.check(time.Minute)
	}
	if n := len(e.rcv.got()); n != 3 {
		t.Errorf("%d notifications in an hour of flapping, want 3 (max_per_hour)", n)
	}
	if e.n.Dropped == 0 {
		t.Error("nothing counted as held back")
	}
	e2 := newEnv(t, "json", Options{MinInterval: 10 * time.Minute, MaxPerHour: 100})
	for i := range 60 {
		e2.m.synced.Set(float64(i % 2))
		e2.check(time.Minute)
	}
	if n := len(e2.rcv.got()); n != 6 {
		t.Errorf("%d notifications in an hour, want 6 (one per 10 minutes)", n)
	}
}

func TestRetry(t *testing.T) {
	for _, tt := range []struct {
		name    string
		answers []int
		posts   int
		sent    bool
		slept   []time.Duration
	}{
		{"ok", nil, 1, true, nil},
		{"two 5xx then ok", []int{503, 500}, 3, true, []time.Duration{2 * time.Second, 4 * time.Second}},
		{"429 then ok", []int{429}, 2, true, []time.Duration{2 * time.Second}},
		{"always down", []int{500, 500, 500, 500, 500}, 4, false, []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second}},
		{"refused: no retry", []int{404}, 1, false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, "teams", Options{})
			e.rcv.answers = tt.answers
			e.m.synced.Set(0)
			e.check(0)
			if got := len(e.rcv.got()); got != tt.posts {
				t.Errorf("%d posts, want %d", got, tt.posts)
			}
			if sent := e.n.Posted == 1; sent != tt.sent {
				t.Errorf("sent %v, want %v", sent, tt.sent)
			}
			if len(e.slept) != len(tt.slept) {
				t.Errorf("waited %v, want %v", e.slept, tt.slept)
			}
			for i := range min(len(e.slept), len(tt.slept)) {
				if e.slept[i] != tt.slept[i] {
					t.Errorf("waited %v, want %v", e.slept, tt.slept)
				}
			}
		})
	}
}

// A Teams MessageCard with the relay, the condition, the figures and the
// hint; no URL, token or message data in it, and none in the log when the
// receiver is gone.
func TestTeamsContentAndNoSecrets(t *testing.T) {
	var log strings.Builder
	e := newEnv(t, "teams", Options{})
	e.n.o.Logger = newLogger(&log)
	e.m.free.Set(10e6)
	e.check(0)
	got := e.rcv.got()
	if len(got) != 1 {
		t.Fatalf("%d posts", len(got))
	}
	var card struct {
		Type     string `json:"@type"`
		Title    string
		Sections []struct {
			Text  string
			Facts []struct{ Name, Value string }
		}
	}
	if err := json.Unmarshal([]byte(got[0]), &card); err != nil {
		t.Fatal(err)
	}
	if card.Type != "MessageCard" || !strings.Contains(card.Title, "plant-a: disk_almost_full (firing)") ||
		!strings.Contains(card.Sections[0].Text, "10 MB free") || !strings.Contains(got[0], "452 4.3.1") {
		t.Errorf("card: %s", got[0])
	}
	e.rcv.srv.Close()
	e.m.free.Set(8e9)
	e.check(2 * time.Hour)
	if e.n.Failed != 1 {
		t.Errorf("failed %d, want 1", e.n.Failed)
	}
	for _, s := range append(got, log.String()) {
		if strings.Contains(s, token) || strings.Contains(s, "SECRET") {
			t.Errorf("the webhook's token leaked: %s", s)
		}
	}
	if !strings.Contains(log.String(), "webhook failed") {
		t.Errorf("the failure is not logged: %s", log.String())
	}
}

// A box-made certificate whose renewal Graph refuses: the webhook says so
// with Microsoft's answer explained, long before expiry; a month before it,
// the overdue alert too.
func TestCertificateRenewalConditions(t *testing.T) {
	e := newEnv(t, "json", Options{MaxPerHour: 100, Conditions: []string{"certificate_renewal_failing", "certificate_renewal_overdue"},
		Explain: func(c string) string {
			return "addKey: HTTP 400 Request_BadRequest — A tenant app management policy caps certificate lifetimes: lower upstream.m365.certificate_days"
		}})
	fails := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_credential_renewal_failures", Help: "f"}, []string{"credential"})
	left := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_credential_renewal_expires_in_seconds", Help: "l"}, []string{"credential"})
	e.m.reg.MustRegister(fails, left)
	fails.WithLabelValues("entra").Set(0)
	left.WithLabelValues("entra").Set(59 * 86400)
	e.check(0)
	if got := e.rcv.got(); len(got) != 0 {
		t.Fatalf("alerted before a failure: %v", got)
	}
	fails.WithLabelValues("entra").Set(1)
	e.check(time.Minute)
	left.WithLabelValues("entra").Set(29 * 86400)
	e.check(time.Minute)
	var got []Alert
	for _, b := range e.rcv.got() {
		var a Alert
		json.Unmarshal([]byte(b), &a)
		got = append(got, a)
	}
	if len(got) != 2 || got[0].Condition != "certificate_renewal_failing" || got[0].Severity != "warning" || got[1].Condition != "certificate_renewal_overdue" || got[1].Severity != "critical" {
		t.Fatalf("got %+v", got)
	}
	if !strings.Contains(got[0].Summary, "certificate_days") || !strings.Contains(got[0].Summary, "entra: 1 attempts failed") || !strings.Contains(got[1].Summary, "29.0 days") {
		t.Errorf("summaries %q, %q", got[0].Summary, got[1].Summary)
	}
}

// A client secret whose expiry the admin gave: the webhook warns from 30
// days before it, naming it, and says so once it is renewed (the metric
// then shows the new date).
func TestSecretExpiringCondition(t *testing.T) {
	e := newEnv(t, "json", Options{MaxPerHour: 100, MinInterval: time.Minute, Conditions: []string{"secret_expiring"}})
	left := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siterelay_credential_secret_expires_in_seconds", Help: "s"}, []string{"credential", "kind"})
	e.m.reg.MustRegister(left)
	left.WithLabelValues("m365-secret", "client-secret").Set(31 * 86400)
	e.check(0)
	if got := e.rcv.got(); len(got) != 0 {
		t.Fatalf("alerted 31 days ahead: %v", got)
	}
	left.WithLabelValues("m365-secret", "client-secret").Set(29 * 86400)
	e.check(time.Minute)
	left.WithLabelValues("m365-secret", "client-secret").Set(700 * 86400) // a new secret put
	e.check(time.Minute)
	var got []Alert
	for _, b := range e.rcv.got() {
		var a Alert
		json.Unmarshal([]byte(b), &a)
		got = append(got, a)
	}
	if len(got) != 2 || got[0].Condition != "secret_expiring" || got[0].Status != "firing" || got[0].Severity != "warning" || got[1].Status != "resolved" {
		t.Fatalf("got %+v", got)
	}
	if !strings.Contains(got[0].Summary, "client-secret m365-secret in 29.0 days") || !strings.Contains(got[0].Hint, "creds put") {
		t.Errorf("summary %q, hint %q", got[0].Summary, got[0].Hint)
	}
}
