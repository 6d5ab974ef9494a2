// One delivery attempt of one message: its pending recipients split into
// transactions, each recipient's outcome recorded in the spool and the trace,
// a bounce queued for what failed for good, a retry for what was temporary.

package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

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
	// The attempt's logger is built only when a line is logged: With
	// costs allocations and the handlers' WithAttrs work, and a delivered
	// message logs nothing.
	var logq *slog.Logger
	log := func() *slog.Logger {
		if logq == nil {
			logq = s.log.With("queue_id", id)
			if d := info.Envelope.Device; d != "" {
				logq = logq.With("device", d)
			}
		}
		return logq
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
		log().Warn("message expired", "recipients", len(failed), "age", now.Sub(env.Received).Round(time.Second))
	} else if len(pending) > 0 {
		content, err := s.o.Spool.Open(id)
		if err != nil {
			log().Error("cannot read spooled message", "err", err)
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
				log().Error("cannot queue the bounce; will try again", "err", err)
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
				log().Warn("recipient failed", "rcpt", f.Rcpt, "reply", f.Reply, "hint", f.Hint)
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
		log().Info("deferred", "recipients", len(deferredTo), "reply", status, "hint", hint, "attempt", n, "retry_in", wait.Round(time.Millisecond))
		s.retryAt(id, due)
		return
	}
	if err := s.o.Spool.DoneLater(id); err != nil {
		log().Error("cannot mark message done; it may be attempted again", "err", err)
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
