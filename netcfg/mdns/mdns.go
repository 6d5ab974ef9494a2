// Package mdns makes the relay findable on the plant LAN without typing an
// address: it answers multicast DNS (RFC 6762) for the box's host name and
// advertises its listeners by DNS-SD (RFC 6763).
//
// It is a small responder of its own on miekg/dns rather than a library
// because neither candidate does what a box on a shared plant network needs:
// grandcat/zeroconf v1.0.0 never answers A/AAAA for the host name, leaks the
// addresses of every interface and does not probe; pion/mdns/v2 v2.2.2
// answers host names and DNS-SD questions but does not probe, never
// announces or says goodbye, snapshots interfaces and addresses once at
// start and answers with one address per interface (falling back to a route
// lookup that may pick another interface's address). Here every record is
// built per interface from that interface's own addresses, names are probed
// before use and renamed on conflict, announcements follow probing and every
// change of address or service, and goodbyes (TTL 0) go out when a service
// or the responder stops. Answers other hosts may give too (DNS-SD PTRs) are
// delayed 20–120 ms and merged per interface, as RFC 6762 §6 asks, so a
// browse on a busy plant network does not draw a burst of packets.
package mdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Service is one DNS-SD service instance, for example the SMTP listener.
type Service struct {
	// Instance is the user-visible name ("siterelay Plant 3"); empty means the host name.
	Instance string
	// Type is the service type with protocol, "_smtp._tcp".
	Type string
	// Port is the port the service listens on.
	Port int
	// TXT holds "key=value" strings; see docs/discovery.md for the keys devices read.
	TXT []string
}

// Options configure a Responder.
type Options struct {
	// Hostname is the single label to answer as <Hostname>.local ("relay").
	Hostname string
	// Site is added to every service's TXT as site=<Site> unless the service sets site= itself.
	Site string
	// Interfaces names the plant-side interfaces to answer on. Empty means every
	// interface that is up and multicast-capable except loopback and Tailscale's.
	Interfaces []string
	// Services are advertised once their instance names are probed.
	Services []Service
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger

	// Hooks for tests in this package.
	transport  transport
	listIfaces func() ([]netIface, error)
	timing     *timing
	onEvent    func(event string)
	random     func(max time.Duration) time.Duration // uniform in [0, max]; nil is math/rand/v2
}

// timing holds the RFC 6762 intervals; tests shrink them.
type timing struct {
	probeWait     time.Duration // random delay before the first probe, at most this
	probeInterval time.Duration // between probes, and after the last before claiming
	announceGap   time.Duration // between the announcements
	deferOnLoss   time.Duration // after losing a simultaneous-probe tie-break
	poll          time.Duration // how often interfaces and addresses are re-read
	minRepeat     time.Duration // RFC 6762 §6: least time between two multicasts of one record as an answer
}

var defaultTiming = timing{
	probeWait:     250 * time.Millisecond,
	probeInterval: 250 * time.Millisecond,
	announceGap:   time.Second,
	deferOnLoss:   time.Second,
	poll:          2 * time.Second,
	minRepeat:     time.Second,
}

// Responder answers and announces on the chosen interfaces until its Run returns.
type Responder struct {
	opts   Options
	log    *slog.Logger
	timing timing

	name    atomic.Value // string: host label in use
	svcCh   chan []Service
	running atomic.Bool
	sent    atomic.Int64 // packets sent, for figures and tests
	skipped atomic.Int64 // received records (or packets) that could not be read
	badPkts atomic.Int64 // received packets holding something that could not be read

	mu       sync.Mutex
	services []Service // validated, last set by New or SetServices
}

// New checks the options and returns a Responder; nothing is sent before Run.
func New(opts Options) (*Responder, error) {
	host := strings.TrimSuffix(strings.TrimSuffix(opts.Hostname, "."), ".local")
	if err := checkLabel(host); err != nil {
		return nil, fmt.Errorf("mdns: host name %q: %w", opts.Hostname, err)
	}
	for _, n := range opts.Interfaces {
		if err := CheckInterface(n); err != nil {
			return nil, fmt.Errorf("mdns: %w", err)
		}
	}
	svcs, err := checkServices(opts.Services, host, opts.Site)
	if err != nil {
		return nil, err
	}
	r := &Responder{opts: opts, log: opts.Logger, timing: defaultTiming, svcCh: make(chan []Service, 1), services: svcs}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if opts.timing != nil {
		r.timing = *opts.timing
	}
	r.name.Store(host)
	return r, nil
}

// Name is the host label in use (without ".local"): the configured one, or
// the one chosen after another host on the link already had it.
func (r *Responder) Name() string { return r.name.Load().(string) }

// PacketsSent counts the mDNS datagrams sent so far (a multicast over IPv4 and IPv6 counts two).
func (r *Responder) PacketsSent() int64 { return r.sent.Load() }

// Unreadable counts the received records that could not be read and were
// skipped (the rest of their packet was still used), plus packets too short
// to hold a DNS header. A steady rise means a broken or hostile host on the link.
func (r *Responder) Unreadable() int64 { return r.skipped.Load() }

// MalformedPackets counts the received packets that held at least one
// record that could not be read, or were not DNS at all. The log's
// "malformed_packets" attribute is this count (see docs/discovery.md).
func (r *Responder) MalformedPackets() int64 { return r.badPkts.Load() }

// SetServices replaces the advertised services: removed ones get goodbye
// packets, new ones are probed and announced, changed ones re-announced.
func (r *Responder) SetServices(svcs []Service) error {
	checked, err := checkServices(svcs, r.opts.Hostname, r.opts.Site)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.services = checked
	r.mu.Unlock()
	select { // keep only the latest set
	case <-r.svcCh:
	default:
	}
	r.svcCh <- checked
	return nil
}

func checkServices(in []Service, host, site string) ([]Service, error) {
	host = strings.TrimSuffix(strings.TrimSuffix(host, "."), ".local")
	out := make([]Service, 0, len(in))
	seen := map[string]bool{}
	for _, s := range in {
		if s.Instance == "" {
			s.Instance = host
		}
		if err := CheckInstance(s.Instance); err != nil {
			return nil, fmt.Errorf("mdns: service %w", err)
		}
		if err := checkType(s.Type); err != nil {
			return nil, fmt.Errorf("mdns: service %q type %q: %w", s.Instance, s.Type, err)
		}
		if s.Port < 1 || s.Port > 65535 {
			return nil, fmt.Errorf("mdns: service %q port %d: must be 1..65535", s.Instance, s.Port)
		}
		txt := slices.Clone(s.TXT)
		hasSite := false
		for _, t := range txt {
			if len(t) > 255 {
				return nil, fmt.Errorf("mdns: service %q TXT string %.20q…: longer than 255 bytes", s.Instance, t)
			}
			if t == "" || t[0] == '=' {
				return nil, fmt.Errorf("mdns: service %q TXT string %q: needs a key before '='", s.Instance, t)
			}
			if strings.HasPrefix(strings.ToLower(t), "site=") {
				hasSite = true
			}
		}
		if site != "" && !hasSite {
			if err := CheckSite(site); err != nil {
				return nil, fmt.Errorf("mdns: %w", err)
			}
			txt = append([]string{"site=" + site}, txt...)
		}
		s.TXT = txt
		key := strings.ToLower(s.Instance + "." + s.Type)
		if seen[key] {
			return nil, fmt.Errorf("mdns: service %q of type %s is listed twice", s.Instance, s.Type)
		}
		seen[key] = true
		out = append(out, s)
	}
	return out, nil
}

// The checks below are exported so that the site file's discovery keys
// are refused when the site file is read or an image is built, with the
// same words, rather than when the box starts announcing.

// CheckInstance accepts a DNS-SD service instance name (RFC 6763 §4.1.1):
// any UTF-8 text of 1 to 63 bytes without control characters.
func CheckInstance(s string) error {
	if s == "" || len(s) > 63 || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("instance %q: must be text of 1 to 63 bytes (UTF-8, no control characters)", s)
	}
	return nil
}

// CheckSite accepts a site name for the TXT key site=: UTF-8 text of 1 to
// 250 bytes (a TXT string holds 255, "site=" takes five).
func CheckSite(s string) error {
	if s == "" || len(s) > 250 || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("site %.20q: must be text of 1 to 250 bytes (UTF-8, no control characters)", s)
	}
	return nil
}

// CheckInterface accepts a Linux interface name (1 to 15 bytes, no '/',
// blanks or ':').
func CheckInterface(n string) error {
	if n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n") {
		return fmt.Errorf("interface name %q is not a Linux interface name (1 to 15 characters, no '/', ':' or blanks)", n)
	}
	return nil
}

// checkLabel accepts a host-name label as RFC 1123 has it.
func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty")
	case len(l) > 63:
		return errors.New("longer than 63 characters")
	case strings.Contains(l, "."):
		return errors.New("must be a single label (no dots) before .local")
	case l[0] == '-' || l[len(l)-1] == '-':
		return errors.New("must not start or end with '-'")
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("character %q: only letters, digits and '-' are allowed", c)
		}
	}
	return nil
}

// checkType accepts "_name._tcp" or "_name._udp" (RFC 6763 §7, RFC 6335 §5.1).
func checkType(t string) error {
	name, proto, ok := strings.Cut(t, ".")
	if !ok || (proto != "_tcp" && proto != "_udp") {
		return errors.New(`must look like "_smtp._tcp" (protocol _tcp or _udp)`)
	}
	if len(name) < 2 || name[0] != '_' || len(name) > 16 {
		return errors.New("service name must be '_' and 1 to 15 characters")
	}
	for _, c := range name[1:] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("service name character %q: only letters, digits and '-'", c)
		}
	}
	return nil
}

// Run opens the mDNS sockets, probes the names, announces, answers, follows
// address changes and blocks until ctx ends; then it sends goodbyes and
// closes the sockets. A Responder runs once.
func (r *Responder) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("mdns: Run called twice")
	}
	tr := r.opts.transport
	if tr == nil {
		var err error
		tr, err = openUDP(r.log)
		if err != nil {
			return err
		}
	}
	list := r.opts.listIfaces
	if list == nil {
		list = systemInterfaces
	}
	r.mu.Lock()
	svcs := slices.Clone(r.services)
	r.mu.Unlock()
	e := newEngine(r, tr, list, svcs)
	return e.run(ctx)
}

// ownAddr reports whether a is one of the box's addresses (any interface).
type addrSet map[netip.Addr]bool

func (s addrSet) has(a netip.Addr) bool { return s[a.WithZone("").Unmap()] }
