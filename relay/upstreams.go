package relay

import (
	"cmp"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/capture"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/pace"
	"github.com/siterelay/siterelay/relay/upstream/route"
	"github.com/siterelay/siterelay/relay/upstream/smarthost"
)

// newUpstream builds the configured upstream, of any kind, and a name for
// traces: the one upstream, or, when the configuration has routes, a
// router over the named upstreams (relay/upstream/route) that closes them
// all on Close. failover, when set, is told of each failover (metrics).
// This file is the one place that turns upstream configuration into an
// upstream; doctor.go and relay.go only call it.
func newUpstream(cfg *config.Config, dir string, d Deps, failover func(route, from, to, reason string)) (upstream.Upstream, string, error) {
	if len(cfg.Routes) == 0 {
		return buildUpstream(cfg, cfg.Upstream, "upstream", dir, d)
	}
	named := map[string]route.Named{}
	closeAll := func() {
		for _, n := range named {
			n.Up.Close()
		}
	}
	for name, u := range cfg.Upstreams {
		up, label, err := buildUpstream(cfg, u, "upstreams."+name, dir, d)
		if err != nil {
			closeAll()
			return nil, "", err
		}
		named[name] = route.Named{Name: name, Label: name + " (" + label + ")", Up: up}
	}
	rt, err := route.New(route.Options{Routes: cfg.Routes, Upstreams: named, Clock: d.Clock,
		StateFile: layout.Dir(dir).Routes(), Failover: failover, Logger: d.Logger})
	if err != nil {
		closeAll()
		return nil, "", err
	}
	var parts []string
	for _, r := range cfg.Routes {
		parts = append(parts, r.Name+" → "+strings.Join(r.Upstreams, ", "))
	}
	return rt, "routes: " + strings.Join(parts, "; "), nil
}

// buildUpstream builds one upstream of any kind; key is where it is
// configured ("upstream", "upstreams.NAME"), for errors.
//
// An upstream whose secrets or files are missing, unreadable or malformed
// is not an error: it is built as a waiting upstream that holds its mail,
// and d.waiting is told what it waits for.
func buildUpstream(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error) {
	refs := u.References(key)
	if us := unmet(refs, dir, d); len(us) > 0 {
		return d.wait(waitingFor(us, d.name(cfg)), key)
	}
	up, label, err := buildKind(cfg, u, key, dir, d)
	if err != nil && len(refs) > 0 {
		// Present and well-formed to the checks, yet the upstream refuses
		// what it read (a key of the wrong type, a certificate that does
		// not match it): held too, naming every reference of it.
		ws := make([]Waiting, len(refs))
		for i, ref := range refs {
			ws[i] = Waiting{Upstream: key, Key: ref.Key, Secret: ref.Secret, File: ref.File, Reason: config.ReasonMalformed,
				Detail: err.Error(), Fix: ref.Fix(d.name(cfg))}
		}
		return d.wait(ws, key)
	}
	return up, label, err
}

// wait is the waiting upstream for ws, told to d.waiting.
func (d Deps) wait(ws []Waiting, key string) (upstream.Upstream, string, error) {
	if d.waiting != nil {
		d.waiting(ws)
	}
	w := why(ws)
	d.Logger.Warn("upstream waiting: its mail is held until a reload finds what it needs", "upstream", key, "waiting", w)
	return &waitingUpstream{why: w}, "waiting for " + key, nil
}

// name is the relay's name for relayctl's -relay in a fix's command.
func (d Deps) name(cfg *config.Config) string {
	if d.Name != "" {
		return d.Name
	}
	return cfg.Hostname
}

// kindFamily is everything the relay root asks of an upstream family
// (config.Family: the part of the configuration holding a kind's keys):
// how to build it, which secrets it reads to deliver, and whether
// Microsoft's reply table explains its replies. The kind's own questions
// are its row in relay/config/kinds.go; a new kind of a known family needs
// nothing here. A new family is a row in families
// (TestEveryFamilyHasARow fails for one of config.Families without).
type kindFamily struct {
	// build builds the upstream and says what tells it apart from another
	// of its kind (its address, directory, tenant): buildKind puts the
	// kind before it.
	build   func(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error)
	secrets func(u config.Upstream) []string
	// explain: Microsoft's table (m365.Explain) fits its replies (many
	// smarthosts relay to Microsoft 365, and the codes are the same).
	explain bool
}

// families is the relay root's one table over the upstream families.
var families = map[config.Family]kindFamily{
	config.FamilyCapture: {build: buildCapture, secrets: func(config.Upstream) []string { return nil }},
	config.FamilySMTP:    {build: buildSMTP, secrets: smtpSecrets, explain: true},
	config.FamilyM365:    {build: buildM365, secrets: m365Secrets, explain: true},
}

// familyOf is k's family's row; false for a kind config does not know.
func familyOf(k config.Kind) (kindFamily, bool) {
	f, ok := families[k.Family()]
	return f, ok
}

// buildKind builds one upstream of its kind and names it (upstreamLabel).
func buildKind(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error) {
	f, ok := familyOf(u.Kind)
	if !ok {
		return nil, "", fmt.Errorf("%s.kind %q: not a kind this relay knows", key, u.Kind)
	}
	up, what, err := f.build(cfg, u, key, dir, d)
	return up, upstreamLabel(u.Kind, what), err
}

// upstreamLabel names an upstream in the trace, the status and the log:
// its kind first (metrics.UpstreamKind takes the metrics' kind label from
// that first word), then what tells it apart from another of its kind
// (the family's build function gives that).
func upstreamLabel(k config.Kind, what string) string { return string(k) + " " + what }

func buildCapture(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error) {
	out := filepath.Join(dir, u.Capture.Directory)
	up, err := capture.New(out)
	return up, out, err
}

func buildSMTP(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error) {
	s := u.SMTP
	opts := smarthost.Options{
		Addr: s.Address, TLS: s.TLS, MinTLS: config.TLSVersions[s.MinTLS], ServerName: s.ServerName,
		LocalName: cfg.Hostname, Concurrency: s.Concurrency, MaxRecipients: s.MaxRecipients,
		MaxSize: s.MaxMessageBytes, MessagesPerMinute: s.MessagesPerMinute, Clock: d.Clock, Logger: d.Logger,
	}
	if s.CAFile != "" {
		pem, err := os.ReadFile(layout.Dir(dir).Resolve(s.CAFile))
		if err != nil {
			return nil, "", fmt.Errorf("%s.smtp.ca_file: %w", key, err)
		}
		opts.RootCAs = x509.NewCertPool()
		if !opts.RootCAs.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("%s.smtp.ca_file: no PEM certificate in %s", key, s.CAFile)
		}
	}
	if s.Auth != "" {
		pw, err := d.Secret(s.PasswordSecret)
		if err != nil {
			return nil, "", fmt.Errorf("%s.smtp.password_secret: %w", key, err)
		}
		opts.Auth = smarthost.Auth{Mechanism: s.Auth, Username: s.Username, Password: string(pw)}
	}
	up, err := smarthost.New(opts)
	if err != nil {
		return nil, "", fmt.Errorf("%s.smtp: %w", key, err)
	}
	if s.MessagesPerMinute > 0 {
		// Pace below the smarthost's limit rather than be throttled.
		return pace.Wrap(up, pace.Options{MessagesPerMinute: s.MessagesPerMinute, Clock: d.Clock, Logger: d.Logger}), s.Address, nil
	}
	return up, s.Address, nil
}

// buildM365 builds the Microsoft 365 kinds, already paced to Microsoft's
// limits.
func buildM365(cfg *config.Config, u config.Upstream, key, dir string, d Deps) (upstream.Upstream, string, error) {
	up, err := m365.New(u.Kind, u.M365, m365.Deps{
		Secret: d.Secret, Clock: d.Clock, Logger: d.Logger, Resolver: d.Resolver, Dir: dir, LocalName: cfg.Hostname,
		TokenRenewed: d.tokenRenewed, ClientCertificate: d.clientCertificate, RootCAs: d.RootCAs, HTTPClient: d.HTTPClient,
	})
	if err != nil {
		return nil, "", fmt.Errorf("%s (%s): %w", key, u.Kind, err)
	}
	return up, m365What(u.Kind, u.M365), nil
}

// m365What tells a Microsoft 365 upstream from another of its kind in
// its label (upstreamLabel): the domain whose MX host it sends to
// (m365-connector, m365-direct: these have no tenant), else the tenant,
// else (a password login) the mailbox.
func m365What(k config.Kind, m config.M365) string {
	what := m.Tenant
	switch {
	case k.MX():
		what = cmp.Or(m.Domain, m.MXHost)
	case what == "":
		what = m.Mailbox
	}
	return what
}

// explain gives the scheduler a plain-language hint for upstream replies:
// Microsoft's table when any upstream's family says it fits (kindFamily);
// nothing when none does (every upstream a capture).
func explain(cfg *config.Config) func(error) string {
	_, ups := cfg.EffectiveRoutes()
	for _, u := range ups {
		if f, _ := familyOf(u.Kind); f.explain {
			return m365.Explain
		}
	}
	return nil
}

// upstreamConnections is the metrics' siterelay_upstream_connections: open
// connections to the upstream, 0 for those that hold none (capture, Graph).
func (r *Relay) upstreamConnections() float64 { return float64(r.up.Connections()) }

// recordDelivery is the scheduler's trace recorder (kept across
// reloads): every event goes to the trace, and a delivery also tells
// Deps.SecretUsed which secrets did their job, by the configuration in
// force.
func (r *Relay) recordDelivery(e trace.Event) {
	r.trace.Record(e)
	g := r.gen.Load()
	if e.Kind != trace.Delivered || r.d.SecretUsed == nil || g == nil {
		return
	}
	for _, name := range g.secrets(e.Upstream) {
		r.d.SecretUsed(name)
	}
}

// upstreamSecrets maps the upstream a trace event names to the secrets
// that upstream uses. With routes the event names "NAME (label)" (the
// label newUpstream gives each named upstream; names are identifiers, so
// the first " (" ends it); without routes there is one upstream.
func upstreamSecrets(cfg *config.Config) func(label string) []string {
	if len(cfg.Routes) == 0 {
		one := secretsOf(cfg.Upstream)
		return func(string) []string { return one }
	}
	named := map[string][]string{}
	for name, u := range cfg.Upstreams {
		named[name] = secretsOf(u)
	}
	return func(label string) []string {
		name, _, _ := strings.Cut(label, " (")
		return named[name]
	}
}

// secretsOf names the secrets u reads to deliver.
func secretsOf(u config.Upstream) []string {
	f, ok := familyOf(u.Kind)
	if !ok {
		return nil
	}
	return f.secrets(u)
}

func smtpSecrets(u config.Upstream) []string {
	if u.SMTP.Auth != "" && u.SMTP.PasswordSecret != "" {
		return []string{u.SMTP.PasswordSecret}
	}
	return nil
}

func m365Secrets(u config.Upstream) []string {
	var names []string
	m := u.M365
	for _, n := range []string{m.ClientSecretSecret, m.CertificateKeySecret, m.PasswordSecret, m.ConnectorKeySecret} {
		if n != "" {
			names = append(names, n)
		}
	}
	return names
}
