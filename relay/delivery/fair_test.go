package delivery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/upstream"
)

func TestFairQueueOrder(t *testing.T) {
	var q fairQueue
	a, b, c := where{flow: "a", rank: 1}, where{flow: "b", rank: 1}, where{flow: "c", rank: 2}
	for i := range 3 {
		q.push(fmt.Sprint("a", i), a)
	}
	q.push("c0", c)
	q.push("c1", c)
	got := []string{}
	id, _, _ := q.pop() // a0
	got = append(got, id)
	q.push("b0", b) // a newly active flow takes the next turn
	q.push("b1", b)
	for q.len() > 0 {
		id, _, _ := q.pop()
		got = append(got, id)
		if id == "b1" {
			q.push("alarm", where{flow: "boiler", rank: 0}) // overtakes everything ready
		}
	}
	want := "a0 b0 a1 b1 alarm a2 c0 c1"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
}

// Turns the pacer refused come back in the order they were given,
// whatever order the workers give them back in.
func TestFairQueueUnpopRestoresTurns(t *testing.T) {
	var q fairQueue
	ws := []where{{flow: "a", rank: 1}, {flow: "b", rank: 1}, {flow: "c", rank: 1}}
	for i := range 2 {
		for _, w := range ws {
			q.push(fmt.Sprint(w.flow, i), w)
		}
	}
	// Each flow took the next turn as it became active: c, b, a.
	of := func(id string) where { return where{flow: id[:1], rank: 1} }
	id1, s1, _ := q.pop() // c0
	id2, s2, _ := q.pop() // b0
	q.unpop(id2, of(id2), s2)
	q.unpop(id1, of(id1), s1)
	var got []string
	for q.len() > 0 {
		id, _, _ := q.pop()
		got = append(got, id)
	}
	if want := "c0 b0 a0 c1 b1 a1"; strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
}

// evenPaced is an upstream that accepts one message per interval of the
// virtual clock and answers every other attempt ErrPaced with the time to
// the next slot, as a pacer does. It records the devices in the order their
// messages went out.
type evenPaced struct {
	mu       sync.Mutex
	clock    func() time.Time
	interval time.Duration
	next     time.Time
	device   map[string]string // queue id -> device
	out      []string
	longFor  map[string]bool // queue ids answered with a 2-hour wait
}

func (u *evenPaced) Limits() upstream.Limits {
	return upstream.Limits{Concurrency: 4, MessagesPerMinute: int(time.Minute / u.interval)}
}
func (u *evenPaced) Close() error { return nil }
func (u *evenPaced) Deliver(ctx context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.clock()
	if u.longFor[m.QueueID] {
		return nil, &upstream.Error{Err: fmt.Errorf("%w: test daily window", upstream.ErrPaced), RetryAfter: 2 * time.Hour}
	}
	if now.Before(u.next) {
		return nil, &upstream.Error{Err: fmt.Errorf("%w: test pace", upstream.ErrPaced), RetryAfter: u.next.Sub(now)}
	}
	u.next = now.Add(u.interval)
	u.out = append(u.out, u.device[m.QueueID])
	res := make([]upstream.RcptResult, len(m.To))
	for i, to := range m.To {
		res[i].Rcpt = to
	}
	return res, nil
}

func (u *evenPaced) delivered() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.out...)
}

type fairHarness struct {
	sp    *spool.Spool
	sched *Scheduler
	up    *evenPaced
	mu    sync.Mutex
	now   time.Time
}

func newFairHarness(t *testing.T) *fairHarness {
	h := &fairHarness{now: time.Unix(1700000000, 0)}
	h.up = &evenPaced{clock: h.clock, interval: 6 * time.Second, device: map[string]string{}}
	sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	h.sp = sp
	h.sched = New(Options{Spool: sp, Upstream: h.up, FirstRetry: time.Hour, MaxRetry: time.Hour, Lifetime: 24 * time.Hour, Clock: h.clock})
	return h
}

func (h *fairHarness) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.sched.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; h.sp.Close() })
}

func (h *fairHarness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// put spools n messages of device (in class), committing in parallel so
// that group commit keeps a thousand of them quick.
func (h *fairHarness) put(t *testing.T, device, class string, n int) {
	var wg sync.WaitGroup
	ids := make(chan string, n)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				m := h.sp.NewMessage()
				m.Write([]byte("Subject: t\r\n\r\nbody\r\n"))
				id, err := m.Commit(spool.Envelope{From: device + "@plant.example", Device: device, Class: class,
					Received: h.clock(), To: []spool.Rcpt{{Addr: "ops@example.com"}}})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(ids)
	var all []string
	h.up.mu.Lock()
	for id := range ids {
		h.up.device[id] = device
		all = append(all, id)
	}
	h.up.mu.Unlock()
	for _, id := range all {
		h.sched.Enqueue(id)
	}
}

// slot waits until the scheduler is held by the pacer with nothing in
// flight, then moves the virtual clock to the end of the hold: one more
// message goes out.
func (h *fairHarness) slot(t *testing.T) {
	t.Helper()
	before := len(h.up.delivered())
	for range 20 {
		var until time.Time
		relaytest.Eventually(t, "a delivery, or the scheduler held with nothing in flight", func() bool {
			if len(h.up.delivered()) > before {
				return true
			}
			s := h.sched
			s.mu.Lock()
			defer s.mu.Unlock()
			until = s.holdUntil
			return s.inFlight == 0 && !s.probing && !until.IsZero() && h.clock().Before(until)
		})
		if len(h.up.delivered()) > before {
			return
		}
		h.mu.Lock()
		h.now = until
		h.mu.Unlock()
		// Not Kick: that would make retries due early too.
		signal(h.sched.timer)
		signal(h.sched.wake)
	}
	t.Fatal("no delivery after 20 holds")
}

// waitOut waits until n messages have gone out.
func (h *fairHarness) waitOut(t *testing.T, n int) {
	t.Helper()
	relaytest.Eventually(t, fmt.Sprintf("%d messages delivered", n), func() bool { return len(h.up.delivered()) >= n })
}

// Device A queues 1,000 messages; device B then sends one: B's goes out in
// the next free slot, not after A's backlog.
func TestQuietDeviceGetsNextSlot(t *testing.T) {
	h := newFairHarness(t)
	h.put(t, "scada-a", "normal", 1000)
	h.run(t)
	h.waitOut(t, 1) // the first slot is free at once
	h.slot(t)
	h.waitOut(t, 2)
	h.put(t, "boiler-b", "normal", 1)
	before := len(h.up.delivered())
	for i := 0; i < 5; i++ {
		h.slot(t)
		h.waitOut(t, before+i+1)
		out := h.up.delivered()
		if out[len(out)-1] == "boiler-b" {
			waited := i + 1
			t.Logf("B's message went out in slot %d after it was queued (%v at 10 a minute), behind %d of A's queued messages",
				waited, time.Duration(waited)*h.up.interval, 1000-before)
			if waited > 1 {
				t.Errorf("B waited %d slots, want 1", waited)
			}
			return
		}
	}
	t.Fatalf("B's message not out within 5 slots: %v", h.up.delivered())
}

// Three devices with a backlog each get a third of the slots, within 10 %.
func TestBackloggedDevicesShare(t *testing.T) {
	h := newFairHarness(t)
	devices := []string{"a", "b", "c"}
	for _, d := range devices {
		h.put(t, d, "normal", 200)
	}
	h.run(t)
	const slots = 300
	h.waitOut(t, 1)
	for i := 1; i < slots; i++ {
		h.slot(t)
		h.waitOut(t, i+1)
	}
	count := map[string]int{}
	for _, d := range h.up.delivered()[:slots] {
		count[d]++
	}
	for _, d := range devices {
		share := float64(count[d]) / slots
		t.Logf("device %s: %d of %d slots (%.1f %%)", d, count[d], slots, share*100)
		if share < 1.0/3*0.9 || share > 1.0/3*1.1 {
			t.Errorf("device %s got %.1f %% of the slots, want 33.3 %% ± 10 %%", d, share*100)
		}
	}
}

// An alarm overtakes a bulk backlog: it goes out in the next slot.
func TestAlarmOvertakesBulk(t *testing.T) {
	h := newFairHarness(t)
	h.put(t, "scanner", "bulk", 100)
	h.run(t)
	h.waitOut(t, 1)
	h.slot(t)
	h.waitOut(t, 2)
	h.put(t, "boiler", "alarm", 1)
	h.slot(t)
	h.waitOut(t, 3)
	if got := h.up.delivered()[2]; got != "boiler" {
		t.Errorf("slot after the alarm was queued went to %q, want boiler", got)
	}
}

// After a restart the per-device queues are rebuilt from the spool: B's one
// message is not stuck behind A's backlog.
func TestFairAfterRestart(t *testing.T) {
	h := newFairHarness(t)
	h.put(t, "scada-a", "normal", 50)
	h.put(t, "boiler-b", "normal", 1)
	h.run(t) // Run enqueues from Spool.List, as at a start
	h.waitOut(t, 1)
	h.slot(t)
	h.waitOut(t, 2)
	out := h.up.delivered()
	if out[0] != "boiler-b" && out[1] != "boiler-b" {
		t.Errorf("first two slots went to %v, want one of them to boiler-b", out)
	}
}

func TestBacklogNamesTheFloodingDevice(t *testing.T) {
	h := newFairHarness(t)
	h.put(t, "scada-a", "normal", 25)
	h.put(t, "boiler-b", "alarm", 1)
	got := h.sched.Backlog()
	want := []Backlog{{Device: "boiler-b", Class: "alarm", Ready: 1, Drain: 6 * time.Second},
		{Device: "scada-a", Class: "normal", Ready: 25, Drain: 150 * time.Second}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// A long pacing wait (a cooldown, a daily window that one message's many
// recipients would exceed) holds only that message: the others go on.
func TestLongPacingWaitHoldsOnlyItsMessage(t *testing.T) {
	h := newFairHarness(t)
	h.up.longFor = map[string]bool{}
	h.put(t, "big", "normal", 1)
	h.up.mu.Lock()
	for id := range h.up.device {
		h.up.longFor[id] = true
	}
	h.up.mu.Unlock()
	h.run(t)
	relaytest.Eventually(t, "the big message attempted and waiting", func() bool {
		h.sched.mu.Lock()
		defer h.sched.mu.Unlock()
		return h.sched.inFlight == 0 && h.sched.ready.len() == 0
	})
	h.put(t, "small", "normal", 1)
	h.slot(t) // at most the spread's next start, not the big one's two hours
	if got := h.up.delivered(); got[0] != "small" {
		t.Errorf("delivered %v, want small", got)
	}
	h.sched.mu.Lock()
	held := h.sched.holdUntil
	h.sched.mu.Unlock()
	if !held.IsZero() && held.Sub(h.clock()) > maxHold {
		t.Errorf("scheduler held until %v for one message's long wait", held)
	}
}
