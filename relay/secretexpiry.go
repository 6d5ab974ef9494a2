package relay

import (
	"fmt"
	"slices"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/upstream"
)

// secretExpiries are the client secrets and passwords the configuration
// in force uses whose expiry the secret store knows (Deps.SecretExpiry),
// each once, by name: the metric, the status warnings and the doctor read
// them.
func (r *Relay) secretExpiries() []metrics.SecretExpiry {
	g := r.gen.Load()
	if g == nil {
		return nil
	}
	return secretExpiriesOf(g.cfg, r.d)
}

func secretExpiriesOf(cfg *config.Config, d Deps) []metrics.SecretExpiry {
	if d.SecretExpiry == nil {
		return nil
	}
	var out []metrics.SecretExpiry
	for _, ref := range cfg.References() {
		if ref.Secret == "" || slices.ContainsFunc(out, func(s metrics.SecretExpiry) bool { return s.Credential == ref.Secret }) {
			continue
		}
		kind, notAfter := d.SecretExpiry(ref.Secret)
		if notAfter.IsZero() || (kind != config.RefClientSecret && kind != config.RefPassword) {
			continue
		}
		out = append(out, metrics.SecretExpiry{Credential: ref.Secret, Kind: kind, NotAfter: notAfter.UTC()})
	}
	return out
}

// secretWarnings are the status page's words for secrets that expire
// within config.SecretExpiringDays, or have.
func (r *Relay) secretWarnings() []string {
	now := r.d.Clock()
	var out []string
	for _, s := range r.secretExpiries() {
		if w := SecretExpiryWarning(s.Credential, s.Kind, s.NotAfter, now); w != "" {
			out = append(out, w)
		}
	}
	return out
}

// SecretExpiryWarning is what status and doctor say of a secret that
// expires on notAfter: nothing while it has more than
// config.SecretExpiringDays.
func SecretExpiryWarning(name, kind string, notAfter, now time.Time) string {
	left := notAfter.Sub(now)
	what := "client secret"
	if kind == config.RefPassword {
		what = "password"
	}
	put := fmt.Sprintf("relayctl creds put %s -kind %s -expires DATE", name, kind)
	switch {
	case left <= 0:
		return fmt.Sprintf("%s %s expired on %s: Microsoft refuses it (Entra answers AADSTS7000222 for an expired client secret) and mail waits. Make a new one and put it on the box (%s).",
			what, name, notAfter.UTC().Format(time.DateOnly), put)
	case left < config.SecretExpiringDays*24*time.Hour:
		return fmt.Sprintf("%s %s expires on %s (in %d days): nothing renews it. Make a new one and put it on the box (%s), then delete the old one in the portal; or use a certificate made on the box, which renews itself.",
			what, name, notAfter.UTC().Format(time.DateOnly), int(left.Hours()/24), put)
	}
	return ""
}

// secretExpirySteps are the doctor's lines for the secrets with a known
// expiry: a pass while one has more than config.SecretExpiringDays, else
// what status says.
func secretExpirySteps(cfg *config.Config, d Deps) []upstream.Step {
	now := d.Clock()
	var steps []upstream.Step
	for _, s := range secretExpiriesOf(cfg, d) {
		st := upstream.Step{Name: "secret " + s.Credential + " expiry", OK: true,
			Detail: fmt.Sprintf("%s, expires on %s (in %d days); nothing renews it: put a new one before then", s.Kind, s.NotAfter.Format(time.DateOnly), int(s.NotAfter.Sub(now).Hours()/24))}
		if w := SecretExpiryWarning(s.Credential, s.Kind, s.NotAfter, now); w != "" {
			st.OK, st.Detail = false, w
		}
		steps = append(steps, st)
	}
	return steps
}
