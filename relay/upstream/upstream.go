// Package upstream defines what the scheduler needs from anything that can
// carry a spooled message onwards (a smarthost, Microsoft 365, Graph, the
// capture directory), and how their replies are classified.
//
// Classification is the heart of the package: the relay's rule "temporary is
// temporary" depends on every failure that is not an explicit 5xx from the
// peer being treated as retryable.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one spooled message as an upstream sees it. Body is the whole
// message (headers and body) with canonical CRLF line endings and no
// dot-stuffing; it can be read any number of times from offset 0.
type Message struct {
	// QueueID is the relay's own id, used in logs and traces.
	QueueID string
	From    string
	// To holds only the recipients this attempt is for: the scheduler leaves
	// out those already delivered or failed.
	To []string
	// Size is the length of Body in bytes.
	Size int64
	Body io.ReaderAt
	// UTF8 asks for SMTPUTF8 (the device used it); EightBit for 8BITMIME.
	UTF8     bool
	EightBit bool
	// ClientIP is the sending device's address, for routes that choose an
	// upstream by device (relay/upstream/route); "" when unknown.
	ClientIP string
}

// Reader returns a fresh reader over the whole body.
func (m *Message) Reader() io.Reader { return io.NewSectionReader(m.Body, 0, m.Size) }

// RcptResult is the outcome for one recipient of one attempt. Err nil means
// the upstream accepted responsibility for that recipient.
type RcptResult struct {
	Rcpt string
	Err  error
	// Upstream, when set, names the upstream that made this attempt for
	// this recipient (a router sends the parts of one message different
	// ways); the trace then names it instead of the configured upstream.
	Upstream string
}

// Upstream delivers messages. Implementations keep and reuse their own
// connections and must be safe for concurrent use by up to
// Limits().Concurrency callers.
type Upstream interface {
	// Deliver makes one attempt for msg. A non-nil error applies to every
	// recipient in msg.To (connection refused, TLS failure, a refused MAIL or
	// DATA); otherwise the results hold one entry per recipient in msg.To.
	Deliver(ctx context.Context, msg *Message) ([]RcptResult, error)
	// Limits tells the scheduler how to pace and split work.
	Limits() Limits
	// Close releases connections; Deliver must not be called afterwards.
	Close() error
}

// Limits are what an upstream can take. Zero means "no limit".
type Limits struct {
	// Concurrency is how many Deliver calls may run at once.
	Concurrency int
	// MaxRecipients is the most recipients one message may carry; the
	// scheduler splits larger envelopes into several attempts.
	MaxRecipients int
	// MaxSize is the largest message accepted; the front end refuses bigger
	// ones with 552 before spooling.
	MaxSize int64
	// MessagesPerMinute and RecipientsPerDay pace the scheduler so that the
	// upstream never has to throttle.
	MessagesPerMinute int
	RecipientsPerDay  int
}

// Prober is implemented by upstreams that can check their path end to end
// without sending mail (connect, TLS, authenticate); doctor uses it.
type Prober interface {
	Probe(ctx context.Context) ([]Step, error)
}

// ConnectionCounter is implemented by upstreams that hold connections
// (the SMTP kinds) and by wrappers around them; the metrics export the
// count. Upstreams without it (capture, Graph's HTTP) count as 0.
type ConnectionCounter interface {
	Connections() int
}

// Step is one line of a probe's report. A step that could not be checked
// at all (a secret missing, DNS not answering, nothing to check it with)
// is Skipped, not OK, and its Detail says why.
type Step struct {
	Name    string
	OK      bool
	Skipped bool
	Detail  string
}

// ErrPaced marks a deferral by an upstream's own pacing (relay/upstream/pace):
// no attempt was made, so the scheduler gives the message a later turn
// (after RetryAfter) without counting an attempt or tracing a deferral.
var ErrPaced = errors.New("paced")

// ErrWaiting marks an upstream that cannot deliver yet because a secret or
// file it needs is missing, unreadable or malformed (the relay's waiting
// state). It is a kind of ErrPaced: no attempt was made, so nothing is
// counted, traced as a deferral or bounced; the message waits for the
// secret (a reload after `creds put` puts the upstream in force).
var ErrWaiting = fmt.Errorf("%w: waiting for a secret or file", ErrPaced)

// Error is a failure with an upstream's reply and, where known, a hint in
// plain words for the admin.
type Error struct {
	// Reply is the upstream's reply; nil when there was none (network).
	Reply *smtp.SMTPError
	// Permanent is true only for a definite refusal (5xx or its equivalent);
	// everything else is retried.
	Permanent bool
	// RetryAfter, when set, is the upstream's own wish (Graph's Retry-After,
	// throttling replies) and overrides the backoff schedule if longer.
	RetryAfter time.Duration
	// Hint explains the reply in plain words; empty when there is nothing to
	// add to the reply itself.
	Hint string
	// Err is the underlying error (network, TLS, protocol).
	Err error
}

func (e *Error) Error() string {
	var s string
	switch {
	case e.Reply != nil:
		s = formatReply(e.Reply)
	case e.Err != nil:
		s = e.Err.Error()
	default:
		s = "upstream failure"
	}
	if e.Reply != nil && e.Err != nil {
		s = e.Err.Error() + ": " + s
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func formatReply(r *smtp.SMTPError) string {
	if r.EnhancedCode == (smtp.EnhancedCode{}) || r.EnhancedCode == smtp.NoEnhancedCode {
		return fmt.Sprintf("%d %s", r.Code, r.Message)
	}
	c := r.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, c[0], c[1], c[2], r.Message)
}

// FromReply wraps an SMTP reply as an *Error, permanent for 5xx.
func FromReply(r *smtp.SMTPError) *Error {
	return &Error{Reply: r, Permanent: r.Code >= 500 && r.Code < 600}
}

// Classify turns any error from an attempt into an *Error. Only explicit
// permanent replies become permanent: network errors, timeouts, TLS
// failures, cancelled contexts and unknown errors stay temporary.
func Classify(err error) *Error {
	if err == nil {
		return nil
	}
	var ue *Error
	if errors.As(err, &ue) {
		return ue
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := FromReply(se)
		e.Err = err
		if se == err {
			e.Err = nil
		}
		return e
	}
	return &Error{Err: err} // network, TLS, timeouts, anything else: temporary
}

// IsPermanent reports whether err is a definite refusal that should bounce.
func IsPermanent(err error) bool {
	e := Classify(err)
	return e != nil && e.Permanent
}

// Status renders a reply for traces and bounces: "550 5.1.1 text", or the
// error text for failures without a reply.
func Status(err error) string {
	if err == nil {
		return ""
	}
	return Classify(err).Error()
}

// Enhanced is the enhanced status code of err's reply ("5.1.10"), for the
// bounce's Status field; "" when the upstream gave none.
func Enhanced(err error) string {
	e := Classify(err)
	if e == nil || e.Reply == nil {
		return ""
	}
	c := e.Reply.EnhancedCode
	if c == (smtp.EnhancedCode{}) || c == smtp.NoEnhancedCode || c[0] < 2 || c[0] > 5 || c[1] < 0 || c[2] < 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// TokenSource gives OAuth 2.0 access tokens for XOAUTH2 and Graph. It caches
// and renews on its own; Token returns a token valid for at least a few
// minutes, or an error that is temporary unless the identity provider
// refused the credentials for good (in which case it is an *Error with
// Permanent set and a Hint).
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// RecipientChecker is implemented by upstreams that can deliver only to some
// recipients (direct send reaches only the tenant's own mailboxes). The front
// end asks at RCPT, so the device hears the refusal at once instead of a
// bounce later. The error is an *smtp.SMTPError with an enhanced code.
type RecipientChecker interface {
	CheckRecipient(rcpt string) error
}

type noWaitKey struct{}

// WithoutWaiting marks ctx for Deliver: an upstream that paces answers
// ErrPaced with RetryAfter at once instead of waiting inside Deliver for
// its next free slot, so that the caller (the scheduler) chooses which
// message gets that slot.
func WithoutWaiting(ctx context.Context) context.Context {
	return context.WithValue(ctx, noWaitKey{}, true)
}

// MayWait reports whether Deliver may wait for a pacing slot (ctx is not
// marked by WithoutWaiting).
func MayWait(ctx context.Context) bool {
	v, _ := ctx.Value(noWaitKey{}).(bool)
	return !v
}
