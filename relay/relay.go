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
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/relay/alerts"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/delivery"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/learn"
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
	// Listen binds a listener; nil binds it with the relay's own, which
	// rebinds a listener whose address a reload changes on the same port
	// without refusing a connection (handover.go).
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
	// SecretExpiry, when set, says what the secret store knows of a
	// secret: its kind and, if the admin gave it (creds put -expires), its
	// expiry (zero when unknown). Client secrets and passwords in use with
	// a known expiry get a metric, a status warning and an alert.
	SecretExpiry func(name string) (kind string, notAfter time.Time)
	// Ticks, when set, replaces time.NewTicker for the relay's periodic
	// checks by the clock (the certificate renewals every RenewCheckEvery,
	// the alert webhook every minute): tests that move a virtual Clock
	// tick them. Nil: real tickers.
	Ticks func(every time.Duration) <-chan time.Time

	// BindRetry, when set, makes a listener that cannot bind at New no
	// error: the others serve, and it is tried again when the channel
	// BindRetry(attempt) gives fires (attempt 1, 2, …), its bind error
	// in the status until then. Nil: New fails, as a reload still does.
	BindRetry func(attempt int) <-chan time.Time
	// Name is the name relayctl knows this relay by (its tailnet node
	// name), for the commands the waiting state shows; "" means the
	// configuration's host name.
	Name string
	// ClockSynchronised says whether the clock is kept in step: a pointer
	// to true or false, nil when it cannot tell (an unknown clock is no
	// warning). Nil reads the kernel (metrics.ClockSynchronised); tests
	// set it, since a test machine's kernel may say either.
	ClockSynchronised func() *bool

	// Set by the relay for the upstream it builds (metrics), not by callers.
	tokenRenewed      func(time.Time, error)
	clientCertificate func(time.Time)
	waiting           func([]Waiting) // told what an upstream waits for
}

func (d *Deps) defaults() {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.ClockSynchronised == nil {
		d.ClockSynchronised = kernelClock
	}
	if d.Secret == nil {
		d.Secret = func(name string) ([]byte, error) {
			return nil, fmt.Errorf("secret %q: no secret store", name)
		}
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
	// auditFailures is what siterelay_audit_write_failures_total reads
	// (the admin side's audit log, set by the appliance).
	auditFailures atomic.Pointer[func() uint64]
	up            *switchable
	upSched       upstream.Upstream // up, as the scheduler sees it: instrumented
	fo            *failovers
	// waitingM is siterelay_upstream_waiting.
	waitingM *waitingMetric
	// source is what runs when it is not config.json (SetConfigSource),
	// sourceM siterelay_config_in_force.
	source  atomic.Pointer[ConfigSource]
	sourceM *configSourceMetric
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
	// waiting is what the configuration names that is not there yet
	// (upstreams that hold their mail, an alert webhook that is off).
	waiting []Waiting
}

// unconfigured is what a relay without a configuration runs: no listener,
// the defaults for the rest; its upstream holds the queue (New(nil, …)).
func unconfigured() *config.Config {
	c := config.Default()
	c.Hostname, c.Listeners = "", nil
	return c
}

// New opens the state in dir and binds the listeners; Run serves. A nil
// cfg is a relay with no configuration that builds: no listener, and
// whatever the spool holds is held (Status.Waiting says so) until a
// Reload gives it one; the appliance runs it so that the box stays
// managed (docs/architecture.md, "Start-up").
func New(cfg *config.Config, dir string, d Deps) (r *Relay, err error) {
	d.defaults()
	fwd := forward.New(forward.Options{Dir: layout.Dir(dir).Forward(), Clock: d.Clock, Logger: d.Logger})
	d.Logger = slog.New(forward.NewHandler(d.Logger.Handler(), fwd)) // the logs stream
	r = &Relay{dir: layout.Dir(dir), d: d, log: d.Logger, started: d.Clock(), fwd: fwd}
	given := cfg
	if cfg == nil {
		cfg = unconfigured()
	}
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
	r.alerts = alerts.New(alerts.Options{Metrics: r.metrics.Registry(), Clock: d.Clock, Logger: d.Logger, Explain: r.explainRenewal, Ticks: d.Ticks})
	r.fo = newFailovers(r.metrics.Registry())
	r.waitingM = newWaitingMetric(r.metrics.Registry())
	r.sourceM = newConfigSourceMetric(r.metrics.Registry())
	r.registerAuditMetric()
	r.learned, err = learn.Open(r.dir.Learned(), learn.Options{Clock: d.Clock, Logger: d.Logger})
	if err != nil {
		return nil, err
	}
	r.trace.Subscribe(r.metrics.Observe)
	r.trace.Subscribe(newDeviceMetrics(r, r.metrics.Registry()).observe)
	r.trace.Subscribe(r.seen.observe)
	r.trace.Subscribe(r.fwd.SendTrace)
	r.metrics.Registry().MustRegister(r.fwd.Collectors()...)

	g, up, err := r.build(given, nil)
	if err != nil {
		return nil, err
	}
	r.updateRenewals(g.cfg)
	r.up = newSwitchable(up)
	r.upSched = r.metrics.Instrument(r.up, r.upstreamKind)
	r.sched = delivery.New(r.schedOptions(g))
	r.gen.Store(g)
	r.observeGeneration(g)
	listen := r.d.Listen
	if d.BindRetry != nil {
		base := listen
		if base == nil { // the relay's own binding; at start there is nothing to hand over
			base = func(_, addr string) (net.Listener, error) { return bindOwn(addr, nil) }
		}
		r.d.Listen = listenOrRetry(base, d.BindRetry, func(addr string, err error) {
			r.log.Error("listener cannot bind; the others serve, it is tried again", "address", addr, "err", err)
		})
	}
	err = r.bindListeners(g)
	r.d.Listen = listen // a reload's new addresses bind or refuse the reload
	if err != nil {
		return nil, err
	}
	return r, nil
}

// build makes a generation and its upstream from cfg, reusing what of prev
// (nil at start) the new configuration leaves as it was. It binds nothing
// and changes nothing in r, so a failed reload leaves the relay untouched.
func (r *Relay) build(cfg *config.Config, prev *generation) (*generation, upstream.Upstream, error) {
	none := cfg == nil
	if none {
		cfg = unconfigured()
	}
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
	d.waiting = func(ws []Waiting) { g.waiting = append(g.waiting, ws...) }
	var up upstream.Upstream
	var name string
	var err error
	if none {
		up, name, _ = d.wait([]Waiting{{Upstream: "upstream", Key: "(configuration)", File: "config.json", Reason: config.ReasonMalformed,
			Detail: "no configuration builds: the relay has no listener and holds what is queued",
			Fix:    "relayctl -relay " + d.name(cfg) + " config put FILE"}}, "upstream")
	} else if up, name, err = newUpstream(cfg, string(r.dir), d, r.fo.observe); err != nil {
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
	if w := cfg.Alerts.Webhook; w != nil {
		// A webhook whose URL is not there yet is off until it is: the
		// mail does not wait for the alerts.
		ref := config.Reference{Key: "alerts.webhook.url_secret", Secret: w.URLSecret, Kind: config.RefWebhookURL}
		if us := unmet([]config.Reference{ref}, string(r.dir), d); len(us) > 0 {
			g.waiting = append(g.waiting, waitingFor(us, d.name(cfg))...)
		} else if g.alerts, err = alertOptions(cfg, g.hostname, r.d.Secret); err != nil {
			up.Close()
			return nil, nil, err
		}
	}
	if g.forward, err = forwardTarget(cfg, g.hostname, r.dir); err != nil {
		up.Close()
		return nil, nil, err
	}
	g.policy.FollowUpstreamPace(up.Limits().MessagesPerMinute)
	g.certKey = r.listenerCertKey(cfg, g.hostname)
	if prev != nil && prev.certKey == g.certKey {
		g.cert = prev.cert
	}
	for _, lc := range cfg.Listeners {
		if *lc.StartTLS && g.cert == nil {
			g.cert, err = r.listenerCert(cfg, g.hostname)
			if err != nil {
				up.Close()
				return nil, nil, err
			}
		}
	}
	return g, up, nil
}

// upstreamWaiting is what g's upstreams wait for (not the alerts').
func (g *generation) upstreamWaiting() []Waiting {
	var out []Waiting
	for _, w := range g.waiting {
		if w.Upstream != "" {
			out = append(out, w)
		}
	}
	return out
}

func (r *Relay) schedOptions(g *generation) delivery.Options {
	cfg := g.cfg
	return delivery.Options{
		Spool: r.spool, Upstream: r.upSched, UpstreamName: g.upName,
		Record: r.recordDelivery, Explain: explain(cfg),
		Bounce:     &delivery.Bounce{ReportingMTA: g.hostname, From: cfg.Bounce.From, Admin: cfg.Bounce.Admin},
		FirstRetry: cfg.Delivery.FirstRetry.D(), MaxRetry: cfg.Delivery.MaxRetry.D(), Lifetime: cfg.Delivery.Lifetime.D(),
		Concurrency: cfg.Delivery.Concurrency, Delivered: r.metrics.ObserveDelivery,
		Holding: len(g.upstreamWaiting()) > 0, Clock: r.d.Clock, Logger: r.d.Logger,
	}
}

// Reload applies cfg (already validated, e.g. by config.Load) without
// stopping: listeners whose address is unchanged keep their socket, one
// whose address changes on the same port takes the port over without a
// connection refused (handover.go), new sessions get the new settings and policy while sessions in flight finish
// under the old ones, the next delivery attempt uses the new upstream (and
// reads the secrets again) while attempts in flight finish on the old one,
// and the spool, the trace and the metrics are kept. The spool's and the
// trace's own limits take effect at the next start. A secret or file the
// new configuration names that is not there (or not well-formed) puts its
// upstream into the waiting state (Status.Waiting), it does not refuse the
// reload; a reload that ends a wait makes the held mail due at once. If
// anything else of cfg cannot be built (an address in use, a listener
// certificate that does not load) Reload returns the error and the running
// configuration stays in force, untouched.
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
	if len(prev.upstreamWaiting()) > len(g.upstreamWaiting()) {
		// What an upstream waited for has arrived (`creds put` reloads):
		// the mail it held goes now, not at its next look.
		r.sched.Kick()
	}
	r.log.Info("configuration reloaded", "upstream", g.upName, "listeners", len(r.listeners), "waiting", len(g.upstreamWaiting()))
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
	sv := &serving{errc: make(chan error, 1), stop: make(chan struct{})}
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
	close(sv.stop)
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
