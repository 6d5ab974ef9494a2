// Where each route stands: the status page's view (Status), and the state
// file (routes.json) that keeps a failover across restarts.

package route

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// state is where a route stands; it is what the state file keeps.
type state struct {
	// Current is the index in the route's upstreams now used.
	Current int `json:"current"`
	// Since is when the route moved there; Reason is the reply that made
	// it (empty while on the first).
	Since  time.Time `json:"since,omitzero"`
	Reason string    `json:"reason,omitempty"`
	// NextTry is when the first upstream is tried again; Backoff is the
	// wait after that try if it is still closed.
	NextTry time.Time     `json:"next_try,omitzero"`
	Backoff time.Duration `json:"backoff,omitempty"`
	// Upstreams are the names the state is for: a state saved for another
	// list (the configuration changed) is not used.
	Upstreams []string `json:"upstreams"`
	probing   bool
}

// Status is one route as the status page shows it.
type Status struct {
	Name string `json:"name"`
	// Upstream is the name of the upstream the route uses now; Upstreams
	// all of them, in order.
	Upstream  string   `json:"upstream"`
	Upstreams []string `json:"upstreams"`
	// FailedOver is set while the route uses another than its first:
	// since when, why, and when the first is tried again.
	FailedOver bool      `json:"failed_over,omitempty"`
	Since      time.Time `json:"since,omitzero"`
	Reason     string    `json:"reason,omitempty"`
	NextTry    time.Time `json:"next_try,omitzero"`
}

// Status reports every route.
func (r *Router) Status() []Status {
	out := make([]Status, len(r.routes))
	for i, rt := range r.routes {
		rt.mu.Lock()
		st := rt.st
		rt.mu.Unlock()
		s := Status{Name: rt.cfg.Name, Upstream: rt.ups[st.Current].Name, Upstreams: slices.Clone(rt.cfg.Upstreams), Reason: st.Reason}
		if st.Current > 0 {
			s.FailedOver, s.Since, s.NextTry = true, st.Since, st.NextTry
		}
		out[i] = s
	}
	return out
}

// save writes every route's state (rare: on failover and failback).
func (r *Router) save() {
	if r.o.StateFile == "" {
		return
	}
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	all := map[string]state{}
	for _, rt := range r.routes {
		rt.mu.Lock()
		all[rt.cfg.Name] = rt.st
		rt.mu.Unlock()
	}
	b, _ := json.MarshalIndent(all, "", "  ")
	if err := durable.WriteFile(r.o.StateFile, b, 0o600); err != nil {
		r.log.Warn("route: cannot keep the failover state; a restart starts on the first upstreams", "err", err)
	}
}

// restore reads the state file: a route whose upstream list is unchanged
// resumes where it was (failed over, and when to try the first again).
func (r *Router) restore() {
	if r.o.StateFile == "" {
		return
	}
	b, err := os.ReadFile(r.o.StateFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("route: cannot read the failover state; starting on the first upstreams", "err", err)
		}
		return
	}
	var all map[string]state
	if err := json.Unmarshal(b, &all); err != nil {
		r.log.Warn("route: failover state unreadable; starting on the first upstreams", "err", err)
		return
	}
	for _, rt := range r.routes {
		st, ok := all[rt.cfg.Name]
		if !ok || !slices.Equal(st.Upstreams, rt.cfg.Upstreams) || st.Current < 0 || st.Current >= len(rt.ups) {
			continue
		}
		rt.st = st
		if st.Current > 0 {
			r.log.Info("route: resuming on a failover upstream", "route", rt.cfg.Name, "upstream", rt.ups[st.Current].Name, "reason", st.Reason, "first_again", st.NextTry)
		}
	}
}
