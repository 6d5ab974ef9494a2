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
