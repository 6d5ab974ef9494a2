// Package route sends each recipient of a message the way its route says:
// a Router is an upstream.Upstream made of several named upstreams and the
// routes that choose among them (by recipient domain, sender or device).
// Deliver splits a message's recipients by route, gives each part to its
// route's current upstream and merges the per-recipient results, naming the
// upstream of each (RcptResult.Upstream) so the trace shows every part. The
// upstreams keep their own pacing, holds and connections; the scheduler
// sees one upstream.
//
// Failover: each route has an ordered list of upstreams. When one answers
// that its path is closed for this tenant (Closed), the route moves to the
// next at once, retrying the part there in the same attempt, and tries the
// first again after FailbackAfter, doubling to FailbackMax while it stays
// closed. Mail never bounces because one path closed: a closed path's
// refusal is kept temporary.
package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Named is one upstream under its configured name; Label is what traces
// and the status page call it (e.g. "hve hve@contoso.com").
type Named struct {
	Name  string
	Label string
	Up    upstream.Upstream
}

// Options configure a Router.
type Options struct {
	// Routes in order; the last is a catch-all (config validates it).
	Routes []config.Route
	// Upstreams by name; every name a route lists is here.
	Upstreams map[string]Named
	// Clock defaults to time.Now.
	Clock func() time.Time
	// StateFile, when set, keeps which upstream each route uses across
	// restarts and reloads (layout.Dir.Routes).
	StateFile string
	// Failover, when set, is told each time a route leaves an upstream
	// (metrics).
	Failover func(route, from, to, reason string)
	Logger   *slog.Logger
}

// Router is the routes as one upstream.
type Router struct {
	o      Options
	routes []*route
	ups    []Named // distinct, in first-use order
	log    *slog.Logger
	saveMu sync.Mutex
}

type route struct {
	cfg     config.Route
	domains map[string]bool
	senders []string
	devices []netip.Prefix
	ups     []Named

	mu sync.Mutex
	st state
}

// New builds the router over already built upstreams; Close closes them.
func New(o Options) (*Router, error) {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if len(o.Routes) == 0 {
		return nil, errors.New("route: no routes")
	}
	r := &Router{o: o, log: o.Logger}
	seen := map[string]bool{}
	for i, rc := range o.Routes {
		rt := &route{cfg: rc, domains: map[string]bool{}}
		for _, d := range rc.RecipientDomains {
			rt.domains[strings.ToLower(d)] = true
		}
		for _, s := range rc.Senders {
			rt.senders = append(rt.senders, strings.ToLower(s))
		}
		for _, n := range rc.Devices {
			p, err := netip.ParsePrefix(n)
			if err != nil {
				return nil, fmt.Errorf("routes[%d].devices: %w", i, err)
			}
			rt.devices = append(rt.devices, p.Masked())
		}
		for j, n := range rc.Upstreams {
			u, ok := o.Upstreams[n]
			if !ok {
				return nil, fmt.Errorf("routes[%d].upstreams[%d]: no upstream %q", i, j, n)
			}
			rt.ups = append(rt.ups, u)
			if !seen[n] {
				seen[n] = true
				r.ups = append(r.ups, u)
			}
		}
		if len(rt.ups) == 0 {
			return nil, fmt.Errorf("routes[%d].upstreams: empty", i)
		}
		rt.st.Upstreams = slices.Clone(rc.Upstreams)
		r.routes = append(r.routes, rt)
	}
	r.restore()
	return r, nil
}

// match reports whether the route takes rcpt of a message from from, sent
// by the device at ip (invalid: unknown). A condition the route does not
// have holds.
func (rt *route) match(rcpt, from string, ip netip.Addr) bool {
	if len(rt.domains) > 0 && !rt.domains[domainOf(rcpt)] {
		return false
	}
	if len(rt.senders) > 0 && !slices.ContainsFunc(rt.senders, func(s string) bool { return senderMatch(s, from) }) {
		return false
	}
	if len(rt.devices) > 0 && !slices.ContainsFunc(rt.devices, func(p netip.Prefix) bool { return ip.IsValid() && p.Contains(ip.Unmap()) }) {
		return false
	}
	return true
}

func senderMatch(pattern, from string) bool {
	from = strings.ToLower(from)
	if d, ok := strings.CutPrefix(pattern, "@"); ok {
		return domainOf(from) == d
	}
	return from == pattern
}

func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	return strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
}

// pick is the route of rcpt.
func (r *Router) pick(rcpt, from string, ip netip.Addr) *route {
	for _, rt := range r.routes {
		if rt.match(rcpt, from, ip) {
			return rt
		}
	}
	return r.routes[len(r.routes)-1] // the catch-all; config guarantees one
}

// Deliver splits msg by route, delivers the parts concurrently and merges
// the results; it returns no overall error, only per-recipient ones.
func (r *Router) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	ip, _ := netip.ParseAddr(msg.ClientIP)
	var order []*route
	parts := map[*route][]string{}
	for _, rc := range msg.To {
		rt := r.pick(rc, msg.From, ip)
		if _, ok := parts[rt]; !ok {
			order = append(order, rt)
		}
		parts[rt] = append(parts[rt], rc)
	}
	// The parts go at once: one part waiting for its upstream's pacing
	// does not hold back another's.
	results := make([][]upstream.RcptResult, len(order))
	var wg sync.WaitGroup
	for i, rt := range order {
		wg.Go(func() { results[i] = r.deliverPart(ctx, rt, msg, parts[rt]) })
	}
	wg.Wait()
	byRcpt := make(map[string]upstream.RcptResult, len(msg.To))
	for _, rs := range results {
		for _, res := range rs {
			byRcpt[res.Rcpt] = res
		}
	}
	out := make([]upstream.RcptResult, len(msg.To))
	for i, rc := range msg.To {
		out[i] = byRcpt[rc]
		out[i].Rcpt = rc
	}
	return out, nil
}

// deliverPart gives to (recipients of one route) to the route's upstreams
// in turn: the first again when its failback try is due, then the current
// one and those after it. A recipient an upstream cannot reach at all
// (HVE's internal-only rule) goes on to the next one that can.
func (r *Router) deliverPart(ctx context.Context, rt *route, msg *upstream.Message, to []string) []upstream.RcptResult {
	now := r.o.Clock()
	idx, probe := rt.order(now)
	if probe {
		// A try of the first that was skipped (too large, recipients it
		// cannot reach) gives the ticket back for later.
		defer rt.release(r.o.Clock)
	}
	var out []upstream.RcptResult
	left := to
	var refused map[string]error // first checker refusal, for recipients no upstream takes
	for k, i := range idx {
		if len(left) == 0 {
			break
		}
		u := rt.ups[i]
		last := k == len(idx)-1
		if l := u.Up.Limits().MaxSize; l > 0 && msg.Size > l && !last {
			continue // too large for this one: a later one may take it
		}
		var here []string
		var rest []string
		for _, rc := range left {
			if err := checkRecipient(u.Up, rc); err != nil && !last {
				if refused == nil {
					refused = map[string]error{}
				}
				if _, ok := refused[rc]; !ok {
					refused[rc] = err
				}
				rest = append(rest, rc)
				continue
			}
			here = append(here, rc)
		}
		if len(here) == 0 {
			left = rest
			continue
		}
		probing := probe && k == 0
		res := r.send(ctx, u, msg, here, rt.label(i))
		if reason, closed := closedPath(res); closed {
			rt.closed(r, i, probing, reason, r.o.Clock())
			if !last {
				left = append(here, rest...)
				continue
			}
			for j := range res {
				res[j].Err = keepTemporary(res[j].Err)
			}
		} else if probing && !opened(res) {
			// No answer that says the first is open again (network,
			// pacing): the recipients go the current way, the first is
			// tried again later.
			rt.unknown(r.o.Clock())
			left = append(here, rest...)
			continue
		} else {
			rt.worked(r, i)
		}
		out = append(out, res...)
		left = rest
	}
	for _, rc := range left {
		err := refused[rc]
		if err == nil {
			err = &upstream.Error{Err: fmt.Errorf("route %s: no upstream took %s", rt.cfg.Name, rc)}
		}
		out = append(out, upstream.RcptResult{Rcpt: rc, Err: err, Upstream: rt.label(idx[0])})
	}
	return out
}

// opened: the upstream took or refused a recipient on the message's own
// merits, so its path is open.
func opened(res []upstream.RcptResult) bool {
	for _, x := range res {
		if x.Err == nil || upstream.IsPermanent(x.Err) {
			return true
		}
	}
	return false
}

// send delivers to through u in chunks of u's MaxRecipients, every
// result named after the route and upstream.
func (r *Router) send(ctx context.Context, u Named, msg *upstream.Message, to []string, label string) []upstream.RcptResult {
	n := u.Up.Limits().MaxRecipients
	if n <= 0 {
		n = len(to)
	}
	var out []upstream.RcptResult
	for start := 0; start < len(to); start += n {
		part := *msg
		part.To = to[start:min(start+n, len(to))]
		res, err := u.Up.Deliver(ctx, &part)
		for _, rc := range part.To {
			var rerr error = err
			if err == nil {
				rerr = resultFor(res, rc)
			}
			out = append(out, upstream.RcptResult{Rcpt: rc, Err: rerr, Upstream: label})
		}
	}
	return out
}

func resultFor(res []upstream.RcptResult, rc string) error {
	for _, x := range res {
		if x.Rcpt == rc {
			return x.Err
		}
	}
	return &upstream.Error{Err: fmt.Errorf("upstream gave no result for %s", rc)}
}

func checkRecipient(up upstream.Upstream, rcpt string) error {
	if rc, ok := up.(upstream.RecipientChecker); ok {
		return rc.CheckRecipient(rcpt)
	}
	return nil
}

// label names upstream i of the route for the trace: the route, the
// upstream, and, away from the first, that this is a failover and why.
func (rt *route) label(i int) string {
	s := rt.cfg.Name + ": " + rt.ups[i].Label
	rt.mu.Lock()
	cur, reason := rt.st.Current, rt.st.Reason
	rt.mu.Unlock()
	if i == 0 || cur == 0 || reason == "" {
		return s
	}
	return s + " (failover from " + rt.ups[0].Name + ": " + reason + ")"
}

// Limits: see the package's doc and docs/config.md ("Routes"). The
// scheduler's workers are the sum of the routes' first upstreams'
// concurrency (each upstream's pacer bounds its own connections), no
// recipient limit (the router splits each part by its upstream's), and the
// largest message any first upstream takes (a part too large for one goes
// to the next of its route that takes it).
func (r *Router) Limits() upstream.Limits {
	var l upstream.Limits
	seen := map[string]bool{}
	for _, rt := range r.routes {
		u := rt.ups[0]
		if seen[u.Name] {
			continue
		}
		seen[u.Name] = true
		ul := u.Up.Limits()
		c := ul.Concurrency
		if c <= 0 {
			c = 4
		}
		l.Concurrency += c
	}
	for _, u := range r.ups {
		l.MaxSize = max(l.MaxSize, u.Up.Limits().MaxSize)
	}
	return l
}

// Close closes every upstream.
func (r *Router) Close() error {
	var errs []error
	for _, u := range r.ups {
		if err := u.Up.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Connections sums the upstreams' open connections.
func (r *Router) Connections() int {
	n := 0
	for _, u := range r.ups {
		if cc, ok := u.Up.(upstream.ConnectionCounter); ok {
			n += cc.Connections()
		}
	}
	return n
}

// CheckRecipient answers at RCPT by routing rcpt: refused only when no
// upstream of its route can ever reach it. Routes by sender or device
// cannot be decided yet (the front end asks per recipient): rcpt is
// refused only if every route it may take refuses it.
func (r *Router) CheckRecipient(rcpt string) error {
	var first error
	for _, rt := range r.routes {
		if len(rt.domains) > 0 && !rt.domains[domainOf(rcpt)] {
			continue
		}
		err := rt.check(rcpt)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
		if len(rt.senders) == 0 && len(rt.devices) == 0 {
			break // this route takes rcpt whoever sends: the later ones never see it
		}
	}
	return first
}

func (rt *route) check(rcpt string) error {
	var first error
	for _, u := range rt.ups {
		err := checkRecipient(u.Up, rcpt)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	var se *smtp.SMTPError
	if errors.As(first, &se) {
		c := *se
		c.Message = fmt.Sprintf("route %s: %s", rt.cfg.Name, se.Message)
		return &c
	}
	return first
}

// Probe runs every upstream's probe, each step named after its upstream.
func (r *Router) Probe(ctx context.Context) ([]upstream.Step, error) {
	var steps []upstream.Step
	var errs []error
	for _, u := range r.ups {
		p, ok := u.Up.(upstream.Prober)
		if !ok {
			steps = append(steps, upstream.Step{Name: u.Name, Skipped: true, Detail: u.Label + " cannot be checked without sending"})
			continue
		}
		ps, err := p.Probe(ctx)
		for _, s := range ps {
			s.Name = u.Name + ": " + s.Name
			steps = append(steps, s)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u.Name, err))
		}
	}
	return steps, errors.Join(errs...)
}
