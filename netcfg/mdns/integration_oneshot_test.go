//go:build integration

package mdns

// Namespace test of one-shot queries from fresh clients within the
// one-second rule's second (RFC 6762 §6).

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/netcfg/mdns/mdnslab"
)

func TestOneShotQueriesWithinASecond(t *testing.T) {
	// Three fresh clients in C each ask once for siterelay.local, 300 ms
	// apart: a scanner that asks once must find the relay. The second and
	// third come within a second of the relay's multicast answer to the
	// first; the one-second rule (RFC 6762 §6) may delay the multicast, by
	// at most that second on the relay's own clock, and must never drop it.
	// dig and a plain resolver ask from another port (legacy unicast,
	// §6.7): answered by unicast at once, which the rule does not restrict.
	l := mdnslab.New(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatalf("dig not installed (.ci/apt-packages lists bind9-dnsutils): %v", err)
	}
	// C has no default route; a resolver asking the group needs one (avahi
	// and python3-zeroconf name the interface themselves).
	mdnslab.Run(t, "ip", "-n", l.NS("c"), "route", "add", "224.0.0.0/4", "dev", "dev0")
	relay := startRelay(t, l, "siterelay")
	relay.WaitLine(t, "^EVENT announced", 20*time.Second)

	const spacing = 300 * time.Millisecond
	oneShots := func(ask func(i int, at time.Time) (string, error)) []string {
		// Each client starts (python imports, dig loads) before its turn.
		at := time.Now().Add(3 * time.Second)
		out := make([]string, 3)
		errs := make([]error, 3)
		var wg sync.WaitGroup
		for i := range out {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i], errs[i] = ask(i, at.Add(time.Duration(i)*spacing))
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	zc := oneShots(func(_ int, at time.Time) (string, error) {
		return l.ClientErr(l.NS("c"), "zcquery", "siterelay.local.", strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64), "3")
	})
	for i, got := range zc {
		if f := strings.Fields(got); len(f) != 4 || f[0] != "ANSWER" || f[2] != "192.0.2.1" {
			t.Errorf("python3-zeroconf one-shot query %d: %q, want ANSWER … 192.0.2.1", i+1, got)
		}
	}
	t.Logf("FIGURE python3-zeroconf one-shot queries for siterelay.local A, fresh clients %v apart (ms to the answer, late: when sent after its turn): %q", spacing, zc)

	// dig of Debian 12 (BIND 9.18) connects its socket to the server it
	// asks, so it never takes the reply to a query sent to 224.0.0.251
	// (from avahi neither): it asks the box's address. A resolver with an
	// unconnected socket (client.py's query) asks the group.
	dig := oneShots(func(_ int, at time.Time) (string, error) {
		time.Sleep(time.Until(at)) // each query's turn: the test's input, not a wait for an event
		start := time.Now()
		out, err := l.Dig(l.NS("c"), "-p", "5353", "@192.0.2.1", "siterelay.local", "A", "+tries=1", "+time=3")
		return fmt.Sprintf("%.1fms %s", float64(time.Since(start).Microseconds())/1000, out), err
	})
	var digTimes []string
	for i, got := range dig {
		if !regexp.MustCompile(`(?m)^siterelay\.local\.\s+\d+\s+IN\s+A\s+192\.0\.2\.1$`).MatchString(got) {
			t.Errorf("dig one-shot query %d: no A 192.0.2.1 in\n%s", i+1, got)
		}
		digTimes = append(digTimes, strings.Fields(got)[0])
	}
	t.Logf("FIGURE dig -p 5353 @192.0.2.1 one-shot queries %v apart (legacy unicast, includes starting dig): %s", spacing, strings.Join(digTimes, ", "))
	legacy := oneShots(func(_ int, at time.Time) (string, error) {
		time.Sleep(time.Until(at))
		return l.ClientErr(l.NS("c"), "query", "siterelay.local", "192.0.2.2", "224.0.0.251")
	})
	for i, got := range legacy {
		if !strings.HasSuffix(got, " 192.0.2.1") {
			t.Errorf("legacy one-shot query %d to 224.0.0.251: %q, want ANSWER … 192.0.2.1", i+1, got)
		}
	}
	t.Logf("FIGURE legacy one-shot queries to 224.0.0.251:5353 %v apart: %q", spacing, legacy)

	out := relay.Output(t)
	var held []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "EVENT held") {
			held = append(held, line)
			if d := mdnslab.Field(line, "delay"); d < 0 || d > 1000 {
				t.Errorf("the relay held an answer back %d ms (%s), want at most the one second of RFC 6762 §6", d, line)
			}
		}
	}
	t.Logf("answers the one-second rule delayed, on the relay's clock: %q", held)
}
