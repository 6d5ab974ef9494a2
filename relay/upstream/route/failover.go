// Failover: the order a route tries its upstreams in, a path closed and
// failing back to the first, which replies close a path (Closed), and keeping
// a closed path's refusal temporary.

package route

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
)

// order is the indexes of the route's upstreams to try now; probe is true
// when the first is tried again after a failover (the caller holds the
// ticket: only one attempt at a time probes).
func (rt *route) order(now time.Time) (idx []int, probe bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	cur := rt.st.Current
	if cur > 0 && !rt.st.probing && !now.Before(rt.st.NextTry) {
		rt.st.probing, probe = true, true
		idx = append(idx, 0)
	}
	for i := cur; i < len(rt.ups); i++ {
		idx = append(idx, i)
	}
	return idx, probe
}

// closed notes that upstream i answered that its path is closed.
func (rt *route) closed(r *Router, i int, probe bool, reason string, now time.Time) {
	rt.mu.Lock()
	st := &rt.st
	var from, to string
	changed := false
	switch {
	case probe:
		st.probing = false
		st.Backoff = min(2*max(st.Backoff, rt.cfg.FailbackAfter.D()), rt.cfg.FailbackMax.D())
		st.NextTry = now.Add(st.Backoff)
		changed = true
		r.log.Warn("route: first upstream still closed; trying it again later", "route", rt.cfg.Name, "upstream", rt.ups[0].Name, "reason", reason, "next_try", st.NextTry)
	case i == st.Current && i+1 < len(rt.ups):
		from, to = rt.ups[i].Name, rt.ups[i+1].Name
		st.Current = i + 1
		st.Since, st.Reason = now, reason
		if st.NextTry.IsZero() || i == 0 {
			st.Backoff = rt.cfg.FailbackAfter.D()
			st.NextTry = now.Add(st.Backoff)
		}
		changed = true
		r.log.Warn("route: upstream's path closed; failing over", "route", rt.cfg.Name, "from", from, "to", to, "reason", reason, "first_again", st.NextTry)
	case i == st.Current:
		st.Reason = "every upstream closed: " + reason
		changed = true
	}
	rt.mu.Unlock()
	if from != "" && r.o.Failover != nil {
		r.o.Failover(rt.cfg.Name, from, to, reason)
	}
	if changed {
		r.save()
	}
}

// release gives the failback ticket back if the attempt left it held.
func (rt *route) release(clock func() time.Time) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.st.probing {
		rt.st.probing = false
		rt.st.NextTry = clock().Add(rt.cfg.FailbackAfter.D())
	}
}

// unknown gives the failback ticket back without a verdict.
func (rt *route) unknown(now time.Time) {
	rt.mu.Lock()
	rt.st.probing = false
	rt.st.NextTry = now.Add(rt.cfg.FailbackAfter.D())
	rt.mu.Unlock()
}

// worked notes that upstream i answered (delivered, or refused for reasons
// of the message): a route failed over comes back to the first.
func (rt *route) worked(r *Router, i int) {
	rt.mu.Lock()
	st := &rt.st
	back := i == 0 && st.Current > 0
	if i == 0 {
		st.probing = false
	}
	if back {
		r.log.Info("route: first upstream open again; back to it", "route", rt.cfg.Name, "upstream", rt.ups[0].Name, "was", rt.ups[st.Current].Name)
		st.Current, st.Since, st.Reason, st.NextTry, st.Backoff = 0, r.o.Clock(), "", time.Time{}, 0
	}
	rt.mu.Unlock()
	if back {
		r.save()
	}
}

// Closed reports whether err means "this path is closed for this tenant":
// SMTP AUTH disabled (5.7.139), basic authentication off (5.7.30), direct
// send rejected (5.7.68), Graph's 403 for a missing permission, or the
// token endpoint refusing the app (not its being down). reason is the
// reply in short.
func Closed(err error) (reason string, closed bool) {
	if err == nil {
		return "", false
	}
	var te *m365.TokenError
	if errors.As(err, &te) {
		if te.Status >= 400 && te.Status < 500 && te.Status != 429 {
			return te.Error(), true
		}
		return "", false
	}
	ue := upstream.Classify(err)
	if ue.Reply == nil {
		return "", false
	}
	switch enhanced(ue.Reply) {
	case "5.7.139", "5.7.30", "5.7.68":
		return ue.Error(), true
	}
	if strings.HasPrefix(ue.Reply.Message, "Graph 403 ") {
		return ue.Error(), true
	}
	return "", false
}

func enhanced(r *smtp.SMTPError) string {
	c := r.EnhancedCode
	if c != (smtp.EnhancedCode{}) && c != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
	}
	return ""
}

// closedPath: a part whose every recipient met a closed path.
func closedPath(res []upstream.RcptResult) (string, bool) {
	reason := ""
	for _, x := range res {
		r, ok := Closed(x.Err)
		if !ok {
			return "", false
		}
		reason = r
	}
	return reason, len(res) > 0
}

// keepTemporary: a closed path never bounces mail.
func keepTemporary(err error) error {
	ue := upstream.Classify(err)
	if ue == nil || !ue.Permanent {
		return err
	}
	c := *ue
	c.Permanent = false
	return &c
}
