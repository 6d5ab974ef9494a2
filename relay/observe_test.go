package relay

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// Scripted traffic through a whole relay, then the scrape: deliveries by
// upstream kind and result, the device's TLS (none here), refusals by
// listener, the spool by device, build info and the clock.
func TestMetricsAfterTraffic(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	fake.RefuseRcpt("gone@example.com", upstreamtest.Reply(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound"))
	cfg := smarthostConfig(fake)
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com", "gone@example.com"}, "Subject: alarm\r\n\r\nhigh\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := send(t, addr, "", []string{"ops@example.com"}, "Subject: x\r\n\r\ny\r\n"); err == nil {
		t.Fatal("the null sender was accepted")
	}
	fake.WaitMessages(t, 2) // the message and the bounce (to the sender and the admin)
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	scrape := func() string {
		rec := httptest.NewRecorder()
		r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	relaytest.Eventually(t, "the failure counted", func() bool {
		return strings.Contains(scrape(), `siterelay_deliveries_total{result="bounced",upstream="smtp"} 1`)
	})
	body := scrape()
	listener := cfg.Listeners[0].Name
	for _, want := range []string{
		`siterelay_deliveries_total{result="delivered",upstream="smtp"} 3`,
		`siterelay_deliveries_total{result="deferred",upstream="smtp"} 0`,
		`siterelay_device_tls_messages_total{cipher="",device="unknown",listener="` + listener + `",version="none"} 1`,
		`siterelay_refused_total{device="unknown",listener="` + listener + `",reason="bad_sender"} 1`,
		`siterelay_upstream_attempt_duration_seconds_count{upstream="smtp"} 2`,
		`siterelay_upstream_throttled_total{upstream="smtp"} 0`,
		`siterelay_clock_synchronised `,
		`siterelay_build_info{`,
	} {
		if !strings.Contains(body, "\n"+want) {
			t.Errorf("scrape lacks %q:\n%s", want, grepLines(body, strings.SplitN(want, "{", 2)[0]))
		}
	}
	if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "plc@plant.example") {
		t.Error("an address or a sender in the metrics")
	}
}

// docs/grafana-dashboard.json is a dashboard Grafana imports: a fleet row
// and a per-site row, every panel with a query, the data source an input.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Inputs []struct{ Name, Type string } `json:"__inputs"`
		Title  string
		UID    string
		Panels []struct {
			Type, Title, Repeat string
			Targets             []struct{ Expr string }
		}
		Templating struct{ List []struct{ Name string } }
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.UID == "" || len(d.Templating.List) == 0 || d.Templating.List[0].Name != "site" {
		t.Errorf("not importable as is: inputs %+v, uid %q, variables %+v", d.Inputs, d.UID, d.Templating.List)
	}
	var rows []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows = append(rows, p.Title+"/"+p.Repeat)
			continue
		}
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	if want := []string{"Fleet/", "Site $site/site"}; !slices.Equal(rows, want) {
		t.Errorf("rows %v, want %v", rows, want)
	}
}

// The webhook hears of a condition from a running relay, and a missing
// URL secret is refused naming its key.
func TestAlertWebhookFromRelay(t *testing.T) {
	got := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
	}))
	defer srv.Close()
	cfg := config.Default()
	cfg.Alerts.Webhook = &config.Webhook{Kind: "json", URLSecret: "webhook-url", MinFreeBytes: 1 << 62} // the disk is always "almost full"
	cfg.SetDefaults()
	for i := range cfg.Listeners {
		cfg.Listeners[i].Address = "127.0.0.1:0"
	}
	secrets := map[string]string{"webhook-url": srv.URL + "/hook?token=T0KEN\n"}
	r, err := New(cfg, relaytest.StateDir(t), Deps{Secret: func(n string) ([]byte, error) {
		if s, ok := secrets[n]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case b := <-got:
		if !strings.Contains(b, `"condition":"disk_almost_full"`) || !strings.Contains(b, `"status":"firing"`) || strings.Contains(b, "T0KEN") {
			t.Errorf("webhook got %s", b)
		}
	case <-time.After(time.Until(relaytest.Deadline(t))):
		t.Fatal("the webhook heard nothing")
	}
	c2 := *cfg
	c2.Alerts.Webhook = &config.Webhook{Kind: "teams", URLSecret: "nosuch"}
	c2.SetDefaults()
	// A webhook whose URL is not there yet turns the alerts off and says
	// so; the mail does not wait for it.
	if err := r.Reload(&c2); err != nil {
		t.Fatalf("reload with a missing webhook secret: %v", err)
	}
	if w := r.Status().Waiting; len(w) != 1 || w[0].Key != "alerts.webhook.url_secret" || w[0].Upstream != "" || w[0].Reason != config.ReasonMissing {
		t.Errorf("Status.Waiting = %+v, want the webhook's URL", w)
	}
}
