package delivery

import (
	"container/heap"

	"github.com/siterelay/siterelay/relay/spool"
)

// RetryNow makes one waiting message due now (an admin's "retry"). A
// message already due or in flight is left alone; it reports whether the
// message was waiting.
func (s *Scheduler) RetryNow(id string) bool {
	s.mu.Lock()
	found := false
	for i, w := range s.waiting {
		if w.id == id {
			heap.Remove(&s.waiting, i)
			s.ready.push(id, s.queued[id])
			found = true
			break
		}
	}
	s.mu.Unlock()
	if found {
		signal(s.wake)
		signal(s.timer)
	}
	return found
}

// Forget drops a message the scheduler should no longer attempt (an
// admin deleted or bounced it). An attempt already in flight finishes; one
// still waiting or due finds the message gone from the spool and stops.
func (s *Scheduler) Forget(id string) {
	s.mu.Lock()
	for i, w := range s.waiting {
		if w.id == id {
			heap.Remove(&s.waiting, i)
			break
		}
	}
	s.mu.Unlock()
	s.forget(id)
}

// Bounce queues a delivery status notification for failed recipients of
// msg now (an admin's "bounce"), as for a permanent failure. It returns
// ErrNoBounce when nobody can be told.
func (s *Scheduler) Bounce(msg spool.Info, failed []Failure) error {
	return s.bounce(msg, failed, false)
}

// Headers is msg's header section as the spool holds it (what a bounce
// quotes, and what the admin API shows of a queued message).
func (s *Scheduler) Headers(msg spool.Info) ([]byte, error) { return s.headers(msg) }
