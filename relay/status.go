package relay

import (
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

// Status is the relay at a glance, for the status page and for discovery.
// It names no person: no addresses, no subjects, no queue IDs, because the
// status page is open to everyone on the plant network. The message trace
// is where an administrator looks for a message.
type Status struct {
	Started   time.Time        `json:"started"`
	Listeners []ListenerStatus `json:"listeners"`
	// MaxMessageBytes is the largest message a device may send (the
	// smaller of the configured limit and the upstream's).
	MaxMessageBytes int64          `json:"max_message_bytes"`
	Upstream        UpstreamStatus `json:"upstream"`
	// Routes, when the configuration has routes, say which upstream each
	// uses now and, after a failover, why and until when.
	Routes []route.Status `json:"routes,omitempty"`
	// Warnings are things in the configuration an admin must act on before
	// they stop mail (basic authentication's end), in plain words.
	Warnings []string `json:"warnings,omitempty"`
	// Renewals are the certificates the box renews itself
	// (upstream.m365.application_object_id): when, how the last attempt
	// went, Microsoft's refusal explained.
	Renewals []m365.RenewState `json:"renewals,omitempty"`
	Queue    QueueStatus       `json:"queue"`
	// Counts are trace events since start, by kind (docs/trace.md).
	Counts map[trace.Kind]uint64 `json:"counts"`
	// Refused is how many commands or messages from devices the listeners
	// refused since start (siterelay_refused_total summed over its
	// series): a roll-out's refusals gate compares it before and after.
	Refused uint64 `json:"refused"`
	// TLSCertificateExpires is when the listeners' STARTTLS certificate
	// ends; zero when no listener offers STARTTLS.
	TLSCertificateExpires time.Time `json:"tls_certificate_expires,omitzero"`
	// ClockSynchronised says whether the kernel's clock is kept in step
	// (NTP: gokrazy's ntp package on the box); nil where it cannot tell.
	// Tokens, certificates and retries all depend on it.
	ClockSynchronised *bool `json:"clock_synchronised,omitempty"`
	// Waiting lists the secrets and files the configuration in force
	// names that are missing, unreadable or malformed, each with the
	// upstream that holds its mail for it and the command that provides
	// it; empty when nothing waits.
	Waiting []Waiting `json:"waiting,omitempty"`
	// Config, when set, says the relay does not run config.json: it did
	// not build at start, and a kept version (or none) runs instead.
	Config *ConfigSource `json:"config,omitempty"`
	// UpstreamKinds are the kinds of the upstreams in force, sorted (one,
	// or several with routes): the device setup sheet's notes depend on them.
	UpstreamKinds []string `json:"upstream_kinds,omitempty"`
	// SenderRule is what an upstream in force asks of a message's sender,
	// for the device setup sheet: "mailbox" (Microsoft 365 takes only the
	// mailbox the relay sends as, or one it may send as), "rewritten" (the
	// relay puts that mailbox or senders.rewrite_from in From itself), or
	// "" (no rule beyond the site's own senders settings).
	SenderRule string `json:"sender_rule,omitempty"`
	// Forward is the syslog forwarding (forward.syslog): connected or
	// not, what waits in its buffer, what was dropped by stream.
	Forward *forward.Stats `json:"forward,omitempty"`
}

// ListenerStatus is one listener as a device sees it.
type ListenerStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Mode is "smtp" or "submission".
	Mode string `json:"mode"`
	// TLS is "none", "starttls" (offered) or "required".
	TLS string `json:"tls"`
	// MinTLS is the oldest TLS version offered, e.g. "1.0".
	MinTLS string `json:"min_tls,omitempty"`
	// Auth is "none", "offered" or "required".
	Auth string `json:"auth"`
	// Loopback listeners are not reachable from the plant network.
	Loopback bool `json:"loopback"`
	// Problem, when set, says the listener could not bind at start (its
	// address in use or not on this box) and is tried again; the others
	// serve meanwhile.
	Problem string `json:"problem,omitempty"`
}

// UpstreamStatus is how the last deliveries went.
type UpstreamStatus struct {
	Name string `json:"name"`
	// LastDelivered is when the upstream last accepted a message.
	LastDelivered time.Time `json:"last_delivered,omitzero"`
	// LastProblem is the last deferral, bounce or expiry, with the
	// upstream's reply and what it means.
	LastProblem *Problem `json:"last_problem,omitempty"`
}

// Failing says whether mail is waiting because the upstream's last answer
// was a temporary failure (down, throttled, login refused): a bounce for one
// bad recipient says nothing about the upstream, a deferral does.
func (u UpstreamStatus) Failing() bool {
	p := u.LastProblem
	return p != nil && p.Kind == trace.Deferred && p.Time.After(u.LastDelivered)
}

// Problem is an upstream reply that kept a message from being delivered.
type Problem struct {
	Time  time.Time  `json:"time"`
	Kind  trace.Kind `json:"kind"`
	Reply string     `json:"reply"`
	Hint  string     `json:"hint,omitempty"`
}

// QueueStatus is the spool's content.
type QueueStatus struct {
	Messages int   `json:"messages"`
	Bytes    int64 `json:"bytes"`
	// Oldest is when the oldest message still queued was received.
	Oldest time.Time `json:"oldest,omitzero"`
	// Backlog is what is ready and waiting for the upstream's pace, by
	// device, most urgent class first: which device floods, and how long
	// its backlog takes at the current pace. Mail of unknown clients is
	// one entry, "unknown clients" (the status shows no addresses).
	Backlog []DeviceBacklog `json:"backlog,omitempty"`
}

// DeviceBacklog is one device's ready mail.
type DeviceBacklog struct {
	Device   string `json:"device"`
	Class    string `json:"class"`
	Messages int    `json:"messages"`
	// DrainSeconds is how long they take at the upstream's pace (0: not
	// paced).
	DrainSeconds int64 `json:"drain_seconds,omitempty"`
}

// unknownClients names the backlog of clients that are no device.
const unknownClients = "unknown clients"

func (r *Relay) backlog() []DeviceBacklog {
	var out []DeviceBacklog
	unknown := map[string]int{} // class -> index in out
	for _, b := range r.sched.Backlog() {
		d := DeviceBacklog{Device: b.Device, Class: b.Class, Messages: b.Ready, DrainSeconds: int64(b.Drain / time.Second)}
		if strings.HasPrefix(b.Device, "client ") {
			if i, ok := unknown[b.Class]; ok {
				out[i].Messages += d.Messages
				out[i].DrainSeconds = max(out[i].DrainSeconds, d.DrainSeconds)
				continue
			}
			d.Device = unknownClients
			unknown[b.Class] = len(out)
		}
		out = append(out, d)
	}
	return out
}

// Status reports the relay as it is now.
func (r *Relay) Status() Status {
	st := r.spool.Stats()
	g := r.gen.Load()
	s := Status{
		Started:         r.started,
		Listeners:       r.listenerStatus(),
		MaxMessageBytes: g.maxSize,
		Queue:           QueueStatus{Messages: st.Messages, Bytes: st.Bytes, Oldest: st.Oldest, Backlog: r.backlog()},
		Routes:          r.up.routeStatus(),
		Warnings:        slices.Concat(warnings(g.cfg, r.d.Clock()), r.renewalWarnings(), r.secretWarnings()),
		Renewals:        r.Renewals(),
		Waiting:         append([]Waiting(nil), g.waiting...),
		Config:          r.source.Load(),
		Forward:         r.forwardStatus(),
		Refused:         r.metrics.Refused(),
	}
	s.UpstreamKinds, s.SenderRule = senderRule(g.cfg)
	if t, ok := r.tlsCertificateExpiry(); ok {
		s.TLSCertificateExpires = t.UTC()
	}
	s.ClockSynchronised = r.d.ClockSynchronised()
	r.seen.mu.Lock()
	defer r.seen.mu.Unlock()
	s.Upstream = r.seen.upstream
	s.Upstream.Name = g.upName
	if p := s.Upstream.LastProblem; p != nil {
		cp := *p
		s.Upstream.LastProblem = &cp
	}
	s.Counts = make(map[trace.Kind]uint64, len(trace.Kinds))
	for _, k := range trace.Kinds {
		s.Counts[k] = r.seen.counts[k]
	}
	return s
}

func (r *Relay) listenerStatus() []ListenerStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := r.gen.Load().cfg
	out := make([]ListenerStatus, len(r.listeners))
	for i, ln := range r.listeners {
		lc, l := cfg.Listeners[i], ln.l
		ls := ListenerStatus{Name: lc.Name, Address: l.Addr().String(), Mode: lc.Mode, TLS: "none", Auth: "none"}
		switch {
		case lc.RequireTLS:
			ls.TLS = "required"
		case *lc.StartTLS:
			ls.TLS = "starttls"
		}
		if *lc.StartTLS {
			ls.MinTLS = lc.MinTLS
		}
		switch {
		case *lc.RequireAuth:
			ls.Auth = "required"
		case *lc.Auth:
			ls.Auth = "offered"
		}
		if ta, ok := l.Addr().(*net.TCPAddr); ok {
			ls.Loopback = ta.IP.IsLoopback()
		}
		if p, ok := l.(*pendingListener); ok {
			if err := p.bindError(); err != nil {
				ls.Problem = "cannot bind " + lc.Address + ": " + err.Error() + "; tried again"
			}
		}
		out[i] = ls
	}
	return out
}

// seen keeps what the status page shows of the trace; it is a trace
// subscriber, so the page and the trace cannot disagree.
type seen struct {
	mu       sync.Mutex
	counts   map[trace.Kind]uint64
	upstream UpstreamStatus
}

func (s *seen) observe(e trace.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts == nil {
		s.counts = make(map[trace.Kind]uint64, len(trace.Kinds))
	}
	s.counts[e.Kind]++
	switch e.Kind {
	case trace.Delivered:
		s.upstream.LastDelivered = e.Time
	case trace.Deferred, trace.Bounced, trace.Expired, trace.Failed:
		if e.Reply != "" || e.Hint != "" {
			s.upstream.LastProblem = &Problem{Time: e.Time, Kind: e.Kind, Reply: e.Reply, Hint: e.Hint}
		}
	}
}

// warnings are the configuration's dated warnings, worded for now.
func warnings(cfg *config.Config, now time.Time) []string {
	kinds := []config.Kind{cfg.Upstream.Kind}
	for _, u := range cfg.Upstreams {
		kinds = append(kinds, u.Kind)
	}
	if slices.Contains(kinds, config.KindM365Password) {
		return []string{m365.BasicAuthWarning(now)}
	}
	return nil
}

// senderRule gives Status.UpstreamKinds and Status.SenderRule for cfg.
func senderRule(cfg *config.Config) ([]string, string) {
	_, ups := cfg.EffectiveRoutes()
	var kinds []string
	mailbox, rewritten := false, cfg.Senders.RewriteFrom != ""
	for _, u := range ups {
		if !slices.Contains(kinds, string(u.Kind)) {
			kinds = append(kinds, string(u.Kind))
		}
		if u.Kind.Mailbox() {
			if u.M365.FromMailbox {
				rewritten = true
			} else {
				mailbox = true
			}
		}
	}
	slices.Sort(kinds)
	switch {
	case mailbox && cfg.Senders.RewriteFrom == "":
		return kinds, "mailbox"
	case mailbox || rewritten:
		return kinds, "rewritten"
	}
	return kinds, ""
}

// kernelClock is Deps.ClockSynchronised's default: what the kernel says.
func kernelClock() *bool {
	if synced, known := metrics.ClockSynchronised(); known {
		return &synced
	}
	return nil
}
