package delivery

import (
	"time"

	"github.com/siterelay/siterelay/relay/spool"
)

// The ready queue is fair between devices: one sub-queue (a flow) per
// device, or per client address for mail from unknown clients, served in
// turn, one message a turn; and strict between priority classes: a class is
// served only when every more urgent class has nothing ready. So a device
// with a thousand messages waiting gets one slot in every round, a device
// that sends one message gets the next free slot, and an alarm never waits
// behind a scan. (An alarm class that floods starves bulk mail while it
// floods: classes are the admin's promise of what matters more.)

// Class ranks, most urgent first, as in config.Classes.
const numClasses = 3

func classRank(class string) int {
	switch class {
	case "alarm":
		return 0
	case "bulk":
		return 2
	}
	return 1
}

// flowKey names the flow a message belongs to.
func flowKey(env spool.Envelope) string {
	if env.Device != "" {
		return env.Device
	}
	return "client " + env.ClientIP
}

// where a queued message goes when it is ready again.
type where struct {
	flow string
	rank int
}

type flow struct {
	key string
	ids []string // FIFO; ids[0] is next
}

// ring is one class's active flows, served round robin.
type ring struct {
	flows []*flow
	next  int // index of the flow whose turn is next
	byKey map[string]*flow
	// rewind is the flow of the earliest turn given back (unpop) since
	// the last pop; the next pop starts there, so turns the pacer refused
	// come back in the order they were given, however many workers gave
	// them back in whatever order.
	rewind    *flow
	rewindSeq uint64
}

type fairQueue struct {
	classes [numClasses]ring
	n       int
	seq     uint64 // turns given so far
}

func (q *fairQueue) len() int { return q.n }

func (q *fairQueue) flow(w where) (*ring, *flow) {
	r := &q.classes[w.rank]
	if r.byKey == nil {
		r.byKey = map[string]*flow{}
	}
	f := r.byKey[w.flow]
	if f == nil {
		// A flow that was idle takes the next turn: a quiet device's
		// message goes out in the next free slot.
		f = &flow{key: w.flow}
		r.byKey[w.flow] = f
		r.settle()
		if r.next > len(r.flows) {
			r.next = 0
		}
		r.flows = append(r.flows, nil)
		copy(r.flows[r.next+1:], r.flows[r.next:])
		r.flows[r.next] = f
	}
	return r, f
}

// push adds id at the end of its flow.
func (q *fairQueue) push(id string, w where) {
	_, f := q.flow(w)
	f.ids = append(f.ids, id)
	q.n++
}

// unpop puts id back at the head of its flow and gives the turn back
// (seq is what pop returned with it): the pacer said "not now", so the turn
// was not used.
func (q *fairQueue) unpop(id string, w where, seq uint64) {
	r, f := q.flow(w)
	f.ids = append(f.ids, "")
	copy(f.ids[1:], f.ids)
	f.ids[0] = id
	q.n++
	if r.rewind == nil || seq < r.rewindSeq {
		r.rewind, r.rewindSeq = f, seq
	}
}

// settle moves the turn back to the earliest turn given back, if any.
func (r *ring) settle() {
	if f := r.rewind; f != nil {
		r.rewind = nil
		for i, g := range r.flows {
			if g == f {
				r.next = i
				break
			}
		}
	}
}

// pop takes the next message: the most urgent class with anything ready,
// the flow whose turn it is there. seq numbers the turn, for unpop.
func (q *fairQueue) pop() (id string, seq uint64, ok bool) {
	for c := range q.classes {
		r := &q.classes[c]
		if len(r.flows) == 0 {
			continue
		}
		r.settle()
		if r.next >= len(r.flows) {
			r.next = 0
		}
		f := r.flows[r.next]
		id = f.ids[0]
		f.ids[0] = ""
		f.ids = f.ids[1:]
		q.n--
		if len(f.ids) == 0 {
			// Idle: leave the ring; the next flow moves into this index.
			delete(r.byKey, f.key)
			r.flows = append(r.flows[:r.next], r.flows[r.next+1:]...)
		} else {
			r.next++
		}
		q.seq++
		return id, q.seq, true
	}
	return "", 0, false
}

// Backlog is one flow's ready messages, for the status.
type Backlog struct {
	// Device is the device's name, or "client ADDRESS" for an unknown
	// client.
	Device string
	Class  string
	Ready  int // ready to go (not waiting for a retry)
	// Drain estimates how long Ready takes to go out at the current pace.
	Drain time.Duration
}

func (q *fairQueue) backlog() []Backlog {
	var out []Backlog
	names := []string{"alarm", "normal", "bulk"}
	for c := range q.classes {
		for _, f := range q.classes[c].flows {
			out = append(out, Backlog{Device: f.key, Class: names[c], Ready: len(f.ids)})
		}
	}
	return out
}

// Backlog is what waits for the upstream, by device, most urgent class
// first, with how long each backlog takes at the upstream's pace (its
// messages a minute, shared in turn with the other devices of its class);
// zero Drain when the upstream is not paced. It is what the status shows
// to say which device floods.
func (s *Scheduler) Backlog() []Backlog {
	pace := s.o.Upstream.Limits().MessagesPerMinute
	s.mu.Lock()
	out := s.ready.backlog()
	s.mu.Unlock()
	if pace > 0 {
		active := map[string]int{}
		for _, b := range out {
			active[b.Class]++
		}
		for i := range out {
			b := &out[i]
			b.Drain = time.Duration(float64(b.Ready*active[b.Class]) / float64(pace) * float64(time.Minute))
		}
	}
	return out
}
