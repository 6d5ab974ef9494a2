package config

import (
	"strings"
	"testing"
)

func TestForwardSyslogValidation(t *testing.T) {
	for _, tt := range []struct {
		name, syslog, wantKey string
	}{
		{"minimal", `{"address": "siem.example:6514"}`, ""},
		{"full", `{"address": "10.0.0.5:6514", "tls": true, "ca_file": "certs/ca.pem", "server_name": "siem", "streams": ["trace"], "facility": "mail", "app_name": "relay", "buffer_bytes": 1048576}`, ""},
		{"no port", `{"address": "siem.example"}`, "forward.syslog.address"},
		{"ca without tls", `{"address": "siem:514", "ca_file": "ca.pem"}`, "forward.syslog.tls"},
		{"unknown stream", `{"address": "siem:514", "streams": ["mail"]}`, "forward.syslog.streams[0]"},
		{"unknown facility", `{"address": "siem:514", "facility": "local9"}`, "forward.syslog.facility"},
		{"app name with a space", `{"address": "siem:514", "app_name": "site relay"}`, "forward.syslog.app_name"},
		{"tiny buffer", `{"address": "siem:514", "buffer_bytes": 1000}`, "forward.syslog.buffer_bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := `{"listeners": [{"name": "smtp", "address": ":25", "mode": "smtp", "allowed_networks": ["10.0.0.0/8"]}],
				"upstream": {"kind": "capture"}, "forward": {"syslog": ` + tt.syslog + `}}`
			c, err := Parse([]byte(doc))
			if tt.wantKey == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s := c.Forward.Syslog; len(s.Streams) == 0 || s.Facility == "" || s.AppName == "" || s.BufferBytes == 0 {
					t.Errorf("defaults not filled: %+v", s)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Errorf("err = %v, want one naming %s", err, tt.wantKey)
			}
		})
	}
}
