package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// sitePolicy is relay/policy behind the session's interface, as the relay
// wires it (listener 0).
type sitePolicy struct{ p *policy.Policy }

func (s sitePolicy) Connect(ip netip.Addr) (Client, func(), error) {
	release, err := s.p.Open(ip)
	if err != nil {
		return Client{}, nil, err
	}
	return Client{Relay: s.p.Connect(0, ip), Known: s.p.Known(ip)}, release, nil
}
func (s sitePolicy) Login(ip netip.Addr, user, pass string) (*policy.Account, error) {
	return s.p.Login(ip, user, pass)
}
func (s sitePolicy) Device(ip netip.Addr, acct *policy.Account, helo string) (*policy.Device, error) {
	d := s.p.Recognise(ip, acct, helo)
	return d, s.p.Admit(ip, acct, d)
}
func (s sitePolicy) Sender(ip netip.Addr, acct *policy.Account, dev *policy.Device, from string) error {
	if err := s.p.Sender(from, acct); err != nil {
		return err
	}
	if err := s.p.DeviceSender(dev, from); err != nil {
		return err
	}
	return s.p.Message(ip, acct, dev)
}
func (s sitePolicy) Recipient(ip netip.Addr, dev *policy.Device, rcpt string, relay bool) error {
	if err := s.p.Recipient(ip, rcpt, relay); err != nil {
		return err
	}
	return s.p.DeviceRecipient(dev, rcpt)
}

// newSitePolicy is the policy of a configuration with one smtp listener
// for networks, changed by mod.
func newSitePolicy(t testing.TB, networks []string, mod func(*config.Config)) sitePolicy {
	t.Helper()
	c := &config.Config{Listeners: []config.Listener{{Name: "smtp", Address: ":25", Mode: "smtp", AllowedNetworks: networks}},
		Upstream: config.Upstream{Kind: "capture"}}
	c.SetDefaults()
	if mod != nil {
		mod(c)
	}
	p, err := policy.New(c, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return sitePolicy{p}
}

// dialFrom connects from a given loopback address (all of 127.0.0.0/8 is
// loopback on Linux), so one test can be many clients.
func dialFrom(t testing.TB, from, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// closed reports whether the server has closed c (read gives EOF or a
// reset, not a timeout), after any replies still in flight.
func (r *raw) closed() bool {
	r.c.SetReadDeadline(relaytest.Deadline(r.t))
	_, err := io.Copy(io.Discard, r.r)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// waitIdle waits until the server has no session left.
func waitIdle(t *testing.T, s *Server) {
	t.Helper()
	relaytest.Eventually(t, "all sessions ended", func() bool { return s.Sessions() == 0 })
}

func startServer(t *testing.T, mod func(*Options)) (*fixture, *Server) {
	t.Helper()
	f := start(t, mod)
	return f, f.srv
}

// Item 1: a BDAT chunk shorter than declared, cut off by the client going
// away, is never committed.
func TestShortBDATChunkIsNeverCommitted(t *testing.T) {
	f, srv := startServer(t, nil)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.send("BDAT 5000 LAST\r\n" + "Subject: truncated\r\n\r\n" + strings.Repeat("x", 38))
	r.c.(*net.TCPConn).CloseWrite()
	if !r.closed() {
		t.Fatal("the session did not end")
	}
	waitIdle(t, srv)
	if got := len(f.sp.List()); got != 0 {
		t.Errorf("%d messages spooled from a truncated chunk, want none", got)
	}
	if len(f.accepted) != 0 {
		t.Errorf("accepted %v", f.accepted)
	}
}

// A stalled chunk is cut by read_timeout with 451 4.4.2 and never
// committed; a whole BDAT message in several chunks is.
func TestBDAT(t *testing.T) {
	f, _ := startServer(t, func(o *Options) { o.ReadTimeout = 200 * time.Millisecond })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	// The first chunk ends inside a line, the second one's command comes
	// without waiting (PIPELINING is not needed for BDAT, but must not hurt).
	c1, c2 := "Subject: chunks\r\n\r\npart", " one\r\n"
	r.send(fmt.Sprintf("BDAT %d\r\n%s", len(c1), c1))
	r.expect("250 2.0.0")
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(c2), c2))
	got := r.expect("250 2.0.0 OK queued as ")
	list := f.sp.List()
	if len(list) != 1 || !strings.Contains(got, list[0].ID) {
		t.Fatalf("spooled %v for reply %q", list, got)
	}
	if body := f.content(t, list[0].ID); !strings.Contains(body, "Subject: chunks\r\n") || !strings.HasSuffix(body, "\r\n\r\npart one\r\n") {
		t.Errorf("body %q, want it to end in the two chunks", body)
	}

	// A chunk that stops arriving.
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.send("BDAT 100 LAST\r\nSubject: stalled\r\n")
	r.expect("451 4.4.2")
	if !r.closed() {
		t.Error("the connection stays open after a stalled chunk")
	}
	if got := len(f.sp.List()); got != 1 {
		t.Errorf("%d messages spooled, want the first only", got)
	}
}

// Item 2: read_timeout bounds each read, not the DATA phase: a slow,
// steady upload longer than read_timeout goes through.
func TestSlowSteadyUploadIsNotCut(t *testing.T) {
	f, _ := startServer(t, func(o *Options) { o.ReadTimeout = 500 * time.Millisecond; o.MaxMessageBytes = 1 << 20 })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO scanner", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	r.send("Subject: slow scan\r\n\r\n")
	// 20 pieces 50 ms apart: 1 s in all, twice read_timeout, each gap a
	// tenth of it. (The pauses are the scenario, not synchronisation.)
	for range 20 {
		r.send(strings.Repeat("0123456789", 100) + "\r\n")
		time.Sleep(50 * time.Millisecond)
	}
	r.cmd(".", "250")
}

// Item 2: a stall mid-DATA answers 451 4.4.2 naming the key and closes;
// what the client sends after it is never read as commands.
func TestStallInDataClosesAndNothingAfterIsParsed(t *testing.T) {
	f, srv := startServer(t, func(o *Options) { o.ReadTimeout = 200 * time.Millisecond })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO scanner", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	r.send("Subject: first\r\n\r\npage 1\r\n")
	got := r.expect("451 4.4.2")
	if !strings.Contains(got, "limits.read_timeout") {
		t.Errorf("reply %q does not name limits.read_timeout", got)
	}
	// The rest of the body, with a second message inside it.
	r.send("\r\n.\r\nMAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: second\r\n\r\nevil\r\n.\r\n")
	if !r.closed() {
		t.Error("the connection stays open after the timeout")
	}
	waitIdle(t, srv)
	if got := len(f.sp.List()); got != 0 {
		t.Errorf("%d messages spooled, want none", got)
	}
}

// Item 3: a command line trickled in a byte at a time is cut at
// command_timeout (counted from the reply before it), never run.
func TestTrickledCommandLineIsCut(t *testing.T) {
	f, _ := startServer(t, func(o *Options) { o.ReadTimeout = 10 * time.Second; o.CommandTimeout = 300 * time.Millisecond })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO slow", "250")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// A byte every 20 ms, a line that never ends (at most 500 bytes).
		for i := 0; i < 500; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := r.c.Write([]byte("N")); err != nil {
				return
			}
		}
	})
	got := r.reply()
	close(stop)
	wg.Wait()
	if !strings.HasPrefix(got, "421 4.4.2") || !strings.Contains(got, "limits.command_timeout") {
		t.Errorf("reply %q, want 421 4.4.2 naming limits.command_timeout", got)
	}
	if !r.closed() {
		t.Error("the connection stays open")
	}
}

// Item 3: commands without a message and a session's lifetime are bounded,
// and the reply says which limit.
func TestSessionLimits(t *testing.T) {
	t.Run("commands without mail", func(t *testing.T) {
		f, _ := startServer(t, func(o *Options) { o.MaxCommandsWithoutMail = 3 })
		r := dialRaw(t, f.addr)
		r.cmd("EHLO printer", "250")
		r.cmd("NOOP", "250")
		r.cmd("RSET", "250")
		got := r.cmd("NOOP", "421 4.7.0")
		if !strings.Contains(got, "limits.max_commands_without_mail") {
			t.Errorf("reply %q does not name the key", got)
		}
		if !r.closed() {
			t.Error("not closed")
		}
	})
	t.Run("an accepted message resets the count", func(t *testing.T) {
		f, _ := startServer(t, func(o *Options) { o.MaxCommandsWithoutMail = 3 })
		r := dialRaw(t, f.addr)
		r.cmd("EHLO printer", "250")
		for i := range 3 {
			r.cmd("MAIL FROM:<p@plant.example>", "250")
			r.cmd("RCPT TO:<a@example.com>", "250")
			r.cmd("DATA", "354")
			r.cmd(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n.", i), "250")
		}
		r.cmd("NOOP", "250")
	})
	t.Run("session lifetime", func(t *testing.T) {
		f, _ := startServer(t, func(o *Options) { o.MaxSessionTime = 300 * time.Millisecond; o.MaxCommandsWithoutMail = 1 << 30 })
		r := dialRaw(t, f.addr)
		r.cmd("EHLO printer", "250")
		// NOOPs, each answered at once, until the lifetime runs out (the
		// loop is bounded by the test's deadline through raw's deadline).
		var got string
		for {
			r.send("NOOP\r\n")
			if got = r.reply(); !strings.HasPrefix(got, "250") {
				break
			}
		}
		if !strings.HasPrefix(got, "421 4.4.2") || !strings.Contains(got, "limits.max_session_time") {
			t.Errorf("reply %q, want 421 4.4.2 naming limits.max_session_time", got)
		}
	})
	t.Run("over-long command line", func(t *testing.T) {
		f, _ := startServer(t, nil)
		r := dialRaw(t, f.addr)
		r.cmd("EHLO printer", "250")
		got := r.cmd("NOOP "+strings.Repeat("x", 5000), "500 5.5.2")
		if !strings.Contains(got, "limits.max_line_length") {
			t.Errorf("reply %q does not name the key", got)
		}
		r.cmd("NOOP", "250")
	})
}

// Item 4: the per-client limit is counted at accept, before the banner,
// and its 421 closes the connection.
func TestPerClientLimitAtAccept(t *testing.T) {
	pol := newSitePolicy(t, []string{"127.0.0.0/8"}, func(c *config.Config) { c.Limits.MaxConnectionsPerClient = 2 })
	f, _ := startServer(t, func(o *Options) { o.Policy = pol })
	for range 2 {
		dialRaw(t, f.addr) // banners read: counted
	}
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(relaytest.Deadline(t))
	r := &raw{t: t, c: c, r: bufio.NewReader(c)}
	got := r.reply()
	if !strings.HasPrefix(got, "421 4.7.0") || !strings.Contains(got, "limits.max_connections_per_client") {
		t.Errorf("first line %q, want 421 4.7.0 naming limits.max_connections_per_client (no banner)", got)
	}
	if !r.closed() {
		t.Error("the refused connection stays open")
	}
}

// Item 4: the total cap. At the limit a new client displaces the session
// idle longest outside a transaction; with every session in a transaction
// it is refused, before the banner, and closed.
func TestTotalConnectionCap(t *testing.T) {
	pol := newSitePolicy(t, []string{"127.0.0.0/8"}, nil)
	f, srv := startServer(t, func(o *Options) { o.Policy = pol; o.MaxConnections = 2 })
	dial := func(from string) *raw {
		c, err := dialFrom(t, from, f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(relaytest.Deadline(t))
		return &raw{t: t, c: c, r: bufio.NewReader(c)}
	}
	idle := dial("127.0.0.2")
	idle.expect("220")
	idle.cmd("EHLO idle", "250")
	busy := dial("127.0.0.3")
	busy.expect("220")
	busy.cmd("EHLO busy", "250")
	busy.cmd("MAIL FROM:<p@plant.example>", "250")

	device := dial("127.0.0.1")
	device.expect("220")
	got := idle.reply()
	if !strings.HasPrefix(got, "421 4.7.0") || !strings.Contains(got, "limits.max_connections") {
		t.Errorf("the idle session got %q, want 421 4.7.0 naming limits.max_connections", got)
	}
	if !idle.closed() {
		t.Error("the displaced session stays open")
	}
	device.cmd("EHLO device", "250")
	device.cmd("MAIL FROM:<d@plant.example>", "250")

	// Both sessions are in a transaction now: the next client is refused.
	late := dial("127.0.0.4")
	got = late.reply()
	if !strings.HasPrefix(got, "421 4.7.0") || !strings.Contains(got, "limits.max_connections") {
		t.Errorf("first line %q, want 421 4.7.0 naming limits.max_connections (no banner)", got)
	}
	if !late.closed() {
		t.Error("the refused connection stays open")
	}
	// The transactions go on.
	for _, r := range []*raw{busy, device} {
		r.cmd("RCPT TO:<a@example.com>", "250")
		r.cmd("DATA", "354")
		r.cmd("Subject: kept\r\n\r\nx\r\n.", "250")
	}
	if got := srv.Sessions(); got != 2 {
		t.Errorf("%d sessions counted, want 2", got)
	}
}

// Item 5: with auth off, AUTH is refused even after STARTTLS, and the
// client cannot relay from an address outside the allowed networks.
func TestAuthOffIsEnforced(t *testing.T) {
	pol := newSitePolicy(t, []string{"10.0.0.0/8"}, func(c *config.Config) {
		c.Accounts = []config.Account{{Username: "printer", PasswordHash: mustHash(t, "s3cret")}}
	})
	f, _ := startServer(t, func(o *Options) { o.Policy = pol; o.Auth = false })
	c, err := smtp.DialStartTLS(f.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised with auth off")
	}
	// go-smtp's client does not try what is not advertised, so the command
	// is also sent by hand below.
	if err := c.Auth(sasl.NewPlainClient("", "printer", "s3cret")); err == nil {
		t.Error("client Auth succeeded")
	}
	if err := c.Mail("p@plant.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("victim@example.com", nil); err == nil {
		t.Error("relayed from outside the allowed networks")
	}

	rw := dialRaw(t, f.addr)
	rw.cmd("EHLO x", "250")
	rw.cmd("STARTTLS", "220")
	tconn := tls.Client(rw.c, &tls.Config{InsecureSkipVerify: true})
	rt := &raw{t: t, c: tconn, r: bufio.NewReader(tconn)}
	rt.cmd("EHLO x", "250")
	got := rt.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00printer\x00s3cret")), "502 5.5.1")
	if !strings.Contains(got, "auth is off") {
		t.Errorf("reply %q does not say why", got)
	}
	rt.cmd("MAIL FROM:<p@plant.example>", "250")
	rt.cmd("RCPT TO:<victim@example.com>", "554 5.7.1")
}

func mustHash(t testing.TB, pw string) string {
	h, err := policy.HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Item 6: twenty concurrent connections from one address guessing a
// password get the brake's five checks between them.
func TestLoginBrakeAcrossConnections(t *testing.T) {
	pol := newSitePolicy(t, []string{"10.0.0.0/8"}, func(c *config.Config) {
		c.Accounts = []config.Account{{Username: "printer", PasswordHash: mustHash(t, "s3cret")}}
		// The brake is under test, not the pool of checks (whose bounded
		// wait a slow machine could reach).
		c.Limits.MaxLoginChecks = policy.MaxLoginFailures
	})
	f, _ := startServer(t, func(o *Options) { o.Policy = pol; o.AllowPlaintextAuth = true })
	const n = 20
	conns := make([]*raw, n)
	for i := range conns {
		conns[i] = dialRaw(t, f.addr)
		conns[i].cmd("EHLO guesser", "250")
	}
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00printer\x00guess")) + "\r\n"
	for _, r := range conns {
		r.send(auth)
	}
	got := map[string]int{}
	for _, r := range conns {
		got[r.reply()[:3]]++
	}
	if want := map[string]int{"535": policy.MaxLoginFailures, "454": n - policy.MaxLoginFailures}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replies by code = %v, want %v (535: the password was checked)", got, want)
	}
}

// Item 7: an over-long body line gets the documented permanent refusal
// naming limits.max_line_length, and the session goes on.
func TestOverLongBodyLine(t *testing.T) {
	f, _ := startServer(t, func(o *Options) { o.MaxMessageBytes = 1 << 20 })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	got := r.cmd("Subject: long\r\n\r\n"+strings.Repeat("x", 4001)+"\r\n.", "550 5.6.0")
	if !strings.Contains(got, "limits.max_line_length") {
		t.Errorf("reply %q does not name the key", got)
	}
	r.cmd("NOOP", "250")
	if n := len(f.sp.List()); n != 0 {
		t.Errorf("%d spooled", n)
	}
}

// Item 8: every byte the device sent reaches the line-ending policy: "."
// then a bare CR at the start of a line is a stuffed dot and a bare CR,
// not dropped; NUL is removed or refused.
func TestDataBytesReachThePolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*Options)
		data   string
		reply  string
		inBody string
	}{
		{"dot CR normalised", nil, "Subject: x\r\n\r\na\r\n.\rb\r\n", "250", "\r\na\r\n\r\nb\r\n"},
		{"dot CR refused", func(o *Options) { o.BareLineEndings = message.Refuse }, "Subject: x\r\n\r\na\r\n.\rb\r\n", "550 5.6.11", ""},
		{"stuffed dot", nil, "Subject: x\r\n\r\n..\r\n..x\r\n", "250", "\r\n\r\n.\r\n.x\r\n"},
		{"NUL removed", nil, "Subject: x\r\n\r\nok\r\n\x00.\r\nMAIL FROM:<a@b.example>\r\n", "250", "\r\nok\r\n.\r\nMAIL FROM:<a@b.example>\r\n"},
		{"NUL refused", func(o *Options) { o.NUL = message.RefuseNUL }, "Subject: x\r\n\r\nok\r\n\x00.\r\n", "550 5.6.0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := startServer(t, tc.mod)
			r := dialRaw(t, f.addr)
			r.cmd("EHLO printer", "250")
			r.cmd("MAIL FROM:<p@plant.example>", "250")
			r.cmd("RCPT TO:<a@example.com>", "250")
			r.cmd("DATA", "354")
			r.send(tc.data)
			r.cmd(".", tc.reply)
			list := f.sp.List()
			if tc.inBody == "" {
				if len(list) != 0 {
					t.Errorf("%d spooled, want none", len(list))
				}
				return
			}
			if len(list) != 1 {
				t.Fatalf("%d spooled, want 1", len(list))
			}
			if body := f.content(t, list[0].ID); !strings.HasSuffix(body, tc.inBody) {
				t.Errorf("spooled %q, want it to end in %q", body, tc.inBody)
			}
		})
	}
}

// Update swaps the Options of new sessions; a session in flight keeps its
// own.
func TestUpdateAppliesToNewSessions(t *testing.T) {
	f, srv := startServer(t, nil) // 3 recipients
	old := dialRaw(t, f.addr)
	old.cmd("EHLO old", "250")
	o := *srv.opts.Load()
	o.MaxRecipients = 1
	srv.Update(o)
	nw := dialRaw(t, f.addr)
	nw.cmd("EHLO new", "250")
	for _, r := range []*raw{old, nw} {
		r.cmd("MAIL FROM:<p@plant.example>", "250")
		r.cmd("RCPT TO:<a@example.com>", "250")
	}
	old.cmd("RCPT TO:<b@example.com>", "250")
	nw.cmd("RCPT TO:<b@example.com>", "452 4.5.3")
}

// Shutdown closes idle sessions at once and lets a transaction finish.
func TestShutdown(t *testing.T) {
	f, srv := startServer(t, nil)
	idle := dialRaw(t, f.addr)
	idle.cmd("EHLO idle", "250")
	busy := dialRaw(t, f.addr)
	busy.cmd("EHLO busy", "250")
	busy.cmd("MAIL FROM:<p@plant.example>", "250")
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(t.Context()) }()
	idle.expect("421 4.3.2")
	busy.cmd("RCPT TO:<a@example.com>", "250")
	busy.cmd("DATA", "354")
	busy.cmd("Subject: last\r\n\r\nx\r\n.", "250")
	busy.cmd("NOOP", "421 4.3.2")
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := net.Dial("tcp", f.addr); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

// Replies are flushed when no whole command line is waiting, even if part
// of one is: a client that pipelines must not stall on its own half line.
func TestPipelinedPartialLine(t *testing.T) {
	f, _ := startServer(t, nil)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.send("NOOP\r\nNO")
	r.expect("250")
	r.cmd("OP", "250")
	r.send("MAIL FROM:<p@plant.example>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250", "250", "250", "354"} {
		r.expect(want)
	}
	r.cmd("Subject: piped\r\n\r\nx\r\n.", "250")
}

// A flood's refusals are logged one line a second, with the count of the
// lines left out.
func TestRefusalLogBrake(t *testing.T) {
	var b logBrake
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	var got []string
	for i := range 25 {
		if n, ok := b.allow(t0.Add(time.Duration(i) * 100 * time.Millisecond)); ok {
			got = append(got, fmt.Sprint(n))
		}
	}
	if want := []string{"0", "9", "9"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("lines logged with skipped counts %v, want %v", got, want)
	}
}

// When Shutdown's context ends, the sessions still in a transaction are
// closed (without a 250: the device retries) and Shutdown says so.
func TestShutdownClosesAtDeadline(t *testing.T) {
	f, srv := startServer(t, nil)
	busy := dialRaw(t, f.addr)
	busy.cmd("EHLO busy", "250")
	busy.cmd("MAIL FROM:<p@plant.example>", "250")
	busy.cmd("RCPT TO:<a@example.com>", "250")
	busy.cmd("DATA", "354")
	busy.send("Subject: cut\r\n\r\npart")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want context.Canceled", err)
	}
	if !busy.closed() {
		t.Error("the session in DATA stays open")
	}
	if n := len(f.sp.List()); n != 0 {
		t.Errorf("%d spooled", n)
	}
}

// What a client pipelines after the end of data (the next transaction, its
// dot-stuffed body, QUIT) in the same write as the message is read as
// commands and data in order: DATA may read past its end straight from the
// connection and must hand the rest back.
func TestPipelinedAfterEndOfData(t *testing.T) {
	f, _ := startServer(t, nil)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO printer", "250")
	r.cmd("MAIL FROM:<p@plant.example>", "250")
	r.cmd("RCPT TO:<a@example.com>", "250")
	r.cmd("DATA", "354")
	body := strings.Repeat("line of a scan\r\n", 600) // larger than the session's 4 KiB buffer
	r.send("Subject: one\r\n\r\n" + body + ".\r\n" +
		"MAIL FROM:<p@plant.example>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250 2.0.0 OK queued as ", "250", "250", "354"} {
		r.expect(want)
	}
	r.send("Subject: two\r\n\r\n..stuffed\r\n.\r\nQUIT\r\n")
	r.expect("250 2.0.0 OK queued as ")
	r.expect("221")
	list := f.sp.List()
	if len(list) != 2 {
		t.Fatalf("spooled %d messages, want 2", len(list))
	}
	got := []string{f.content(t, list[0].ID), f.content(t, list[1].ID)}
	if strings.Contains(got[0], "Subject: two\r\n") {
		got[0], got[1] = got[1], got[0]
	}
	if !strings.Contains(got[0], "Subject: one\r\n") || !strings.HasSuffix(got[0], "\r\n\r\n"+body) {
		t.Errorf("first message %.80q...%q, want its body whole", got[0], got[0][max(0, len(got[0])-40):])
	}
	if !strings.Contains(got[1], "Subject: two\r\n") || !strings.HasSuffix(got[1], "\r\n\r\n.stuffed\r\n") {
		t.Errorf("second message %q, want the dot-stuffing removed", got[1])
	}
}
