package relay

import (
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/forward/forwardtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestForwardSyslogCarriesTraceAndLogs: a relay with forward.syslog sends
// its trace events and log lines to the collector, and status shows it.
func TestForwardSyslogCarriesTraceAndLogs(t *testing.T) {
	col := forwardtest.New(t)
	messages := func() string { return strings.Join(col.Messages(), "\n") }

	cfg := config.Default()
	cfg.Forward.Syslog = &config.Syslog{Address: col.Addr(), Facility: "mail"}
	cfg.SetDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc7@plant.example", []string{"ops@example.com"}, "Subject: alarm 17\r\n\r\nlevel high\r\n"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "received and delivered at the collector", func() bool {
		m := messages()
		return strings.Contains(m, ` trace [siterelay@32473 result="received"`) && strings.Contains(m, ` trace [siterelay@32473 result="delivered"`)
	})
	m := messages()
	for _, want := range []string{
		`<22>1 `,                               // mail.info
		` relay.localhost siterelay - trace [`, // host, app, MSGID
		` from="plc7@plant.example" to="ops@example.com"`,
		` relay.localhost siterelay - logs [siterelay@32473 level="INFO"`,
		`] relay starting`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("the collector got\n%s\nwant it to contain %q", m, want)
		}
	}
	if strings.Contains(m, "alarm 17") {
		t.Errorf("the subject went out:\n%s", m)
	}
	st := r.Status().Forward
	if st == nil || st.Address != col.Addr() || st.Dropped["trace"] != 0 {
		t.Errorf("status forward = %+v, want the collector's address and nothing dropped", st)
	}
}
