package inbound

import (
	"strings"
	"testing"
)

// TestMaxHeaderBytes: limits.max_header_bytes reaches relay/message's
// check; a header section over it is refused with 552 5.3.4 naming the key,
// one under it is taken.
func TestMaxHeaderBytes(t *testing.T) {
	f := start(t, func(o *Options) { o.MaxHeaderBytes = 2000; o.MaxMessageBytes = 100000 })
	for _, tc := range []struct {
		fields int
		want   string
	}{{10, "250"}, {100, "552 5.3.4"}} {
		r := dialRaw(t, f.addr)
		r.cmd("EHLO printer", "250")
		r.cmd("MAIL FROM:<p@plant.example>", "250")
		r.cmd("RCPT TO:<a@example.com>", "250")
		r.cmd("DATA", "354")
		r.send(strings.Repeat("X-Sensor: 0123456789012345678901234567890123456789\r\n", tc.fields) + "Subject: alarm\r\n\r\nhigh\r\n")
		got := r.cmd(".", tc.want)
		if tc.want != "250" && !strings.Contains(got, "2000 bytes (limits.max_header_bytes)") {
			t.Errorf("%d fields: reply %q does not name limits.max_header_bytes", tc.fields, got)
		}
	}
}
