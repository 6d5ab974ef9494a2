package relay

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

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
		`siterelay_device_tls_messages_total{account="",cipher="",listener="` + listener + `",version="none"} 1`,
		`siterelay_refused_total{listener="` + listener + `",reason="bad_sender"} 1`,
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
