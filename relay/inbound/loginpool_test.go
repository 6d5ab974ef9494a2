package inbound

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestGuessingFromManyAddressesKeepsMailFlowing is issue 19 item 10: 20
// addresses, 20 connections each, all guess a password at once while the
// device (allowed network, no login) sends its messages. Every guess is
// answered 535 (checked) or 454 (the per-address brake, or no place among
// limits.max_login_checks in time), at most max_login_checks passwords are
// checked at once, and every session of the device is admitted and every
// message accepted.
func TestGuessingFromManyAddressesKeepsMailFlowing(t *testing.T) {
	const (
		addrs, perAddr = 20, 20
		messages       = 20
		pool           = 2
	)
	cost := 6 // about 4 ms a check here; the race detector slows it tenfold
	if raceEnabled {
		cost = bcrypt.MinCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), cost)
	if err != nil {
		t.Fatal(err)
	}
	pol := newSitePolicy(t, []string{"127.0.0.1/32"}, func(c *config.Config) {
		c.Accounts = []config.Account{{Username: "printer", PasswordHash: string(h)}}
		c.Limits.MessagesPerMinute = new(0)
		c.Limits.MaxLoginChecks = pool
	})
	f, _ := startServer(t, func(o *Options) { o.Policy = pol; o.AllowPlaintextAuth = true })

	guessers := make([]*raw, 0, addrs*perAddr)
	for a := range addrs {
		for range perAddr {
			from := fmt.Sprintf("127.2.0.%d", a+1)
			c, err := dialFrom(t, from, f.addr)
			if err != nil {
				t.Skipf("cannot dial from %s: %v", from, err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(relaytest.Deadline(t))
			r := &raw{t: t, c: c, r: bufio.NewReader(c)}
			r.expect("220")
			r.cmd("EHLO guesser", "250")
			guessers = append(guessers, r)
		}
	}
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00printer\x00guess")) + "\r\n"
	for _, r := range guessers {
		r.send(auth)
	}

	admitted, refused := 0, 0
	var failures []string
	for i := range messages {
		c := relaytest.DialFrom(t, net.IPv4(127, 0, 0, 1), f.addr)
		if err := c.Hello("mfp"); err != nil {
			refused++
			failures = append(failures, err.Error())
			c.Close()
			continue
		}
		admitted++
		if err := sendOn(c, i); err != nil {
			failures = append(failures, fmt.Sprintf("message %d: %v", i, err))
		}
		c.Quit()
	}

	codes := map[string]int{}
	for _, r := range guessers {
		codes[r.reply()[:3]]++
	}
	_, peak := pol.p.PasswordChecks()
	t.Logf("guesses: %d from %d addresses, replies by code %v; at most %d password checks at once (limits.max_login_checks %d)",
		len(guessers), addrs, codes, peak, pool)
	t.Logf("device: %d sessions admitted, %d refused; %d messages accepted", admitted, refused, len(f.accepted))
	if codes["535"]+codes["454"] != len(guessers) {
		t.Errorf("guesses answered %v, want only 535 and 454", codes)
	}
	if peak > pool || peak < 1 {
		t.Errorf("%d password checks ran at once, want 1 to %d (limits.max_login_checks)", peak, pool)
	}
	if admitted != messages || refused != 0 || len(failures) != 0 {
		t.Errorf("device sessions admitted %d, refused %d (want %d, 0); failures %q", admitted, refused, messages, failures)
	}
	if got := len(f.accepted); got != messages {
		t.Errorf("%d messages accepted, want %d", got, messages)
	}
}
