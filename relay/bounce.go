package relay

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/siterelay/siterelay/relay/delivery"
	"github.com/siterelay/siterelay/relay/dsn"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// bounce queues a delivery status notification for failed recipients: to
// the envelope sender when that is routable, and a copy to bounce.admin.
// A failed bounce (null sender) gets no bounce of its own: that is how
// loops start.
func (r *Relay) bounce(ctx context.Context, msg spool.Info, failed []delivery.Failure, expired bool) error {
	env := msg.Envelope
	var to []string
	if env.From != "" && dsn.IsRoutable(env.From) {
		to = append(to, env.From)
	}
	if admin := r.cfg.Bounce.Admin; admin != "" && env.From != "" && !strings.EqualFold(admin, env.From) {
		to = append(to, admin)
	}
	if len(to) == 0 {
		return delivery.ErrNoBounce
	}
	headers, err := r.headers(msg)
	if err != nil {
		return err
	}
	now := r.d.Clock()
	rep := dsn.Report{
		ReportingMTA: r.hostname(), QueueID: msg.ID, EnvelopeFrom: env.From, ArrivalDate: env.Received,
		Headers: headers, Expired: expired, From: r.cfg.Bounce.From, To: to[0], Date: now,
	}
	for _, f := range failed {
		rep.Recipients = append(rep.Recipients, dsn.Recipient{
			Recipient: f.Rcpt, Action: dsn.Failed, DiagnosticCode: f.Reply, Hint: f.Hint, LastAttempt: now,
		})
	}
	b, err := dsn.Build(rep)
	if err != nil {
		return fmt.Errorf("building bounce for %s: %w", msg.ID, err)
	}
	m := r.spool.NewMessage()
	if _, err := m.Write(b); err != nil {
		m.Abort()
		return err
	}
	benv := spool.Envelope{Received: now, Subject: "Undelivered mail: " + env.Subject, MessageID: "bounce of " + env.MessageID}
	for _, t := range to {
		benv.To = append(benv.To, spool.Rcpt{Addr: t})
	}
	id, err := m.Commit(benv)
	if err != nil {
		return fmt.Errorf("queueing bounce for %s: %w", msg.ID, err)
	}
	r.trace.Record(trace.Event{Time: now, Kind: trace.Received, QueueID: id, From: "", To: to,
		Subject: benv.Subject, Size: int64(len(b)), Hint: "bounce for " + msg.ID})
	r.log.Info("bounce queued", "queue_id", msg.ID, "bounce_id", id, "to", to)
	r.sched.Enqueue(id)
	return nil
}

// headers reads the original header section back from the spool.
func (r *Relay) headers(msg spool.Info) ([]byte, error) {
	c, err := r.spool.Open(msg.ID)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	n := min(msg.Envelope.HeaderBytes, dsn.MaxHeaderBytes, c.Size)
	if n <= 0 {
		n = min(c.Size, dsn.MaxHeaderBytes)
	}
	b := make([]byte, n)
	if _, err := c.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("reading headers of %s: %w", msg.ID, err)
	}
	return b, nil
}

func (r *Relay) hostname() string {
	if r.cfg.Hostname != "" {
		return r.cfg.Hostname
	}
	return "siterelay.invalid"
}
