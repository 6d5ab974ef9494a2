package forward

import (
	"strconv"
	"time"
)

// Audit is one entry of the admin API's audit log as the audit stream
// sends it: who did what, and how it ended. The appliance copies it from
// the log's own entry (provisioning/api.AuditEntry) as the entry is
// written; the log names an operation's arguments, never their values
// (a credential's name and kind, not its secret), and nothing else of
// the request is taken, so no secret can go out.
type Audit struct {
	Time time.Time
	// Actor is the caller's login, or its node when it has none.
	Actor, Node, Role string
	// Action is the operation with its non-secret arguments, e.g.
	// "put credential m365-secret (client-secret)".
	Action       string
	Method, Path string
	// Outcome is "ok", "started" (written before an allowed change is
	// made; its outcome follows) or the API's error code.
	Outcome string
	Status  int
	// Seq numbers the box's entries in the order written; Count, over 1,
	// says the entry summarises that many refusals; Cut says a field was
	// cut to the log's bound.
	Seq   uint64
	Count int
	Cut   bool
}

// AuditEntry is an audit entry as a syslog message: notice for what was
// allowed, warning for a refusal (4xx), error for what failed (5xx).
func AuditEntry(a Audit) Entry {
	sev := SevNotice
	switch {
	case a.Status >= 500:
		sev = SevError
	case a.Status >= 400:
		sev = SevWarning
	}
	params := []Param{
		{"actor", a.Actor},
		{"node", a.Node},
		{"role", a.Role},
		{"action", a.Action},
		{"outcome", a.Outcome},
	}
	if a.Status != 0 {
		params = append(params, Param{"status", strconv.Itoa(a.Status)})
	}
	params = append(params, Param{"method", a.Method}, Param{"path", a.Path})
	if a.Seq != 0 {
		params = append(params, Param{"seq", strconv.FormatUint(a.Seq, 10)})
	}
	if a.Count > 1 {
		params = append(params, Param{"count", strconv.Itoa(a.Count)})
	}
	if a.Cut {
		params = append(params, Param{"cut", "true"})
	}
	actor := a.Actor
	if actor == "" {
		actor = "-"
	}
	return Entry{Time: a.Time, Severity: sev, Params: params, Msg: actor + " " + a.Action + ": " + a.Outcome}
}

// SendAudit is the audit log's observer: one entry, as it is written.
func (f *Forwarder) SendAudit(a Audit) { f.Send(StreamAudit, AuditEntry(a)) }

// CountDropped counts n messages of stream as dropped, when that stream
// goes out: the appliance holds the audit entries written before the
// relay (and so the forwarder) exists, a bounded number, and counts the
// rest here once it does.
func (f *Forwarder) CountDropped(stream string, n uint64) {
	if n == 0 || !f.wants(stream) {
		return
	}
	f.mu.Lock()
	f.drops[stream] += n
	f.dropped.WithLabelValues(stream).Add(float64(n))
	f.mu.Unlock()
}
