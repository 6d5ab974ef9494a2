package relay

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestForwardSyslogCarriesTraceAndLogs: a relay with forward.syslog sends
// its trace events and log lines to the collector, and status shows it.
func TestForwardSyslogCarriesTraceAndLogs(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var got []string
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() {
				br := bufio.NewReader(c)
				for {
					n, err := br.ReadString(' ')
					if err != nil {
						return
					}
					size, _ := strconv.Atoi(strings.TrimSpace(n))
					b := make([]byte, size)
					if _, err := io.ReadFull(br, b); err != nil {
						return
					}
					mu.Lock()
					got = append(got, string(b))
					mu.Unlock()
				}
			}()
		}
	}()
	messages := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(got, "\n")
	}

	cfg := config.Default()
	cfg.Forward.Syslog = &config.Syslog{Address: l.Addr().String(), Facility: "mail"}
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
	if st == nil || st.Address != l.Addr().String() || st.Dropped["trace"] != 0 {
		t.Errorf("status forward = %+v, want the collector's address and nothing dropped", st)
	}
}
