package config

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
)

// Route sends some of the mail to an ordered list of upstreams: the first
// while it works, the next when the first answers that its path is closed
// for this tenant (failover), and the first again later. A message whose
// recipients match different routes is split, one part per route.
//
// A route matches a recipient when every condition it has holds; the first
// matching route wins, and the last route must have none (the catch-all),
// so that every recipient has a way.
type Route struct {
	// Name appears in traces, the status page, metrics and errors.
	Name string `json:"name"`
	// RecipientDomains match the recipient's domain (case-insensitive,
	// exactly: a subdomain is a domain of its own).
	RecipientDomains []string `json:"recipient_domains,omitempty"`
	// Senders match the envelope sender: an address, or "@domain".
	Senders []string `json:"senders,omitempty"`
	// Devices match the sending device's address (CIDR networks).
	Devices []string `json:"devices,omitempty"`
	// Upstreams are names from the configuration's upstreams, in order of
	// preference.
	Upstreams []string `json:"upstreams"`
	// FailbackAfter is how long after a failover the first upstream is
	// tried again; each failed try doubles it up to FailbackMax.
	// Defaults 5m and 1h.
	FailbackAfter Duration `json:"failback_after,omitempty"`
	FailbackMax   Duration `json:"failback_max,omitempty"`
}

// CatchAll reports whether r matches every recipient.
func (r *Route) CatchAll() bool {
	return len(r.RecipientDomains) == 0 && len(r.Senders) == 0 && len(r.Devices) == 0
}

func (r *Route) setDefaults() {
	setDefault(&r.FailbackAfter, Duration(5*time.Minute))
	setDefault(&r.FailbackMax, Duration(time.Hour))
}

// DefaultRoute is the route name a configuration with one upstream has:
// everything goes there.
const DefaultRoute = "default"

// EffectiveRoutes are the routes in force: the configured ones, or, for a
// configuration with one upstream, one catch-all route named "default" to
// the upstream named "default".
func (c *Config) EffectiveRoutes() ([]Route, map[string]Upstream) {
	if len(c.Routes) > 0 {
		return c.Routes, c.Upstreams
	}
	r := Route{Name: DefaultRoute, Upstreams: []string{DefaultRoute}}
	r.setDefaults()
	return []Route{r}, map[string]Upstream{DefaultRoute: c.Upstream}
}

// validateUpstreams checks upstream, or upstreams and routes.
func (c *Config) validateUpstreams() Errors {
	if len(c.Upstreams) == 0 && len(c.Routes) == 0 {
		return c.Upstream.validate("upstream")
	}
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}
	if c.Upstream.Kind != "" {
		bad("upstream", "give either upstream (one way for all mail) or upstreams with routes, not both: move it into upstreams under a name")
	}
	if len(c.Upstreams) == 0 {
		bad("upstreams", "routes need upstreams to send to: name them here")
	}
	if len(c.Routes) == 0 {
		bad("routes", "upstreams need routes that say which mail goes where: add at least one catch-all route")
	}
	names := make([]string, 0, len(c.Upstreams))
	for n := range c.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	used := map[string]bool{}
	for _, n := range names {
		if !validName(n) {
			bad("upstreams."+n, "%q: a name is letters, digits, '-' and '_'", n)
		}
		u := c.Upstreams[n]
		errs = append(errs, u.validate("upstreams."+n)...)
	}
	seen := map[string]bool{}
	for i, r := range c.Routes {
		k := fmt.Sprintf("routes[%d]", i)
		switch {
		case r.Name == "":
			bad(k+".name", "missing: name the route (it appears in traces and on the status page)")
		case !validName(r.Name):
			bad(k+".name", "%q: a name is letters, digits, '-' and '_'", r.Name)
		case seen[r.Name]:
			bad(k+".name", "%q is used by another route", r.Name)
		}
		seen[r.Name] = true
		for j, d := range r.RecipientDomains {
			if !validDomain(d) {
				bad(fmt.Sprintf("%s.recipient_domains[%d]", k, j), "%q is not a domain name", d)
			}
		}
		for j, s := range r.Senders {
			if d, ok := strings.CutPrefix(s, "@"); ok && validDomain(d) || validAddress(s) {
				continue
			}
			bad(fmt.Sprintf("%s.senders[%d]", k, j), "%q: want an address or \"@domain\"", s)
		}
		for j, n := range r.Devices {
			if _, err := netip.ParsePrefix(n); err != nil {
				bad(fmt.Sprintf("%s.devices[%d]", k, j), "%q is not a network in CIDR form (e.g. \"10.1.0.0/16\")", n)
			}
		}
		if len(r.Upstreams) == 0 {
			bad(k+".upstreams", "missing: list the upstreams this route sends to, in order of preference (have: %s)", strings.Join(names, ", "))
		}
		for j, n := range r.Upstreams {
			key := fmt.Sprintf("%s.upstreams[%d]", k, j)
			switch {
			case len(c.Upstreams) > 0 && !slices.Contains(names, n):
				bad(key, "%q is not one of upstreams (have: %s)", n, strings.Join(names, ", "))
			case slices.Index(r.Upstreams, n) < j:
				bad(key, "%q is listed twice", n)
			}
			used[n] = true
		}
		if r.FailbackAfter <= 0 || r.FailbackMax < r.FailbackAfter {
			bad(k+".failback_max", "must be at least failback_after (%v)", r.FailbackAfter.D())
		}
		if i < len(c.Routes)-1 && r.CatchAll() {
			bad(k, "route %q matches every recipient, so the routes after it are never used: give it recipient_domains, senders or devices, or move it last", r.Name)
		}
	}
	if n := len(c.Routes); n > 0 && !c.Routes[n-1].CatchAll() {
		bad(fmt.Sprintf("routes[%d]", n-1), "the last route must match every recipient (no recipient_domains, senders or devices), so that all mail has a way: add a catch-all route")
	}
	for _, n := range names {
		if !used[n] {
			bad("upstreams."+n, "no route sends to it: add it to a route's upstreams, or remove it")
		}
	}
	return errs
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// RouteTable renders the routes for `relayd check-config`: one line per
// route with what it matches and its upstreams in order.
func (c *Config) RouteTable() string {
	routes, ups := c.EffectiveRoutes()
	var b strings.Builder
	fmt.Fprintf(&b, "%-3s %-16s %-40s %s\n", "#", "route", "matches", "upstreams (in order)")
	for i, r := range routes {
		var m []string
		if len(r.RecipientDomains) > 0 {
			m = append(m, "recipients @"+strings.Join(r.RecipientDomains, ", @"))
		}
		if len(r.Senders) > 0 {
			m = append(m, "senders "+strings.Join(r.Senders, ", "))
		}
		if len(r.Devices) > 0 {
			m = append(m, "devices "+strings.Join(r.Devices, ", "))
		}
		if len(m) == 0 {
			m = append(m, "everything else")
		}
		var us []string
		for _, n := range r.Upstreams {
			us = append(us, n+" ("+string(ups[n].Kind)+")")
		}
		fmt.Fprintf(&b, "%-3d %-16s %-40s %s\n", i, r.Name, strings.Join(m, "; "), strings.Join(us, " → "))
	}
	return b.String()
}
