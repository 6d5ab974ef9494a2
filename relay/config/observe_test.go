package config

import (
	"strings"
	"testing"
)

func TestTraceMaxBytes(t *testing.T) {
	base := `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}`
	c, err := Parse([]byte(base + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Trace.MaxBytes, int64(512<<20); got != want {
		t.Errorf("default trace.max_bytes = %d, want %d", got, want)
	}
	c, err = Parse([]byte(base + `,"trace":{"max_bytes":2097152}}`))
	if err != nil || c.Trace.MaxBytes != 2<<20 {
		t.Errorf("2 MiB: got %v, %v", c, err)
	}
	for _, v := range []string{"1000", "-5"} {
		_, err := Parse([]byte(base + `,"trace":{"max_bytes":` + v + `}}`))
		if err == nil || !strings.Contains(err.Error(), "trace.max_bytes:") {
			t.Errorf("max_bytes %s: got %v, want an error naming trace.max_bytes", v, err)
		}
	}
}

func TestAlertsWebhook(t *testing.T) {
	base := `{"listeners":[{"address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],"upstream":{"kind":"capture"}`
	c, err := Parse([]byte(base + `,"alerts":{"webhook":{"kind":"teams","url_secret":"teams-url"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Alerts.Webhook
	if len(w.Conditions) != len(AlertConditions) || w.MinInterval.D().String() != "1h0m0s" || w.MaxPerHour != 12 || w.MinFreeBytes != 500e6 {
		t.Errorf("defaults: %+v", w)
	}
	if c, err := Parse([]byte(base + `}`)); err != nil || c.Alerts.Webhook != nil {
		t.Errorf("no webhook: %+v, %v", c.Alerts, err)
	}
	_, err = Parse([]byte(base + `,"alerts":{"webhook":{"kind":"slack","conditions":["queue_stuck","sky_falling"],"min_interval":"5s","max_per_hour":1000,"oldest_message_age":"1s","min_free_bytes":-1}}}`))
	for _, key := range []string{"alerts.webhook.kind", "alerts.webhook.url_secret", "alerts.webhook.conditions[1]", "alerts.webhook.min_interval",
		"alerts.webhook.max_per_hour", "alerts.webhook.oldest_message_age", "alerts.webhook.min_free_bytes"} {
		if err == nil || !strings.Contains(err.Error(), key+":") {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "conditions[0]") {
		t.Errorf("a good condition refused: %v", err)
	}
}
