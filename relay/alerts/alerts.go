// Package alerts is the relay's own alert path: it judges the same
// conditions as docs/alerts.yml from the relay's metrics, every minute, and
// tells a webhook (a Microsoft Teams incoming webhook, or any JSON
// receiver) when one starts and when it ends. It does not depend on the
// mail path it watches: a relay whose upstream is down can still say so.
//
// A notification names the relay, the condition, a summary with figures
// and the hint; never a message, an address or a secret. The webhook's URL
// is a secret (it carries a token) and never appears in a log line or an
// error. Notifications are rate-limited (one per condition per
// MinInterval, MaxPerHour in all) and retried on a temporary failure.
package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/siterelay/siterelay/relay/config"
)

// Options configure a Notifier.
type Options struct {
	Kind       string // "teams" or "json"
	URL        string // a secret: never logged
	Conditions []string
	// MinInterval between two notifications of one condition; MaxPerHour
	// in all.
	MinInterval time.Duration
	MaxPerHour  int
	// Thresholds.
	OldestMessageAge time.Duration
	MinFreeBytes     float64
	// Relay names the relay in every notification (its host name).
	Relay string
	// Metrics is the relay's registry, read every Interval (default 1m).
	Metrics  prometheus.Gatherer
	Interval time.Duration
	// Ticks, when set, replaces the ticker of Interval (tests on a virtual
	// clock tick it); read once by Run.
	Ticks func(every time.Duration) <-chan time.Time
	// Client posts (default: 10 s timeout); Clock and Sleep are time
	// (defaults time.Now and a timer); Retries after the first try
	// (default 3, backoff 2 s doubling).
	Client  *http.Client
	Clock   func() time.Time
	Sleep   func(context.Context, time.Duration) error
	Retries int
	Logger  *slog.Logger
	// Explain, when set, adds to a certificate renewal alert what the box
	// knows of the credential's last refusal (Microsoft's error and what
	// it means); it stays as New set it.
	Explain func(credential string) string
}

// Alert is one notification.
type Alert struct {
	Relay     string    `json:"relay"`
	Condition string    `json:"condition"`
	Status    string    `json:"status"` // "firing" or "resolved"
	Severity  string    `json:"severity"`
	Summary   string    `json:"summary"`
	Hint      string    `json:"hint"`
	Time      time.Time `json:"time"`
}

// Notifier judges the conditions and posts.
type Notifier struct {
	o Options

	mu      sync.Mutex
	active  map[string]bool
	lastOne map[string]time.Time // last notification of each condition
	sent    []time.Time          // notifications in the last hour
	hist    history
	// Stats, for tests and the log.
	Posted, Dropped, Failed int
}

// New makes a Notifier; Run runs it.
func New(o Options) *Notifier {
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{o: o, active: map[string]bool{}, lastOne: map[string]time.Time{}}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Update takes new options (a reload) and keeps what it knows of the
// conditions, so a reload does not repeat notifications already sent.
// Metrics, Clock, Sleep, Interval, Explain and Ticks stay as New set them.
func (n *Notifier) Update(o Options) {
	n.mu.Lock()
	defer n.mu.Unlock()
	o.Metrics, o.Clock, o.Sleep, o.Interval, o.Explain, o.Ticks = n.o.Metrics, n.o.Clock, n.o.Sleep, n.o.Interval, n.o.Explain, n.o.Ticks
	if o.Client == nil {
		o.Client = n.o.Client
	}
	if o.Retries == 0 {
		o.Retries = n.o.Retries
	}
	if o.Logger == nil {
		o.Logger = n.o.Logger
	}
	n.o = o
}

// Run checks every Interval until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	n.mu.Lock()
	interval, ticks := n.o.Interval, n.o.Ticks
	n.mu.Unlock()
	var c <-chan time.Time
	if ticks != nil {
		c = ticks(interval)
	} else {
		t := time.NewTicker(interval)
		defer t.Stop()
		c = t.C
	}
	for {
		n.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-c:
		}
	}
}

// Check reads the metrics once, judges every condition and posts what
// started or ended (within the rate limits).
func (n *Notifier) Check(ctx context.Context) {
	n.mu.Lock()
	o := n.o
	n.mu.Unlock()
	if o.URL == "" || len(o.Conditions) == 0 {
		return // no webhook configured
	}
	mfs, err := o.Metrics.Gather()
	if err != nil {
		o.Logger.Warn("alerts: reading the metrics", "err", err)
	}
	now := o.Clock()
	n.mu.Lock()
	n.hist.add(now, readSnapshot(mfs))
	found := judge(&n.hist, now, o)
	var out []Alert
	for _, c := range o.Conditions {
		a, firing := found[c]
		switch {
		case firing && !n.active[c]:
			a.Status = "firing"
		case !firing && n.active[c]:
			r, _ := config.AlertRuleFor(c)
			a = Alert{Condition: c, Status: "resolved", Severity: r.Severity,
				Summary: r.Resolved, Hint: "Nothing to do."}
		default:
			continue
		}
		// The state changes only once the webhook has heard of it: a
		// notification held back by the rate limit, or lost, is sent at a
		// later check.
		if !n.allowLocked(c, now) {
			n.Dropped++
			o.Logger.Info("alerts: rate limit, notification not sent", "condition", c, "status", a.Status)
			continue
		}
		a.Relay, a.Time = o.Relay, now.UTC()
		out = append(out, a)
	}
	n.mu.Unlock()
	for _, a := range out {
		if err := n.post(ctx, o, a); err != nil {
			n.mu.Lock()
			n.Failed++
			n.mu.Unlock()
			o.Logger.Warn("alerts: webhook failed", "condition", a.Condition, "status", a.Status, "err", err)
			continue
		}
		n.mu.Lock()
		n.Posted++
		n.active[a.Condition] = a.Status == "firing"
		n.mu.Unlock()
		o.Logger.Info("alerts: webhook told", "condition", a.Condition, "status", a.Status)
	}
}

// allowLocked applies the rate limits and, when allowed, counts the
// notification.
func (n *Notifier) allowLocked(c string, now time.Time) bool {
	if last, ok := n.lastOne[c]; ok && now.Sub(last) < n.o.MinInterval {
		return false
	}
	n.sent = slices.DeleteFunc(n.sent, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	if n.o.MaxPerHour > 0 && len(n.sent) >= n.o.MaxPerHour {
		return false
	}
	n.sent = append(n.sent, now)
	n.lastOne[c] = now
	return true
}

// post sends a, retrying network failures, 429 and 5xx with a doubling
// backoff (Retry-After when the receiver gives one).
func (n *Notifier) post(ctx context.Context, o Options, a Alert) error {
	body, err := payload(o.Kind, a)
	if err != nil {
		return err
	}
	wait := 2 * time.Second
	var last error
	for try := 0; try <= o.Retries; try++ {
		if try > 0 {
			if err := o.Sleep(ctx, wait); err != nil {
				return err
			}
			wait *= 2
		}
		retry, after, err := once(ctx, o, body)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			return err
		}
		if after > wait {
			wait = min(after, 5*time.Minute)
		}
	}
	return fmt.Errorf("gave up after %d tries: %w", o.Retries+1, last)
}

func once(ctx context.Context, o Options, body []byte) (retry bool, after time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.URL, bytes.NewReader(body))
	if err != nil {
		return false, 0, errors.New("the webhook URL is not a URL (alerts.webhook.url_secret)")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := o.Client.Do(req)
	if err != nil {
		// *url.Error carries the URL, which carries the token: keep only
		// what went wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return true, 0, fmt.Errorf("posting to the webhook: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		var after time.Duration
		if s, err := time.ParseDuration(resp.Header.Get("Retry-After") + "s"); err == nil {
			after = s
		}
		return true, after, fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return false, 0, fmt.Errorf("the webhook answered %s (check alerts.webhook.url_secret and kind)", resp.Status)
}

// payload is a Teams MessageCard or the flat JSON object.
func payload(kind string, a Alert) ([]byte, error) {
	if kind != "teams" {
		return json.Marshal(a)
	}
	color := map[string]string{"critical": "D70000", "warning": "FFA500"}[a.Severity]
	if a.Status == "resolved" {
		color = "2EB886"
	}
	title := fmt.Sprintf("siterelay %s: %s (%s)", a.Relay, a.Condition, a.Status)
	return json.Marshal(map[string]any{
		"@type": "MessageCard", "@context": "https://schema.org/extensions",
		"summary": title, "themeColor": color, "title": title,
		"sections": []map[string]any{{
			"text": a.Summary,
			"facts": []map[string]string{
				{"name": "Relay", "value": a.Relay},
				{"name": "Severity", "value": a.Severity},
				{"name": "Time (UTC)", "value": a.Time.Format(time.RFC3339)},
				{"name": "What to do", "value": a.Hint},
			},
		}},
	})
}

// snapshot is what one reading of the metrics gives the conditions.
type snapshot struct {
	queue, oldest, freeBytes, synced float64
	hasFree, hasSynced               bool
	delivered, deferred, throttled   float64
	allowanceDay                     float64 // the highest upstream's share of its daily allowance used
	tokenOK, tokenFailed             float64
	certs                            map[string]float64 // credential -> seconds left
	renewFailures, renewLeft         map[string]float64 // box-made certificate -> failures in a row, seconds left
	secrets                          map[string]float64 // client secret or password in use -> seconds left
}

func readSnapshot(mfs []*dto.MetricFamily) snapshot {
	s := snapshot{certs: map[string]float64{}, renewFailures: map[string]float64{}, renewLeft: map[string]float64{}, secrets: map[string]float64{}}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			switch mf.GetName() {
			case "siterelay_queue_messages":
				s.queue = v
			case "siterelay_queue_oldest_message_age_seconds":
				s.oldest = v
			case "siterelay_spool_free_bytes":
				s.freeBytes, s.hasFree = v, true
			case "siterelay_clock_synchronised":
				s.synced, s.hasSynced = v, true
			case "siterelay_deliveries_total":
				switch label(m, "result") {
				case "delivered":
					s.delivered += v
				case "deferred":
					s.deferred += v
				}
			case "siterelay_upstream_throttled_total":
				s.throttled += v
			case "siterelay_upstream_allowance_used_ratio":
				if label(m, "window") == "day" {
					s.allowanceDay = max(s.allowanceDay, v)
				}
			case "siterelay_token_renewals_total":
				if label(m, "result") == "ok" {
					s.tokenOK += v
				} else {
					s.tokenFailed += v
				}
			case "siterelay_credential_expires_in_seconds":
				s.certs[label(m, "credential")] = v
			case "siterelay_credential_secret_expires_in_seconds":
				s.secrets[label(m, "kind")+" "+label(m, "credential")] = v
			case "siterelay_credential_renewal_failures":
				s.renewFailures[label(m, "credential")] = v
			case "siterelay_credential_renewal_expires_in_seconds":
				s.renewLeft[label(m, "credential")] = v
			}
		}
	}
	return s
}

// history keeps the readings of the last hour, to judge increases over a
// window as Prometheus' increase() does.
type history struct {
	at   []time.Time
	snap []snapshot
}

func (h *history) add(now time.Time, s snapshot) {
	h.at, h.snap = append(h.at, now), append(h.snap, s)
	for len(h.at) > 0 && now.Sub(h.at[0]) > time.Hour {
		h.at, h.snap = h.at[1:], h.snap[1:]
	}
}

// increase of f over the window before now, and whether the history
// reaches that far back (without, nothing is judged "unchanged").
func (h *history) increase(now time.Time, window time.Duration, f func(snapshot) float64) (float64, bool) {
	if len(h.snap) == 0 {
		return 0, false
	}
	cur := f(h.snap[len(h.snap)-1])
	for i := len(h.at) - 1; i >= 0; i-- {
		if now.Sub(h.at[i]) >= window {
			return max(0, cur-f(h.snap[i])), true
		}
	}
	return max(0, cur-f(h.snap[0])), false
}

// AllowanceDayShare is the share of an upstream's daily recipients past
// which allowance_nearly_used fires (docs/alerts.yml's 0.9).
const AllowanceDayShare = 0.9

// judge returns the conditions that hold now, with their summaries.
func judge(h *history, now time.Time, o Options) map[string]Alert {
	s := h.snap[len(h.snap)-1]
	out := map[string]Alert{}
	fire := func(c, format string, a ...any) {
		r, _ := config.AlertRuleFor(c)
		out[c] = Alert{Condition: c, Severity: r.Severity, Summary: fmt.Sprintf(format, a...), Hint: r.Hint}
	}
	delivered := func(s snapshot) float64 { return s.delivered }
	if d, full := h.increase(now, 30*time.Minute, delivered); full && s.queue > 0 && d == 0 {
		fire("queue_stuck", "%.0f messages wait and nothing was delivered for 30 minutes.", s.queue)
	}
	if age := time.Duration(s.oldest * float64(time.Second)); age > o.OldestMessageAge {
		fire("oldest_message", "The oldest waiting message is %v old (alert from %v).", age.Round(time.Minute), o.OldestMessageAge)
	}
	def, _ := h.increase(now, 15*time.Minute, func(s snapshot) float64 { return s.deferred })
	if dlv, _ := h.increase(now, 15*time.Minute, delivered); def > 0 && dlv == 0 {
		fire("upstream_failing", "%.0f recipients deferred in 15 minutes, none delivered.", def)
	}
	if th, _ := h.increase(now, 15*time.Minute, func(s snapshot) float64 { return s.throttled }); th > 0 {
		fire("throttled", "%.0f throttling replies from the upstream in 15 minutes.", th)
	}
	if s.allowanceDay > AllowanceDayShare {
		fire("allowance_nearly_used", "%.0f%% of the upstream's daily recipients are used.", s.allowanceDay*100)
	}
	failed, _ := h.increase(now, 15*time.Minute, func(s snapshot) float64 { return s.tokenFailed })
	if ok, _ := h.increase(now, 15*time.Minute, func(s snapshot) float64 { return s.tokenOK }); failed > 0 && ok == 0 {
		fire("token_renewal_failing", "%.0f token requests failed in 15 minutes, none succeeded.", failed)
	}
	var expiring []string
	for _, c := range []string{"client_certificate", "tls_certificate"} {
		if left, ok := s.certs[c]; ok && left < 14*86400 {
			expiring = append(expiring, fmt.Sprintf("%s in %.1f days", strings.ReplaceAll(c, "_", " "), left/86400))
		}
	}
	if len(expiring) > 0 {
		fire("credential_expiring", "Expiring: %s.", strings.Join(expiring, ", "))
	}
	var secrets []string
	for _, c := range slices.Sorted(maps.Keys(s.secrets)) {
		if left := s.secrets[c]; left < config.SecretExpiringDays*86400 {
			secrets = append(secrets, fmt.Sprintf("%s in %.1f days", c, left/86400))
		}
	}
	if len(secrets) > 0 {
		fire("secret_expiring", "Expiring: %s.", strings.Join(secrets, ", "))
	}
	var failing, overdue []string
	for _, c := range slices.Sorted(maps.Keys(s.renewFailures)) {
		why := ""
		if o.Explain != nil {
			if w := o.Explain(c); w != "" {
				why = " (" + w + ")"
			}
		}
		if n := s.renewFailures[c]; n > 0 {
			failing = append(failing, fmt.Sprintf("%s: %.0f attempts failed%s", c, n, why))
		}
		if left, ok := s.renewLeft[c]; ok && left < 30*86400 {
			overdue = append(overdue, fmt.Sprintf("%s expires in %.1f days%s", c, left/86400, why))
		}
	}
	if len(failing) > 0 {
		fire("certificate_renewal_failing", "The box cannot renew its certificate: %s.", strings.Join(failing, "; "))
	}
	if len(overdue) > 0 {
		fire("certificate_renewal_overdue", "Not renewed: %s.", strings.Join(overdue, "; "))
	}
	if s.hasFree && s.freeBytes < o.MinFreeBytes {
		fire("disk_almost_full", "%.0f MB free for the spool (alert below %.0f MB).", s.freeBytes/1e6, o.MinFreeBytes/1e6)
	}
	if s.hasSynced && s.synced == 0 {
		fire("clock_not_synchronised", "The kernel says the clock is not synchronised.")
	}
	return out
}
