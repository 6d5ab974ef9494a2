package relay

import (
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// sendAs sends from the loopback address local; it returns the first error.
func sendAs(t *testing.T, local net.IP, addr, from, body string) error {
	t.Helper()
	c := relaytest.DialFrom(t, local, addr)
	defer c.Close()
	return c.SendMail(from, []string{"ops@example.com"}, strings.NewReader(body))
}

// The per-device series are labelled with the configured device's name,
// and a client that is no device with "unknown", never its address: the
// spool by device, the TLS the device used, refusals by reason and device.
func TestDeviceMetricLabels(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(fake)
	cfg.Delivery.FirstRetry, cfg.Delivery.MaxRetry = config.Duration(time.Hour), config.Duration(time.Hour) // the deferred message stays
	cfg.Devices = []config.Device{{Name: "boiler-scada", Addresses: []string{"127.0.0.1"}}, {Name: "mfp-hall-2", Addresses: []string{"127.0.0.9"}}}
	r, addr := run(t, cfg, relaytest.StateDir(t))
	boiler, stranger := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	if err := sendAs(t, boiler, addr, "boiler@plant.example", "Subject: BOILER ALARM\r\n\r\npressure\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []net.IP{boiler, stranger} {
		if err := sendAs(t, ip, addr, "", "Subject: x\r\n\r\ny\r\n"); err == nil {
			t.Fatalf("the null sender from %s was accepted", ip)
		}
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	relaytest.Eventually(t, "the boiler's message deferred", func() bool {
		return strings.Contains(scrape(), "\n"+`siterelay_deliveries_total{result="deferred",upstream="smtp"} 1`)
	})
	body := scrape()
	l := cfg.Listeners[0].Name
	for _, want := range []string{
		`siterelay_device_queue_messages{device="boiler-scada"} 1`,
		`siterelay_device_queue_messages{device="mfp-hall-2"} 0`,
		`siterelay_device_queue_messages{device="unknown"} 0`,
		`siterelay_device_queue_oldest_message_age_seconds{device="unknown"} 0`,
		`siterelay_device_tls_messages_total{cipher="",device="boiler-scada",listener="` + l + `",version="none"} 1`,
		`siterelay_refused_total{device="boiler-scada",listener="` + l + `",reason="bad_sender"} 1`,
		`siterelay_refused_total{device="unknown",listener="` + l + `",reason="bad_sender"} 1`,
		`siterelay_refused_total{device="unknown",listener="` + l + `",reason="rate_limited"} 0`,
	} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("scrape lacks %q:\n%s", want, grepLines(body, strings.SplitN(want, "{", 2)[0]))
		}
	}
	if !strings.Contains(body, "\n"+`siterelay_device_queue_oldest_message_age_seconds{device="boiler-scada"} `) {
		t.Errorf("no oldest age for the boiler:\n%s", grepLines(body, "oldest"))
	}
	if strings.Contains(body, "127.0.0.") || strings.Contains(body, "boiler@plant.example") || strings.Contains(body, `account=`) {
		t.Errorf("an address, a sender or a login label in the metrics:\n%s", grepLines(body, "device"))
	}
}
