package smarthost

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// body4k is a 4 KiB message of 76-character lines.
var body4k = func() string {
	var b strings.Builder
	b.WriteString("From: scada@plant.example\r\nTo: ops@example.com\r\nSubject: alarm\r\n\r\n")
	for b.Len() < 4096-78 {
		b.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	return b.String()
}()

// benchDeliver sends b.N 4 KiB messages through u from 4 goroutines and
// reports messages per second.
func benchDeliver(b *testing.B, u *Upstream) {
	var id atomic.Int64
	b.ReportAllocs()
	b.SetBytes(int64(len(body4k)))
	b.SetParallelism(2)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		msg := &upstream.Message{From: "scada@plant.example", To: []string{"ops@example.com"},
			Size: int64(len(body4k)), Body: strings.NewReader(body4k)}
		for pb.Next() {
			msg.QueueID = fmt.Sprint(id.Add(1))
			res, err := u.Deliver(context.Background(), msg)
			if err != nil || res[0].Err != nil {
				b.Errorf("deliver: %v %v", err, res)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
}

func BenchmarkDeliver(b *testing.B) {
	for _, mode := range []string{"none", "starttls"} {
		b.Run(mode, func(b *testing.B) {
			f := upstreamtest.NewFakeServer(b, upstreamtest.FakeOptions{TLS: mode, Discard: true})
			u, err := New(Options{Addr: f.Addr, TLS: mode, RootCAs: f.CA.Pool, ServerName: "localhost",
				Concurrency: 4, MessagesPerConnection: 1000})
			if err != nil {
				b.Fatal(err)
			}
			defer u.Close()
			benchDeliver(b, u)
		})
	}
}
