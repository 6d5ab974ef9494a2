// Package policy answers the questions an SMTP session asks as the dialogue
// goes: may this address connect and relay, is this login right, may this
// sender and this recipient pass, is this client sending too much.
//
// Every refusal is an *smtp.SMTPError with an enhanced status code and words
// that tell the device owner (or the admin) what to change, naming the
// configuration key behind the rule: on a factory network the person
// reading the printer's error log is rarely the one who set up the relay.
//
// One Policy serves every listener, so that a client's rate, connection
// count and failed logins are counted once whichever port it uses. Its
// per-client tables are bounded: a port scanner walking the network must
// not grow the relay's memory.
package policy

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/siterelay/siterelay/relay/config"
)

// The brute-force brake: after MaxLoginFailures failed logins from one
// address within LoginBrake, logins from it are refused until LoginBrake
// has passed since the last failure.
const (
	MaxLoginFailures = 5
	LoginBrake       = 5 * time.Minute
)

// LoginQueueWait is how long a login waits for a place among
// limits.max_login_checks before it is answered 454 4.7.0.
const LoginQueueWait = 10 * time.Second

// maxClients bounds each per-client table (a variable for tests).
var maxClients = 4096

// Account is a device that has logged in.
type Account struct {
	Username string
	// allowedSenders are exact addresses (lower case) or "@domain".
	allowedSenders []string
	hash           []byte
}

// Policy holds the rules of one configuration and the per-client state they
// need. It is safe for concurrent use.
type Policy struct {
	clock     func() time.Time
	listeners []listener
	accounts  map[string]*Account
	dummy     []byte // bcrypt hash compared for unknown users
	// compare checks a password against its hash (bcrypt; tests slow it
	// down or hold it).
	compare   func(hash, pass []byte) error
	maxChecks int           // limits.max_login_checks
	loginWait time.Duration // LoginQueueWait (shorter in tests)

	senderDomains   map[string]bool
	senderList      string
	allowNull       bool
	rcptAllowed     map[string]bool
	rcptAllowedList string
	rcptDenied      map[string]bool

	perMinute, burst, maxConns int

	cfg     *config.Config
	devices devices

	*State
}

// State is the per-client state behind the limits: rate buckets, failed
// logins (and logins being checked), open connections. It is its own part
// so that a reloaded configuration keeps it (Reload): a reload must not
// give a flooding client fresh allowances or forget sessions still open.
type State struct {
	mu       sync.Mutex
	buckets  map[string]*bucket
	failures map[netip.Addr]*failures
	conns    map[netip.Addr]int
	swept    time.Time // last full sweep of buckets and failures

	// checks is the pool of password checks (limits.max_login_checks):
	// a place is a token in the channel. A reload that changes the size
	// makes a new pool; checks holding a place of the old one give it back
	// there.
	checks chan struct{}
	// checking and peakChecking count the password comparisons running
	// (PasswordChecks).
	checking, peakChecking int
}

func newState() *State {
	return &State{buckets: map[string]*bucket{}, failures: map[netip.Addr]*failures{}, conns: map[netip.Addr]int{}}
}

// pool is the pool of password checks for n at once. Called with s.mu.
func (s *State) pool(n int) chan struct{} {
	if s.checks == nil || cap(s.checks) != n {
		s.checks = make(chan struct{}, n)
	}
	return s.checks
}

type listener struct {
	name        string
	networks    []netip.Prefix
	requireAuth bool
}

type bucket struct {
	tokens float64
	at     time.Time
}

type failures struct {
	n        int // failed logins
	inFlight int // logins being checked; each counts as a failure until it is known
	last     time.Time
}

// New builds the policy of a validated configuration. clock is the time
// source for rates and the login brake.
func New(cfg *config.Config, clock func() time.Time) (*Policy, error) {
	p := &Policy{
		clock:         clock,
		accounts:      map[string]*Account{},
		senderDomains: domainSet(cfg.Senders.AllowedDomains),
		senderList:    strings.Join(cfg.Senders.AllowedDomains, ", "),
		allowNull:     cfg.Senders.AllowNull,
		rcptAllowed:   domainSet(cfg.Recipients.AllowedDomains),
		rcptDenied:    domainSet(cfg.Recipients.DeniedDomains),
		perMinute:     cfg.Limits.PerMinute(),
		burst:         max(cfg.Limits.Burst, 1),
		maxConns:      cfg.Limits.MaxConnectionsPerClient,
		compare:       bcrypt.CompareHashAndPassword,
		maxChecks:     max(cfg.Limits.MaxLoginChecks, 1),
		loginWait:     LoginQueueWait,
		State:         newState(),
		cfg:           cfg,
	}
	p.devices = newDevices(cfg, p.perMinute, p.burst)
	p.rcptAllowedList = strings.Join(cfg.Recipients.AllowedDomains, ", ")
	for i, l := range cfg.Listeners {
		pl := listener{name: l.Name, requireAuth: l.RequireAuth != nil && *l.RequireAuth}
		for j, n := range l.AllowedNetworks {
			pfx, err := netip.ParsePrefix(n)
			if err != nil {
				return nil, fmt.Errorf("listeners[%d].allowed_networks[%d]: %w", i, j, err)
			}
			pl.networks = append(pl.networks, pfx.Masked())
		}
		p.listeners = append(p.listeners, pl)
	}
	cost := bcrypt.MinCost
	for i, a := range cfg.Accounts {
		c, err := bcrypt.Cost([]byte(a.PasswordHash))
		if err != nil {
			return nil, fmt.Errorf("accounts[%d].password_hash: %w (make one with `relayd hash-password`)", i, err)
		}
		cost = max(cost, c)
		acc := &Account{Username: a.Username, hash: []byte(a.PasswordHash)}
		for _, s := range a.AllowedSenders {
			acc.allowedSenders = append(acc.allowedSenders, strings.ToLower(s))
		}
		p.accounts[a.Username] = acc
	}
	// An unknown user costs what a known one does, so timing does not tell
	// which user names exist.
	dummy, err := bcrypt.GenerateFromPassword([]byte("siterelay unknown user"), cost)
	if err != nil {
		return nil, fmt.Errorf("making the comparison hash: %w", err)
	}
	p.dummy = dummy
	return p, nil
}

// FollowUpstreamPace lowers the default allowance of every device that
// sets no messages_per_minute of its own to the upstream's pace (messages a
// minute; 0 means the upstream is not paced): a device may not hand the
// relay more a minute than the upstream will take from all of them. Call it
// before the policy is shared.
func (p *Policy) FollowUpstreamPace(perMinute int) {
	rate := p.perMinute
	if perMinute > 0 && (rate <= 0 || perMinute < rate) {
		rate = perMinute
	}
	p.devices = newDevices(p.cfg, rate, p.burst)
}

// Reload builds the policy of a new configuration that keeps p's
// per-client state: connections opened under p are still counted (and
// released) under the new policy, and rate allowances and failed logins
// carry over.
func (p *Policy) Reload(cfg *config.Config) (*Policy, error) {
	np, err := New(cfg, p.clock)
	if err != nil {
		return nil, err
	}
	np.State = p.State
	np.compare, np.loginWait = p.compare, p.loginWait
	return np, nil
}

func domainSet(ds []string) map[string]bool {
	if len(ds) == 0 {
		return nil
	}
	m := make(map[string]bool, len(ds))
	for _, d := range ds {
		m[strings.ToLower(d)] = true
	}
	return m
}

// HashPassword makes an account's password_hash (`relayd hash-password`).
func HashPassword(pw string) (string, error) {
	if pw == "" {
		return "", errors.New("hashing password: the password is empty")
	}
	if len(pw) > 72 {
		return "", errors.New("hashing password: longer than 72 bytes (bcrypt's limit); use a shorter one")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

func reply(code int, enh smtp.EnhancedCode, format string, a ...any) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: fmt.Sprintf(format, a...)}
}

// Connect reports whether ip may relay on listener (an index into the
// configuration's listeners) without logging in: it is in the listener's
// allowed networks and the listener does not require login.
func (p *Policy) Connect(listener int, ip netip.Addr) (allowedByNetwork bool) {
	if listener < 0 || listener >= len(p.listeners) {
		return false
	}
	l := &p.listeners[listener]
	if l.requireAuth {
		return false
	}
	ip = ip.Unmap()
	for _, n := range l.networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// Known reports whether the site configured ip: it is in a listener's
// allowed networks (any listener's, also one that requires login) or is
// the address of a configured device. At limits.max_connections a known
// client always gets a session and its exact share (relay/inbound).
// Devices recognised only by login or HELO name are not known yet when
// they connect.
func (p *Policy) Known(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, l := range p.listeners {
		for _, n := range l.networks {
			if n.Contains(ip) {
				return true
			}
		}
	}
	for _, n := range p.devices.byNet {
		if n.p.Contains(ip) {
			return true
		}
	}
	return false
}

// Open counts a connection from ip against limits.max_connections_per_client;
// call release (once; more calls do nothing) when the connection ends.
func (p *Policy) Open(ip netip.Addr) (release func(), err error) {
	ip = ip.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.maxConns > 0 && p.conns[ip] >= p.maxConns {
		return func() {}, reply(421, smtp.EnhancedCode{4, 7, 0},
			"Too many connections from %s (limit %d); close idle connections on the device or raise limits.max_connections_per_client", ip, p.maxConns)
	}
	p.conns[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.conns[ip]--; p.conns[ip] <= 0 {
				delete(p.conns, ip)
			}
		})
	}, nil
}

var errLogin = reply(535, smtp.EnhancedCode{5, 7, 8},
	"Authentication credentials invalid; check the user name and password set in the device against the relay's accounts")

// Login checks a device's user name and password (AUTH PLAIN or LOGIN).
// After MaxLoginFailures failures from ip it refuses every login from ip
// for LoginBrake, without looking at the password. A login being checked
// holds one of those attempts until its outcome is known, so concurrent
// connections cannot get more password checks than the brake allows.
// Password checks from all clients together run at most
// limits.max_login_checks at once (the brake is per address; guessing
// from many addresses would otherwise take every CPU); a login that waits
// longer than LoginQueueWait for its turn gets 454 4.7.0, is not checked
// and counts as no failure.
func (p *Policy) Login(ip netip.Addr, user, pass string) (*Account, error) {
	ip = ip.Unmap()
	now := p.clock()
	p.mu.Lock()
	f := p.failures[ip]
	if f != nil && f.inFlight == 0 && now.Sub(f.last) >= LoginBrake {
		delete(p.failures, ip)
		f = nil
	}
	if f != nil && f.n+f.inFlight >= MaxLoginFailures {
		wait := LoginBrake - now.Sub(f.last)
		p.mu.Unlock()
		return nil, reply(454, smtp.EnhancedCode{4, 7, 0},
			"Too many failed logins from %s; logins from it are refused for %d more minute(s): fix the password set in the device", ip, max(1, int(math.Ceil(wait.Minutes()))))
	}
	if f == nil {
		p.makeRoom(now)
		f = &failures{last: now}
		p.failures[ip] = f
	}
	f.inFlight++
	pool := p.pool(p.maxChecks)
	p.mu.Unlock()

	a := p.accounts[user]
	hash := p.dummy
	if a != nil {
		hash = a.hash
	}
	err := p.check(pool, hash, pass)

	p.mu.Lock()
	defer p.mu.Unlock()
	f.inFlight--
	if errors.Is(err, errCheckWait) {
		if f.inFlight == 0 && f.n == 0 && p.failures[ip] == f {
			delete(p.failures, ip)
		}
		return nil, reply(454, smtp.EnhancedCode{4, 7, 0},
			"Too many logins are being checked at once (limits.max_login_checks is %d); try again in a minute", p.maxChecks)
	}
	if err == nil && a != nil {
		f.n = 0 // a right password clears the count
		if f.inFlight == 0 && p.failures[ip] == f {
			delete(p.failures, ip)
		}
		return a, nil
	}
	f.n++
	f.last = p.clock()
	if p.failures[ip] != f {
		// makeRoom dropped the entry while the password was checked.
		p.failures[ip] = f
	}
	return nil, errLogin
}

var errCheckWait = errors.New("no place among limits.max_login_checks")

// check compares pass with hash once it has a place in pool, waiting at
// most p.loginWait for one (errCheckWait).
func (p *Policy) check(pool chan struct{}, hash []byte, pass string) error {
	select {
	case pool <- struct{}{}:
	default:
		t := time.NewTimer(p.loginWait)
		select {
		case pool <- struct{}{}:
			t.Stop()
		case <-t.C:
			return errCheckWait
		}
	}
	defer func() { <-pool }()
	p.mu.Lock()
	p.checking++
	p.peakChecking = max(p.peakChecking, p.checking)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.checking--
		p.mu.Unlock()
	}()
	return p.compare(hash, []byte(pass))
}

// PasswordChecks reports the password comparisons running now and the
// most that ever ran at once (at most limits.max_login_checks).
func (p *Policy) PasswordChecks() (now, peak int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checking, p.peakChecking
}

// Sender checks the envelope sender (MAIL FROM); login is nil for a client
// that has not logged in.
func (p *Policy) Sender(addr string, login *Account) error {
	if addr == "" {
		if p.allowNull {
			return nil
		}
		return reply(550, smtp.EnhancedCode{5, 7, 1},
			"The null sender (MAIL FROM:<>) is not accepted; give the device a sender address or set senders.allow_null to true")
	}
	_, domain, ok := splitAddress(addr)
	if !ok {
		return reply(553, smtp.EnhancedCode{5, 1, 7},
			"Sender address %q is not valid; set the device's sender to a full address like scanner@example.com", addr)
	}
	if login != nil && len(login.allowedSenders) > 0 {
		lower := strings.ToLower(addr)
		for _, s := range login.allowedSenders {
			if s == lower || s[0] == '@' && s[1:] == strings.ToLower(domain) {
				return nil
			}
		}
		return reply(553, smtp.EnhancedCode{5, 7, 1},
			"Account %q may not send as %s; use one of %s, or add the address to that account's allowed_senders",
			login.Username, addr, strings.Join(login.allowedSenders, ", "))
	}
	if p.senderDomains != nil && !p.senderDomains[strings.ToLower(domain)] {
		return reply(553, smtp.EnhancedCode{5, 7, 1},
			"Sender domain %s is not allowed; use an address in %s, or add the domain to senders.allowed_domains", domain, p.senderList)
	}
	return nil
}

// Recipient checks one envelope recipient (RCPT TO) from ip. relayAllowed
// is true when the client is in an allowed network (Connect) or has logged
// in; without it every recipient is refused: the relay is not open.
func (p *Policy) Recipient(ip netip.Addr, addr string, relayAllowed bool) error {
	if !relayAllowed {
		return reply(554, smtp.EnhancedCode{5, 7, 1},
			"Relay access denied: %s is not in an allowed network and has not logged in; add its network to the listener's allowed_networks or give the device an account to log in with", ip.Unmap())
	}
	_, domain, ok := splitAddress(addr)
	if !ok {
		return reply(501, smtp.EnhancedCode{5, 1, 3},
			"Recipient address %q is not valid; use a full address like name@example.com", addr)
	}
	d := strings.ToLower(domain)
	if p.rcptDenied[d] {
		return reply(550, smtp.EnhancedCode{5, 7, 1},
			"Recipient domain %s is refused by recipients.denied_domains; remove it there to allow it", domain)
	}
	if p.rcptAllowed != nil && !p.rcptAllowed[d] {
		return reply(550, smtp.EnhancedCode{5, 7, 1},
			"Recipient domain %s is not allowed; send to %s, or add the domain to recipients.allowed_domains", domain, p.rcptAllowedList)
	}
	return nil
}

// Message takes one message from the client's allowance
// (limits.messages_per_minute with limits.burst), keyed by the login when
// there is one, else by address. Call it at MAIL FROM.
func (p *Policy) Message(ip netip.Addr, login *Account, dev *Device) error {
	perMinute, burst := p.perMinute, p.burst
	if dev != nil {
		perMinute, burst = dev.perMinute, dev.burst
	}
	if perMinute <= 0 {
		return nil
	}
	key, who := "", ""
	if dev != nil {
		key, who = "d:"+dev.Name, "device "+dev.Name
	} else if login != nil {
		key, who = "u:"+login.Username, "account "+login.Username
	} else {
		ip = ip.Unmap()
		key, who = "a:"+ip.String(), ip.String()
	}
	now := p.clock()
	rate := float64(perMinute) / 60 // tokens a second
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.buckets[key]
	if b == nil {
		p.makeRoom(now)
		b = &bucket{tokens: float64(burst), at: now}
		p.buckets[key] = b
	}
	b.refill(now, rate, burst)
	if b.tokens >= 1 {
		b.tokens--
		return nil
	}
	wait := time.Duration((1 - b.tokens) / rate * float64(time.Second))
	setting := "limits.messages_per_minute"
	if dev != nil {
		setting = "the device's messages_per_minute"
	}
	return reply(450, smtp.EnhancedCode{4, 7, 1},
		"Too many messages from %s (limit %d a minute, burst %d); try again in %d seconds, or raise %s",
		who, perMinute, burst, int(math.Ceil(wait.Seconds())), setting)
}

func (b *bucket) refill(now time.Time, rate float64, burst int) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(burst), b.tokens+d.Seconds()*rate)
	}
	b.at = now
}

// makeRoom keeps the per-client tables under maxClients. A full bucket and
// an expired failure count mean nothing, so they go first; if every entry
// still matters (thousands of active clients), an arbitrary one goes:
// forgetting a client only ever errs on the side of letting it send.
// Called with p.mu held.
func (p *Policy) makeRoom(now time.Time) {
	if len(p.buckets) < maxClients && len(p.failures) < maxClients {
		return
	}
	if now.Sub(p.swept) >= time.Second {
		p.swept = now
		rate := float64(p.perMinute) / 60
		for k, b := range p.buckets {
			if b.refill(now, rate, p.burst); b.tokens >= float64(p.burst) {
				delete(p.buckets, k)
			}
		}
		for ip, f := range p.failures {
			if now.Sub(f.last) >= LoginBrake {
				delete(p.failures, ip)
			}
		}
	}
	for k := range p.buckets {
		if len(p.buckets) < maxClients {
			break
		}
		delete(p.buckets, k)
	}
	for ip := range p.failures {
		if len(p.failures) < maxClients {
			break
		}
		delete(p.failures, ip)
	}
}

// clients reports the sizes of the per-client tables (for tests).
func (p *Policy) clients() (buckets, failures, conns int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.buckets), len(p.failures), len(p.conns)
}

// splitAddress checks the shape of a mailbox (local@domain, or
// local@[address literal]) without judging the local part beyond its length.
func splitAddress(a string) (local, domain string, ok bool) {
	at := strings.LastIndexByte(a, '@')
	if at < 1 || len(a) > 254 || at > 64 || strings.ContainsAny(a, " \t\r\n<>") {
		return "", "", false
	}
	local, domain = a[:at], a[at+1:]
	if strings.HasPrefix(domain, "[") && strings.HasSuffix(domain, "]") {
		lit := strings.TrimPrefix(domain[1:len(domain)-1], "IPv6:")
		_, err := netip.ParseAddr(lit)
		return local, domain, err == nil
	}
	if domain == "" || len(domain) > 253 {
		return "", "", false
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c > 127) {
				return "", "", false
			}
		}
	}
	return local, domain, true
}
