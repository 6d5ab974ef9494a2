// Package relay puts the parts of the relay together for one configuration
// and one state directory: listeners, policy, spool, scheduler, upstream,
// trace and metrics. It knows nothing of gokrazy, signals or the process
// environment (that is the appliance's job), so tests run many relays side
// by side.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/delivery"
	"github.com/siterelay/siterelay/relay/inbound"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Deps are what the relay takes from its surroundings.
type Deps struct {
	Clock  func() time.Time
	Logger *slog.Logger
	// Secret reads a named secret from the secret store (passwords, client
	// secrets, keys); nil means no secrets are available.
	Secret func(name string) ([]byte, error)
	// Listen binds a listener; default net.Listen.
	Listen func(network, addr string) (net.Listener, error)
	// Resolver is the DNS server (host:port) for MX lookups; "" means the
	// system's.
	Resolver string
}

func (d *Deps) defaults() {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Secret == nil {
		d.Secret = func(name string) ([]byte, error) {
			return nil, fmt.Errorf("secret %q: no secret store", name)
		}
	}
	if d.Listen == nil {
		d.Listen = net.Listen
	}
}

// Relay is one running relay.
type Relay struct {
	cfg       *config.Config
	dir       string
	d         Deps
	log       *slog.Logger
	spool     *spool.Spool
	trace     *trace.Store
	metrics   *metrics.Metrics
	up        upstream.Upstream
	upName    string
	sched     *delivery.Scheduler
	listeners []net.Listener
	servers   []*inbound.Server
	started   time.Time
	maxSize   int64
	seen      seen
}

// New opens the state in dir and binds the listeners; Run serves.
func New(cfg *config.Config, dir string, d Deps) (r *Relay, err error) {
	d.defaults()
	hostname := cfg.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
		cfg.Hostname = hostname // one name for banner, Received, EHLO upstream and bounces
	}
	r = &Relay{cfg: cfg, dir: dir, d: d, log: d.Logger, started: d.Clock()}
	defer func(r *Relay) {
		// r, not the named result: every error return sets that to nil.
		if err != nil {
			r.close()
		}
	}(r)

	r.spool, err = spool.Open(filepath.Join(dir, "spool"), spool.Options{
		MaxBytes: cfg.Spool.MaxBytes, MaxMessages: cfg.Spool.MaxMessages, MinFreeBytes: cfg.Spool.MinFreeBytes,
		Clock: d.Clock, Logger: d.Logger,
	})
	if err != nil {
		return nil, err
	}
	r.trace, err = trace.Open(filepath.Join(dir, "trace"), trace.Options{RetentionDays: cfg.Trace.RetentionDays, MaxBytes: 512 << 20, Now: d.Clock, Logger: d.Logger})
	if err != nil {
		return nil, fmt.Errorf("opening trace: %w", err)
	}
	r.metrics = metrics.New(metrics.Gauges{
		QueueMessages: func() float64 { return float64(r.spool.Stats().Messages) },
		QueueBytes:    func() float64 { return float64(r.spool.Stats().Bytes) },
		OldestMessageAge: func() time.Duration {
			if o := r.spool.Stats().Oldest; !o.IsZero() {
				return d.Clock().Sub(o)
			}
			return 0
		},
		TraceDropped: func() uint64 { return r.trace.Stats().Dropped },
	})
	r.trace.Subscribe(r.metrics.Observe)
	r.trace.Subscribe(r.seen.observe)

	r.up, r.upName, err = newUpstream(cfg, dir, d)
	if err != nil {
		return nil, err
	}
	maxSize := cfg.Limits.MaxMessageBytes
	if lim := r.up.Limits().MaxSize; lim > 0 && lim < maxSize {
		maxSize = lim // refuse at the device what the upstream would refuse later
	}
	r.maxSize = maxSize

	r.sched = delivery.New(delivery.Options{
		Spool: r.spool, Upstream: r.up, UpstreamName: r.upName,
		Record: r.trace.Record, Explain: explain(cfg.Upstream.Kind), Bounce: r.bounce,
		FirstRetry: cfg.Delivery.FirstRetry.D(), MaxRetry: cfg.Delivery.MaxRetry.D(), Lifetime: cfg.Delivery.Lifetime.D(),
		Concurrency: cfg.Delivery.Concurrency, Delivered: r.metrics.ObserveDelivery,
		Clock: d.Clock, Logger: d.Logger,
	})

	var cert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	var checkRcpt func(string) error
	if rc, ok := r.up.(upstream.RecipientChecker); ok {
		checkRcpt = rc.CheckRecipient
	}
	bare := message.Normalise
	if cfg.Limits.BareLineEndings == "refuse" {
		bare = message.Refuse
	}
	nul := message.RemoveNUL
	if cfg.Limits.NULBytes == "refuse" {
		nul = message.RefuseNUL
	}
	pol, err := policy.New(cfg, d.Clock)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	for i, lc := range cfg.Listeners {
		var tlsConf *tls.Config
		if *lc.StartTLS {
			if cert == nil {
				cert, err = certs.Getter(filepath.Join(dir, "tls"), cfg.TLS.CertFile, cfg.TLS.KeyFile, hostname, d.Clock())
				if err != nil {
					return nil, err
				}
			}
			tlsConf = inbound.TLSConfig(cert, config.TLSVersions[lc.MinTLS])
		}
		l, err := d.Listen("tcp", lc.Address)
		if err != nil {
			return nil, fmt.Errorf("listeners[%d] (%s): %w", i, lc.Name, err)
		}
		r.listeners = append(r.listeners, l)
		r.servers = append(r.servers, inbound.New(inbound.Options{
			Name: lc.Name, Hostname: hostname, TLS: tlsConf, RequireTLS: lc.RequireTLS,
			Auth: *lc.Auth, RequireAuth: *lc.RequireAuth, AllowPlaintextAuth: lc.AllowPlaintextAuth,
			MaxMessageBytes: maxSize, MaxRecipients: cfg.Limits.MaxRecipients, MaxLineLength: cfg.Limits.MaxLineLength,
			ReadTimeout: cfg.Limits.ReadTimeout.D(), WriteTimeout: cfg.Limits.WriteTimeout.D(),
			CommandTimeout: cfg.Limits.CommandTimeout.D(), MaxSessionTime: cfg.Limits.MaxSessionTime.D(),
			MaxCommandsWithoutMail: cfg.Limits.MaxCommandsWithoutMail, MaxConnections: cfg.Limits.MaxConnections,
			BareLineEndings: bare, NUL: nul, RewriteFrom: cfg.Senders.RewriteFrom,
			Policy: listenerPolicy{pol, i}, Spool: r.spool, CheckRecipient: checkRcpt,
			Accepted: r.sched.Enqueue, Record: r.trace.Record, Refused: r.metrics.Refused,
			AcceptLatency: r.metrics.ObserveAccept, Clock: d.Clock, Logger: d.Logger,
		}))
	}
	return r, nil
}

// Addrs are the listeners' bound addresses, in configuration order.
func (r *Relay) Addrs() []net.Addr {
	out := make([]net.Addr, len(r.listeners))
	for i, l := range r.listeners {
		out[i] = l.Addr()
	}
	return out
}

// Metrics serves the Prometheus scrape.
func (r *Relay) Metrics() http.Handler { return r.metrics.Handler() }

// Trace is the message trace, for queries.
func (r *Relay) Trace() *trace.Store { return r.trace }

// Spool is the queue, for status and inspection.
func (r *Relay) Spool() *spool.Spool { return r.spool }

// Run serves until ctx ends, then stops the listeners (waiting up to 10 s
// for sessions in DATA), lets attempts in flight end and closes the state.
func (r *Relay) Run(ctx context.Context) error {
	addrs := make([]string, len(r.listeners))
	for i, a := range r.Addrs() {
		addrs[i] = a.String()
	}
	r.log.Info("relay starting", "listeners", addrs, "upstream", r.upName, "queued", r.spool.Stats().Messages)
	var wg sync.WaitGroup
	errc := make(chan error, len(r.servers))
	for i, s := range r.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(r.listeners[i]); err != nil {
				errc <- fmt.Errorf("listener %s: %w", r.cfg.Listeners[i].Name, err)
			}
		}()
	}
	sctx, stopSched := context.WithCancel(context.Background())
	schedDone := make(chan struct{})
	go func() {
		r.sched.Run(sctx)
		close(schedDone)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	r.log.Info("relay stopping")
	shctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	for _, s := range r.servers {
		s.Shutdown(shctx)
	}
	cancel()
	// Shutdown closes only the listeners its Serve has seen; a Serve
	// goroutine not yet started (a stop right after start) returns at
	// once, but close them here too so that nothing accepts after Run.
	for _, l := range r.listeners {
		l.Close()
	}
	wg.Wait()
	stopSched()
	<-schedDone
	return errors.Join(err, r.close())
}

func (r *Relay) close() error {
	var errs []error
	for _, l := range r.listeners {
		l.Close()
	}
	if r.up != nil {
		errs = append(errs, r.up.Close())
	}
	if r.spool != nil {
		errs = append(errs, r.spool.Close())
	}
	if r.trace != nil {
		errs = append(errs, r.trace.Close())
	}
	return errors.Join(errs...)
}

// listenerPolicy is the site's policy as one listener's sessions see it.
type listenerPolicy struct {
	p     *policy.Policy
	index int
}

func (l listenerPolicy) Connect(ip netip.Addr) (bool, func(), error) {
	release, err := l.p.Open(ip)
	if err != nil {
		return false, nil, err
	}
	return l.p.Connect(l.index, ip), release, nil
}

func (l listenerPolicy) Login(ip netip.Addr, user, pass string) (*policy.Account, error) {
	return l.p.Login(ip, user, pass)
}

func (l listenerPolicy) Sender(ip netip.Addr, acct *policy.Account, from string) error {
	if err := l.p.Sender(from, acct); err != nil {
		return err
	}
	return l.p.Message(ip, acct)
}

func (l listenerPolicy) Recipient(ip netip.Addr, rcpt string, relayAllowed bool) error {
	return l.p.Recipient(ip, rcpt, relayAllowed)
}
