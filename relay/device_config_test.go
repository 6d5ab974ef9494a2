package relay

import (
	"context"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

// A configured device is recognised, its mail fixed on the way in, and the
// trace names it and keeps the sender it gave (so a search by that sender
// still finds the message); under devices_only another client is refused at
// MAIL with words naming the key and the adopt command.
func TestDeviceRecognisedFixedAndTraced(t *testing.T) {
	dir := relaytest.StateDir(t)
	cfg := config.Default()
	cfg.Devices = []config.Device{{Name: "boiler-scada", Addresses: []string{"127.0.0.1"}, Class: "alarm",
		Fixes: config.DeviceFixes{RewriteFrom: "relay@contoso.com", SubjectPrefix: "[boiler]", CleanDisplayName: true}}}
	cfg.DevicesOnly = true
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	r, addr := run(t, cfg, dir)
	if err := send(t, addr, "root@scada.local", []string{"ops@example.com"},
		"From: \"SCADA <root@scada.local>\" <root@scada.local>\r\nSubject: BOILER ALARM\r\n\r\npressure\r\n"); err != nil {
		t.Fatal(err)
	}
	var files []string
	relaytest.Eventually(t, "a message in outbox/", func() bool {
		files, _ = filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
		return len(files) == 1
	})
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Return-Path: <relay@contoso.com>\r\n", "From: \"SCADA root scada.local\" <relay@contoso.com>\r\n",
		"Reply-To: \"SCADA <root@scada.local>\" <root@scada.local>\r\n", "Subject: [boiler] BOILER ALARM\r\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("delivered message lacks %q:\n%s", want, b)
		}
	}
	var got []trace.Event
	relaytest.Eventually(t, "received and delivered in the trace", func() bool {
		got, _ = r.Trace().Query(context.Background(), trace.Filter{Sender: "root@scada.local"})
		return len(got) == 2
	})
	for _, e := range got {
		if e.Device != "boiler-scada" || e.From != "relay@contoso.com" || e.FromReceived != "root@scada.local" {
			t.Errorf("%s event: device %q from %q from_received %q", e.Kind, e.Device, e.From, e.FromReceived)
		}
	}

	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`siterelay_device_messages_total{device="boiler-scada",kind="received"} 1`,
		`siterelay_device_messages_total{device="boiler-scada",kind="delivered"} 1`,
		`siterelay_device_backlog_messages{class="alarm",device="boiler-scada"} 0`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// 127.0.0.2 is no device.
	c := relaytest.DialFrom(t, net.IPv4(127, 0, 0, 2), addr)
	defer c.Close()
	err = c.Mail("x@plant.example", nil)
	var se *smtp.SMTPError
	if !asSMTP(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) ||
		!strings.Contains(se.Message, "devices_only") || !strings.Contains(se.Message, "relayd devices adopt") {
		t.Fatalf("MAIL from an unknown client under devices_only: got %v", err)
	}
}
