package config

import (
	"fmt"
	"slices"
	"time"
)

// Alerts is the relay's own alert path, apart from the mail path it
// watches: a webhook (Microsoft Teams, or any JSON receiver) told of the
// same conditions as docs/alerts.yml.
type Alerts struct {
	Webhook *Webhook `json:"webhook,omitempty"`
}

// Webhook is where alerts are POSTed. The URL carries its own secret token
// (Teams puts one in the path), so it is a secret: UrlSecret names the file
// in the secret store that holds it, and it is never logged.
type Webhook struct {
	// Kind is "teams" (a Teams incoming webhook's MessageCard) or "json"
	// (one flat JSON object).
	Kind      string `json:"kind"`
	URLSecret string `json:"url_secret"`
	// Conditions are the alerts sent; default all of AlertConditions.
	Conditions []string `json:"conditions,omitempty"`
	// MinInterval is the least time between two notifications of one
	// condition (default 1h); MaxPerHour caps them all (default 12).
	MinInterval Duration `json:"min_interval,omitempty"`
	MaxPerHour  int      `json:"max_per_hour,omitempty"`
	// OldestMessageAge is when a waiting message is too old (default 1h);
	// MinFreeBytes when the spool's disk is almost full (default 500 MB).
	OldestMessageAge Duration `json:"oldest_message_age,omitempty"`
	MinFreeBytes     int64    `json:"min_free_bytes,omitempty"`
}

// AlertConditions are the conditions a webhook can be told of, the same
// as the rules in docs/alerts.yml.
var AlertConditions = []string{"queue_stuck", "oldest_message", "upstream_failing", "throttled", "allowance_nearly_used", "token_renewal_failing",
	"credential_expiring", "certificate_renewal_failing", "certificate_renewal_overdue", "disk_almost_full", "clock_not_synchronised"}

func (a *Alerts) setDefaults() {
	w := a.Webhook
	if w == nil {
		return
	}
	if len(w.Conditions) == 0 {
		w.Conditions = slices.Clone(AlertConditions)
	}
	setDefault(&w.MinInterval, Duration(time.Hour))
	setDefault(&w.MaxPerHour, 12)
	setDefault(&w.OldestMessageAge, Duration(time.Hour))
	setDefault(&w.MinFreeBytes, 500e6)
}

func (a *Alerts) validate() Errors {
	var errs Errors
	bad := func(key, format string, v ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, v...)})
	}
	w := a.Webhook
	if w == nil {
		return nil
	}
	if w.Kind != "teams" && w.Kind != "json" {
		bad("alerts.webhook.kind", "%q: want \"teams\" (a Microsoft Teams incoming webhook) or \"json\" (a JSON POST)", w.Kind)
	}
	if w.URLSecret == "" {
		bad("alerts.webhook.url_secret", "name the file in the secret store that holds the webhook's URL (it carries a token, so it is a secret)")
	}
	for i, c := range w.Conditions {
		if !slices.Contains(AlertConditions, c) {
			bad(fmt.Sprintf("alerts.webhook.conditions[%d]", i), "%q: want one of %v", c, AlertConditions)
		}
	}
	if w.MinInterval.D() < time.Minute {
		bad("alerts.webhook.min_interval", "at least 1m, so that a flapping condition cannot flood the channel")
	}
	if w.MaxPerHour < 1 || w.MaxPerHour > 120 {
		bad("alerts.webhook.max_per_hour", "%d: want 1 to 120", w.MaxPerHour)
	}
	if w.OldestMessageAge.D() < time.Minute {
		bad("alerts.webhook.oldest_message_age", "at least 1m")
	}
	if w.MinFreeBytes < 0 {
		bad("alerts.webhook.min_free_bytes", "cannot be negative")
	}
	return errs
}
