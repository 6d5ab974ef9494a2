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
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/appliance/buildinfo"
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
}

// loadConfig returns the configuration Options point at.
func loadConfig(o Options) (*config.Config, error) {
	if o.Dev {
		return config.Default(), nil
	}
	path := o.ConfigFile
	if path == "" {
		path = layout.Dir(o.StateDir).Config()
	}
	c, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no configuration at %s: write one (see docs/config.md) or start with -dev", path)
	}
	return c, err
}

// Run starts the relay and serves until ctx ends.
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
			o.Tailnet = &Tailnet{Site: box.Site.Hostname, Admins: box.Site.Admins, ControlURL: box.Site.ControlURL}
		}
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	cfg, err := loadConfig(o)
	if err != nil {
		return err
	}
	creds := secrets.New(layout.Dir(o.StateDir), nil)
	r, err := relay.New(cfg, o.StateDir, relay.Deps{Logger: log, Secret: secretStore(layout.Dir(o.StateDir).Secrets()),
		SecretUsed: creds.Used, RootCAs: o.RootCAs, HTTPClient: o.HTTPClient})
	if err != nil {
		return err
	}
	a := &app{o: o, log: log, relay: r}
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
	var responder atomic.Pointer[mdns.Responder] // set once discovery runs
	var tailnet atomic.Pointer[node.Node]        // set once the admin side runs
	// The status page's facts, also the device setup sheet's (the LAN
	// page's /sheet and the admin API's /v1/sheet make it from these).
	a.page = func() status.Page {
		st := r.Status()
		p := status.Page{Hostname: r.Hostname(), Version: version(), Now: time.Now(), Relay: &st, Addresses: plantAddresses(o.Discovery)}
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
		mux.Handle("/metrics", r.Metrics())
		mux.Handle(provapi.Version+"/", server.LANRefusal()) // the admin API is on the tailnet only
		mux.Handle(web.Prefix, web.LANRefusal())             // and so is the admin page
		mux.Handle("/", status.Handler(a.page))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	if o.Discovery != nil {
		d := *o.Discovery
		if ta, ok := httpAddr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			d.HTTPPort = ta.Port
		}
		dctx, stop := context.WithCancel(ctx)
		resp, done, err := runDiscovery(dctx, d, r.Status(), log)
		if err != nil {
			stop()
			return err
		}
		defer func() { stop(); <-done }() // goodbyes go out before we exit
		responder.Store(resp)
		log.Info("announcing by mDNS", "name", resp.Name()+".local")
	}
	if o.Tailnet != nil {
		adm, stopAdmin, err := startAdmin(ctx, o, a, creds, log)
		if err != nil {
			return err
		}
		adm.host = r.Hostname()
		tailnet.Store(adm.node)
		defer stopAdmin()
	}
	if o.Box {
		console("SMTP listening on %v", r.Addrs())
	}
	if o.Ready != nil {
		o.Ready(r.Addrs(), httpAddr)
	}
	return r.Run(ctx)
}

// app is the running appliance, for what changes it while it runs.
type app struct {
	o     Options
	log   *slog.Logger
	relay *relay.Relay
	mu    sync.Mutex // one reload at a time
	// page is the status page's facts now (set before anything serves).
	page func() status.Page
}

// Relay is the relay in force (the same one for the process's life: a
// reload changes what it does, not which it is).
func (a *app) Relay() *relay.Relay { return a.relay }

// reload reads the configuration and the secrets again and applies them
// to the running relay. A configuration with errors is refused, each key
// error logged, and the running one stays in force. The tailnet API calls
// this after it has stored a new configuration or credential.
func (a *app) reload(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg, err := loadConfig(a.o)
	if err == nil {
		err = a.relay.Reload(cfg)
	}
	if err != nil {
		a.log.Error("reload refused; the running configuration stays", "err", err)
		return fmt.Errorf("reload: %w", err)
	}
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
		Secret: secretStore(layout.Dir(o.StateDir).Secrets()), RootCAs: o.RootCAs, HTTPClient: o.HTTPClient}, testTo)
}

// version names the build (buildinfo owns it: sitegen stamps it at build).
var version = buildinfo.Version
