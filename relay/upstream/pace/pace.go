// Package pace keeps an upstream below its sender's published limits
// (messages per rolling minute, concurrent deliveries, recipients per
// rolling 24 hours) so that the far end never has to throttle, and cools
// down as a throttling reply says when it throttles anyway.
//
// Waits short enough happen inside Deliver; a longer one is answered with a
// temporary *upstream.Error wrapping upstream.ErrPaced and carrying RetryAfter, so the
// scheduler defers the message instead of blocking a worker. Refusals for a
// rolling window that is full become temporary here (holds): the mailbox's
// quota (554 5.2.0 SubmissionQuotaExceeded), its recipient rate limit
// (550 5.1.90) and the tenant's external recipient rate limit (550 5.7.233).
// The mail waits out the window and is not bounced.
package pace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Options are the limits; zero means no limit.
type Options struct {
	MessagesPerMinute int
	Concurrency       int
	RecipientsPerDay  int
	// MaxRecipients, when set, counts a Deliver with more recipients as
	// the several transactions the upstream will split it into.
	MaxRecipients int
	// MaxWait is the longest wait inside Deliver. Default 10s.
	MaxWait time.Duration
	// Cooldowns after throttling replies; defaults 1m (432 4.3.2, too
	// many connections), 5m (4.7.5xx/4.7.6xx, IP throttling), 1h
	// (5.2.0 submission quota, 5.1.90 recipient rate, 5.7.233 tenant
	// rate: a 24-hour window must move on; 5.7.233 holds only the message
	// refused, since mail inside the tenant still goes).
	ConnectionCooldown, RateCooldown, QuotaCooldown time.Duration
	Clock                                           func() time.Time
	// Sleep waits d or until ctx ends; tests pass a fake clock's.
	Sleep  func(ctx context.Context, d time.Duration) error
	Logger *slog.Logger
	// StateFile, when set, keeps the windows and the cooldown across
	// restarts (see state.go): written durably at most once a second while
	// messages take their places in the windows (each write before its
	// message is sent), before a message the file on disk does not cover
	// (its allowance ahead is used up), at once when a cooldown starts,
	// and at Close. A box that restarts in a loop thus neither exceeds a
	// limit nor makes Microsoft throttle it after every boot, and an SD
	// card does not pay a flush for every message.
	StateFile string
}

// Paced is an upstream behind a pacer.
type Paced struct {
	up  upstream.Upstream
	o   Options
	sem chan struct{}

	mu        sync.Mutex
	minute    []*slot
	day       []*slot
	coolUntil time.Time
	coolWhy   string
	deferred  int
	throttled int

	sent       bool       // a message took its place in the windows
	saveMu     sync.Mutex // orders writes of the state file
	saveFailed bool       // the last write failed (logged once)

	// What the state file covers (see state.go, "Writes").
	reserved  tally     // places taken in the windows since Wrap
	onDisk    *ledger   // the last write that completed; nil: none covers
	writing   *ledger   // a write in progress: a crash may leave either
	lastWrite time.Time // on Clock: the last write's snapshot
	nextWrite time.Time // on Clock: when a write is due again
	repair    bool      // the file could not be read: the next message rewrites it
	lastSeq   tally     // reserved at the last write's snapshot
	writes    int       // state file writes (tests, benchmarks)
	// writeFile writes the state file durably; tests replace it to
	// simulate a crash between or during writes.
	writeFile func(path string, b []byte, perm os.FileMode) error
}

// slot is one message in the rolling windows; an in-flight one (done
// false) never expires, since its acceptance is still to come.
type slot struct {
	t    time.Time
	n    int
	done bool
	// file is the time a restored slot had in the state file; it is
	// written back when later than what t says (see state.go).
	file time.Time
}

// Wrap puts up behind a pacer with the given limits.
func Wrap(up upstream.Upstream, o Options) *Paced {
	if o.MaxWait == 0 {
		o.MaxWait = 10 * time.Second
	}
	if o.ConnectionCooldown == 0 {
		o.ConnectionCooldown = time.Minute
	}
	if o.RateCooldown == 0 {
		o.RateCooldown = 5 * time.Minute
	}
	if o.QuotaCooldown == 0 {
		o.QuotaCooldown = time.Hour
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Paced{up: up, o: o, writeFile: durable.WriteFile}
	if o.Concurrency > 0 {
		p.sem = make(chan struct{}, o.Concurrency)
	}
	if o.StateFile != "" {
		p.restore()
	}
	return p
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Limits are the inner upstream's, narrowed by the pacer's.
func (p *Paced) Limits() upstream.Limits {
	l := p.up.Limits()
	if c := p.o.Concurrency; c > 0 && (l.Concurrency == 0 || c < l.Concurrency) {
		l.Concurrency = c
	}
	if p.o.MessagesPerMinute > 0 {
		l.MessagesPerMinute = p.o.MessagesPerMinute
	}
	if p.o.RecipientsPerDay > 0 {
		l.RecipientsPerDay = p.o.RecipientsPerDay
	}
	return l
}

// Close writes the windows' last state, if this pacer sent anything (a
// doctor run beside the daemon must not write back what it read), and
// closes the inner upstream.
func (p *Paced) Close() error {
	p.mu.Lock()
	sent := p.sent
	p.mu.Unlock()
	if sent {
		p.save(false) // the exact state: nothing starts after it
	}
	return p.up.Close()
}

// Unwrap returns the inner upstream.
func (p *Paced) Unwrap() upstream.Upstream { return p.up }

// CheckRecipient passes through to an inner upstream.RecipientChecker.
func (p *Paced) CheckRecipient(rcpt string) error {
	if rc, ok := p.up.(upstream.RecipientChecker); ok {
		return rc.CheckRecipient(rcpt)
	}
	return nil
}

// Probe passes through to an inner upstream.Prober.
func (p *Paced) Probe(ctx context.Context) ([]upstream.Step, error) {
	if pr, ok := p.up.(upstream.Prober); ok {
		return pr.Probe(ctx)
	}
	return nil, errors.New("this upstream cannot be probed")
}

// Connections passes through to an inner upstream.ConnectionCounter.
func (p *Paced) Connections() int {
	if cc, ok := p.up.(upstream.ConnectionCounter); ok {
		return cc.Connections()
	}
	return 0
}

// Stats are counts since Wrap.
type Stats struct{ Deferred, Throttled int }

func (p *Paced) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{p.deferred, p.throttled}
}

// Deliver waits for a slot, delivers, and learns from throttling replies.
func (p *Paced) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	if p.sem != nil {
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, &upstream.Error{Err: ctx.Err()}
		}
		defer func() { <-p.sem }()
	}
	n := len(msg.To)
	txns := 1
	if k := p.o.MaxRecipients; k > 0 && n > k {
		txns = (n + k - 1) / k
	}
	var ms []*slot
	var ds *slot
	for {
		p.mu.Lock()
		now := p.o.Clock()
		wait, why := p.waitLocked(now, n, txns)
		if wait <= 0 {
			if p.o.MessagesPerMinute > 0 {
				for range txns {
					s := &slot{t: now, n: 1}
					ms = append(ms, s)
					p.minute = append(p.minute, s)
				}
			}
			if p.o.RecipientsPerDay > 0 {
				ds = &slot{t: now, n: n}
				p.day = append(p.day, ds)
			}
			p.sent = true
			p.reserved.Msgs += txns
			p.reserved.Rcpts += n
			write := p.writeDueLocked(now)
			p.mu.Unlock()
			if write {
				// On disk before it is sent: a crash during the
				// attempt still counts it after the restart.
				p.save(true)
			}
			break
		}
		if wait > p.o.MaxWait || !upstream.MayWait(ctx) {
			p.deferred++
			p.mu.Unlock()
			return nil, &upstream.Error{
				Err:        fmt.Errorf("%w: %s; next attempt in %v", upstream.ErrPaced, why, wait.Round(time.Second)),
				RetryAfter: wait,
				Hint:       "The relay holds the mail back to stay within Microsoft's sending limits (" + why + "); it is sent when the limit allows, nothing is lost.",
			}
		}
		p.mu.Unlock()
		if err := p.o.Sleep(ctx, wait); err != nil {
			return nil, &upstream.Error{Err: err}
		}
	}
	res, err := p.up.Deliver(ctx, msg)
	p.mu.Lock()
	cooled := p.coolUntil
	end := p.o.Clock()
	for _, s := range ms {
		// Count the message at its end so that two messages' acceptances
		// are never closer than the window allows.
		s.t, s.done = later(s.t, end), true
	}
	if ds != nil {
		ds.t, ds.done = later(ds.t, end), true
	}
	if ds != nil && err == nil {
		ds.n = 0
		for _, r := range res {
			if r.Err == nil {
				ds.n++
			}
		}
	}
	err = p.learnLocked(end, err)
	for i := range res {
		res[i].Err = p.learnLocked(end, res[i].Err)
	}
	cooling := !p.coolUntil.Equal(cooled)
	p.mu.Unlock()
	if cooling {
		// A new cooldown goes to disk at once. The attempt's end need
		// not: the next write (or Close) has it, and an attempt found in
		// flight after a crash counts as accepted at the restart.
		p.save(true)
	}
	return res, err
}

// waitLocked is how long until a message of n recipients may start.
func (p *Paced) waitLocked(now time.Time, n, txns int) (time.Duration, string) {
	var wait time.Duration
	var why string
	if now.Before(p.coolUntil) {
		wait, why = p.coolUntil.Sub(now), p.coolWhy
	}
	if lim := p.o.MessagesPerMinute; lim > 0 {
		p.minute = prune(p.minute, now.Add(-time.Minute))
		if len(p.minute)+txns > lim && len(p.minute) > 0 {
			ts := make([]time.Time, len(p.minute))
			for i, s := range p.minute {
				ts[i] = s.t
				if !s.done {
					ts[i] = later(s.t, now)
				}
			}
			slices.SortFunc(ts, time.Time.Compare)
			// The oldest entries must leave until txns more fit.
			k := min(len(ts)-1, max(0, len(ts)+txns-lim-1))
			if w := ts[k].Add(time.Minute).Sub(now); w > wait {
				wait, why = w, fmt.Sprintf("%d messages a minute", lim)
			}
		}
	}
	if lim := p.o.RecipientsPerDay; lim > 0 {
		p.day = prune(p.day, now.Add(-24*time.Hour))
		sum := 0
		for _, s := range p.day {
			sum += s.n
		}
		if sum+n > lim && sum > 0 {
			ss := slices.Clone(p.day)
			slices.SortFunc(ss, func(a, b *slot) int { return a.t.Compare(b.t) })
			for _, s := range ss {
				sum -= s.n
				if sum+n <= lim {
					t := s.t
					if !s.done {
						t = later(t, now)
					}
					if w := t.Add(24 * time.Hour).Sub(now); w > wait {
						wait, why = w, fmt.Sprintf("%d recipients a day", lim)
					}
					break
				}
			}
		}
	}
	return wait, why
}

func prune(s []*slot, before time.Time) []*slot {
	return slices.DeleteFunc(s, func(x *slot) bool { return x.done && !x.t.After(before) })
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// learnLocked starts a cooldown for a throttling reply and returns the
// error as the scheduler should see it (temporary, with RetryAfter).
func (p *Paced) learnLocked(now time.Time, err error) error {
	if err == nil {
		return nil
	}
	ue := upstream.Classify(err)
	cool, why, hold, tenant := p.throttle(ue)
	if cool <= 0 {
		return err
	}
	p.throttled++
	c := *ue
	if hold {
		c.Permanent = false
	}
	if tenant {
		// A tenant-wide window (external recipients): this message
		// waits, but mail to the tenant's own mailboxes still goes.
		c.RetryAfter = max(c.RetryAfter, cool)
		p.o.Logger.Warn("upstream refused for a tenant-wide limit: holding the message", "reply", ue.Error(), "retry_in", cool)
		return &c
	}
	if until := now.Add(cool); until.After(p.coolUntil) {
		p.coolUntil, p.coolWhy = until, why
		p.o.Logger.Warn("upstream throttled: cooling down", "reply", ue.Error(), "cooldown", cool)
	}
	c.RetryAfter = max(c.RetryAfter, p.coolUntil.Sub(now))
	return &c
}

// tooMany matches a reply that says the sender is over a rate limit in
// HTTP's terms.
var tooMany = regexp.MustCompile(`(?i)\b429\b|too many requests|rate limit exceeded`)

// throttle says how long to wait after a reply, why, whether the reply
// (a 5xx) is a hold rather than a refusal, and whether it concerns only
// this message (a tenant-wide window) rather than the whole upstream.
// Holds are the rolling-window refusals: the mail is sendable once the
// window moves on, so it must wait, not bounce.
func (p *Paced) throttle(ue *upstream.Error) (cool time.Duration, why string, hold, tenant bool) {
	if r := ue.Reply; r != nil {
		c := r.EnhancedCode
		switch {
		case r.Code == 432 || c == (smtp.EnhancedCode{4, 3, 2}):
			return p.o.ConnectionCooldown, "too many connections, cooling down", false, false
		case c[0] == 4 && c[1] == 7 && c[2] >= 500 && c[2] <= 699:
			return p.o.RateCooldown, "the upstream throttles this IP, cooling down", false, false
		case c == (smtp.EnhancedCode{5, 2, 0}) && strings.Contains(strings.ToLower(r.Message), "quota"):
			return p.o.QuotaCooldown, "the mailbox's daily recipient quota is used up", true, false
		case c == (smtp.EnhancedCode{5, 1, 90}):
			// The mailbox's recipient rate limit: nothing from it goes.
			return p.o.QuotaCooldown, "the mailbox's recipient rate limit is reached", true, false
		case c == (smtp.EnhancedCode{5, 7, 233}):
			// The tenant's external recipient rate limit (TERRL).
			return p.o.QuotaCooldown, "the tenant's external recipient rate limit is reached", true, true
		case !ue.Permanent && ue.RetryAfter > 0:
			// The upstream said how long to wait (Graph's 429 with
			// Retry-After): that, not a guess from the words. Graph's
			// reply reads "429" too, and the rule below would pause
			// the whole upstream for RateCooldown.
			return ue.RetryAfter, "the upstream asked to wait", false, false
		case tooMany.MatchString(r.Message):
			// Services that speak of their limits in HTTP's words over
			// SMTP, with no Retry-After (Azure Communication Services:
			// 429 past its per-minute and per-hour limits), whatever
			// the SMTP code: a hold.
			return p.o.RateCooldown, "the upstream says too many requests, cooling down", true, false
		}
	}
	if !ue.Permanent && ue.RetryAfter > 0 {
		return ue.RetryAfter, "the upstream asked to wait", false, false
	}
	return 0, "", false, false
}
