package relay

import (
	"bytes"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// BenchmarkEndToEnd sends b.N 4 KiB messages over 10 sessions through a
// relay (durable spool, smtp upstream, pipelining) into a fake smarthost,
// and reports messages per second from first MAIL to last delivery. The
// client and the fake run in the same process, so the figure is a floor:
// `make bench` measures relayd alone against Postfix.
func BenchmarkEndToEnd(b *testing.B) {
	fake := upstreamtest.NewFakeServer(b, upstreamtest.FakeOptions{TLS: "none", Discard: true})
	cfg := config.Default()
	cfg.Limits.MessagesPerMinute = new(1 << 30)
	cfg.Limits.Burst = 1 << 30
	cfg.Listeners[0].StartTLS = new(bool)
	cfg.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: fake.Addr, TLS: "none", Concurrency: 10, MaxRecipients: 100, MinTLS: "1.2"}}
	_, addr := run(b, cfg, relaytest.StateDir(b))
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 4096/80)
	const sessions = 10
	var next atomic.Int64
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			for next.Add(1) <= int64(b.N) {
				if err := c.SendMail("bench@plant.example", []string{"sink@example.com"}, bytes.NewReader([]byte(body))); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	accepted := time.Since(start)
	fake.WaitMessages(b, b.N)
	total := time.Since(start)
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted-msg/s")
	b.ReportMetric(float64(b.N)/total.Seconds(), "e2e-msg/s")
}
