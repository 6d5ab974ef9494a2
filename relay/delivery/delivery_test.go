package delivery

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream"
)

// scripted answers each recipient from a script of replies per attempt
// ("250", "451 4.7.500 ...", "550 5.1.1 ..."), the last repeated; it records
// what it accepted.
type scripted struct {
	mu       sync.Mutex
	script   map[string][]string
	attempts map[string]int
	got      map[string]int // accepted deliveries per recipient
	maxRcpt  int
	calls    int
	bounces  chan string       // the DSNs it was given (null sender), when set
	via      map[string]string // RcptResult.Upstream per recipient, as a router says
}

func (u *scripted) Limits() upstream.Limits {
	return upstream.Limits{Concurrency: 2, MaxRecipients: u.maxRcpt}
}
func (u *scripted) Close() error { return nil }
func (u *scripted) Deliver(ctx context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls++
	if m.From == "" && u.bounces != nil {
		b, _ := io.ReadAll(m.Reader())
		u.bounces <- string(b)
	}
	if u.maxRcpt > 0 && len(m.To) > u.maxRcpt {
		return nil, fmt.Errorf("got %d recipients, limit %d", len(m.To), u.maxRcpt)
	}
	var res []upstream.RcptResult
	for _, to := range m.To {
		s := u.script[to]
		n := u.attempts[to]
		u.attempts[to]++
		reply := "250"
		if len(s) > 0 {
			reply = s[min(n, len(s)-1)]
		}
		var err error
		if !strings.HasPrefix(reply, "250") {
			var code int
			fmt.Sscanf(reply, "%d", &code)
			err = upstream.FromReply(&smtp.SMTPError{Code: code, Message: reply[4:]})
		} else {
			u.got[to]++
		}
		res = append(res, upstream.RcptResult{Rcpt: to, Err: err, Upstream: u.via[to]})
	}
	return res, nil
}

type harness struct {
	sp     *spool.Spool
	sched  *Scheduler
	up     *scripted
	events chan trace.Event
	bounce chan string // each DSN as the upstream got it
	now    time.Time
	mu     sync.Mutex
}

func newHarness(t *testing.T, script map[string][]string, maxRcpt int) *harness {
	bounces := make(chan string, 10)
	h := &harness{up: &scripted{script: script, attempts: map[string]int{}, got: map[string]int{}, maxRcpt: maxRcpt, bounces: bounces},
		events: make(chan trace.Event, 1000), bounce: bounces, now: time.Unix(1700000000, 0)}
	sp, err := spool.Open(relaytest.StateDir(t), spool.Options{MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	h.sp = sp
	h.sched = New(Options{
		Spool: sp, Upstream: h.up, Record: func(e trace.Event) { h.events <- e },
		Bounce:     &Bounce{ReportingMTA: "relay.test"},
		FirstRetry: time.Hour, MaxRetry: time.Hour, Lifetime: 24 * time.Hour,
		Clock: h.clock,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.sched.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; sp.Close() })
	return h
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
	h.sched.Kick()
}

func (h *harness) put(t *testing.T, rcpts ...string) string {
	m := h.sp.NewMessage()
	m.Write([]byte("Subject: t\r\n\r\nbody\r\n"))
	env := spool.Envelope{From: "scanner@plant.example", Received: h.clock()}
	for _, r := range rcpts {
		env.To = append(env.To, spool.Rcpt{Addr: r})
	}
	id, err := m.Commit(env)
	if err != nil {
		t.Fatal(err)
	}
	h.sched.Enqueue(id)
	return id
}

// next waits for the next trace event of kind k (others are skipped).
func (h *harness) next(t *testing.T, k trace.Kind) trace.Event {
	t.Helper()
	timeout := time.After(time.Until(relaytest.Deadline(t)))
	for {
		select {
		case e := <-h.events:
			if e.Kind == k {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event", k)
		}
	}
}

func TestPartialSuccessIsNotRepeated(t *testing.T) {
	h := newHarness(t, map[string][]string{"b@x": {"451 4.7.500 slow down", "250"}}, 0)
	id := h.put(t, "a@x", "b@x")
	if got := h.next(t, trace.Delivered).To; fmt.Sprint(got) != "[a@x]" {
		t.Errorf("first delivery to %v, want [a@x]", got)
	}
	d := h.next(t, trace.Deferred)
	if got, want := d.Reply, "451 slow down"; !strings.Contains(d.Reply, "slow down") {
		t.Errorf("deferred reply = %q, want %q", got, want)
	}
	h.advance(2 * time.Hour)
	if got := h.next(t, trace.Delivered).To; fmt.Sprint(got) != "[b@x]" {
		t.Errorf("second delivery to %v, want [b@x]", got)
	}
	relaytest.Eventually(t, "message done", func() bool { _, ok := h.sp.Get(id); return !ok })
	h.up.mu.Lock()
	defer h.up.mu.Unlock()
	if got, want := fmt.Sprint(h.up.got), "map[a@x:1 b@x:1]"; got != want {
		t.Errorf("deliveries = %s, want %s", got, want)
	}
}

func TestPermanentFailureBouncesAtOnce(t *testing.T) {
	h := newHarness(t, map[string][]string{"gone@x": {"550 5.1.1 user unknown"}}, 0)
	id := h.put(t, "ok@x", "gone@x")
	b := <-h.bounce
	if !strings.Contains(b, "Final-Recipient: rfc822; gone@x") || strings.Contains(b, "rfc822; ok@x") || !strings.Contains(b, "550") {
		t.Errorf("bounce = %s, want gone@x (only) with the 550", b)
	}
	h.next(t, trace.Bounced)
	relaytest.Eventually(t, "message done", func() bool { _, ok := h.sp.Get(id); return !ok })
}

func TestTemporaryFailureExpiresOnlyAtLifetime(t *testing.T) {
	h := newHarness(t, map[string][]string{"slow@x": {"421 4.3.2 try later"}}, 0)
	id := h.put(t, "slow@x")
	for i := 0; i < 5; i++ { // 5 retries within the 24 h lifetime: no bounce
		h.next(t, trace.Deferred)
		select {
		case f := <-h.bounce:
			t.Fatalf("bounced before the lifetime ran out: %+v", f)
		default:
		}
		h.advance(time.Hour + time.Minute)
	}
	h.advance(24 * time.Hour)
	e := h.next(t, trace.Expired)
	if got := fmt.Sprint(e.To); got != "[slow@x]" {
		t.Errorf("expired %v, want [slow@x]", got)
	}
	b := <-h.bounce
	if !strings.Contains(b, "421") || !strings.Contains(b, "Status: 4.4.7") {
		t.Errorf("expiry bounce does not carry the last reply and 4.4.7: %s", b)
	}
	relaytest.Eventually(t, "message done", func() bool { _, ok := h.sp.Get(id); return !ok })
}

func TestRecipientsAreBatchedWithinUpstreamLimit(t *testing.T) {
	h := newHarness(t, nil, 2)
	id := h.put(t, "a@x", "b@x", "c@x", "d@x", "e@x")
	relaytest.Eventually(t, "message done", func() bool { _, ok := h.sp.Get(id); return !ok })
	h.up.mu.Lock()
	defer h.up.mu.Unlock()
	if got, want := h.up.calls, 3; got != want {
		t.Errorf("upstream calls = %d, want %d", got, want)
	}
	if got, want := len(h.up.got), 5; got != want {
		t.Errorf("recipients delivered = %d, want %d", got, want)
	}
}

func TestBackoffDoublesAndCaps(t *testing.T) {
	s := New(Options{Upstream: &scripted{}, FirstRetry: time.Minute, MaxRetry: 10 * time.Minute, Lifetime: 24 * time.Hour})
	for _, tc := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 48 * time.Second, time.Minute},
		{2, 96 * time.Second, 2 * time.Minute},
		{4, 384 * time.Second, 8 * time.Minute},
		{9, 8 * time.Minute, 10 * time.Minute},
	} {
		for range 20 {
			if got := s.backoff(tc.attempt); got < tc.min || got > tc.max {
				t.Errorf("backoff(%d) = %v, want within [%v, %v]", tc.attempt, got, tc.min, tc.max)
			}
		}
	}
}

func TestPacerHoldIsNotAFailure(t *testing.T) {
	h := newHarness(t, nil, 0)
	held := &pacedOnce{scripted: h.up}
	h.sched.o.Upstream = held
	id := h.put(t, "a@x")
	relaytest.Eventually(t, "the pacer was asked", func() bool { return held.calls.Load() >= 1 })
	h.advance(2 * time.Second)
	relaytest.Eventually(t, "message done", func() bool { _, ok := h.sp.Get(id); return !ok })
	for len(h.events) > 0 {
		if e := <-h.events; e.Kind == trace.Deferred {
			t.Errorf("a pacing hold was traced as a deferral: %+v", e)
		}
	}
}

// pacedOnce holds the first attempt back as the pacer does.
type pacedOnce struct {
	*scripted
	calls atomic.Int32
}

func (p *pacedOnce) Deliver(ctx context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	if p.calls.Add(1) == 1 {
		return nil, &upstream.Error{Err: upstream.ErrPaced, RetryAfter: time.Second}
	}
	return p.scripted.Deliver(ctx, m)
}

// A router's parts are traced each with the upstream that handled it.
func TestEachPartTracedWithItsUpstream(t *testing.T) {
	h := newHarness(t, map[string][]string{"b@ext": {"451 4.7.0 later", "250"}, "d@ext": {"550 5.1.10 not found"}}, 0)
	h.up.via = map[string]string{"a@int": "internal/hve", "b@ext": "external/oauth", "c@ext": "external/oauth", "d@ext": "external/oauth"}
	h.put(t, "a@int", "b@ext", "c@ext", "d@ext")
	got := map[string]string{}
	for range 2 {
		e := h.next(t, trace.Delivered)
		got[e.Upstream] = fmt.Sprint(e.To)
	}
	if want := "map[external/oauth:[c@ext] internal/hve:[a@int]]"; fmt.Sprint(got) != want {
		t.Errorf("delivered parts %v, want %s", got, want)
	}
	// The attempt's failures are traced before its deferrals.
	if b := h.next(t, trace.Bounced); b.Upstream != "external/oauth" {
		t.Errorf("bounced by %q, want external/oauth", b.Upstream)
	}
	if d := h.next(t, trace.Deferred); d.Upstream != "external/oauth" || fmt.Sprint(d.To) != "[b@ext]" {
		t.Errorf("deferred part %+v, want b@ext by external/oauth", d)
	}
}

// TestNoSecondRetryDefaults: the scheduler has no retry defaults of its
// own (relay/config owns them); Options without a schedule is a bug of the
// caller, not a reason to make one up.
func TestNoSecondRetryDefaults(t *testing.T) {
	for _, o := range []Options{
		{Upstream: &scripted{}},
		{Upstream: &scripted{}, FirstRetry: time.Minute, MaxRetry: time.Second, Lifetime: time.Hour},
		{Upstream: &scripted{}, FirstRetry: time.Minute, MaxRetry: time.Hour},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%v, %v, %v) made up a schedule", o.FirstRetry, o.MaxRetry, o.Lifetime)
				}
			}()
			New(o)
		}()
	}
}
