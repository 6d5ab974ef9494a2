package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

// failovers is siterelay_route_failovers_total: how often a route left an
// upstream whose path was closed for the tenant. It is registered once on
// the relay's registry, beside relay/metrics' own, and every configured
// route has its series from the start (0), so an alert sees it.
type failovers struct{ c *prometheus.CounterVec }

func newFailovers(reg *prometheus.Registry) *failovers {
	f := &failovers{c: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_route_failovers_total",
		Help: "Times a route moved its mail to its next upstream because the current one answered that its path is closed for the tenant (5.7.139, 5.7.30, 5.7.68, Graph 403, token endpoint refusing the app).",
	}, []string{"route"})}
	reg.MustRegister(f.c)
	return f
}

// routes makes every route of cfg a series.
func (f *failovers) routes(cfg *config.Config) {
	rs, _ := cfg.EffectiveRoutes()
	for _, r := range rs {
		f.c.WithLabelValues(r.Name)
	}
}

func (f *failovers) observe(rt, _, _, _ string) { f.c.WithLabelValues(rt).Inc() }

// routeStatus is the routes of the upstream in force, nil when it has
// none (one upstream for all mail).
func (s *switchable) routeStatus() []route.Status {
	s.mu.Lock()
	up := s.cur.up
	s.mu.Unlock()
	if r, ok := up.(*route.Router); ok {
		return r.Status()
	}
	return nil
}
