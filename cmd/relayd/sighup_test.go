//go:build integration

package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// TestSIGHUPReloadsUnderLoad: a relayd process gets SIGHUPs while devices
// send, alternating its upstream between two smarthosts, and once with a
// broken configuration. It must stay up, refuse nothing, lose nothing, and
// name the broken key in its log.
func TestSIGHUPReloadsUnderLoad(t *testing.T) {
	bin := buildRelayd(t)
	state := relaytest.StateDir(t)
	cfg := state + "/config.json"
	a := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	b := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	writeConfig(t, cfg, a.Addr)
	d := startRelayd(t, bin, cfg, state)

	const senders, each, hups = 4, 50, 10
	total := senders * each
	var wg sync.WaitGroup
	var mu sync.Mutex
	var refused []string
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(d.smtp)
			if err != nil {
				mu.Lock()
				refused = append(refused, err.Error())
				mu.Unlock()
				return
			}
			defer c.Close()
			for i := range each {
				if err := c.SendMail("plc@plant.example", []string{"ops@example.com"},
					strings.NewReader(fmt.Sprintf("Subject: hup-%d-%d\r\n\r\nalarm\r\n", s, i))); err != nil {
					mu.Lock()
					refused = append(refused, fmt.Sprintf("hup-%d-%d: %v", s, i, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range hups {
		// Each SIGHUP waits for a share of the deliveries, so the reloads
		// are spread over the load.
		relaytest.Eventually(t, "deliveries between reloads", func() bool { return a.Count()+b.Count() >= i*total/(hups+1) })
		switch {
		case i == hups/2:
			if err := os.WriteFile(cfg, []byte(`{"listeners":[{"name":"smtp","address":"127.0.0.1:0","mode":"smtp"}],"upstream":{"kind":"smtp","smtp":{"adress":"x"}}}`), 0o644); err != nil {
				t.Fatal(err)
			}
		case i%2 == 0:
			writeConfig(t, cfg, a.Addr)
		default:
			writeConfig(t, cfg, b.Addr)
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP %d: %v", i, err)
		}
	}
	wg.Wait()
	select {
	case <-d.exited:
		t.Fatalf("relayd exited after SIGHUP: %v", d.cmd.ProcessState)
	default:
	}
	for _, r := range refused {
		t.Errorf("refused during reloads: %s", r)
	}
	relaytest.Eventually(t, "every message delivered", func() bool { return a.Count()+b.Count() >= total })
	seen := map[string]bool{}
	subj := regexp.MustCompile(`(?m)^Subject: (\S+)\r$`)
	for _, m := range append(a.Messages(), b.Messages()...) {
		s := subj.FindSubmatch(m.Data)
		if s == nil || seen[string(s[1])] {
			t.Errorf("message without subject, or twice: %q", m.Data)
			continue
		}
		seen[string(s[1])] = true
	}
	log, _ := os.ReadFile(state + "/relayd.log")
	if !strings.Contains(string(log), "reload refused") || !strings.Contains(string(log), "adress") {
		t.Errorf("the broken configuration's refusal (naming upstream.smtp.adress) is not in the log")
	}
	reloads := strings.Count(string(log), "configuration reloaded")
	t.Logf("FIGURES SIGHUP under load: %d messages, %d SIGHUPs (%d applied, 1 broken refused), refused %d, lost %d, a %d, b %d",
		total, hups, reloads, len(refused), total-len(seen), a.Count(), b.Count())
	if reloads == 0 {
		t.Errorf("no reload was applied")
	}
}
