package relay

import (
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

func TestReloadSwitchesUpstreamKeepingTheListener(t *testing.T) {
	a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	b := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	r, addr := run(t, smarthostConfig(a), relaytest.StateDir(t))
	if err := send(t, addr, "mfp@plant.example", []string{"x@example.com"}, "Subject: one\r\n\r\n1\r\n"); err != nil {
		t.Fatal(err)
	}
	a.WaitMessages(t, 1)

	cfg := smarthostConfig(b)
	cfg.Listeners[0].Address = "127.0.0.1:0" // as run configured it: the same listener
	if err := r.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := r.Addrs()[0].String(); got != addr {
		t.Errorf("listener after reload at %s, want the same socket %s", got, addr)
	}
	if err := send(t, addr, "mfp@plant.example", []string{"y@example.com"}, "Subject: two\r\n\r\n2\r\n"); err != nil {
		t.Fatal(err)
	}
	got := b.WaitMessages(t, 1)
	if !strings.Contains(string(got[0].Data), "Subject: two") {
		t.Errorf("new upstream got %q, want the second message", got[0].Data)
	}
	if n := a.Count(); n != 1 {
		t.Errorf("old upstream got %d messages, want 1 (only the one before the reload)", n)
	}
	if st := r.Status(); !strings.Contains(st.Upstream.Name, b.Addr) {
		t.Errorf("status names upstream %q, want the new one %s", st.Upstream.Name, b.Addr)
	}
}

func TestReloadRefusedKeepsTheRunningConfiguration(t *testing.T) {
	a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r, addr := run(t, smarthostConfig(a), relaytest.StateDir(t))

	// A secret not yet provisioned is no refusal: its upstream waits
	// (TestMissingSecretWaits).
	addrInUse := smarthostConfig(a)
	addrInUse.Listeners[0].Address = "127.0.0.1:0"
	second := addrInUse.Listeners[0]
	second.Name, second.Address = "second", busy.Addr().String()
	addrInUse.Listeners = append(addrInUse.Listeners, second)
	addrInUse.Upstream.SMTP.Address = "127.0.0.1:1"

	for _, tc := range []struct {
		name string
		cfg  *config.Config
		want string
	}{
		{"address in use", addrInUse, "listeners[1] (second)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Reload(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Reload = %v, want an error naming %q", err, tc.want)
			}
			if got := len(r.Addrs()); got != 1 {
				t.Errorf("%d listeners after a refused reload, want the 1 running", got)
			}
			before := a.Count()
			if err := send(t, addr, "mfp@plant.example", []string{"x@example.com"}, "Subject: still\r\n\r\n1\r\n"); err != nil {
				t.Fatal(err)
			}
			a.WaitMessages(t, before+1) // still the old upstream
		})
	}
}

func TestReloadAddsAndRemovesListeners(t *testing.T) {
	a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(a)
	r, first := run(t, cfg, relaytest.StateDir(t))

	// A session in the middle of a transaction on the listener the reload
	// removes: it must still get its 250.
	c, err := smtp.Dial(first)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("mfp.plant.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("mfp@plant.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com", nil); err != nil {
		t.Fatal(err)
	}

	next := smarthostConfig(a)
	l := next.Listeners[0]
	l.Name, l.Address = "moved", "127.0.0.2:0"
	next.Listeners = []config.Listener{l}
	if err := r.Reload(next); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	addrs := r.Addrs()
	if len(addrs) != 1 || !strings.HasPrefix(addrs[0].String(), "127.0.0.2:") {
		t.Fatalf("listeners after reload %v, want one on 127.0.0.2", addrs)
	}

	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA on the removed listener's open session: %v", err)
	}
	fmt.Fprint(w, "Subject: in flight\r\n\r\nkept\r\n")
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA on the removed listener's open session: %v, want 250", err)
	}
	c.Quit()

	relaytest.Eventually(t, "the removed listener closed", func() bool {
		c, err := net.DialTimeout("tcp", first, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if err := send(t, addrs[0].String(), "mfp@plant.example", []string{"y@example.com"}, "Subject: new\r\n\r\n2\r\n"); err != nil {
		t.Fatalf("send to the new listener: %v", err)
	}
	a.WaitMessages(t, 2)
}

// TestReloadUnderLoad reloads the relay over and over, alternating between
// two upstreams, while devices send: no message may be refused or lost.
func TestReloadUnderLoad(t *testing.T) {
	a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	b := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	load := func(up *upstreamtest.FakeServer) *config.Config {
		cfg := smarthostConfig(up)
		cfg.Limits.MessagesPerMinute, cfg.Limits.Burst = new(100000), 1000 // the devices' rate is not under test
		return cfg
	}
	r, addr := run(t, load(a), relaytest.StateDir(t))

	const senders, each, reloads = 4, 40, 20
	var wg sync.WaitGroup
	errs := make(chan error, senders*each)
	stop := make(chan struct{})
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c, err := smtp.Dial(addr)
				if err != nil {
					errs <- err
					continue
				}
				err = c.SendMail("mfp@plant.example", []string{"x@example.com"},
					strings.NewReader(fmt.Sprintf("Subject: %d-%d\r\n\r\nbody\r\n", s, i)))
				c.Close()
				if err != nil {
					errs <- fmt.Errorf("message %d-%d: %w", s, i, err)
				}
			}
		}()
	}
	reloaded := make(chan int)
	go func() {
		n := 0
		defer func() { reloaded <- n }()
		deadline := relaytest.Deadline(t)
		for i := range reloads {
			// Spread the reloads over the run: each waits for its share
			// of deliveries (polled, bounded by the test's deadline).
			for a.Count()+b.Count() < i*senders*each/reloads && time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
			up := a
			if i%2 == 0 {
				up = b
			}
			cfg := load(up)
			cfg.Listeners[0].Address = "127.0.0.1:0"
			cfg.Limits.MaxRecipients = 50 + i // a listener setting changes too
			if err := r.Reload(cfg); err != nil {
				t.Errorf("reload %d: %v", i, err)
				return
			}
			n++
		}
	}()
	wg.Wait()
	close(stop)
	n := <-reloaded
	close(errs)
	refused := 0
	for err := range errs {
		refused++
		t.Errorf("refused during reloads: %v", err)
	}
	total := senders * each
	if refused > 0 {
		t.FailNow()
	}
	relaytest.Eventually(t, "every message delivered", func() bool { return a.Count()+b.Count() >= total })
	seen := map[string]bool{}
	for _, m := range append(a.Messages(), b.Messages()...) {
		subj := string(m.Data)
		if i := strings.Index(subj, "Subject: "); i >= 0 {
			subj = strings.SplitN(subj[i+9:], "\r\n", 2)[0]
		}
		if seen[subj] {
			t.Errorf("message %s delivered twice", subj)
		}
		seen[subj] = true
	}
	t.Logf("FIGURES reload under load: %d messages, %d reloads, refused %d, lost %d, upstream a %d, b %d",
		total, n, refused, total-len(seen), a.Count(), b.Count())
	if len(seen) != total {
		t.Errorf("%d distinct messages delivered, want %d", len(seen), total)
	}
}
