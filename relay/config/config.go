// Package config is the relay's one configuration document: its types, its
// defaults, and a validation that names every bad key, so that a broken file
// stops start-up with a list an admin can fix in one pass.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/strictjson"
)

// Config is the whole document (config.json in the state directory).
type Config struct {
	// Hostname is the relay's name in its banner, Received headers and
	// bounces. Empty means the machine's host name.
	Hostname  string     `json:"hostname,omitempty"`
	Listeners []Listener `json:"listeners"`
	TLS       TLS        `json:"tls"`
	// Accounts are the local logins for devices that can authenticate.
	Accounts   []Account  `json:"accounts,omitempty"`
	Senders    Senders    `json:"senders"`
	Recipients Recipients `json:"recipients"`
	Limits     Limits     `json:"limits"`
	Spool      Spool      `json:"spool"`
	Delivery   Delivery   `json:"delivery"`
	// Upstream is the one upstream when every message goes the same way.
	// Upstreams and Routes replace it when mail goes several ways (see
	// routes.go): give either upstream, or upstreams with routes.
	Upstream  Upstream            `json:"upstream,omitzero"`
	Upstreams map[string]Upstream `json:"upstreams,omitempty"`
	Routes    []Route             `json:"routes,omitempty"`
	Bounce    Bounce              `json:"bounce"`
	Trace     Trace               `json:"trace"`
	Alerts    Alerts              `json:"alerts"`
	Forward   Forward             `json:"forward"`
	// Devices are the plant devices known by name (devices.go).
	Devices []Device `json:"devices,omitempty"`
	// DevicesOnly locks the relay to Devices: any other client is refused
	// at MAIL with 550 5.7.1.
	DevicesOnly bool `json:"devices_only,omitempty"`
}

// Listener is one SMTP port on the plant side.
type Listener struct {
	// Name appears in logs, metrics and the Received header.
	Name string `json:"name"`
	// Address is host:port, e.g. ":25" or "127.0.0.1:2525".
	Address string `json:"address"`
	// Mode is "smtp" (port 25 style: allowed networks, optional STARTTLS and
	// AUTH) or "submission" (port 587 style: STARTTLS and AUTH offered).
	Mode string `json:"mode"`
	// StartTLS offers STARTTLS. Default true.
	StartTLS *bool `json:"starttls,omitempty"`
	// RequireTLS refuses MAIL before STARTTLS.
	RequireTLS bool `json:"require_tls,omitempty"`
	// Auth offers AUTH PLAIN/LOGIN against Accounts. Default: true for
	// submission, false for smtp.
	Auth *bool `json:"auth,omitempty"`
	// RequireAuth refuses every client that has not logged in, whatever
	// its address. Default: true for submission.
	RequireAuth *bool `json:"require_auth,omitempty"`
	// AllowPlaintextAuth allows AUTH without TLS, for a legacy device on a
	// trusted segment. Off by default.
	AllowPlaintextAuth bool `json:"allow_plaintext_auth,omitempty"`
	// AllowedNetworks are the client networks that may relay without
	// logging in (CIDR, e.g. "10.20.0.0/16").
	AllowedNetworks []string `json:"allowed_networks,omitempty"`
	// MinTLS is the oldest TLS version offered to devices: "1.0", "1.1",
	// "1.2" (default) or "1.3". Old printers need "1.0".
	MinTLS string `json:"min_tls,omitempty"`
}

// TLS is the relay's own certificate for STARTTLS on the plant side. Empty
// files mean a self-signed certificate is generated in the state directory
// on first start.
type TLS struct {
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// KeySecret names the secret holding CertFile's private key, instead
	// of KeyFile: what `relayctl creds put NAME -kind tls-certificate`
	// provides over the tailnet, with CertFile "certs/NAME.pem".
	KeySecret string `json:"key_secret,omitempty"`
}

// Account is a local device login; the password is stored as a bcrypt hash
// (relayd hash-password prints one).
type Account struct {
	Username     string `json:"username"`
	PasswordHash string `json:"password_hash"`
	// AllowedSenders limits this account to these envelope senders or
	// "@domain" patterns; empty means the global sender rules.
	AllowedSenders []string `json:"allowed_senders,omitempty"`
}

// Senders are the rules for envelope senders.
type Senders struct {
	// AllowedDomains lists the envelope sender domains accepted; empty
	// accepts any (the upstream will judge). The null sender is refused
	// unless AllowNull.
	AllowedDomains []string `json:"allowed_domains,omitempty"`
	AllowNull      bool     `json:"allow_null,omitempty"`
	// RewriteFrom, when set, replaces the envelope sender and the header
	// From with this mailbox (devices often send as nonsense addresses that
	// Microsoft 365 refuses); the original From moves to Reply-To unless
	// the message already has one.
	RewriteFrom string `json:"rewrite_from,omitempty"`
}

// Recipients are the rules for envelope recipients.
type Recipients struct {
	// AllowedDomains, when not empty, is the only set of recipient
	// domains accepted.
	AllowedDomains []string `json:"allowed_domains,omitempty"`
	// DeniedDomains are always refused.
	DeniedDomains []string `json:"denied_domains,omitempty"`
}

// Limits protect the relay and the upstream from a misbehaving device.
type Limits struct {
	// MaxMessageBytes is the SIZE advertised and enforced. Default 35 MiB
	// (Microsoft 365's default); it is lowered to the upstream's own limit.
	MaxMessageBytes int64 `json:"max_message_bytes,omitempty"`
	// MaxRecipients per message. Default 100.
	MaxRecipients int `json:"max_recipients,omitempty"`
	// MessagesPerMinute per client IP (or login); 0 means no limit.
	// Default (absent) 120, Burst default 30. A pointer, so that an
	// explicit 0 is not mistaken for "absent" and given the default.
	MessagesPerMinute *int `json:"messages_per_minute,omitempty"`
	Burst             int  `json:"burst,omitempty"`
	// MaxConnectionsPerClient is concurrent sessions per client IP.
	// Default 20.
	MaxConnectionsPerClient int `json:"max_connections_per_client,omitempty"`
	// MaxConnections is concurrent sessions per listener, from all
	// clients; at the limit a new connection displaces the session idle
	// longest outside a transaction. Default 1000, well below the
	// descriptor limit the appliance gives relayd (4096).
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxLoginChecks bounds the password checks (bcrypt) running at once,
	// from all clients together: guessing from many addresses must not
	// take the CPU that mail needs. A login that waits longer than
	// policy.LoginQueueWait for its turn gets 454 4.7.0. Default 2.
	MaxLoginChecks int `json:"max_login_checks,omitempty"`
	// MaxLineLength of an SMTP command or message line. Default 4000.
	MaxLineLength int `json:"max_line_length,omitempty"`
	// MaxHeaderBytes bounds a message's header section as the device sent
	// it (relay/message refuses more with 552 5.3.4 naming this key).
	// Default 1 MiB; at least 16 KiB, at most max_message_bytes.
	MaxHeaderBytes int `json:"max_header_bytes,omitempty"`
	// ReadTimeout bounds each client read (no progress for this long),
	// WriteTimeout each write. Defaults 5m and 1m.
	ReadTimeout  Duration `json:"read_timeout,omitempty"`
	WriteTimeout Duration `json:"write_timeout,omitempty"`
	// CommandTimeout bounds the time from a reply to the whole next
	// command line, however slowly it trickles in. Default 5m.
	CommandTimeout Duration `json:"command_timeout,omitempty"`
	// MaxSessionTime bounds one session's lifetime. Default 1h.
	MaxSessionTime Duration `json:"max_session_time,omitempty"`
	// MaxCommandsWithoutMail bounds the commands (all but RCPT, DATA and
	// BDAT) a session may send without a message being accepted.
	// Default 100.
	MaxCommandsWithoutMail int `json:"max_commands_without_mail,omitempty"`
	// BareLineEndings is what to do with a bare CR or LF in DATA:
	// "normalise" (default: rewrite to CRLF) or "refuse" (550 5.6.11).
	BareLineEndings string `json:"bare_line_endings,omitempty"`
	// NULBytes is what to do with a NUL byte in DATA: "remove" (default)
	// or "refuse" (550 5.6.0).
	NULBytes string `json:"nul_bytes,omitempty"`
}

// PerMinute is MessagesPerMinute's value (0, no limit, when unset).
func (l Limits) PerMinute() int {
	if l.MessagesPerMinute == nil {
		return 0
	}
	return *l.MessagesPerMinute
}

// Spool bounds the durable queue.
type Spool struct {
	// MaxBytes and MaxMessages cap the queue; beyond them devices get
	// 452 4.3.1 and retry. Defaults: 1 GiB, 100000.
	MaxBytes    int64 `json:"max_bytes,omitempty"`
	MaxMessages int   `json:"max_messages,omitempty"`
	// MinFreeBytes keeps this much of the file system free. Default 64 MiB.
	MinFreeBytes int64 `json:"min_free_bytes,omitempty"`
}

// Delivery is the retry schedule.
type Delivery struct {
	// FirstRetry is the delay after the first temporary failure; it doubles
	// up to MaxRetry, with jitter. Defaults 1m and 1h.
	FirstRetry Duration `json:"first_retry,omitempty"`
	MaxRetry   Duration `json:"max_retry,omitempty"`
	// Lifetime is how long a message is retried before it expires and
	// bounces. Default 5 days.
	Lifetime Duration `json:"lifetime,omitempty"`
	// Concurrency is how many deliveries run at once; 0 means the
	// upstream's own limit.
	Concurrency int `json:"concurrency,omitempty"`
}

// Bounce says where delivery status notifications go.
type Bounce struct {
	// Admin receives a copy of every bounce (and the bounce when the sender
	// is not routable). Optional.
	Admin string `json:"admin,omitempty"`
	// From is the bounce's header From; default MAILER-DAEMON@hostname.
	From string `json:"from,omitempty"`
}

// Trace keeps the searchable message trace.
type Trace struct {
	// RetentionDays default 30.
	RetentionDays int `json:"retention_days,omitempty"`
	// MaxBytes caps the trace's files (day files and their indexes)
	// together: past it the oldest days go, today's never. Default 512 MiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// Duration is a time.Duration written as "90s", "5m", "120h".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"5m\" or \"120h\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. \"90s\", \"5m\", \"120h\")", s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Errors is every problem found in a document, each naming its key; one
// definition for the configuration, the site file and the admin API.
type Errors = strictjson.Errors

// KeyError is one bad key.
type KeyError = strictjson.KeyError

// Load reads, parses and validates a file; see Parse.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a document strictly (unknown keys are errors: a typo must
// not silently turn a limit off), fills defaults and validates it. Every
// problem is listed at once: unknown keys, wrong types and bad values
// together (a value is judged unless its own key could not be decoded).
func Parse(b []byte) (*Config, error) {
	var c Config
	derr := strictjson.Decode(b, &c)
	if strictjson.Unreadable(derr) {
		return nil, derr
	}
	var decoding Errors
	errors.As(derr, &decoding)
	c.SetDefaults()
	if errs := strictjson.Merge(decoding, c.Validate()); len(errs) > 0 {
		return nil, errs
	}
	return &c, nil
}

// Default is the embedded development configuration behind `relayd -dev`:
// SMTP on 127.0.0.1:2525 for loopback clients, capture upstream to
// STATE/outbox. It needs no tenant and no secret.
func Default() *Config {
	c := &Config{
		Hostname: "relay.localhost",
		Listeners: []Listener{{
			Name:            "smtp",
			Address:         "127.0.0.1:2525",
			Mode:            "smtp",
			AllowedNetworks: []string{"127.0.0.0/8", "::1/128"},
		}},
		Upstream: Upstream{Kind: KindCapture},
		Delivery: Delivery{FirstRetry: Duration(10 * time.Second), MaxRetry: Duration(5 * time.Minute)},
	}
	c.SetDefaults()
	return c
}

// SetDefaults fills every zero value that has a default.
func (c *Config) SetDefaults() {
	t, f := true, false
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Name == "" {
			l.Name = l.Mode
		}
		if l.StartTLS == nil {
			l.StartTLS = &t
		}
		sub := l.Mode == "submission"
		if l.Auth == nil {
			if sub {
				l.Auth = &t
			} else {
				l.Auth = &f
			}
		}
		if l.RequireAuth == nil {
			v := sub
			l.RequireAuth = &v
		}
		if l.MinTLS == "" {
			l.MinTLS = "1.2"
		}
	}
	lim := &c.Limits
	setDefault(&lim.MaxMessageBytes, 35<<20)
	setDefault(&lim.MaxRecipients, 100)
	if lim.MessagesPerMinute == nil {
		v := 120
		lim.MessagesPerMinute = &v
	}
	setDefault(&lim.Burst, 30)
	setDefault(&lim.MaxConnectionsPerClient, 20)
	setDefault(&lim.MaxConnections, 1000)
	setDefault(&lim.MaxLoginChecks, 2)
	setDefault(&lim.MaxLineLength, 4000)
	setDefault(&lim.MaxHeaderBytes, 1<<20)
	setDefault(&lim.ReadTimeout, Duration(5*time.Minute))
	setDefault(&lim.WriteTimeout, Duration(time.Minute))
	setDefault(&lim.CommandTimeout, Duration(5*time.Minute))
	setDefault(&lim.MaxSessionTime, Duration(time.Hour))
	setDefault(&lim.MaxCommandsWithoutMail, 100)
	setDefault(&lim.BareLineEndings, "normalise")
	setDefault(&lim.NULBytes, "remove")
	setDefault(&c.Spool.MaxBytes, 1<<30)
	setDefault(&c.Spool.MaxMessages, 100000)
	setDefault(&c.Spool.MinFreeBytes, 64<<20)
	setDefault(&c.Delivery.FirstRetry, Duration(time.Minute))
	setDefault(&c.Delivery.MaxRetry, Duration(time.Hour))
	setDefault(&c.Delivery.Lifetime, Duration(5*24*time.Hour))
	setDefault(&c.Trace.RetentionDays, 30)
	setDefault(&c.Trace.MaxBytes, 512<<20)
	c.Alerts.setDefaults()
	c.Forward.setDefaults()
	c.Upstream.setDefaults()
	for name, u := range c.Upstreams {
		u.setDefaults()
		c.Upstreams[name] = u
	}
	for i := range c.Routes {
		c.Routes[i].setDefaults()
	}
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate checks every key and returns all problems at once.
func (c *Config) Validate() Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}
	if len(c.Listeners) == 0 {
		bad("listeners", "at least one listener is needed")
	}
	names := map[string]bool{}
	for i, l := range c.Listeners {
		k := fmt.Sprintf("listeners[%d]", i)
		if names[l.Name] {
			bad(k+".name", "%q is used by another listener", l.Name)
		}
		names[l.Name] = true
		if _, _, err := splitHostPort(l.Address); err != nil {
			bad(k+".address", "%v", err)
		}
		if l.Mode != "smtp" && l.Mode != "submission" {
			bad(k+".mode", "%q: want \"smtp\" or \"submission\"", l.Mode)
		}
		if _, ok := TLSVersions[l.MinTLS]; !ok {
			bad(k+".min_tls", "%q: want \"1.0\", \"1.1\", \"1.2\" or \"1.3\"", l.MinTLS)
		}
		for j, n := range l.AllowedNetworks {
			if _, err := netip.ParsePrefix(n); err != nil {
				bad(fmt.Sprintf("%s.allowed_networks[%d]", k, j), "%q is not a network in CIDR form (e.g. \"10.1.0.0/16\")", n)
			}
		}
		if *l.RequireAuth && !*l.Auth {
			bad(k+".require_auth", "login is required but auth is off")
		}
		if l.RequireTLS && !*l.StartTLS {
			bad(k+".require_tls", "TLS is required but starttls is off")
		}
		if *l.Auth && len(c.Accounts) == 0 && *l.RequireAuth {
			bad(k+".auth", "login is required but no accounts are configured")
		}
		if !*l.RequireAuth && len(l.AllowedNetworks) == 0 && !*l.Auth {
			bad(k+".allowed_networks", "no client could ever send: give allowed networks or turn auth on")
		}
	}
	switch t := c.TLS; {
	case t.KeyFile != "" && t.KeySecret != "":
		bad("tls.key_secret", "give key_file or key_secret, not both")
	case t.CertFile != "" && t.KeyFile == "" && t.KeySecret == "":
		bad("tls", "cert_file goes with key_file or key_secret")
	case t.CertFile == "" && (t.KeyFile != "" || t.KeySecret != ""):
		bad("tls", "key_file and key_secret go with cert_file")
	}
	users := map[string]bool{}
	for i, a := range c.Accounts {
		k := fmt.Sprintf("accounts[%d]", i)
		if a.Username == "" {
			bad(k+".username", "empty")
		}
		if users[a.Username] {
			bad(k+".username", "%q appears twice", a.Username)
		}
		users[a.Username] = true
		if !strings.HasPrefix(a.PasswordHash, "$2") {
			bad(k+".password_hash", "not a bcrypt hash (make one with `relayd hash-password`)")
		}
	}
	for i, d := range c.Senders.AllowedDomains {
		if !validDomain(d) {
			bad(fmt.Sprintf("senders.allowed_domains[%d]", i), "%q is not a domain name", d)
		}
	}
	if c.Senders.RewriteFrom != "" && !validAddress(c.Senders.RewriteFrom) {
		bad("senders.rewrite_from", "%q is not a mail address", c.Senders.RewriteFrom)
	}
	for i, d := range c.Recipients.AllowedDomains {
		if !validDomain(d) {
			bad(fmt.Sprintf("recipients.allowed_domains[%d]", i), "%q is not a domain name", d)
		}
	}
	for i, d := range c.Recipients.DeniedDomains {
		if !validDomain(d) {
			bad(fmt.Sprintf("recipients.denied_domains[%d]", i), "%q is not a domain name", d)
		}
	}
	lim := c.Limits
	if lim.MaxMessageBytes < 1024 {
		bad("limits.max_message_bytes", "%d is too small (at least 1024)", lim.MaxMessageBytes)
	}
	if lim.MaxRecipients < 1 || lim.MaxRecipients > 1000 {
		bad("limits.max_recipients", "%d: want 1 to 1000", lim.MaxRecipients)
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"messages_per_minute", lim.PerMinute()}, {"burst", lim.Burst}, {"max_connections_per_client", lim.MaxConnectionsPerClient},
		{"max_connections", lim.MaxConnections}, {"max_commands_without_mail", lim.MaxCommandsWithoutMail}} {
		if n.v < 0 {
			bad("limits."+n.key, "%d: cannot be negative", n.v)
		}
	}
	for _, d := range []struct {
		key      string
		v, least time.Duration
	}{{"read_timeout", lim.ReadTimeout.D(), time.Second}, {"write_timeout", lim.WriteTimeout.D(), time.Second},
		{"command_timeout", lim.CommandTimeout.D(), time.Second}, {"max_session_time", lim.MaxSessionTime.D(), time.Minute}} {
		if d.v < d.least {
			bad("limits."+d.key, "%v is too short (at least %v)", d.v, d.least)
		}
	}
	if lim.MaxLoginChecks < 1 || lim.MaxLoginChecks > 64 {
		bad("limits.max_login_checks", "%d: want 1 to 64 (password checks at once)", lim.MaxLoginChecks)
	}
	if lim.NULBytes != "remove" && lim.NULBytes != "refuse" {
		bad("limits.nul_bytes", "%q: want \"remove\" or \"refuse\"", lim.NULBytes)
	}
	if lim.MaxLineLength < 1000 {
		bad("limits.max_line_length", "%d: at least 1000 (RFC 5321)", lim.MaxLineLength)
	}
	if lim.MaxHeaderBytes < 16<<10 || int64(lim.MaxHeaderBytes) > lim.MaxMessageBytes {
		bad("limits.max_header_bytes", "%d: want 16384 to limits.max_message_bytes (%d)", lim.MaxHeaderBytes, lim.MaxMessageBytes)
	}
	if lim.BareLineEndings != "normalise" && lim.BareLineEndings != "refuse" {
		bad("limits.bare_line_endings", "%q: want \"normalise\" or \"refuse\"", lim.BareLineEndings)
	}
	if c.Spool.MaxBytes < lim.MaxMessageBytes {
		bad("spool.max_bytes", "smaller than one message of limits.max_message_bytes")
	}
	if c.Spool.MaxMessages < 1 {
		bad("spool.max_messages", "at least 1")
	}
	if c.Spool.MinFreeBytes < 0 {
		bad("spool.min_free_bytes", "cannot be negative")
	}
	d := c.Delivery
	if d.FirstRetry <= 0 || d.MaxRetry < d.FirstRetry {
		bad("delivery.max_retry", "must be at least delivery.first_retry (%v)", d.FirstRetry.D())
	}
	if d.Lifetime.D() < time.Minute {
		bad("delivery.lifetime", "%v is too short (at least 1m)", d.Lifetime.D())
	}
	if d.Concurrency < 0 {
		bad("delivery.concurrency", "cannot be negative")
	}
	if c.Bounce.Admin != "" && !validAddress(c.Bounce.Admin) {
		bad("bounce.admin", "%q is not a mail address", c.Bounce.Admin)
	}
	if c.Bounce.From != "" && !validAddress(c.Bounce.From) {
		bad("bounce.from", "%q is not a mail address", c.Bounce.From)
	}
	if c.Trace.RetentionDays < 1 {
		bad("trace.retention_days", "at least 1")
	}
	if c.Trace.MaxBytes < 1<<20 {
		bad("trace.max_bytes", "%d is below 1 MiB (1048576); the trace needs room for at least today", c.Trace.MaxBytes)
	}
	errs = append(errs, c.validateUpstreams()...)
	errs = append(errs, c.Alerts.validate()...)
	errs = append(errs, c.Forward.validate()...)
	errs = append(errs, c.validateDevices()...)
	errs = append(errs, c.validateNames()...)
	return errs
}

// TLSVersions maps the configuration's names to crypto/tls constants.
var TLSVersions = map[string]uint16{"1.0": 0x0301, "1.1": 0x0302, "1.2": 0x0303, "1.3": 0x0304}

func splitHostPort(a string) (string, int, error) {
	i := strings.LastIndexByte(a, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("%q: want host:port, e.g. \":25\"", a)
	}
	p, err := strconv.Atoi(a[i+1:])
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("%q: the port must be a number from 0 to 65535", a)
	}
	return strings.Trim(a[:i], "[]"), p, nil
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r > 127) {
				return false
			}
		}
	}
	return true
}

func validAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	return at > 0 && validDomain(a[at+1:]) && !strings.ContainsAny(a, " <>\r\n")
}
