// Package relay puts the parts of the relay together for one configuration
// and one state directory: listeners, policy, spool, scheduler, upstream,
// trace and metrics. It knows nothing of gokrazy, signals or the process
// environment (that is the appliance's job), so tests run many relays side
// by side.
//
// The spool, the trace, the metrics and the scheduler live as long as the
// relay; Reload replaces everything that comes from the configuration
// (listeners' settings, policy, upstream, retry timing) while mail keeps
// flowing.
package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/relay/alerts"
	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/delivery"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/inbound"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/learn"
	"github.com/siterelay/siterelay/relay/message"
	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// Deps are what the relay takes from its surroundings.
type Deps struct {
	Clock  func() time.Time
	Logger *slog.Logger
	// Secret reads a named secret from the secret store (passwords, client
	// secrets, keys); nil means no secrets are available. It is asked again
	// on every reload, so a changed secret takes effect then.
	Secret func(name string) ([]byte, error)
	// Listen binds a listener; default net.Listen.
	Listen func(network, addr string) (net.Listener, error)
	// Resolver is the DNS server (host:port) for MX lookups; "" means the
	// system's.
	Resolver string
	// RootCAs verify the Microsoft 365 SMTP endpoints and HTTPClient talks
	// to Entra and Graph; nil means the system's roots and a client with
	// timeouts. Set by tests that stand up a fake tenant; a smarthost names
	// its own roots in smtp.ca_file.
	RootCAs    *x509.CertPool
	HTTPClient *http.Client
	// SecretUsed, when set, is told the names of the secrets an upstream
	// holds each time a message is delivered through it: the credential
	// list's "last successful use".
	SecretUsed func(name string)
	// KeyStore, when set, lets the relay renew the certificates it made
	// (provisioning/secrets.Store): upstreams with
	// upstream.m365.application_object_id renew through Graph.
	KeyStore m365.KeyStore
	// RenewalStep, when set, is told of every step of a renewal (the
	// audit log).
	RenewalStep func(m365.RenewStep)

	// Set by the relay for the upstream it builds (metrics), not by callers.
	tokenRenewed      func(time.Time, error)
	clientCertificate func(time.Time)
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
	dir     layout.Dir
	d       Deps
	log     *slog.Logger
	spool   *spool.Spool
	trace   *trace.Store
	metrics *metrics.Metrics
	up      *switchable
	upSched upstream.Upstream // up, as the scheduler sees it: instrumented
	fo      *failovers
	sched   *delivery.Scheduler
	alerts  *alerts.Notifier
	fwd     *forward.Forwarder
	learned *learn.Store
	renew   renewals
	started time.Time
	seen    seen

	gen atomic.Pointer[generation] // the configuration in force

	mu        sync.Mutex // serialises Reload and guards what follows
	listeners []*listener
	serving   *serving // set while Run runs
	stopping  bool     // Run is stopping: no more reloads
}

// generation is what one configuration makes of the relay: a reload builds
// a new one and swaps it in whole.
type generation struct {
	cfg      *config.Config
	hostname string
	maxSize  int64
	upName   string
	policy   *policy.Policy
	// certKey says which files and name cert was made from, so a reload
	// that changes neither keeps the getter (and its loaded certificate).
	certKey string
	cert    func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// clientCertNotAfter is when the upstream's client certificate
	// expires; zero without one.
	clientCertNotAfter time.Time
	alerts             alerts.Options // the webhook's, URL read from the secret store
	forward            *forward.Target
	// secrets names the secrets of the upstream a trace event names.
	secrets func(upstream string) []string
}

// listener is one bound listener and its server. addr is the configured
// address: a reload keeps the socket of a listener whose address is
// unchanged, so devices never see it closed.
type listener struct {
	addr string
	name string
	l    net.Listener
	srv  *inbound.Server
}

// serving is Run's bookkeeping, for listeners a reload adds.
type serving struct {
	wg   sync.WaitGroup
	errc chan error
}

// New opens the state in dir and binds the listeners; Run serves.
func New(cfg *config.Config, dir string, d Deps) (r *Relay, err error) {
	d.defaults()
	fwd := forward.New(forward.Options{Dir: layout.Dir(dir).Forward(), Clock: d.Clock, Logger: d.Logger})
	d.Logger = slog.New(forward.NewHandler(d.Logger.Handler(), fwd)) // the logs stream
	r = &Relay{dir: layout.Dir(dir), d: d, log: d.Logger, started: d.Clock(), fwd: fwd}
	defer func(r *Relay) {
		// r, not the named result: every error return sets that to nil.
		if err != nil {
			r.close()
		}
	}(r)

	r.spool, err = spool.Open(r.dir.Spool(), spool.Options{
		MaxBytes: cfg.Spool.MaxBytes, MaxMessages: cfg.Spool.MaxMessages, MinFreeBytes: cfg.Spool.MinFreeBytes,
		Clock: d.Clock, Logger: d.Logger,
	})
	if err != nil {
		return nil, err
	}
	r.trace, err = trace.Open(r.dir.Trace(), trace.Options{RetentionDays: cfg.Trace.RetentionDays, MaxBytes: cfg.Trace.MaxBytes, Clock: d.Clock, Logger: d.Logger})
	if err != nil {
		return nil, fmt.Errorf("opening trace: %w", err)
	}
	r.metrics = metrics.New(r.metricsGauges())
	r.alerts = alerts.New(alerts.Options{Metrics: r.metrics.Registry(), Clock: d.Clock, Logger: d.Logger, Explain: r.explainRenewal})
	r.fo = newFailovers(r.metrics.Registry())
	r.learned, err = learn.Open(r.dir.Learned(), learn.Options{Clock: d.Clock, Logger: d.Logger})
	if err != nil {
		return nil, err
	}
	r.trace.Subscribe(r.metrics.Observe)
	r.trace.Subscribe(newDeviceMetrics(r, r.metrics.Registry()).observe)
	r.trace.Subscribe(r.seen.observe)
	r.trace.Subscribe(r.fwd.SendTrace)
	r.metrics.Registry().MustRegister(r.fwd.Collectors()...)

	g, up, err := r.build(cfg, nil)
	if err != nil {
		return nil, err
	}
	r.updateRenewals(g.cfg)
	r.up = newSwitchable(up)
	r.upSched = r.metrics.Instrument(r.up, r.upstreamKind)
	r.sched = delivery.New(r.schedOptions(g))
	r.gen.Store(g)
	r.observeGeneration(g)
	if err := r.bindListeners(g); err != nil {
		return nil, err
	}
	return r, nil
}

// build makes a generation and its upstream from cfg, reusing what of prev
// (nil at start) the new configuration leaves as it was. It binds nothing
// and changes nothing in r, so a failed reload leaves the relay untouched.
func (r *Relay) build(cfg *config.Config, prev *generation) (*generation, upstream.Upstream, error) {
	if cfg.Hostname == "" {
		// One name for banner, Received, EHLO upstream and bounces. The
		// caller's configuration is left as loaded: the relay keeps a copy.
		c := *cfg
		c.Hostname, _ = os.Hostname()
		cfg = &c
	}
	g := &generation{cfg: cfg, hostname: cfg.Hostname, secrets: upstreamSecrets(cfg)}
	d := r.d
	d.tokenRenewed = r.metrics.TokenRenewed
	d.clientCertificate = func(t time.Time) { g.clientCertNotAfter = t }
	up, name, err := newUpstream(cfg, string(r.dir), d, r.fo.observe)
	if err != nil {
		return nil, nil, err
	}
	g.upName = name
	g.maxSize = cfg.Limits.MaxMessageBytes
	if lim := up.Limits().MaxSize; lim > 0 && lim < g.maxSize {
		g.maxSize = lim // refuse at the device what the upstream would refuse later
	}
	if prev != nil {
		// The per-client state (connections, rates, failed logins) is
		// kept: a reload must not reset the login brake.
		g.policy, err = prev.policy.Reload(cfg)
	} else {
		g.policy, err = policy.New(cfg, r.d.Clock)
	}
	if err != nil {
		up.Close()
		return nil, nil, fmt.Errorf("policy: %w", err)
	}
	if g.alerts, err = alertOptions(cfg, g.hostname, r.d.Secret); err != nil {
		up.Close()
		return nil, nil, err
	}
	if g.forward, err = forwardTarget(cfg, g.hostname, r.dir); err != nil {
		up.Close()
		return nil, nil, err
	}
	g.policy.FollowUpstreamPace(up.Limits().MessagesPerMinute)
	g.certKey = cfg.TLS.CertFile + "\x00" + cfg.TLS.KeyFile + "\x00" + g.hostname
	if prev != nil && prev.certKey == g.certKey {
		g.cert = prev.cert
	}
	for _, lc := range cfg.Listeners {
		if *lc.StartTLS && g.cert == nil {
			g.cert, err = certs.Getter(r.dir.TLS(), r.dir.Resolve(cfg.TLS.CertFile), r.dir.Resolve(cfg.TLS.KeyFile), g.hostname, r.d.Clock())
			if err != nil {
				up.Close()
				return nil, nil, err
			}
		}
	}
	return g, up, nil
}

func (r *Relay) schedOptions(g *generation) delivery.Options {
	cfg := g.cfg
	return delivery.Options{
		Spool: r.spool, Upstream: r.upSched, UpstreamName: g.upName,
		Record: r.recordDelivery, Explain: explain(cfg),
		Bounce:     &delivery.Bounce{ReportingMTA: g.hostname, From: cfg.Bounce.From, Admin: cfg.Bounce.Admin},
		FirstRetry: cfg.Delivery.FirstRetry.D(), MaxRetry: cfg.Delivery.MaxRetry.D(), Lifetime: cfg.Delivery.Lifetime.D(),
		Concurrency: cfg.Delivery.Concurrency, Delivered: r.metrics.ObserveDelivery,
		Clock: r.d.Clock, Logger: r.d.Logger,
	}
}

// inboundOptions are listener i's settings under g.
func (r *Relay) inboundOptions(g *generation, i int) inbound.Options {
	cfg, lc := g.cfg, g.cfg.Listeners[i]
	var tlsConf *tls.Config
	if *lc.StartTLS {
		tlsConf = inbound.TLSConfig(g.cert, config.TLSVersions[lc.MinTLS])
	}
	bare := message.Normalise
	if cfg.Limits.BareLineEndings == "refuse" {
		bare = message.Refuse
	}
	nul := message.RemoveNUL
	if cfg.Limits.NULBytes == "refuse" {
		nul = message.RefuseNUL
	}
	return inbound.Options{
		Name: lc.Name, Hostname: g.hostname, TLS: tlsConf, RequireTLS: lc.RequireTLS,
		Auth: *lc.Auth, RequireAuth: *lc.RequireAuth, AllowPlaintextAuth: lc.AllowPlaintextAuth,
		MaxMessageBytes: g.maxSize, MaxRecipients: cfg.Limits.MaxRecipients, MaxLineLength: cfg.Limits.MaxLineLength,
		ReadTimeout: cfg.Limits.ReadTimeout.D(), WriteTimeout: cfg.Limits.WriteTimeout.D(),
		CommandTimeout: cfg.Limits.CommandTimeout.D(), MaxSessionTime: cfg.Limits.MaxSessionTime.D(),
		MaxCommandsWithoutMail: cfg.Limits.MaxCommandsWithoutMail, MaxConnections: cfg.Limits.MaxConnections,
		BareLineEndings: bare, NUL: nul, RewriteFrom: cfg.Senders.RewriteFrom,
		Policy: listenerPolicy{g.policy, i}, Spool: r.spool, CheckRecipient: r.up.checkRecipient,
		Accepted: r.sched.Enqueue, Record: r.trace.Record, Refused: r.metrics.RefusedOn(lc.Name), Observe: r.learned.Observe,
		AcceptLatency: r.metrics.ObserveAccept, Clock: r.d.Clock, Logger: r.d.Logger,
	}
}

// bindListeners makes r.listeners match g: a listener whose configured
// address was there before keeps its socket and takes the new settings
// (sessions in flight keep theirs); a new address is bound, and served if
// Run runs; listeners no longer configured stop accepting and finish their
// sessions in the background. On a bind error nothing in r has changed.
// r.mu is held (or r is not yet shared).
func (r *Relay) bindListeners(g *generation) error {
	byAddr := map[string]*listener{}
	for _, l := range r.listeners {
		byAddr[l.addr] = l
	}
	next := make([]*listener, len(g.cfg.Listeners))
	var fresh []net.Listener
	for i, lc := range g.cfg.Listeners {
		if l, ok := byAddr[lc.Address]; ok {
			delete(byAddr, lc.Address)
			next[i] = &listener{addr: l.addr, name: lc.Name, l: l.l, srv: l.srv}
			continue
		}
		nl, err := r.d.Listen("tcp", lc.Address)
		if err != nil {
			for _, l := range fresh {
				l.Close()
			}
			return fmt.Errorf("listeners[%d] (%s): %w", i, lc.Name, err)
		}
		fresh = append(fresh, nl)
		next[i] = &listener{addr: lc.Address, name: lc.Name, l: nl}
	}
	for i, l := range next {
		opts := r.inboundOptions(g, i)
		if l.srv != nil {
			l.srv.Update(opts)
			continue
		}
		l.srv = inbound.New(opts)
		if r.serving != nil {
			r.serve(l)
		}
	}
	r.listeners = next
	for _, old := range byAddr {
		if r.serving != nil {
			r.serving.wg.Add(1) // Run's stop waits for its sessions too
			go func() {
				defer r.serving.wg.Done()
				r.retire(old)
			}()
		} else {
			r.retire(old)
		}
	}
	return nil
}

// serve runs l's server under Run's bookkeeping; r.mu is held.
func (r *Relay) serve(l *listener) {
	sv := r.serving
	sv.wg.Add(1)
	go func() {
		defer sv.wg.Done()
		if err := l.srv.Serve(l.l); err != nil {
			select {
			case sv.errc <- fmt.Errorf("listener %s: %w", l.name, err):
			default:
			}
		}
	}()
}

// retire stops a listener a reload removed: no new connections, sessions
// in flight get shutdownGrace to finish.
func (r *Relay) retire(l *listener) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	l.srv.Shutdown(ctx)
	l.l.Close()
	r.log.Info("listener removed by reload", "listener", l.name, "address", l.addr)
}

// shutdownGrace is how long sessions in DATA get to finish when their
// listener stops.
const shutdownGrace = 10 * time.Second

// Reload applies cfg (already validated, e.g. by config.Load) without
// stopping: listeners whose address is unchanged keep their socket, new
// sessions get the new settings and policy while sessions in flight finish
// under the old ones, the next delivery attempt uses the new upstream (and
// reads the secrets again) while attempts in flight finish on the old one,
// and the spool, the trace and the metrics are kept. The spool's and the
// trace's own limits take effect at the next start. If anything of cfg
// cannot be built (a missing secret, an address in use) Reload returns the
// error and the running configuration stays in force, untouched.
func (r *Relay) Reload(cfg *config.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return errors.New("reload: the relay is stopping")
	}
	prev := r.gen.Load()
	g, up, err := r.build(cfg, prev)
	if err != nil {
		return err
	}
	if err := r.bindListeners(g); err != nil {
		up.Close()
		return err
	}
	r.up.swap(up) // the old one closes once its attempts in flight end
	r.gen.Store(g)
	r.observeGeneration(g)
	r.sched.Reconfigure(r.schedOptions(g))
	r.updateRenewals(g.cfg)
	r.log.Info("configuration reloaded", "upstream", g.upName, "listeners", len(r.listeners))
	return nil
}

// Config is the configuration in force.
func (r *Relay) Config() *config.Config { return r.gen.Load().cfg }

// Hostname is the name the relay uses for itself (banner, Received, EHLO
// upstream, bounces).
func (r *Relay) Hostname() string { return r.gen.Load().hostname }

// Addrs are the listeners' bound addresses, in configuration order.
func (r *Relay) Addrs() []net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]net.Addr, len(r.listeners))
	for i, l := range r.listeners {
		out[i] = l.l.Addr()
	}
	return out
}

// Metrics serves the Prometheus scrape.
func (r *Relay) Metrics() http.Handler { return r.metrics.Handler() }

// Trace is the message trace, for queries.
func (r *Relay) Trace() *trace.Store { return r.trace }

// Learned is what learning mode has seen (`relayd devices`).
func (r *Relay) Learned() *learn.Store { return r.learned }

// Spool is the queue, for status and inspection.
func (r *Relay) Spool() *spool.Spool { return r.spool }

// Run serves until ctx ends, then stops the listeners (waiting up to 10 s
// for sessions in DATA), lets attempts in flight end and closes the state.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	sv := &serving{errc: make(chan error, 1)}
	r.serving = sv
	addrs := make([]string, len(r.listeners))
	for i, l := range r.listeners {
		addrs[i] = l.l.Addr().String()
		r.serve(l)
	}
	r.mu.Unlock()
	r.log.Info("relay starting", "listeners", addrs, "upstream", r.gen.Load().upName, "queued", r.spool.Stats().Messages)
	sctx, stopSched := context.WithCancel(context.Background())
	schedDone := make(chan struct{})
	go func() {
		r.sched.Run(sctx)
		close(schedDone)
	}()
	alertsDone := make(chan struct{})
	go func() {
		r.alerts.Run(sctx)
		close(alertsDone)
	}()
	fwdDone := make(chan struct{})
	go func() {
		r.fwd.Run(sctx) // writes what is pending to its buffer when it ends
		close(fwdDone)
	}()
	learnDone := make(chan struct{})
	go func() {
		r.learned.Run(sctx) // saves once more when it ends
		close(learnDone)
	}()
	renewDone := make(chan struct{})
	go func() {
		r.runRenewals(sctx)
		close(renewDone)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-sv.errc:
	}
	r.log.Info("relay stopping")
	r.mu.Lock()
	r.stopping = true
	listeners := r.listeners
	r.mu.Unlock()
	shctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	for _, l := range listeners {
		l.srv.Shutdown(shctx)
	}
	cancel()
	// Shutdown closes only the listeners its Serve has seen; a Serve
	// goroutine not yet started (a stop right after start) returns at
	// once, but close them here too so that nothing accepts after Run.
	for _, l := range listeners {
		l.l.Close()
	}
	sv.wg.Wait()
	stopSched()
	<-schedDone
	<-alertsDone
	<-fwdDone
	<-learnDone
	<-renewDone
	return errors.Join(err, r.close())
}

func (r *Relay) close() error {
	var errs []error
	for _, l := range r.listeners {
		l.l.Close()
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

func (l listenerPolicy) Device(ip netip.Addr, acct *policy.Account, helo string) (*policy.Device, error) {
	d := l.p.Recognise(ip, acct, helo)
	return d, l.p.Admit(ip, acct, d)
}

func (l listenerPolicy) Sender(ip netip.Addr, acct *policy.Account, dev *policy.Device, from string) error {
	if err := l.p.Sender(from, acct); err != nil {
		return err
	}
	if err := l.p.DeviceSender(dev, from); err != nil {
		return err
	}
	return l.p.Message(ip, acct, dev)
}

func (l listenerPolicy) Recipient(ip netip.Addr, dev *policy.Device, rcpt string, relayAllowed bool) error {
	if err := l.p.Recipient(ip, rcpt, relayAllowed); err != nil {
		return err
	}
	return l.p.DeviceRecipient(dev, rcpt)
}
