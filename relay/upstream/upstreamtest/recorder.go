package upstreamtest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
)

// Delivery is one Deliver call the Recorder saw.
type Delivery struct {
	QueueID string
	From    string
	To      []string
	Body    []byte
	UTF8    bool
	// Attempt numbers this call among those for the same QueueID (1 first).
	Attempt int
	Results []upstream.RcptResult
	Err     error
	At      time.Time
}

// Recorder is an in-memory upstream.Upstream: it keeps every delivery and
// answers with scripted results, per recipient and attempt.
type Recorder struct {
	w        waiter
	limits   upstream.Limits
	clock    func() time.Time
	calls    []Delivery
	attempts map[string]int // queue id -> Deliver calls
	rcptSeen map[string]int // rcpt (lower case) -> attempts including it
	rcptErrs map[string][]error
	msgErrs  []error
	accepted map[string]int // rcpt -> accepted count
	hook     func(ctx context.Context, msg *upstream.Message) error
	inFlight int
	peak     int
	closed   bool
}

// NewRecorder makes a Recorder reporting limits; clock may be nil.
func NewRecorder(limits upstream.Limits, clock func() time.Time) *Recorder {
	if clock == nil {
		clock = time.Now
	}
	r := &Recorder{limits: limits, clock: clock, attempts: map[string]int{},
		rcptSeen: map[string]int{}, rcptErrs: map[string][]error{}, accepted: map[string]int{}}
	r.w.init()
	return r
}

// FailRcpt scripts rcpt's next attempts: the n-th attempt that includes
// rcpt (from now) gets errs[n-1]; nil in the list means accept; after the
// list, rcpt is accepted.
func (r *Recorder) FailRcpt(rcpt string, errs ...error) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	k := strings.ToLower(rcpt)
	r.rcptErrs[k] = append(r.rcptErrs[k], errs...)
}

// FailNext makes the next len(errs) Deliver calls fail as a whole (a nil
// entry lets that call through to the per-recipient script).
func (r *Recorder) FailNext(errs ...error) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.msgErrs = append(r.msgErrs, errs...)
}

// SetHook runs fn at the start of every Deliver, outside the lock (block
// on a channel there to hold deliveries in flight); its error fails the
// call as a whole.
func (r *Recorder) SetHook(fn func(ctx context.Context, msg *upstream.Message) error) {
	r.w.mu.Lock()
	r.hook = fn
	r.w.mu.Unlock()
}

// Deliver records msg and answers from the script.
func (r *Recorder) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	body, err := io.ReadAll(msg.Reader())
	if err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("recorder: reading body: %w", err)}
	}
	r.w.mu.Lock()
	if r.closed {
		r.w.mu.Unlock()
		return nil, &upstream.Error{Err: fmt.Errorf("recorder: Deliver after Close")}
	}
	hook := r.hook
	r.inFlight++
	r.peak = max(r.peak, r.inFlight)
	r.w.mu.Unlock()

	var hookErr error
	if hook != nil {
		hookErr = hook(ctx, msg)
	}
	if hookErr == nil {
		hookErr = ctx.Err()
	}

	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.inFlight--
	r.attempts[msg.QueueID]++
	d := Delivery{QueueID: msg.QueueID, From: msg.From, To: append([]string(nil), msg.To...), Body: body,
		UTF8: msg.UTF8, Attempt: r.attempts[msg.QueueID], At: r.clock()}
	if hookErr != nil {
		d.Err = hookErr
	} else if len(r.msgErrs) > 0 {
		d.Err, r.msgErrs = r.msgErrs[0], r.msgErrs[1:]
	}
	if d.Err == nil {
		for _, rcpt := range msg.To {
			k := strings.ToLower(rcpt)
			r.rcptSeen[k]++
			var e error
			if l := r.rcptErrs[k]; len(l) > 0 {
				e, r.rcptErrs[k] = l[0], l[1:]
			}
			if e == nil {
				r.accepted[k]++
			}
			d.Results = append(d.Results, upstream.RcptResult{Rcpt: rcpt, Err: e})
		}
	}
	r.calls = append(r.calls, d)
	r.w.broadcast()
	return d.Results, d.Err
}

// Limits returns the limits given to NewRecorder.
func (r *Recorder) Limits() upstream.Limits { return r.limits }

// Close makes later Deliver calls fail.
func (r *Recorder) Close() error {
	r.w.mu.Lock()
	r.closed = true
	r.w.mu.Unlock()
	return nil
}

// Deliveries returns every call so far.
func (r *Recorder) Deliveries() []Delivery {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	return append([]Delivery(nil), r.calls...)
}

// Accepted is how many times rcpt was accepted.
func (r *Recorder) Accepted(rcpt string) int {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	return r.accepted[strings.ToLower(rcpt)]
}

// Attempts is how many Deliver calls carried rcpt past the whole-call
// script.
func (r *Recorder) Attempts(rcpt string) int {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	return r.rcptSeen[strings.ToLower(rcpt)]
}

// PeakConcurrency is the most Deliver calls that were in flight at once.
func (r *Recorder) PeakConcurrency() int {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	return r.peak
}

// WaitDeliveries blocks until at least n Deliver calls finished.
func (r *Recorder) WaitDeliveries(t testing.TB, n int) []Delivery {
	t.Helper()
	r.w.wait(t, func() bool { return len(r.calls) >= n },
		func() string { return fmt.Sprintf("waiting for %d deliveries, got %d", n, len(r.calls)) })
	return r.Deliveries()
}

// WaitAccepted blocks until every rcpt was accepted at least once.
func (r *Recorder) WaitAccepted(t testing.TB, rcpts ...string) {
	t.Helper()
	r.w.wait(t, func() bool {
		for _, rc := range rcpts {
			if r.accepted[strings.ToLower(rc)] == 0 {
				return false
			}
		}
		return true
	}, func() string {
		var missing []string
		for _, rc := range rcpts {
			if r.accepted[strings.ToLower(rc)] == 0 {
				missing = append(missing, rc)
			}
		}
		return fmt.Sprintf("waiting for recipients to be accepted: %v", missing)
	})
}

var _ upstream.Upstream = (*Recorder)(nil)
