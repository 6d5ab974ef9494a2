// Package delivery moves spooled messages to the upstream: it retries what
// is temporary with exponential backoff and jitter, bounces only what is
// permanent or has outlived its lifetime, and records every outcome per
// recipient so that a partial success is never repeated.
package delivery

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

// Options wire a scheduler. Spool and Upstream are required.
type Options struct {
	Spool    *spool.Spool
	Upstream upstream.Upstream
	// Name of the upstream in traces, e.g. "smtp mail.example.com:587".
	UpstreamName string
	// Record receives every trace event; nil drops them.
	Record func(trace.Event)
	// Explain adds a plain-language hint to an upstream failure; nil means
	// the upstream's own Hint only.
	Explain func(error) string
	// Bounce, when set, has a delivery status notification queued for
	// recipients that failed for good; nil means failures are only traced.
	// The bounce is queued before the message is marked done, so a crash
	// repeats a bounce rather than losing it.
	Bounce *Bounce
	// FirstRetry doubles per attempt up to MaxRetry; Lifetime bounds the
	// whole life of a message. Required: the defaults (1m, 1h, 120h) and
	// their validation are relay/config's alone (delivery.first_retry,
	// max_retry, lifetime); New panics without them rather than keep a
	// second copy that could drift.
	FirstRetry, MaxRetry, Lifetime time.Duration
	// Concurrency is the number of attempts in flight; default the
	// upstream's own limit, else 4.
	Concurrency int
	// Delivered, when set, is told each message's time from receipt to
	// its last recipient's delivery (metrics).
	Delivered func(time.Duration)
	// Holding says an upstream waits for a secret or file (the relay's
	// waiting state): no message expires meanwhile, since none could be
	// tried; the lifetime takes effect again once nothing waits.
	Holding bool
	Clock   func() time.Time
	Logger  *slog.Logger
}

// maxHold is the longest pacing wait that holds every attempt (the
// per-minute windows); a longer one holds only the message it was for.
const maxHold = time.Minute

// ErrNoBounce is what the bounce returns when nobody can be told (a
// null or unroutable sender and no bounce.admin): the failure is final all
// the same, and traced as failed rather than bounced.
var ErrNoBounce = errors.New("no bounce: nobody to send it to")

// Failure is a recipient that will not be delivered.
type Failure struct {
	Rcpt  string
	Reply string // the upstream's reply, or why it expired
	// Status is the upstream's enhanced status code ("5.1.1") for the
	// bounce; "" when it gave none (the bounce then says 5.0.0, or 4.4.7
	// for an expiry).
	Status string
	Hint   string
	index  int
	// upstream names the upstream that refused, when a router said
	// (RcptResult.Upstream); "" means the configured one.
	upstream string
}

// Scheduler runs the delivery loop. Enqueue and Kick are safe to call from
// any goroutine, also before Run.
type Scheduler struct {
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	ready    fairQueue        // ids to attempt now, fair by device and class
	queued   map[string]where // ids in ready, waiting or in flight, and their flow
	waiting  waitHeap         // ids waiting for their retry time
	attempts map[string]int   // attempts so far, by id
	wake     chan struct{}    // a worker should look at ready
	timer    chan struct{}    // the earliest retry time changed

	// The pacing hold: after the upstream answered "not now" (ErrPaced),
	// nothing is attempted until holdUntil; then one attempt (the probe,
	// the fairest ready message) goes first, and only when it is not held
	// again do the others follow. So the scheduler, not a race between
	// workers, chooses who gets each free slot.
	holdUntil time.Time
	probing   bool
	inFlight  int // attempts under way
	// The spread: attempts start at the upstream's pace (its messages a
	// minute, with a burst of ten seconds' worth), so that one device's
	// storm cannot take a whole minute's window in its first second and
	// the next device waits for the window to move; see spread.
	tokens   float64
	tokensAt time.Time

	// set is what a reload may change while deliveries run; each attempt
	// reads it once, so one attempt never mixes two configurations.
	set atomic.Pointer[settings]

	// The workers: Reconfigure starts more or lets the surplus ones end.
	runCtx  context.Context
	wg      sync.WaitGroup
	workers int // running
	want    int // wanted (Options.Concurrency)
}

// settings are the Options a running scheduler takes from a reload.
type settings struct {
	upstreamName                   string
	explain                        func(error) string
	bounce                         *Bounce
	firstRetry, maxRetry, lifetime time.Duration
	maxRecipients                  int
	perMinute                      int  // the upstream's pace; 0: none
	holding                        bool // Options.Holding
}

// New makes a scheduler; Run starts it.
func New(o Options) *Scheduler {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Record == nil {
		o.Record = func(trace.Event) {}
	}
	s := &Scheduler{
		o:        o,
		log:      o.Logger,
		queued:   map[string]where{},
		attempts: map[string]int{},
		wake:     make(chan struct{}, 1),
		timer:    make(chan struct{}, 1),
	}
	s.want = s.apply(o)
	return s
}

// apply takes the reloadable parts of o and returns the wanted number of
// workers.
func (s *Scheduler) apply(o Options) int {
	if o.FirstRetry <= 0 || o.MaxRetry < o.FirstRetry || o.Lifetime <= 0 {
		panic(fmt.Sprintf("delivery: no retry schedule (first %v, max %v, lifetime %v): pass relay/config's delivery.* values, which own the defaults", o.FirstRetry, o.MaxRetry, o.Lifetime))
	}
	lim := s.o.Upstream.Limits()
	if o.Concurrency <= 0 {
		o.Concurrency = lim.Concurrency
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	s.set.Store(&settings{upstreamName: o.UpstreamName, explain: o.Explain, bounce: o.Bounce,
		firstRetry: o.FirstRetry, maxRetry: o.MaxRetry, lifetime: o.Lifetime, maxRecipients: lim.MaxRecipients,
		perMinute: lim.MessagesPerMinute, holding: o.Holding})
	return o.Concurrency
}

// Reconfigure applies a reload while the scheduler runs: the upstream's
// name, Explain, the bounce settings, the retry timing and lifetime, and
// the concurrency take effect from the next attempt; attempts in flight
// finish as they started. The Upstream itself is not replaced here (the
// relay swaps what stands behind it), but its Limits are read again.
// Spool, Record, Delivered and Clock are kept.
func (s *Scheduler) Reconfigure(o Options) {
	want := s.apply(o)
	s.mu.Lock()
	s.want = want
	s.holdUntil = time.Time{} // the new upstream's pacer answers for itself
	for s.runCtx != nil && s.workers < s.want {
		s.startWorker()
	}
	s.mu.Unlock()
	// A surplus worker ends the next time it looks at the queue, before it
	// takes anything from it.
	signal(s.wake)
}

// startWorker runs one more worker; s.mu is held.
func (s *Scheduler) startWorker() {
	s.workers++
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.worker(s.runCtx)
	}()
}

// Enqueue asks for an attempt on a newly spooled message.
func (s *Scheduler) Enqueue(id string) {
	info, ok := s.o.Spool.Get(id)
	if !ok {
		return
	}
	s.enqueue(info)
}

func (s *Scheduler) enqueue(info spool.Info) {
	w := where{flow: flowKey(info.Envelope), rank: classRank(info.Envelope.Class)}
	s.mu.Lock()
	if _, ok := s.queued[info.ID]; !ok {
		s.queued[info.ID] = w
		s.ready.push(info.ID, w)
	}
	s.mu.Unlock()
	signal(s.wake)
}

// Kick makes every waiting message due now (an admin's "flush", or a test
// that moved its clock).
func (s *Scheduler) Kick() {
	s.mu.Lock()
	for s.waiting.Len() > 0 {
		w := heap.Pop(&s.waiting).(waitItem)
		s.ready.push(w.id, s.queued[w.id])
	}
	s.mu.Unlock()
	signal(s.wake)
	signal(s.timer)
}

// Run resumes every message in the spool and delivers until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	// Each message goes back to its device's queue, so the shares hold
	// across a restart.
	for _, m := range s.o.Spool.List() {
		s.enqueue(m)
	}
	s.mu.Lock()
	s.runCtx = ctx
	for s.workers < s.want {
		s.startWorker()
	}
	s.mu.Unlock()
	s.timers(ctx)
	s.wg.Wait()
	return nil
}

func (s *Scheduler) worker(ctx context.Context) {
	for {
		s.mu.Lock()
		if s.workers > s.want {
			s.workers-- // a reload lowered the concurrency
			s.mu.Unlock()
			// The wake this worker took may have been for work: pass it
			// on, or the queue sleeps until the next message arrives.
			signal(s.wake)
			return
		}
		var id string
		var seq uint64
		probe := false
		now := s.o.Clock()
		held := !s.holdUntil.IsZero()
		if held && !s.probing && !now.Before(s.holdUntil) {
			probe, held = true, false
		}
		if !held && s.ready.len() > 0 && !s.spread(now) {
			held, probe = true, false
		}
		if !held {
			id, seq, _ = s.ready.pop()
			if id != "" {
				s.inFlight++
				s.probing = s.probing || probe
			}
		}
		more := !held && !probe && s.ready.len() > 0
		s.mu.Unlock()
		if more {
			signal(s.wake) // let another worker take the next one
		}
		if id == "" {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		s.attempt(ctx, id, seq)
		s.mu.Lock()
		s.inFlight--
		if probe {
			s.probing = false
			if !s.o.Clock().Before(s.holdUntil) {
				s.holdUntil = time.Time{} // the probe went: the slots are open
			}
		}
		s.mu.Unlock()
		if probe {
			signal(s.wake)
			signal(s.timer)
		}
	}
}

// spread takes one start from the pacing bucket, or holds the queue until
// the next one is due (false); s.mu is held.
func (s *Scheduler) spread(now time.Time) bool {
	per := s.set.Load().perMinute
	if per <= 0 {
		return true
	}
	rate := float64(per) / 60 // starts a second
	burst := float64(max(1, per/6))
	if s.tokensAt.IsZero() {
		s.tokens = burst
	} else if d := now.Sub(s.tokensAt).Seconds(); d > 0 {
		s.tokens = min(burst, s.tokens+d*rate)
	}
	s.tokensAt = now
	if s.tokens >= 1 {
		s.tokens--
		return true
	}
	until := now.Add(time.Duration((1 - s.tokens) / rate * float64(time.Second)))
	if until.After(s.holdUntil) {
		s.holdUntil = until
	}
	signal(s.timer)
	return false
}

// timers moves waiting messages to ready when their time comes.
func (s *Scheduler) timers(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		now := s.o.Clock()
		moved := false
		for s.waiting.Len() > 0 && !s.waiting[0].due.After(now) {
			w := heap.Pop(&s.waiting).(waitItem)
			s.ready.push(w.id, s.queued[w.id])
			moved = true
		}
		next := time.Hour
		if s.waiting.Len() > 0 {
			next = s.waiting[0].due.Sub(now)
		}
		if !s.holdUntil.IsZero() {
			if d := s.holdUntil.Sub(now); d <= 0 {
				moved = true // the hold is over: a worker probes
			} else {
				next = min(next, d)
			}
		}
		s.mu.Unlock()
		if moved {
			signal(s.wake)
		}
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.timer:
		}
	}
}

// defer schedules id for another attempt at due.
func (s *Scheduler) retryAt(id string, due time.Time) {
	s.mu.Lock()
	heap.Push(&s.waiting, waitItem{id: id, due: due})
	s.mu.Unlock()
	signal(s.timer)
}

func (s *Scheduler) forget(id string) {
	s.mu.Lock()
	delete(s.queued, id)
	delete(s.attempts, id)
	s.mu.Unlock()
}

// attempt makes one delivery attempt for every pending recipient of id.
// seq is the turn the fair queue gave it.
func (s *Scheduler) attempt(ctx context.Context, id string, seq uint64) {
	info, ok := s.o.Spool.Get(id)
	if !ok {
		s.forget(id)
		return
	}
	s.mu.Lock()
	s.attempts[id]++
	n := s.attempts[id]
	s.mu.Unlock()
	log := s.log.With("queue_id", id)
	if d := info.Envelope.Device; d != "" {
		log = log.With("device", d)
	}
	set := s.set.Load()
	now := s.o.Clock()
	env := info.Envelope
	expired := now.Sub(env.Received) >= set.lifetime && !set.holding

	var pending []int
	for i, r := range env.To {
		if r.State == spool.Pending {
			pending = append(pending, i)
		}
	}
	var failed []Failure
	var deferredTo []string
	// deferredBy groups deferredTo by the upstream that deferred them
	// (RcptResult.Upstream), so that each part of a routed message is
	// traced with its own upstream and reply.
	var deferredBy []*part
	var lastTemp *upstream.Error
	var retryAfter time.Duration
	// Recipients the pacer held back: no attempt was made, so no trace
	// and no longer backoff, just a later turn.
	var paced int
	var pacedWait time.Duration

	if expired {
		for _, i := range pending {
			r := env.To[i]
			reply := "expired after " + set.lifetime.String() + " of retrying"
			if r.Reply != "" {
				reply += "; last reply: " + r.Reply
			}
			failed = append(failed, Failure{Rcpt: r.Addr, Reply: reply, Hint: s.hint(nil, r.Reply), index: i})
		}
		s.event(trace.Expired, info, n, addrs(failed), "", "expired", "")
		log.Warn("message expired", "recipients", len(failed), "age", now.Sub(env.Received).Round(time.Second))
	} else if len(pending) > 0 {
		content, err := s.o.Spool.Open(id)
		if err != nil {
			log.Error("cannot read spooled message", "err", err)
			s.retryAt(id, now.Add(s.backoff(n)))
			return
		}
		msg := &upstream.Message{QueueID: id, From: env.From, Size: content.Size, Body: content, UTF8: env.UTF8, EightBit: env.EightBit, ClientIP: env.ClientIP}
		for _, batch := range split(pending, set.maxRecipients) {
			msg.To = msg.To[:0]
			for _, i := range batch {
				msg.To = append(msg.To, env.To[i].Addr)
			}
			// Not waiting inside Deliver: a paced answer comes back at
			// once, and the scheduler chooses who gets the free slot.
			results, err := s.o.Upstream.Deliver(upstream.WithoutWaiting(ctx), msg)
			var delivered []*part
			var deliveredReply string
			for k, i := range batch {
				rerr, via := err, ""
				if err == nil {
					via, rerr = resultFor(results, k, msg.To[k])
				}
				rcpt := env.To[i].Addr
				if rerr == nil {
					delivered = addTo(delivered, via, rcpt, nil)
					deliveredReply = "250 accepted"
					s.o.Spool.Update(id, i, spool.Delivered, deliveredReply)
					continue
				}
				ue := upstream.Classify(rerr)
				status := upstream.Status(rerr)
				if ue.Permanent {
					enh := upstream.Enhanced(rerr)
					if !strings.HasPrefix(enh, "5.") {
						enh = "" // a permanent failure's DSN status is 5.x.x
					}
					failed = append(failed, Failure{Rcpt: rcpt, Reply: status, Status: enh, Hint: s.hint(rerr, status), index: i, upstream: via})
					continue
				}
				if ctx.Err() != nil {
					// Shutting down: not the upstream's fault, no trace.
					continue
				}
				if errors.Is(rerr, upstream.ErrPaced) {
					paced++
					pacedWait = max(pacedWait, ue.RetryAfter)
					continue
				}
				lastTemp = ue
				retryAfter = max(retryAfter, ue.RetryAfter)
				deferredTo = append(deferredTo, rcpt)
				deferredBy = addTo(deferredBy, via, rcpt, ue)
				s.o.Spool.Update(id, i, spool.Pending, status)
			}
			for _, p := range delivered {
				s.eventVia(p.upstream, trace.Delivered, info, n, p.to, deliveredReply, "", "")
			}
		}
		content.Close()
	}

	if len(failed) > 0 {
		kind := trace.Bounced
		if set.bounce != nil {
			if err := s.bounce(info, failed, expired); errors.Is(err, ErrNoBounce) {
				kind = trace.Failed
			} else if err != nil {
				// Keep the message: the bounce is retried with it.
				log.Error("cannot queue the bounce; will try again", "err", err)
				s.retryAt(id, now.Add(s.backoff(n)))
				return
			}
		} else {
			kind = trace.Failed
		}
		// Only now, with the bounce safely queued, are they final.
		for _, f := range failed {
			s.o.Spool.Update(id, f.index, spool.Failed, f.Reply)
		}
		if !expired {
			for _, f := range failed {
				s.eventVia(f.upstream, kind, info, n, []string{f.Rcpt}, f.Reply, f.Hint, "")
				log.Warn("recipient failed", "rcpt", f.Rcpt, "reply", f.Reply, "hint", f.Hint)
			}
		}
	}
	if ctx.Err() != nil && !expired {
		return // resumed from the spool at the next start
	}
	if paced > 0 && len(deferredTo) == 0 && pacedWait > maxHold {
		// A long wait (a cooldown, a daily window, perhaps for this
		// message's many recipients only): it waits on its own, and
		// the others are still tried; when it is due it rejoins its
		// device's queue.
		s.mu.Lock()
		s.attempts[id]--
		s.mu.Unlock()
		due := now.Add(pacedWait)
		if s.set.Load() != set {
			// A reload came while this attempt was held (a secret an
			// upstream waited for arrived): try again under it now, or
			// the message sits out a wait that has ended.
			due = now
		}
		s.retryAt(id, due)
		return
	}
	if paced > 0 && len(deferredTo) == 0 {
		// Held by the pacer for the next slot: back to the head of its
		// device's queue, with its turn, and nothing goes until the
		// hold ends.
		s.mu.Lock()
		s.attempts[id]--
		until := s.o.Clock().Add(max(pacedWait, 10*time.Millisecond))
		if until.After(s.holdUntil) {
			s.holdUntil = until
		}
		s.ready.unpop(id, s.queued[id], seq)
		s.mu.Unlock()
		signal(s.timer)
		return
	}
	if len(deferredTo) > 0 {
		wait := max(s.backoff(n), retryAfter)
		due := now.Add(wait)
		if end := env.Received.Add(set.lifetime); due.After(end) {
			due = end // expire on time, not an interval late
		}
		for _, p := range deferredBy {
			status := p.err.Error()
			s.eventVia(p.upstream, trace.Deferred, info, n, p.to, status, s.hint(p.err, status), "next attempt "+due.UTC().Format(time.RFC3339))
		}
		status := lastTemp.Error()
		hint := s.hint(lastTemp, status)
		log.Info("deferred", "recipients", len(deferredTo), "reply", status, "hint", hint, "attempt", n, "retry_in", wait.Round(time.Millisecond))
		s.retryAt(id, due)
		return
	}
	if err := s.o.Spool.DoneLater(id); err != nil {
		log.Error("cannot mark message done; it may be attempted again", "err", err)
	}
	if s.o.Delivered != nil {
		s.o.Delivered(s.o.Clock().Sub(env.Received))
	}
	s.forget(id)
}

// hint prefers the upstream's own hint, then Explain's.
func (s *Scheduler) hint(err error, status string) string {
	if err != nil {
		if ue := upstream.Classify(err); ue.Hint != "" {
			return ue.Hint
		}
		if explain := s.set.Load().explain; explain != nil {
			return explain(err)
		}
	}
	return ""
}

func (s *Scheduler) event(k trace.Kind, info spool.Info, attempt int, to []string, reply, hint, note string) {
	s.eventVia("", k, info, attempt, to, reply, hint, note)
}

// eventVia is event for recipients an upstream other than the configured
// one handled (up, from RcptResult.Upstream); "" means the configured one.
func (s *Scheduler) eventVia(up string, k trace.Kind, info spool.Info, attempt int, to []string, reply, hint, note string) {
	if up == "" {
		up = s.set.Load().upstreamName
	}
	if note != "" {
		hint = strings.TrimSpace(hint + " (" + note + ")")
	}
	env := info.Envelope
	s.o.Record(trace.Event{
		Time: s.o.Clock(), Kind: k, QueueID: info.ID, MessageID: env.MessageID, ClientIP: env.ClientIP,
		Account: env.Login, From: env.From, FromReceived: env.FromReceived, Device: env.Device, To: to, Subject: env.Subject, Size: info.Size, Attempt: attempt,
		Reply: reply, Hint: hint, Upstream: up,
	})
}

// part is the recipients of one attempt that one upstream handled alike,
// and, for a deferral, the last reply.
type part struct {
	upstream string
	to       []string
	err      *upstream.Error
}

// addTo puts rcpt into the part of upstream up, a new one at the end if
// there is none yet.
func addTo(parts []*part, up, rcpt string, err *upstream.Error) []*part {
	for _, p := range parts {
		if p.upstream == up {
			p.to = append(p.to, rcpt)
			if err != nil {
				p.err = err
			}
			return parts
		}
	}
	return append(parts, &part{upstream: up, to: []string{rcpt}, err: err})
}

// backoff is FirstRetry doubled per attempt, capped at MaxRetry, with up
// to a fifth of jitter so that a fleet of devices' mail does not retry in
// lockstep.
func (s *Scheduler) backoff(attempt int) time.Duration {
	set := s.set.Load()
	d := set.firstRetry
	for i := 1; i < attempt && d < set.maxRetry; i++ {
		d *= 2
	}
	d = min(d, set.maxRetry)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// resultFor is rcpt's outcome and, when the upstream said, which upstream
// handled it.
func resultFor(results []upstream.RcptResult, k int, rcpt string) (string, error) {
	if k < len(results) && results[k].Rcpt == rcpt {
		return results[k].Upstream, results[k].Err
	}
	for _, r := range results {
		if r.Rcpt == rcpt {
			return r.Upstream, r.Err
		}
	}
	return "", &upstream.Error{Err: fmt.Errorf("upstream gave no result for %s", rcpt)}
}

func split(idx []int, n int) [][]int {
	if n <= 0 || len(idx) <= n {
		return [][]int{idx}
	}
	var out [][]int
	for len(idx) > n {
		out = append(out, idx[:n])
		idx = idx[n:]
	}
	return append(out, idx)
}

func addrs(f []Failure) []string {
	out := make([]string, len(f))
	for i, x := range f {
		out[i] = x.Rcpt
	}
	return out
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

type waitItem struct {
	id  string
	due time.Time
}

type waitHeap []waitItem

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h waitHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waitHeap) Push(x any)        { *h = append(*h, x.(waitItem)) }
func (h *waitHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
