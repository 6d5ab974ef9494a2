package delivery

import (
	"fmt"
	"io"
	"strings"

	"github.com/siterelay/siterelay/relay/dsn"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// Bounce says where the scheduler's delivery status notifications go. The
// bounce lives beside delivery (as chasquid keeps its DSN beside its
// queue): it is built from the spooled message, queued in the same spool,
// traced in the same trace and delivered by the same scheduler.
type Bounce struct {
	// ReportingMTA names this relay in the DSN (the box's host name);
	// default "siterelay.invalid".
	ReportingMTA string
	// From is the DSN's From header (bounce.from); default
	// MAILER-DAEMON@ReportingMTA.
	From string
	// Admin gets a copy of every bounce (bounce.admin); "" for none.
	Admin string
}

// bounce queues a delivery status notification for failed recipients: to
// the envelope sender when that is routable, and a copy to Bounce.Admin.
// A failed bounce (null sender) gets no bounce of its own: that is how
// loops start.
func (s *Scheduler) bounce(msg spool.Info, failed []Failure, expired bool) error {
	b := s.set.Load().bounce
	env := msg.Envelope
	var to []string
	if env.From != "" && dsn.IsRoutable(env.From) {
		to = append(to, env.From)
	}
	if b.Admin != "" && env.From != "" && !strings.EqualFold(b.Admin, env.From) {
		to = append(to, b.Admin)
	}
	if len(to) == 0 {
		return ErrNoBounce
	}
	headers, err := s.headers(msg)
	if err != nil {
		return err
	}
	mta := b.ReportingMTA
	if mta == "" {
		mta = "siterelay.invalid"
	}
	now := s.o.Clock()
	rep := dsn.Report{
		ReportingMTA: mta, QueueID: msg.ID, EnvelopeFrom: env.From, ArrivalDate: env.Received,
		Headers: headers, Expired: expired, From: b.From, To: to[0], Date: now,
	}
	for _, f := range failed {
		rep.Recipients = append(rep.Recipients, dsn.Recipient{
			Recipient: f.Rcpt, Action: dsn.Failed, Status: f.Status, DiagnosticCode: f.Reply, Hint: f.Hint, LastAttempt: now,
		})
	}
	body, err := dsn.Build(rep)
	if err != nil {
		return fmt.Errorf("building bounce for %s: %w", msg.ID, err)
	}
	m := s.o.Spool.NewMessage()
	if _, err := m.Write(body); err != nil {
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
	s.o.Record(trace.Event{Time: now, Kind: trace.Received, QueueID: id, From: "", To: to,
		Subject: benv.Subject, Size: int64(len(body)), Hint: "bounce for " + msg.ID})
	s.log.Info("bounce queued", "queue_id", msg.ID, "bounce_id", id, "to", to)
	s.Enqueue(id)
	return nil
}

// headers reads the original header section back from the spool.
func (s *Scheduler) headers(msg spool.Info) ([]byte, error) {
	c, err := s.o.Spool.Open(msg.ID)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	n := min(msg.Envelope.HeaderBytes, dsn.MaxHeaderBytes, c.Size)
	if n <= 0 {
		n = min(c.Size, dsn.MaxHeaderBytes)
	}
	h := make([]byte, n)
	if _, err := c.ReadAt(h, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("reading headers of %s: %w", msg.ID, err)
	}
	return h, nil
}
