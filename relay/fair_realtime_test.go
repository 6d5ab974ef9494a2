//go:build integration

package relay

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// The storm of the issue, in real time: a relay paced to 10 messages a
// minute towards a smarthost; device A queues 25 messages, then device B
// sends one alarm. B's message goes out among the next few, not after A's
// 25 (that took about 150 s with one queue in arrival order). The delay is
// printed (-v), not asserted.
func TestStormRealTime(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := config.Default()
	cfg.Listeners[0].StartTLS = new(bool)
	cfg.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: fake.Addr, TLS: "none", Concurrency: 4,
		MaxRecipients: 100, MinTLS: "1.2", MessagesPerMinute: 10}}
	cfg.Devices = []config.Device{{Name: "scada-a", Addresses: []string{"127.0.0.1"}, MessagesPerMinute: new(0)},
		{Name: "boiler-b", Addresses: []string{"127.0.0.2"}}}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	_, addr := run(t, cfg, relaytest.StateDir(t))
	a := relaytest.DialFrom(t, net.IPv4(127, 0, 0, 1), addr)
	defer a.Close()
	for i := range 25 {
		if err := a.SendMail("scada@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: scada event\r\n\r\nstorm\r\n")); err != nil {
			t.Fatalf("A's message %d: %v", i, err)
		}
	}
	b := relaytest.DialFrom(t, net.IPv4(127, 0, 0, 2), addr)
	defer b.Close()
	if err := b.SendMail("boiler@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: BOILER ALARM\r\n\r\npressure\r\n")); err != nil {
		t.Fatal(err)
	}
	queued := time.Now()
	var pos int
	relaytest.Eventually(t, "B's alarm at the smarthost", func() bool {
		for i, m := range fake.Messages() {
			if strings.Contains(string(m.Data), "BOILER ALARM") {
				pos = i + 1
				return true
			}
		}
		return false
	})
	t.Logf("B's alarm out %v after it was queued, as message %d of those delivered (A queued 25 before it; 10 a minute)",
		time.Since(queued).Round(100*time.Millisecond), pos)
	if pos > 5 {
		t.Errorf("B's alarm was delivered as message %d, after most of A's backlog", pos)
	}
}
