package ctl

import (
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

func TestForwardLine(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		f    api.Forward
		want string
	}{
		{"connected", api.Forward{Address: "siem:6514", State: "connected", Dropped: map[string]uint64{"trace": 0}},
			"siem:6514 connected, 0 B waiting, none dropped"},
		{"buffering names the error", api.Forward{Address: "siem:6514", State: "buffering", BufferedBytes: 3 << 20,
			LastError: "connecting to siem:6514: connection refused", LastErrorAt: now.Add(-2 * time.Minute)},
			"siem:6514 BUFFERING (the collector does not take messages; retried), 3.0 MiB waiting, none dropped; last error 2m0s ago: connecting to siem:6514: connection refused"},
		{"drops by stream", api.Forward{Address: "siem:514", State: "idle", Dropped: map[string]uint64{"trace": 7, "audit": 0, "logs": 2}},
			"siem:514 idle, 0 B waiting, 9 DROPPED since start (trace 7, logs 2)"},
		{"an old error is not shown once connected", api.Forward{Address: "siem:514", State: "connected", LastError: "old", LastErrorAt: now.Add(-time.Hour)},
			"siem:514 connected, 0 B waiting, none dropped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := forwardLine(&tt.f, now); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}
