package relay

import (
	"context"
	"sync"

	"github.com/siterelay/siterelay/relay/upstream"
)

// switchable is the upstream the scheduler holds for the relay's whole
// life. A reload swaps what stands behind it: attempts that started on the
// old upstream finish there, the next ones go to the new one, and the old
// one is closed once its last attempt has ended.
type switchable struct {
	mu  sync.Mutex
	cur *held
}

// held is one upstream and the attempts in flight on it.
type held struct {
	up      upstream.Upstream
	users   int
	retired bool
}

func newSwitchable(up upstream.Upstream) *switchable {
	return &switchable{cur: &held{up: up}}
}

func (s *switchable) acquire() *held {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.users++
	return s.cur
}

func (s *switchable) release(h *held) {
	s.mu.Lock()
	h.users--
	done := h.retired && h.users == 0
	s.mu.Unlock()
	if done {
		h.up.Close()
	}
}

// swap puts up in force; the previous upstream closes when idle.
func (s *switchable) swap(up upstream.Upstream) {
	s.mu.Lock()
	old := s.cur
	s.cur = &held{up: up}
	old.retired = true
	done := old.users == 0
	s.mu.Unlock()
	if done {
		old.up.Close()
	}
}

func (s *switchable) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	h := s.acquire()
	defer s.release(h)
	return h.up.Deliver(ctx, msg)
}

func (s *switchable) Limits() upstream.Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.up.Limits()
}

// Close closes the upstream in force (the relay is stopping, and the
// scheduler has no attempts left).
func (s *switchable) Close() error {
	s.mu.Lock()
	h := s.cur
	h.retired = true
	done := h.users == 0
	s.mu.Unlock()
	if done {
		return h.up.Close()
	}
	return nil
}

// checkRecipient asks the upstream in force whether it can ever reach
// rcpt (direct send refuses other tenants' recipients at RCPT).
func (s *switchable) checkRecipient(rcpt string) error {
	h := s.acquire()
	defer s.release(h)
	if rc, ok := h.up.(upstream.RecipientChecker); ok {
		return rc.CheckRecipient(rcpt)
	}
	return nil
}

// Connections counts the open connections of the upstream in force (the
// metrics' siterelay_upstream_connections); 0 for kinds that keep none.
func (s *switchable) Connections() int {
	s.mu.Lock()
	up := s.cur.up
	s.mu.Unlock()
	if cc, ok := up.(upstream.ConnectionCounter); ok {
		return cc.Connections()
	}
	return 0
}
