package appliance

import (
	"sync"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/forward"
)

// maxEarlyAudit bounds the audit entries held while the relay is not
// built yet (the admin side starts first; a box whose state cannot be
// opened never builds one).
const maxEarlyAudit = 1000

// auditForward is the audit log's observer: it hands every entry, as it is
// written, to the relay's forwarder, the "audit" stream of forward.syslog.
// Nothing here waits: the forwarder only queues, and drops (counted) what
// does not fit. Entries written before the relay is built are held, at
// most maxEarlyAudit, and go out in order once it is; the rest are
// counted as dropped then.
type auditForward struct {
	mu    sync.Mutex
	r     *relay.Relay
	early []forward.Audit
	lost  uint64
}

// entry is audit.Log's observer (called with the log locked, in order).
func (s *auditForward) entry(e api.AuditEntry) {
	a := auditOf(e)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		s.r.Forwarder().SendAudit(a)
		return
	}
	if len(s.early) >= maxEarlyAudit {
		s.lost++
		return
	}
	s.early = append(s.early, a)
}

// attach starts forwarding to r's forwarder, the held entries first.
func (s *auditForward) attach(r *relay.Relay) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := r.Forwarder()
	for _, a := range s.early {
		f.SendAudit(a)
	}
	f.CountDropped(forward.StreamAudit, s.lost)
	s.r, s.early, s.lost = r, nil, 0
}

// auditOf is the part of an audit entry the stream carries: who, what,
// how it ended. The log names arguments, never their values, so this
// holds no secret.
func auditOf(e api.AuditEntry) forward.Audit {
	actor := e.Login
	if actor == "" {
		actor = e.Node
	}
	return forward.Audit{Time: e.Time, Actor: actor, Node: e.Node, Role: e.Role.String(), Action: e.What,
		Method: e.Method, Path: e.Path, Outcome: e.Result, Status: e.Status, Seq: e.Seq, Count: e.Count, Cut: e.Cut}
}
