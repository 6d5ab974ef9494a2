package relay

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// Issue 18 item 5: a reload that narrows a listener from every address to
// one (":25" to "10.20.0.5:25"; here "0.0.0.0:P" or "[::]:P" to
// "127.0.0.1:P") takes effect at once, under load: no connection refused,
// no 250'd message lost, and the other addresses stop being served. It
// failed with "address already in use" before the handover.
func TestReloadNarrowsListenerUnderLoad(t *testing.T) {
	for _, wide := range []string{"0.0.0.0", "[::]"} {
		t.Run(wide, func(t *testing.T) {
			a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
			load := func(addr string) *config.Config {
				cfg := smarthostConfig(a)
				cfg.Listeners[0].Address = addr
				cfg.Limits.MessagesPerMinute, cfg.Limits.Burst = new(100000), 1000 // the devices' rate is not under test
				return cfg
			}
			r, err := New(load(wide+":0"), relaytest.StateDir(t), Deps{})
			if err != nil {
				if strings.Contains(err.Error(), "address family") || strings.Contains(err.Error(), "cannot assign") {
					t.Skipf("cannot listen on %s: %v", wide, err)
				}
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			port := r.Addrs()[0].(*net.TCPAddr).Port
			addr := fmt.Sprintf("127.0.0.1:%d", port)

			const senders, each = 4, 40
			var mu sync.Mutex
			var accepted []string // subjects answered 250
			var refused []string
			var wg sync.WaitGroup
			for s := range senders {
				wg.Go(func() {
					for i := range each {
						subj := fmt.Sprintf("%d-%d", s, i)
						c, err := smtp.Dial(addr)
						if err == nil {
							err = c.SendMail("mfp@plant.example", []string{"x@example.com"},
								strings.NewReader("Subject: "+subj+"\r\n\r\nbody\r\n"))
							c.Close()
						}
						mu.Lock()
						if err != nil {
							refused = append(refused, fmt.Sprintf("%s: %v", subj, err))
						} else {
							accepted = append(accepted, subj)
						}
						mu.Unlock()
					}
				})
			}
			// Narrow once a third of the messages is in, while the senders go on.
			relaytest.Eventually(t, "a third of the messages accepted", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(accepted)+len(refused) >= senders*each/3
			})
			mu.Lock()
			before := len(accepted)
			mu.Unlock()
			if err := r.Reload(load(addr)); err != nil {
				t.Fatalf("Reload narrowing %s:%d to %s: %v", wide, port, addr, err)
			}
			if got := r.Addrs()[0].String(); got != addr {
				t.Errorf("listener after the reload at %s, want %s", got, addr)
			}
			wg.Wait()

			// The old socket goes once it has handed over: another loopback
			// address is no longer served.
			other := fmt.Sprintf("127.0.0.2:%d", port)
			relaytest.Eventually(t, "the wide socket closed", func() bool {
				c, err := net.DialTimeout("tcp", other, time.Second)
				if err == nil {
					c.Close()
				}
				return err != nil
			})

			mu.Lock()
			defer mu.Unlock()
			relaytest.Eventually(t, "every accepted message delivered", func() bool { return a.Count() >= len(accepted) })
			delivered := map[string]bool{}
			for _, m := range a.Messages() {
				subj := string(m.Data)
				if i := strings.Index(subj, "Subject: "); i >= 0 {
					subj = strings.SplitN(subj[i+9:], "\r\n", 2)[0]
				}
				delivered[subj] = true
			}
			lost := 0
			for _, s := range accepted {
				if !delivered[s] {
					lost++
				}
			}
			t.Logf("FIGURES narrowing %s:%d to %s under load: %d messages, %d accepted (%d after the reload began), %d refused, %d lost",
				wide, port, addr, senders*each, len(accepted), len(accepted)-before, len(refused), lost)
			if len(refused) != 0 || lost != 0 || len(accepted) != senders*each {
				t.Errorf("refused %d (want 0): %q; lost %d of %d accepted (want 0)", len(refused), refused, lost, len(accepted))
			}
		})
	}
}
