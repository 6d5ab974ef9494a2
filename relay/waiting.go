package relay

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Waiting is one secret or file the configuration in force names that is
// missing, unreadable or malformed, and what it holds up: an upstream
// waiting for it holds its mail (accepted and spooled as usual, never
// attempted, bounced or expired) until a reload finds it there. The status
// page, /status.json, the admin API, relayctl, the metrics and doctor all
// show this list.
type Waiting struct {
	// Upstream is the upstream that waits ("upstream", "upstreams.NAME");
	// "" for what is no upstream's (the alert webhook's URL: alerts are
	// off until it is there).
	Upstream string `json:"upstream,omitempty"`
	// Key is the configuration key naming it ("upstream.m365.client_secret_secret").
	Key string `json:"key"`
	// Secret or File is what is missing: the secret's name, or the path.
	Secret string `json:"secret,omitempty"`
	File   string `json:"file,omitempty"`
	// Reason is "missing", "unreadable" or "malformed" (config.Reason*).
	Reason string `json:"reason"`
	// Detail says what is wrong, never the value.
	Detail string `json:"detail"`
	// Fix is the command that provides it
	// ("relayctl -relay NAME creds put m365-client-secret -kind client-secret -from FILE").
	Fix string `json:"fix"`
}

// waitRecheck is how long a message waiting for a secret sits before it
// is looked at again, if no reload came first (a reload after `creds put`
// makes every held message due at once).
const waitRecheck = time.Hour

// waitingUpstream stands for an upstream that cannot be built yet: every
// attempt answers upstream.ErrWaiting at once, so the scheduler holds the
// message without counting an attempt.
type waitingUpstream struct{ why string }

func (w *waitingUpstream) Deliver(context.Context, *upstream.Message) ([]upstream.RcptResult, error) {
	return nil, &upstream.Error{Err: fmt.Errorf("%w: %s", upstream.ErrWaiting, w.why), RetryAfter: waitRecheck,
		Hint: "mail is held, not lost: " + w.why}
}

func (w *waitingUpstream) Limits() upstream.Limits { return upstream.Limits{} }
func (w *waitingUpstream) Close() error            { return nil }

// unmet checks refs as the relay reads them: secrets through d.Secret (the
// secret store, or a test's), files below dir.
func unmet(refs []config.Reference, dir string, d Deps) []config.Unmet {
	var out []config.Unmet
	for _, ref := range refs {
		if ref.Secret == "" {
			if u := config.CheckReference(dir, ref); u != nil {
				out = append(out, *u)
			}
			continue
		}
		b, err := d.Secret(ref.Secret)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, config.Unmet{Reference: ref, Reason: config.ReasonMissing, Detail: "secret " + ref.Secret + " is not there yet"})
		case err != nil:
			out = append(out, config.Unmet{Reference: ref, Reason: config.ReasonUnreadable, Detail: err.Error()})
		default:
			if p := config.Malformed(ref, b); p != "" {
				out = append(out, config.Unmet{Reference: ref, Reason: config.ReasonMalformed, Detail: "secret " + ref.Secret + ": " + p})
			}
		}
	}
	return out
}

// waitingFor turns unmet references into the status's list, with the
// command that fixes each, for the relay relayctl calls name.
func waitingFor(us []config.Unmet, name string) []Waiting {
	out := make([]Waiting, len(us))
	for i, u := range us {
		out[i] = Waiting{Upstream: u.Upstream, Key: u.Key, Secret: u.Secret, File: u.File, Reason: u.Reason, Detail: u.Detail, Fix: u.Fix(name)}
	}
	return out
}

// why says in one line what an upstream waits for, for its attempts'
// answer (the queue's last reply) and the log.
func why(ws []Waiting) string {
	var parts []string
	for _, w := range ws {
		what := "secret " + w.Secret
		if w.Secret == "" {
			what = "file " + w.File
		}
		parts = append(parts, fmt.Sprintf("%s (%s) is %s; fix: %s", what, w.Key, w.Reason, w.Fix))
	}
	return "waiting for " + strings.Join(parts, "; ")
}

// waitingMetric is siterelay_upstream_waiting{upstream,reason}: how many
// references of each configured upstream are missing, unreadable or
// malformed. Every upstream of the configuration in force has its three
// series (0 when it can deliver), so an alert sees them.
type waitingMetric struct{ g *prometheus.GaugeVec }

func newWaitingMetric(reg *prometheus.Registry) *waitingMetric {
	m := &waitingMetric{g: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "siterelay_upstream_waiting",
		Help: "Secrets or files an upstream needs that are missing, unreadable or malformed (by reason); while above 0 its mail is held, not attempted (relayctl status names each and the command that provides it).",
	}, []string{"upstream", "reason"})}
	reg.MustRegister(m.g)
	return m
}

// set makes the series those of g.
func (m *waitingMetric) set(g *generation) {
	m.g.Reset()
	_, ups := g.cfg.EffectiveRoutes()
	for name := range ups {
		key := "upstreams." + name
		if len(g.cfg.Routes) == 0 {
			key = "upstream"
		}
		for _, reason := range []string{config.ReasonMissing, config.ReasonUnreadable, config.ReasonMalformed} {
			m.g.WithLabelValues(key, reason)
		}
	}
	for _, w := range g.waiting {
		if w.Upstream != "" {
			m.g.WithLabelValues(w.Upstream, w.Reason).Inc()
		}
	}
}
