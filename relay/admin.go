package relay

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/siterelay/siterelay/relay/delivery"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// The queue operations of the admin API. Each takes the operator's name
// for the trace, so what an administrator did to a message is in its
// history beside what the upstream did.

// RetryNow makes a queued message due now.
func (r *Relay) RetryNow(id string) error {
	if _, ok := r.spool.Get(id); !ok {
		return spool.ErrNotFound
	}
	r.sched.RetryNow(id)
	return nil
}

// Remove deletes a queued message without delivering or bouncing it.
func (r *Relay) Remove(id, by string) error {
	info, ok := r.spool.Get(id)
	if !ok {
		return spool.ErrNotFound
	}
	r.sched.Forget(id)
	if err := r.spool.Done(id); err != nil {
		return fmt.Errorf("deleting %s: %w", id, err)
	}
	var to []string
	for _, rc := range info.Envelope.To {
		if rc.State == spool.Pending {
			to = append(to, rc.Addr)
		}
	}
	r.trace.Record(trace.Event{Time: r.d.Clock(), Kind: trace.Failed, QueueID: id, MessageID: info.Envelope.MessageID,
		From: info.Envelope.From, To: to, Subject: info.Envelope.Subject, Size: info.Size, Hint: "deleted from the queue by " + by})
	r.log.Warn("message deleted by an administrator", "queue_id", id, "by", by, "recipients", len(to))
	return nil
}

// BounceNow fails every pending recipient of a queued message now, with a
// bounce to its sender as for a permanent failure.
func (r *Relay) BounceNow(ctx context.Context, id, by string) error {
	info, ok := r.spool.Get(id)
	if !ok {
		return spool.ErrNotFound
	}
	r.sched.Forget(id)
	reply := "5.0.0 returned to the sender by an administrator (" + by + ")"
	var failed []delivery.Failure
	var idx []int
	for i, rc := range info.Envelope.To {
		if rc.State == spool.Pending {
			f := delivery.Failure{Rcpt: rc.Addr, Reply: reply}
			if rc.Reply != "" {
				f.Reply += "; last reply: " + rc.Reply
			}
			failed = append(failed, f)
			idx = append(idx, i)
		}
	}
	kind := trace.Bounced
	if len(failed) > 0 {
		if err := r.sched.Bounce(info, failed); errors.Is(err, delivery.ErrNoBounce) {
			kind = trace.Failed // nobody to tell: failed all the same
		} else if err != nil {
			r.sched.Enqueue(id) // not bounced: it stays in the queue
			return fmt.Errorf("bouncing %s: %w", id, err)
		}
		for k, i := range idx {
			r.spool.Update(id, i, spool.Failed, failed[k].Reply)
		}
	}
	if err := r.spool.Done(id); err != nil {
		return fmt.Errorf("bouncing %s: %w", id, err)
	}
	for _, f := range failed {
		r.trace.Record(trace.Event{Time: r.d.Clock(), Kind: kind, QueueID: id, MessageID: info.Envelope.MessageID,
			From: info.Envelope.From, To: []string{f.Rcpt}, Subject: info.Envelope.Subject, Size: info.Size, Reply: f.Reply})
	}
	r.log.Warn("message bounced by an administrator", "queue_id", id, "by", by, "recipients", len(failed))
	return nil
}

// Headers returns a queued message's header section.
func (r *Relay) Headers(id string) ([]byte, error) {
	info, ok := r.spool.Get(id)
	if !ok {
		return nil, spool.ErrNotFound
	}
	return r.sched.Headers(info)
}

// Content returns a queued message's whole content, at most max bytes.
func (r *Relay) Content(id string, max int64) ([]byte, error) {
	c, err := r.spool.Open(id)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	b := make([]byte, min(c.Size, max))
	if _, err := c.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("reading %s: %w", id, err)
	}
	return b, nil
}
