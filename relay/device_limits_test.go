package relay

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// A device's own allowances are enforced in the SMTP dialogue, each
// refusal naming the device and the key.
func TestDeviceAllowancesInDialogue(t *testing.T) {
	cfg := config.Default()
	cfg.Devices = []config.Device{{Name: "hmi-5", Addresses: []string{"127.0.0.1"}, MaxMessageBytes: 2000,
		AllowedSenders: []string{"@plant.example"}, AllowedRecipients: []string{"ops@example.com"},
		MessagesPerMinute: new(2), Burst: 3}} // every MAIL takes from it: recipient, size, within
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	_, addr := run(t, cfg, relaytest.StateDir(t))
	for _, tc := range []struct {
		name, from, to, body string
		code                 int
		words                string
	}{
		{"sender", "x@other.example", "ops@example.com", "Subject: a\r\n\r\nb\r\n", 553, "allowed_senders"},
		{"recipient", "hmi5@plant.example", "boss@example.com", "Subject: a\r\n\r\nb\r\n", 550, "allowed_recipients"},
		{"size", "hmi5@plant.example", "ops@example.com", "Subject: a\r\n\r\n" + strings.Repeat("x\r\n", 1000), 552, "2000 bytes (devices[].max_message_bytes of device hmi-5)"},
		{"within", "hmi5@plant.example", "ops@example.com", "Subject: a\r\n\r\nb\r\n", 0, ""},
		{"rate", "hmi5@plant.example", "ops@example.com", "Subject: a\r\n\r\nb\r\n", 450, "device hmi-5"},
	} {
		err := send(t, addr, tc.from, []string{tc.to}, tc.body)
		if tc.code == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		var se *smtp.SMTPError
		if !asSMTP(err, &se) || se.Code != tc.code || !strings.Contains(se.Message, tc.words) {
			t.Errorf("%s: got %v, want %d with %q", tc.name, err, tc.code, tc.words)
		}
	}
}
