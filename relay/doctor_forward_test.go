package relay

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// With forward.syslog, doctor says whether the collector takes a
// connection, and what to change when it does not; without, nothing.
func TestDoctorChecksTheSyslogCollector(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	down := l.Addr().String()
	l.Close()
	tests := []struct {
		name   string
		syslog *config.Syslog
		want   string // "" no step; "ok"; else a word of the detail
	}{
		{"off", nil, ""},
		{"listening", &config.Syslog{Address: up.Addr().String()}, "ok"},
		{"nobody there", &config.Syslog{Address: down}, "connection refused"},
		{"ca file missing", &config.Syslog{Address: up.Addr().String(), TLS: true, CAFile: "certs/none.pem"}, "forward.syslog.ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Forward.Syslog = tt.syslog
			cfg.SetDefaults()
			steps, _ := Doctor(context.Background(), cfg, relaytest.StateDir(t), Deps{}, "")
			st, ok := stepNamed(steps, "syslog collector")
			switch {
			case tt.want == "":
				if ok {
					t.Errorf("step %+v without forward.syslog", st)
				}
			case !ok:
				t.Errorf("no syslog step in %+v", steps)
			case tt.want == "ok":
				if !st.OK {
					t.Errorf("step %+v, want ok", st)
				}
			default:
				if st.OK || !strings.Contains(st.Detail, tt.want) || !strings.Contains(st.Detail, " — ") {
					t.Errorf("step %+v, want a failure naming %q and what to change", st, tt.want)
				}
			}
		})
	}
}
