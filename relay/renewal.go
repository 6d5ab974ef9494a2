package relay

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/safetext"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// RenewCheckEvery is how often the relay asks its certificate renewers
// whether one is due (each decides by its own clock and backoff).
const RenewCheckEvery = 15 * time.Minute

// renewals are the relay's certificate renewers, one per box-made
// certificate that an m365 upstream with application_object_id uses. They
// outlive reloads (a renewer whose options stay keeps its backoff).
type renewals struct {
	mu   sync.Mutex
	list map[string]*renewal // by credential name
}

type renewal struct {
	key string // the options it was built from
	r   *m365.Renewer
}

// m365Configs are the m365 upstream configurations of cfg: the upstream
// and every named one.
func m365Configs(cfg *config.Config) []config.Upstream {
	out := []config.Upstream{cfg.Upstream}
	for _, n := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		out = append(out, cfg.Upstreams[n])
	}
	return slices.DeleteFunc(out, func(u config.Upstream) bool { return !u.Kind.OAuth() && !u.Kind.TokenOrPassword() })
}

// updateRenewals builds the renewers cfg asks for (after New and each
// Reload); without a key store (Deps.KeyStore) there is none.
func (r *Relay) updateRenewals(cfg *config.Config) {
	if r.d.KeyStore == nil {
		return
	}
	want := map[string]*renewal{}
	r.renew.mu.Lock()
	defer r.renew.mu.Unlock()
	for _, u := range m365Configs(cfg) {
		m := u.M365
		if m.ApplicationObjectID == "" || m.CertificateKeySecret == "" {
			continue
		}
		name := m.CertificateKeySecret
		if filepath.ToSlash(filepath.Clean(m.CertificateFile)) != "certs/"+name+".pem" {
			r.log.Error("certificate renewal needs the certificate made on the box: upstream.m365.certificate_file must be certs/NAME.pem for certificate_key_secret NAME (relayctl creds new-certificate)",
				"certificate_file", m.CertificateFile, "certificate_key_secret", name)
			continue
		}
		days, before := m.CertificateDays, m.RenewBeforeDays
		if days == 0 {
			days = config.DefaultCertificateDays
		}
		if before == 0 {
			before = config.DefaultRenewBeforeDays
		}
		tokenURL, graphURL := m.TokenURL, m.GraphURL
		key := strings.Join([]string{name, m.Tenant, m.ClientID, m.ApplicationObjectID, tokenURL, graphURL, m.Scope, m.CAFile, fmt.Sprint(days, before)}, "\x00")
		if old := r.renew.list[name]; old != nil && old.key == key {
			want[name] = old
			continue
		}
		// The renewal talks to the token endpoint and Graph as delivery
		// does: behind a TLS-inspecting proxy it trusts ca_file too.
		client := r.d.HTTPClient
		if m.CAFile != "" {
			var err error
			if _, client, err = withCAFile(r.dir.Resolve(m.CAFile), r.d.RootCAs, client); err != nil {
				r.log.Error("certificate renewal waits for upstream.m365.ca_file", "credential", name, "err", err)
				continue
			}
		}
		rn, err := m365.NewRenewer(m365.RenewOptions{Credential: name, Tenant: m.Tenant, ClientID: m.ClientID, ObjectID: m.ApplicationObjectID,
			TokenURL: tokenURL, GraphURL: graphURL, Scope: m.Scope, RenewBefore: time.Duration(before) * 24 * time.Hour, Days: days,
			Store: reloadingStore{r}, HTTPClient: client, Clock: r.d.Clock, Logger: r.log, Step: r.renewalStep, StateFile: r.dir.Renewal(name)})
		if err != nil {
			r.log.Error("certificate renewal cannot start", "credential", name, "err", err)
			continue
		}
		want[name] = &renewal{key: key, r: rn}
	}
	r.renew.list = want
}

// renewalStep records a step of a renewal in the trace (relayctl trace
// -kind renewal) and hands it to Deps.RenewalStep (the audit log). A step
// holds no key, token or proof; Graph's words in it are escaped as
// everything a peer sent.
func (r *Relay) renewalStep(s m365.RenewStep) {
	res := "ok"
	if !s.OK {
		res = "failed"
	}
	r.trace.Record(trace.Event{Time: s.Time, Kind: trace.Renewal, Credential: s.Credential, Step: s.Step, KeyID: safetext.Escape(s.KeyID),
		Result: res, Reply: safetext.Escape(s.Detail), Hint: safetext.Escape(s.Hint)})
	if r.d.RenewalStep != nil {
		r.d.RenewalStep(s)
	}
}

// reloadingStore puts a renewed certificate in force: the store writes it,
// then the relay reloads so that the upstream signs with the new key
// before the old one is removed from the app.
type reloadingStore struct{ r *Relay }

func (s reloadingStore) Current(name string) (*x509.Certificate, crypto.Signer, string, error) {
	return s.r.d.KeyStore.Current(name)
}

func (s reloadingStore) Replace(name string, certPEM, keyPEM []byte, keyID string) error {
	if err := s.r.d.KeyStore.Replace(name, certPEM, keyPEM, keyID); err != nil {
		return err
	}
	return s.r.Reload(s.r.Config())
}

func (r *Relay) renewers() []*m365.Renewer {
	r.renew.mu.Lock()
	defer r.renew.mu.Unlock()
	var out []*m365.Renewer
	for _, n := range slices.Sorted(maps.Keys(r.renew.list)) {
		out = append(out, r.renew.list[n].r)
	}
	return out
}

// CheckRenewals lets every renewer renew that is due (Run calls it every
// RenewCheckEvery; tests call it after moving the clock).
func (r *Relay) CheckRenewals(ctx context.Context) {
	for _, rn := range r.renewers() {
		rn.Check(ctx) // logged, traced and kept in its state
	}
}

// RenewCredential renews the box-made certificate name now (relayctl creds
// renew), due or not.
func (r *Relay) RenewCredential(ctx context.Context, name string) (m365.RenewState, error) {
	r.renew.mu.Lock()
	rn := r.renew.list[name]
	r.renew.mu.Unlock()
	if rn == nil {
		return m365.RenewState{}, fmt.Errorf("%w: no upstream renews a certificate named %q: it needs upstream.m365.application_object_id, certificate_file certs/%s.pem and certificate_key_secret %s", ErrNoRenewal, name, name, name)
	}
	err := rn.r.Renew(ctx)
	return rn.r.State(), err
}

// ErrNoRenewal is RenewCredential's error for a name nothing renews.
var ErrNoRenewal = fmt.Errorf("no renewal")

// Renewals are the renewers' states, by credential name.
func (r *Relay) Renewals() []m365.RenewState {
	var out []m365.RenewState
	for _, rn := range r.renewers() {
		out = append(out, rn.State())
	}
	return out
}

// runRenewals checks the renewers now and every RenewCheckEvery until ctx
// ends.
func (r *Relay) runRenewals(ctx context.Context) {
	var c <-chan time.Time
	if r.d.Ticks != nil {
		c = r.d.Ticks(RenewCheckEvery)
	} else {
		t := time.NewTicker(RenewCheckEvery)
		defer t.Stop()
		c = t.C
	}
	for {
		r.CheckRenewals(ctx)
		select {
		case <-ctx.Done():
			return
		case <-c:
		}
	}
}

// renewalWarnings are the status page's words for renewals that fail or
// left something to the admin.
func (r *Relay) renewalWarnings() []string {
	var out []string
	for _, st := range r.Renewals() {
		if st.Failures > 0 {
			out = append(out, fmt.Sprintf("certificate %s (expires %s) could not be renewed (%d attempts failed, next %s): %s %s",
				st.Credential, st.NotAfter.UTC().Format(time.DateOnly), st.Failures, st.NextTry.UTC().Format(time.RFC3339), st.LastError, st.Hint))
		}
		if st.Warning != "" {
			out = append(out, "certificate "+st.Credential+": "+st.Warning)
		}
	}
	return out
}

// explainRenewal is the webhook's words for a credential's last renewal
// failure: Microsoft's answer and what it means.
func (r *Relay) explainRenewal(name string) string {
	for _, st := range r.Renewals() {
		if st.Credential == name && st.LastError != "" {
			return strings.TrimSpace(st.LastError + " — " + st.Hint)
		}
	}
	return ""
}
