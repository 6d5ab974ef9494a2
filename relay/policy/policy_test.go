package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func hash(t testing.TB, pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func testConfig(t testing.TB) *config.Config {
	tru := true
	c := &config.Config{
		Listeners: []config.Listener{
			{Name: "smtp", Address: ":25", Mode: "smtp", AllowedNetworks: []string{"10.20.0.0/16", "fd00::/8"}},
			{Name: "submission", Address: ":587", Mode: "submission", AllowedNetworks: []string{"10.20.0.0/16"}, RequireAuth: &tru},
		},
		Accounts: []config.Account{
			{Username: "scanner", PasswordHash: hash(t, "s3cret")},
			{Username: "erp", PasswordHash: hash(t, "erp-pw"), AllowedSenders: []string{"erp@contoso.com", "@alerts.contoso.com"}},
		},
		Senders:    config.Senders{AllowedDomains: []string{"contoso.com", "Plant.Contoso.com"}},
		Recipients: config.Recipients{AllowedDomains: []string{"contoso.com", "partner.example"}, DeniedDomains: []string{"partner.example"}},
		Limits:     config.Limits{MessagesPerMinute: new(60), Burst: 3, MaxConnectionsPerClient: 2},
	}
	c.SetDefaults()
	if errs := c.Validate(); len(errs) > 0 {
		// Upstream keys are not this package's business.
		for _, e := range errs {
			if !strings.HasPrefix(e.Error(), "upstream") {
				t.Fatal(e)
			}
		}
	}
	return c
}

func newPolicy(t testing.TB, c *config.Config) (*Policy, *fakeClock) {
	clk := &fakeClock{t: time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC)}
	p, err := New(c, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return p, clk
}

// check compares an error with a wanted reply code, enhanced code and
// words (0 code: no error).
func check(t *testing.T, err error, code int, enh smtp.EnhancedCode, words ...string) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		return
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want an *smtp.SMTPError %d", err, code)
	}
	if se.Code != code || se.EnhancedCode != enh {
		t.Errorf("got %d %v, want %d %v (%s)", se.Code, se.EnhancedCode, code, enh, se.Message)
	}
	for _, w := range words {
		if !strings.Contains(se.Message, w) {
			t.Errorf("%q does not say %q", se.Message, w)
		}
	}
}

func TestConnect(t *testing.T) {
	p, _ := newPolicy(t, testConfig(t))
	tests := []struct {
		listener int
		ip       string
		want     bool
	}{
		{0, "10.20.3.4", true},
		{0, "::ffff:10.20.3.4", true},
		{0, "fd12::1", true},
		{0, "10.21.0.1", false},
		{0, "192.0.2.1", false},
		{1, "10.20.3.4", false}, // submission requires login
		{2, "10.20.3.4", false}, // no such listener
		{-1, "10.20.3.4", false},
	}
	for _, tt := range tests {
		if got := p.Connect(tt.listener, netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("Connect(%d, %s) = %v, want %v", tt.listener, tt.ip, got, tt.want)
		}
	}
}

func TestRecipient(t *testing.T) {
	p, _ := newPolicy(t, testConfig(t))
	ip := netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		addr  string
		relay bool
		code  int
		enh   smtp.EnhancedCode
		words []string
	}{
		{"ops@contoso.com", true, 0, smtp.EnhancedCode{}, nil},
		{"ops@CONTOSO.com", true, 0, smtp.EnhancedCode{}, nil},
		{"ops@contoso.com", false, 554, smtp.EnhancedCode{5, 7, 1}, []string{"Relay access denied: 192.0.2.7 is not in an allowed network and has not logged in", "allowed_networks", "account"}},
		{"x@partner.example", true, 550, smtp.EnhancedCode{5, 7, 1}, []string{"partner.example", "recipients.denied_domains"}},
		{"x@gmail.com", true, 550, smtp.EnhancedCode{5, 7, 1}, []string{"gmail.com", "recipients.allowed_domains", "contoso.com"}},
		{"no-at-sign", true, 501, smtp.EnhancedCode{5, 1, 3}, []string{"name@example.com"}},
		{"@contoso.com", true, 501, smtp.EnhancedCode{5, 1, 3}, nil},
		{"a@-bad.com", true, 501, smtp.EnhancedCode{5, 1, 3}, nil},
		{"a@contoso..com", true, 501, smtp.EnhancedCode{5, 1, 3}, nil},
		{"a b@contoso.com", true, 501, smtp.EnhancedCode{5, 1, 3}, nil},
		{"a@[10.0.0.1]", true, 550, smtp.EnhancedCode{5, 7, 1}, []string{"recipients.allowed_domains"}},
		{"a@[not-an-ip]", true, 501, smtp.EnhancedCode{5, 1, 3}, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.addr, tt.relay), func(t *testing.T) {
			check(t, p.Recipient(ip, tt.addr, tt.relay), tt.code, tt.enh, tt.words...)
		})
	}
	// With no domain rules every well-formed recipient passes.
	c := testConfig(t)
	c.Recipients = config.Recipients{}
	open, _ := newPolicy(t, c)
	check(t, open.Recipient(ip, "x@gmail.com", true), 0, smtp.EnhancedCode{})
}

func TestSender(t *testing.T) {
	c := testConfig(t)
	p, _ := newPolicy(t, c)
	erp := p.accounts["erp"]
	scanner := p.accounts["scanner"]
	tests := []struct {
		name  string
		addr  string
		login *Account
		code  int
		enh   smtp.EnhancedCode
		words []string
	}{
		{"allowed domain", "scan@contoso.com", nil, 0, smtp.EnhancedCode{}, nil},
		{"allowed domain, any case", "scan@plant.contoso.COM", nil, 0, smtp.EnhancedCode{}, nil},
		{"other domain", "scan@printer.local", nil, 553, smtp.EnhancedCode{5, 7, 1}, []string{"printer.local", "senders.allowed_domains"}},
		{"subdomain is not the domain", "scan@x.contoso.com", nil, 553, smtp.EnhancedCode{5, 7, 1}, nil},
		{"null sender", "", nil, 550, smtp.EnhancedCode{5, 7, 1}, []string{"senders.allow_null"}},
		{"bad syntax", "scanner", nil, 553, smtp.EnhancedCode{5, 1, 7}, []string{"full address"}},
		{"account without own list uses global rules", "scan@contoso.com", scanner, 0, smtp.EnhancedCode{}, nil},
		{"account without own list, other domain", "scan@other.example", scanner, 553, smtp.EnhancedCode{5, 7, 1}, []string{"senders.allowed_domains"}},
		{"account exact sender", "ERP@contoso.com", erp, 0, smtp.EnhancedCode{}, nil},
		{"account domain pattern", "line3@alerts.contoso.com", erp, 0, smtp.EnhancedCode{}, nil},
		{"account, other sender in an allowed domain", "ceo@contoso.com", erp, 553, smtp.EnhancedCode{5, 7, 1}, []string{`"erp"`, "allowed_senders", "erp@contoso.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, p.Sender(tt.addr, tt.login), tt.code, tt.enh, tt.words...)
		})
	}
	c.Senders = config.Senders{AllowNull: true}
	open, _ := newPolicy(t, c)
	check(t, open.Sender("", nil), 0, smtp.EnhancedCode{})
	check(t, open.Sender("any@where.example", nil), 0, smtp.EnhancedCode{})
}

func TestLogin(t *testing.T) {
	p, clk := newPolicy(t, testConfig(t))
	ip := netip.MustParseAddr("10.20.0.9")
	a, err := p.Login(ip, "scanner", "s3cret")
	if err != nil || a.Username != "scanner" {
		t.Fatalf("good login: %v, %v", a, err)
	}
	for _, tt := range []struct{ user, pass string }{{"scanner", "wrong"}, {"nobody", "s3cret"}, {"", ""}} {
		_, err := p.Login(netip.MustParseAddr("10.20.0.10"), tt.user, tt.pass)
		check(t, err, 535, smtp.EnhancedCode{5, 7, 8}, "user name and password")
	}

	// The brake: MaxLoginFailures failures, then even the right password
	// is refused until LoginBrake has passed; other addresses are not
	// affected.
	bad := netip.MustParseAddr("10.20.0.66")
	for range MaxLoginFailures {
		_, err := p.Login(bad, "scanner", "guess")
		check(t, err, 535, smtp.EnhancedCode{5, 7, 8})
	}
	_, err = p.Login(bad, "scanner", "s3cret")
	check(t, err, 454, smtp.EnhancedCode{4, 7, 0}, "10.20.0.66", "5 more minute", "fix the password")
	if _, err := p.Login(ip, "scanner", "s3cret"); err != nil {
		t.Errorf("other address braked: %v", err)
	}
	clk.add(LoginBrake - time.Second)
	_, err = p.Login(bad, "scanner", "s3cret")
	check(t, err, 454, smtp.EnhancedCode{4, 7, 0}, "1 more minute")
	clk.add(time.Second)
	if _, err := p.Login(bad, "scanner", "s3cret"); err != nil {
		t.Errorf("after the brake: %v", err)
	}
	// A success clears the count.
	for range MaxLoginFailures - 1 {
		p.Login(bad, "scanner", "guess")
	}
	p.Login(bad, "scanner", "s3cret")
	if _, err := p.Login(bad, "scanner", "guess"); err == nil || err.(*smtp.SMTPError).Code != 535 {
		t.Errorf("count not cleared by a success: %v", err)
	}
}

// TestLoginUnknownUserComparesHash shows that an unknown user costs a bcrypt
// comparison at the accounts' cost, like a known one.
func TestLoginUnknownUserComparesHash(t *testing.T) {
	c := testConfig(t)
	h, _ := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost+2)
	c.Accounts = append(c.Accounts, config.Account{Username: "slow", PasswordHash: string(h)})
	p, _ := newPolicy(t, c)
	if cost, err := bcrypt.Cost(p.dummy); err != nil || cost != bcrypt.MinCost+2 {
		t.Errorf("dummy hash cost %d, %v; want the accounts' highest, %d", cost, err, bcrypt.MinCost+2)
	}
}

func TestNewErrors(t *testing.T) {
	c := testConfig(t)
	c.Accounts[0].PasswordHash = "plain"
	if _, err := New(c, time.Now); err == nil || !strings.Contains(err.Error(), "accounts[0].password_hash") {
		t.Errorf("got %v", err)
	}
	c = testConfig(t)
	c.Listeners[0].AllowedNetworks = []string{"10.0.0.0/33"}
	if _, err := New(c, time.Now); err == nil || !strings.Contains(err.Error(), "listeners[0].allowed_networks[0]") {
		t.Errorf("got %v", err)
	}
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")) != nil {
		t.Error("hash does not match")
	}
	if cost, _ := bcrypt.Cost([]byte(h)); cost != bcrypt.DefaultCost {
		t.Errorf("cost %d", cost)
	}
	for _, pw := range []string{"", strings.Repeat("x", 73)} {
		if _, err := HashPassword(pw); err == nil {
			t.Errorf("HashPassword(%d bytes): no error", len(pw))
		}
	}
	// The hash goes into the configuration and passes its validation.
	c := testConfig(t)
	c.Accounts[0].PasswordHash = h
	p, _ := newPolicy(t, c)
	if _, err := p.Login(netip.MustParseAddr("10.0.0.1"), "scanner", "correct horse"); err != nil {
		t.Error(err)
	}
}

func TestMessageRate(t *testing.T) {
	p, clk := newPolicy(t, testConfig(t)) // 60 a minute, burst 3
	ip := netip.MustParseAddr("10.20.0.5")
	for i := range 3 {
		if err := p.Message(ip, nil, nil); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	check(t, p.Message(ip, nil, nil), 450, smtp.EnhancedCode{4, 7, 1}, "10.20.0.5", "60 a minute", "try again in 1 seconds", "limits.messages_per_minute")
	// Another client and a login have their own allowance.
	check(t, p.Message(netip.MustParseAddr("10.20.0.6"), nil, nil), 0, smtp.EnhancedCode{})
	erp := p.accounts["erp"]
	for range 3 {
		check(t, p.Message(ip, erp, nil), 0, smtp.EnhancedCode{})
	}
	check(t, p.Message(ip, erp, nil), 450, smtp.EnhancedCode{4, 7, 1}, "account erp")
	// One token a second comes back.
	clk.add(time.Second)
	check(t, p.Message(ip, nil, nil), 0, smtp.EnhancedCode{})
	check(t, p.Message(ip, nil, nil), 450, smtp.EnhancedCode{4, 7, 1})
	// Never more than the burst, however long the pause.
	clk.add(time.Hour)
	for range 3 {
		check(t, p.Message(ip, nil, nil), 0, smtp.EnhancedCode{})
	}
	check(t, p.Message(ip, nil, nil), 450, smtp.EnhancedCode{4, 7, 1})

	c := testConfig(t)
	c.Limits.MessagesPerMinute = new(0)
	unlimited, _ := newPolicy(t, c)
	for range 1000 {
		check(t, unlimited.Message(ip, nil, nil), 0, smtp.EnhancedCode{})
	}
}

func TestOpen(t *testing.T) {
	p, _ := newPolicy(t, testConfig(t)) // 2 per client
	ip := netip.MustParseAddr("10.20.0.5")
	r1, err := p.Open(ip)
	check(t, err, 0, smtp.EnhancedCode{})
	r2, err := p.Open(netip.MustParseAddr("::ffff:10.20.0.5"))
	check(t, err, 0, smtp.EnhancedCode{})
	_, err = p.Open(ip)
	check(t, err, 421, smtp.EnhancedCode{4, 7, 0}, "10.20.0.5", "limit 2", "limits.max_connections_per_client")
	check(t, func() error { _, err := p.Open(netip.MustParseAddr("10.20.0.6")); return err }(), 0, smtp.EnhancedCode{})
	r1()
	r1() // a second release does nothing
	r3, err := p.Open(ip)
	check(t, err, 0, smtp.EnhancedCode{})
	_, err = p.Open(ip)
	check(t, err, 421, smtp.EnhancedCode{4, 7, 0})
	r2()
	r3()
	if _, _, conns := p.clients(); conns != 1 { // 10.20.0.6 is still open
		t.Errorf("%d addresses counted", conns)
	}
}

// TestTablesBounded walks far more addresses than the tables hold, as a
// scanner would.
func TestTablesBounded(t *testing.T) {
	defer func(n int) { maxClients = n }(maxClients)
	maxClients = 64 // each failed login costs a bcrypt comparison
	p, clk := newPolicy(t, testConfig(t))
	for i := range 3 * maxClients {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		p.Message(ip, nil, nil)
		p.Login(ip, "nobody", "x")
		if i%50 == 0 {
			clk.add(2 * time.Second)
		}
	}
	if b, f, _ := p.clients(); b > maxClients || f > maxClients {
		t.Errorf("tables grew to %d buckets, %d failure counts (bound %d)", b, f, maxClients)
	}
	// Idle entries are swept first: after a quiet spell one new client
	// leaves the tables small.
	clk.add(LoginBrake)
	p.Message(netip.MustParseAddr("192.0.2.1"), nil, nil)
	p.Login(netip.MustParseAddr("192.0.2.1"), "nobody", "x")
	if b, f, _ := p.clients(); b > 1 || f > 1 {
		t.Errorf("after the sweep: %d buckets, %d failure counts", b, f)
	}
}

func TestConcurrentUse(t *testing.T) {
	p, _ := newPolicy(t, testConfig(t))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{10, 20, 0, byte(g)})
			for range 50 {
				if rel, err := p.Open(ip); err == nil {
					p.Message(ip, nil, nil)
					p.Recipient(ip, "a@contoso.com", true)
					rel()
				}
			}
			p.Login(ip, "scanner", "bad")
		}()
	}
	wg.Wait()
	if _, _, conns := p.clients(); conns != 0 {
		t.Errorf("%d connections left counted", conns)
	}
}

// TestLoginBrakeUnderConcurrency: twenty connections from one address
// guessing at once get MaxLoginFailures password checks between them, not
// one each: an attempt is reserved before the password is checked.
func TestLoginBrakeUnderConcurrency(t *testing.T) {
	c := testConfig(t)
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), 8) // slow enough for the guesses to overlap
	if err != nil {
		t.Fatal(err)
	}
	c.Accounts[0].PasswordHash = string(h)
	c.Limits.MaxLoginChecks = MaxLoginFailures // the brake is under test, not the pool
	p, _ := newPolicy(t, c)
	ip := netip.MustParseAddr("10.20.0.66")
	const n = 20
	codes := make(chan int, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			_, err := p.Login(ip, "scanner", "guess")
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				codes <- se.Code
			} else {
				codes <- 0
			}
		})
	}
	close(start)
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if want := map[int]int{535: MaxLoginFailures, 454: n - MaxLoginFailures}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replies by code = %v, want %v (535: the password was checked)", got, want)
	}
}

// TestReloadKeepsClientState: a reloaded policy keeps counting the
// connections, the rate allowance and the failed logins of the old one.
func TestReloadKeepsClientState(t *testing.T) {
	p, _ := newPolicy(t, testConfig(t)) // 2 connections per client, burst 3
	ip := netip.MustParseAddr("10.20.0.5")
	r1, err := p.Open(ip)
	check(t, err, 0, smtp.EnhancedCode{})
	for range 3 {
		check(t, p.Message(ip, nil, nil), 0, smtp.EnhancedCode{})
	}
	for range MaxLoginFailures {
		p.Login(ip, "scanner", "guess")
	}
	np, err := p.Reload(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := np.Open(ip); err != nil {
		t.Fatal(err)
	}
	_, err = np.Open(ip)
	check(t, err, 421, smtp.EnhancedCode{4, 7, 0}, "limits.max_connections_per_client")
	r1() // released under the old policy, counted in the shared state
	if _, err := np.Open(ip); err != nil {
		t.Errorf("a connection released under the old policy is still counted: %v", err)
	}
	check(t, np.Message(ip, nil, nil), 450, smtp.EnhancedCode{4, 7, 1})
	_, err = np.Login(ip, "scanner", "s3cret")
	check(t, err, 454, smtp.EnhancedCode{4, 7, 0})
}

// heldCompare is a password check that counts the checks running at once
// and holds each until release is closed: the instrumented checker of the
// login pool's tests.
type heldCompare struct {
	mu            sync.Mutex
	running, peak int
	release       chan struct{}
}

func (h *heldCompare) compare(hash, pass []byte) error {
	h.mu.Lock()
	h.running++
	h.peak = max(h.peak, h.running)
	h.mu.Unlock()
	<-h.release
	h.mu.Lock()
	h.running--
	h.mu.Unlock()
	return bcrypt.ErrMismatchedHashAndPassword
}

func (h *heldCompare) now() (running, peak int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running, h.peak
}

// Issue 19 item 10: guesses from 20 addresses at once run at most
// limits.max_login_checks password checks at a time; the others wait their
// turn and are checked (535), none lost. It failed without the pool (all
// 20 ran at once).
func TestLoginPoolBoundsChecks(t *testing.T) {
	c := testConfig(t)
	c.Limits.MaxLoginChecks = 2
	p, _ := newPolicy(t, c)
	h := &heldCompare{release: make(chan struct{})}
	p.compare = h.compare
	const addrs = 20
	codes := make(chan int, addrs)
	var wg sync.WaitGroup
	for i := range addrs {
		wg.Go(func() {
			_, err := p.Login(netip.AddrFrom4([4]byte{10, 20, 1, byte(i + 1)}), "scanner", "guess")
			var se *smtp.SMTPError
			errors.As(err, &se)
			codes <- se.Code
		})
	}
	// Two checks run; the pool holds the other 18 back (their logins are
	// in flight: the brake counts them).
	relaytest.Eventually(t, "two checks running", func() bool { r, _ := h.now(); return r >= 2 })
	relaytest.Eventually(t, "every login in flight", func() bool { _, f, _ := p.clients(); return f == addrs })
	if r, _ := h.now(); r != 2 {
		t.Errorf("%d checks running, want 2", r)
	}
	close(h.release)
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if want := map[int]int{535: addrs}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replies by code = %v, want %v", got, want)
	}
	_, peak := h.now()
	if _, ppeak := p.PasswordChecks(); peak != 2 || ppeak != 2 {
		t.Errorf("at most %d checks ran at once (policy says %d), want 2 (limits.max_login_checks)", peak, ppeak)
	}
}

// A login that finds no place within the wait is answered 454 naming the
// setting, is not checked, and counts as no failed login.
func TestLoginPoolWaitIsBounded(t *testing.T) {
	c := testConfig(t)
	c.Limits.MaxLoginChecks = 1
	p, _ := newPolicy(t, c)
	h := &heldCompare{release: make(chan struct{})}
	p.compare, p.loginWait = h.compare, time.Millisecond
	first := make(chan error, 1)
	go func() { _, err := p.Login(netip.MustParseAddr("10.20.1.1"), "scanner", "guess"); first <- err }()
	relaytest.Eventually(t, "the first check running", func() bool { r, _ := h.now(); return r >= 1 })
	released := false
	t.Cleanup(func() {
		if !released {
			close(h.release)
		}
	})
	waiter := netip.MustParseAddr("10.20.1.2")
	second := make(chan error, 1)
	go func() { _, err := p.Login(waiter, "scanner", "s3cret"); second <- err }()
	var err error
	relaytest.Eventually(t, "the second login answered or checked", func() bool {
		select {
		case err = <-second:
			return true
		default:
		}
		r, _ := h.now()
		return r >= 2
	})
	if r, _ := h.now(); r >= 2 {
		t.Fatalf("the second login is checked beside the first (%d at once), want it refused after its wait", r)
	}
	check(t, err, 454, smtp.EnhancedCode{4, 7, 0}, "limits.max_login_checks is 1", "try again")
	close(h.release)
	released = true
	check(t, <-first, 535, smtp.EnhancedCode{5, 7, 8})
	p.mu.Lock()
	f := p.failures[waiter]
	p.mu.Unlock()
	if f != nil {
		t.Errorf("the login that waited counts as a failure: %+v", *f)
	}
	if _, peak := h.now(); peak != 1 {
		t.Errorf("%d checks at once, want 1", peak)
	}
}
