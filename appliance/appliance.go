// Package appliance is the composition root of the box: it finds the
// configuration and the secrets in the state directory, starts the relay and
// the HTTP endpoints, and stops them cleanly. It is the only package that
// knows about files like /perm and the process's surroundings.
package appliance

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/appliance/buildinfo"
	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/appliance/status"
	"github.com/siterelay/siterelay/netcfg/mdns"
	provapi "github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/secrets"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/provisioning/web"
	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Options say where things are.
type Options struct {
	// StateDir holds everything mutable: spool, trace, config.json,
	// secrets/, tls/.
	StateDir string
	// ConfigFile overrides StateDir/config.json.
	ConfigFile string
	// Dev runs the embedded development configuration (no tenant needed).
	Dev bool
	// DevSMTPAddr, with Dev, replaces the development listener's address
	// (127.0.0.1:2525): make run SMTP=127.0.0.1:2526.
	DevSMTPAddr string
	// Box prepares the gokrazy box first: /perm checked, the image's
	// bootstrap settings moved into the state directory on first boot, the
	// site's network applied, discovery started for the site's host name.
	Box bool
	// HTTPAddr serves the status page (/, /status.json) and /metrics; ""
	// turns it off.
	HTTPAddr string
	Logger   *slog.Logger
	// Discovery, when set, announces the relay by mDNS/DNS-SD.
	Discovery *Discovery
	// Ready, when set, is called once the listeners are bound.
	Ready func(smtp []net.Addr, http net.Addr)
	// TailnetUp, when set, is called each time the tailnet node has come
	// up (node.Options.Up).
	TailnetUp func()
	// Reload, when set, asks for the configuration and the secrets to be
	// read again and applied without a restart (relayd sends on SIGHUP).
	Reload <-chan struct{}
	// Tailnet, when set, joins the tailnet in the background and serves
	// the admin API there (docs/provisioning.md). On the box it comes
	// from the site file.
	Tailnet *Tailnet
	// RootCAs and HTTPClient replace the system's roots and HTTP client for
	// the Microsoft 365 upstreams (relay.Deps); nil on the box. Tests with
	// a fake tenant set them.
	RootCAs    *x509.CertPool
	HTTPClient *http.Client
	// ClockSynchronised, when set, says whether the clock is kept in step
	// (nil result: cannot tell) for the status verdict and the metrics;
	// nil reads the kernel (relay.Deps). Tests that expect an "ok"
	// verdict say "synchronised", whatever the test machine's kernel says.
	ClockSynchronised func() *bool
	// Clock and Ticks, when set, are the relay's and the secret store's
	// time and the ticks of its periodic checks (relay.Deps): tests move a
	// virtual clock to a certificate's renewal and tick. Nil on the box.
	Clock func() time.Time
	Ticks func(every time.Duration) <-chan time.Time
	// Log, when set, is relayd's log ring, fed by Logger's handler
	// (logring.Handler): Run keeps it in the state directory (the previous
	// runs' lines and how they ended survive a restart), and the admin
	// API and page read it (relayctl logs).
	Log *logring.Ring
	// Console hears how the previous run ended and, from relayd, why this
	// one does: /dev/console on the box, stderr in development; nil says
	// nothing.
	Console io.Writer
}

// loadConfig returns the configuration Options point at.
func loadConfig(o Options) (*config.Config, error) {
	if o.Dev {
		c := config.Default()
		if o.DevSMTPAddr != "" {
			c.Listeners[0].Address = o.DevSMTPAddr
		}
		return c, nil
	}
	path := o.ConfigFile
	if path == "" {
		path = layout.Dir(o.StateDir).Config()
	}
	c, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no configuration at %s: write one there (docs/config.md) or give another with -config FILE", path)
	}
	return c, err
}

// Run starts the box and serves until ctx ends. The management plane comes
// first and never depends on the relay's configuration: the LAN status
// page, discovery and the tailnet node with the admin API and page start
// before the relay is built, and stay up whatever its configuration,
// secrets or upstreams say. The relay then starts from config.json, or,
// where that does not build and the box is managed, from the newest kept
// version that does (or with none: no listener, the queue held); a secret
// or file it names that is not there puts its upstream into the waiting
// state. docs/architecture.md ("Start-up") says what can still stop the
// process.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Box {
		console("relayd started, preparing the box")
		bo := gokrazyBoxOptions(log)
		box, err := prepareBox(ctx, bo)
		if errors.Is(err, errStateUnusable) {
			// Say so on the status port and in the log, and stay up:
			// gokrazy would restart a process that exits, over and over.
			var ln net.Listener
			if o.HTTPAddr != "" {
				ln, _ = net.Listen("tcp", o.HTTPAddr)
			}
			holdUnusable(ctx, err, ln, log, 5*time.Minute)
			return nil
		}
		if err != nil {
			return err
		}
		o.StateDir, o.ConfigFile = bo.StateDir, box.ConfigFile
		console("box prepared (first boot: %v)", box.FirstBoot)
		if o.Discovery == nil && box.Site != nil && box.Site.Hostname != "" {
			o.Discovery = siteDiscovery(box.Site)
		}
		if o.Tailnet == nil && box.Site != nil {
			o.Tailnet = &Tailnet{Site: box.Site.Hostname, Admins: box.Site.Admins, ControlURL: box.Site.ControlURL,
				FirmwareKeys: imageFirmwareKeys(bo.BootstrapDir, log)}
		}
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	keepLog(o, log)
	creds := secrets.New(layout.Dir(o.StateDir), o.Clock)
	a := &app{o: o, log: log, creds: creds, renewAudit: &renewalAudit{l: log}}
	a.problem.Store(ptr("the relay is starting"))

	// 1. The management plane.
	var responder atomic.Pointer[mdns.Responder] // set once discovery runs
	var tailnet atomic.Pointer[node.Node]        // set once the admin side runs
	// The status page's facts, also the device setup sheet's (the LAN
	// page's /sheet and the admin API's /v1/sheet make it from these).
	a.page = func() status.Page {
		p := status.Page{Version: version(), Now: time.Now(), Addresses: plantAddresses(o.Discovery)}
		if r := a.Relay(); r != nil {
			st := r.Status()
			p.Hostname, p.Relay = r.Hostname(), &st
		} else {
			p.Hostname, _ = os.Hostname()
			p.Problem = *a.problem.Load()
		}
		if m := responder.Load(); m != nil {
			p.MDNSName = m.Name() + ".local" // the name in use, after any conflict
		}
		if n := tailnet.Load(); n != nil {
			p.Tailnet = n.State().State // "join failed: ..." for a wrong or expired key
		}
		return p
	}
	var httpAddr net.Addr
	if o.HTTPAddr != "" {
		l, err := net.Listen("tcp", o.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
		httpAddr = l.Addr()
		mux := http.NewServeMux()
		mux.Handle("/metrics", a.metrics())
		mux.Handle(provapi.Version+"/", server.LANRefusal()) // the admin API is on the tailnet only
		mux.Handle(web.Prefix, web.LANRefusal())             // and so is the admin page
		mux.Handle("/", status.Handler(a.page))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	var disco Discovery
	if o.Discovery != nil {
		disco = *o.Discovery
		if ta, ok := httpAddr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			disco.HTTPPort = ta.Port
		}
		dctx, stop := context.WithCancel(ctx)
		// The status page first; the SMTP services once the relay runs.
		resp, done, err := runDiscovery(dctx, disco, relay.Status{}, log)
		if err != nil {
			stop()
			log.Error("discovery is off; devices must be given the relay's address", "err", err)
		} else {
			defer func() { stop(); <-done }() // goodbyes go out before we exit
			responder.Store(resp)
			log.Info("announcing by mDNS", "name", resp.Name()+".local")
		}
	}
	if o.Tailnet != nil {
		adm, stopAdmin, err := startAdmin(ctx, o, a, creds, log)
		if err != nil {
			return err
		}
		tailnet.Store(adm.node)
		defer stopAdmin()
	}

	// 2. The relay, the managed part.
	r, err := a.startRelay()
	if err != nil {
		if !a.managed() {
			return err
		}
		// Only the state itself (spool, trace) can get here: the box
		// stays managed and says why it takes no mail.
		a.problem.Store(ptr(err.Error()))
		log.Error("not accepting mail: the relay cannot open its state; the box stays managed", "err", err)
		console("relay not started: %v", err)
		<-ctx.Done()
		return nil
	}
	if f := a.auditFailures.Load(); f != nil {
		r.SetAuditWriteFailures(*f)
	}
	a.relay.Store(r)
	a.auditFwd.attach(r)
	if resp := responder.Load(); resp != nil {
		if err := resp.SetServices(services(r.Status(), disco.HTTPPort, disco.Instance)); err != nil {
			log.Error("announcing the SMTP services", "err", err)
		}
	}
	if o.Reload != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-o.Reload:
					a.reload(ctx) // logged; the running configuration stays on error
				}
			}
		}()
	}
	if o.Box {
		console("SMTP listening on %v", r.Addrs())
	}
	if o.Ready != nil {
		o.Ready(r.Addrs(), httpAddr)
	}
	return r.Run(ctx)
}

func ptr[T any](v T) *T { return &v }

// app is the running appliance, for what changes it while it runs.
type app struct {
	o     Options
	log   *slog.Logger
	creds *secrets.Store
	relay atomic.Pointer[relay.Relay] // nil until built (and if the state is unusable)
	// problem is why there is no relay (yet), for the status page.
	problem atomic.Pointer[string]
	mu      sync.Mutex // one reload at a time
	// renewAudit puts certificate renewals in the audit log.
	renewAudit *renewalAudit
	// auditFailures reads the admin side's audit log failures, for the
	// relay's siterelay_audit_write_failures_total (set by startAdmin,
	// which may run before the relay is built).
	auditFailures atomic.Pointer[func() uint64]
	// auditFwd forwards the audit log's entries to the relay's syslog
	// forwarding (the audit stream), holding those before the relay.
	auditFwd auditForward
	// page is the status page's facts now (set before anything serves).
	page func() status.Page
}

// Relay is the relay in force (the same one for the process's life: a
// reload changes what it does, not which it is); nil while it starts, and
// for good if its state cannot be opened.
func (a *app) Relay() *relay.Relay { return a.relay.Load() }

// managed says whether the box has a management plane to stay up for
// (the gokrazy box, or a tailnet node): then a configuration that does
// not build never stops the process. Without one (a developer's relayd)
// it is an error, as it always was.
func (a *app) managed() bool { return a.o.Box || a.o.Tailnet != nil }

// deps are the relay's surroundings.
func (a *app) deps() relay.Deps {
	d := relay.Deps{Logger: a.log, Secret: secretStore(layout.Dir(a.o.StateDir).Secrets()),
		SecretUsed: a.creds.Used, RootCAs: a.o.RootCAs, HTTPClient: a.o.HTTPClient,
		KeyStore: a.creds, RenewalStep: a.renewAudit.step, SecretExpiry: a.creds.Expiry, ClockSynchronised: a.o.ClockSynchronised,
		Clock: a.o.Clock, Ticks: a.o.Ticks}
	if a.o.Tailnet != nil {
		d.Name = a.o.Tailnet.Site
	}
	if a.managed() {
		d.BindRetry = bindBackoff
	}
	if d.ClockSynchronised == nil && OnGokrazy() {
		d.ClockSynchronised = gokrazyClock
	}
	return d
}

// gokrazyClock is the clock's state on a gokrazy box: unknown. gokrazy's
// ntp sets the time with settimeofday(2), and the kernel marks its clock
// unsynchronised at boot and after every settimeofday (only adjtimex clears
// the flag), so the kernel's word would warn on every box, whatever NTP
// does. Unknown gives no warning and no clock_not_synchronised alert
// (docs/status.md) until the box has a time setter that says it is in step.
func gokrazyClock() *bool { return nil }

// startRelay builds the relay from config.json; on a managed box, where
// that does not build, from the newest kept version in config.d/ that
// does, and failing that with no configuration at all. The broken file
// stays where it is for the admin to read; the relay's status, the log,
// the console and siterelay_config_in_force say what runs instead.
func (a *app) startRelay() (*relay.Relay, error) {
	d := a.deps()
	cfg, err := loadConfig(a.o)
	if err == nil {
		var r *relay.Relay
		if r, err = relay.New(cfg, a.o.StateDir, d); err == nil {
			return r, nil
		}
	}
	if !a.managed() {
		return nil, err
	}
	broken := a.o.ConfigFile
	if broken == "" {
		broken = layout.Dir(a.o.StateDir).Config()
	}
	src := &relay.ConfigSource{Broken: a.rel(broken), Problem: err.Error()}
	a.log.Error("the configuration does not build; starting on the newest kept version that does", "file", src.Broken, "err", err)
	console("configuration %s does not build: %v", src.Broken, err)
	for _, path := range keptVersions(layout.Dir(a.o.StateDir)) {
		c, err := config.Load(path)
		if err != nil {
			a.log.Warn("kept configuration version does not load either", "file", a.rel(path), "err", err)
			continue
		}
		r, err := relay.New(c, a.o.StateDir, d)
		if err != nil {
			a.log.Warn("kept configuration version does not build either", "file", a.rel(path), "err", err)
			continue
		}
		src.InForce = a.rel(path)
		r.SetConfigSource(src)
		a.log.Warn("running a kept configuration version instead of the broken one; put a good one with relayctl config put, or roll back", "in_force", src.InForce, "broken", src.Broken)
		console("running kept configuration %s", src.InForce)
		return r, nil
	}
	r, err := relay.New(nil, a.o.StateDir, d)
	if err != nil {
		return nil, err
	}
	r.SetConfigSource(src)
	a.log.Error("no configuration builds: the relay has no listener and holds its queue; put one with relayctl config put", "broken", src.Broken)
	console("no configuration builds: no SMTP listener")
	return r, nil
}

// rel is path relative to the state directory, as the status shows it.
func (a *app) rel(path string) string {
	if p, err := filepath.Rel(a.o.StateDir, path); err == nil && !strings.HasPrefix(p, "..") {
		return filepath.ToSlash(p)
	}
	return path
}

// keptVersions are the configuration versions in config.d/, newest first.
func keptVersions(dir layout.Dir) []string {
	files, _ := filepath.Glob(filepath.Join(filepath.Dir(dir.ConfigVersion(1)), "[0-9]*.json"))
	sort.Sort(sort.Reverse(sort.StringSlice(files))) // zero-padded: the newest sorts last
	return files
}

// bindBackoff is when a listener that could not bind at start is tried
// again: after 1 s, doubling to a minute.
func bindBackoff(attempt int) <-chan time.Time {
	return time.After(min(time.Second<<min(attempt, 6), time.Minute))
}

// metrics serves the relay's /metrics once it runs (503 before).
func (a *app) metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r := a.Relay()
		if r == nil {
			http.Error(w, "the relay is not running: "+*a.problem.Load(), http.StatusServiceUnavailable)
			return
		}
		r.Metrics().ServeHTTP(w, req)
	})
}

// reload reads the configuration and the secrets again and applies them
// to the running relay. A configuration with errors is refused, each key
// error logged, and the running one stays in force. The tailnet API calls
// this after it has stored a new configuration or credential. A reload of
// config.json that applies ends a start on a kept version.
func (a *app) reload(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.Relay()
	if r == nil {
		return fmt.Errorf("reload: the relay is not running: %s", *a.problem.Load())
	}
	cfg, err := loadConfig(a.o)
	if err == nil {
		err = r.Reload(cfg)
	}
	if err != nil {
		a.log.Error("reload refused; the running configuration stays", "err", err)
		return fmt.Errorf("reload: %w", err)
	}
	r.SetConfigSource(nil)
	return nil
}

// secretStore reads secrets from files in dir, one file per secret name,
// refusing files that others could read: a secret that leaked through file
// permissions is not a secret.
func secretStore(dir string) func(name string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("secret name %q: use letters, digits, dashes", name)
		}
		path := filepath.Join(dir, name)
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", name, err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("secret %q: %s is readable by others (mode %v); chmod 600 it", name, path, st.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", name, err)
		}
		return []byte(strings.TrimRight(string(b), "\r\n")), nil
	}
}

// Doctor runs the upstream checks for the configuration Options point at,
// with the secrets of the state directory; resolver is a DNS server
// (host:port, "" for the system's) and testTo, when set, gets a test message.
func Doctor(ctx context.Context, o Options, resolver, testTo string) ([]upstream.Step, error) {
	cfg, err := loadConfig(o)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return relay.Doctor(ctx, cfg, o.StateDir, relay.Deps{Logger: log, Resolver: resolver,
		Secret: secretStore(layout.Dir(o.StateDir).Secrets()), SecretExpiry: secrets.New(layout.Dir(o.StateDir), nil).Expiry,
		RootCAs: o.RootCAs, HTTPClient: o.HTTPClient}, testTo)
}

// version names the build (buildinfo owns it: sitegen stamps it at build).
var version = buildinfo.Version
