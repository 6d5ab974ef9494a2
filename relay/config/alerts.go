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

// AlertRule is one alert of the project: the Prometheus rule in
// docs/alerts.yml (Alert) and the relay's own webhook condition
// (Condition) judged from the same metrics, with the words both say.
// AlertRules is the one definition: TestAlertRulesAgree (relay/alerts)
// fails when docs/alerts.yml, the webhook's conditions or docs/alerts.md
// disagree with it.
type AlertRule struct {
	Alert     string // the Prometheus alert's name in docs/alerts.yml
	Condition string // the webhook's condition; "" only with NoWebhook
	// NoWebhook says why a rule has no webhook condition (it is also
	// said in docs/alerts.md); "" when it has one.
	NoWebhook string
	Severity  string // "warning" or "critical", the rule's severity label
	Hint      string // what to look at: the rule's hint annotation, the webhook's hint
	Resolved  string // the webhook's summary when the condition ends
}

// AlertRules are every alert, in the order of docs/alerts.yml.
var AlertRules = []AlertRule{
	{Alert: "SiterelayQueueStuck", Condition: "queue_stuck", Severity: "critical", Resolved: "Mail is being delivered again.",
		Hint: "The upstream accepts nothing: look at the last deferral's reply and hint (relayctl trace -kind deferred, or the status page), then the upstream's credentials and network."},
	{Alert: "SiterelayOldestMessageOld", Condition: "oldest_message", Severity: "warning", Resolved: "No message waits too long any more.",
		Hint: "Mail is retried until delivery.lifetime runs out, then bounced: look up the oldest message in the trace (relayctl trace -kind deferred) for the upstream's reply."},
	{Alert: "SiterelayUpstreamFailing", Condition: "upstream_failing", Severity: "critical", Resolved: "The upstream accepts mail again.",
		Hint: "Nothing is lost: mail waits in the spool. The deferral's hint in the trace says what the upstream answered and what to change."},
	{Alert: "SiterelayThrottled", Condition: "throttled", Severity: "warning", Resolved: "The upstream no longer throttles the relay.",
		Hint: "The relay cools down and retries; nothing is lost. If it keeps happening, lower upstream.m365.limits (messages per minute, recipients per day) or spread the devices' sending."},
	{Alert: "SiterelayAllowanceNearlyUsed", Condition: "allowance_nearly_used", Severity: "warning", Resolved: "The upstream's daily allowance has room again.",
		Hint: "Past the limit the relay holds mail back until the 24-hour window frees up: find the device that sends most (siterelay_device_tls_messages_total) or raise the mailbox's allowance."},
	{Alert: "SiterelayTokenRenewalFailing", Condition: "token_renewal_failing", Severity: "critical", Resolved: "The OAuth token is renewed again.",
		Hint: "Entra refuses or cannot be reached: check the app's client secret or certificate (expired?), the tenant and client ID, and that login.microsoftonline.com is reachable. Mail waits meanwhile."},
	{Alert: "SiterelayCredentialExpiring", Condition: "credential_expiring", Severity: "warning", Resolved: "No credential expires within 14 days any more.",
		Hint: "Renew it before it runs out: the client certificate in Entra (and upstream.m365.certificate_file) or the connector, the STARTTLS certificate in tls.cert_file."},
	{Alert: "SiterelaySecretExpiring", Condition: "secret_expiring", Severity: "warning", Resolved: "No client secret or password in use expires within 30 days any more.",
		Hint: "Nothing renews a client secret or password: make a new one (Entra admin center > App registrations > the app > Certificates & secrets > New client secret, or the mailbox's password), put it on the box with relayctl creds put NAME -kind client-secret -expires DATE, then delete the old one in the portal. Better: a certificate made on the box renews itself (docs/m365.md)."},
	{Alert: "SiterelayCertificateRenewalFailing", Condition: "certificate_renewal_failing", Severity: "warning", Resolved: "The box renews its certificate again.",
		Hint: "The box renews its own certificate through Graph from renew_before_days before expiry and keeps sending with the current one meanwhile. relayctl status shows Microsoft's refusal explained (application_object_id is a client id, a tenant policy caps certificate lifetimes, the certificate was removed from the app); fix it, then relayctl creds renew NAME."},
	{Alert: "SiterelayCertificateRenewalOverdue", Condition: "certificate_renewal_overdue", Severity: "critical", Resolved: "The box's certificate is renewed.",
		Hint: "Renewal has failed for a month: once the certificate expires, Graph no longer lets the box roll its key and every message waits. Fix the refusal shown by relayctl status and run relayctl creds renew NAME, or make a new certificate (relayctl creds new-certificate) and upload it by hand."},
	{Alert: "SiterelayDiskAlmostFull", Condition: "disk_almost_full", Severity: "critical", Resolved: "The spool has room again.",
		Hint: "When the spool is full devices are told to retry (452 4.3.1): deliver what waits (is the upstream failing?) or give the box a bigger card."},
	{Alert: "SiterelayClockNotSynchronised", Condition: "clock_not_synchronised", Severity: "warning", Resolved: "The clock is synchronised again.",
		Hint: "TLS, OAuth tokens and certificates need the right time: let the box reach an NTP server (UDP 123) from the plant network."},
}

// SecretExpiringDays is how long before a client secret or password
// expires (where its expiry is known: relayctl creds put -expires) the
// status page warns and SiterelaySecretExpiring fires: a person has to
// make a new one in the portal and put it on the box; nothing renews it.
const SecretExpiringDays = 30

// AlertConditions are the conditions a webhook can be told of: those of
// AlertRules that have one, in its order.
var AlertConditions = func() []string {
	var cs []string
	for _, r := range AlertRules {
		if r.Condition != "" {
			cs = append(cs, r.Condition)
		}
	}
	return cs
}()

// AlertRuleFor returns the rule of webhook condition c.
func AlertRuleFor(c string) (AlertRule, bool) {
	for _, r := range AlertRules {
		if r.Condition != "" && r.Condition == c {
			return r, true
		}
	}
	return AlertRule{}, false
}

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
