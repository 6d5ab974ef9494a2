package pace

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
)

// clock is virtual time: Sleep moves it forward at once.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
func (c *clock) Sleep(ctx context.Context, d time.Duration) error { c.Advance(d); return ctx.Err() }

// fake accepts everything and records acceptance times; reply, when set,
// is returned for the next calls.
type fake struct {
	c       *clock
	mu      sync.Mutex
	times   []time.Time
	rcpts   int
	replies []error
	active  int
	peak    int
	// onSend, when set, is called (without f.mu) as each message is
	// accepted, with its time.
	onSend func(t time.Time, rcpts int)
}

func (f *fake) Deliver(ctx context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	f.mu.Lock()
	f.active++
	f.peak = max(f.peak, f.active)
	defer func() { f.mu.Lock(); f.active--; f.mu.Unlock() }()
	if len(f.replies) > 0 {
		err := f.replies[0]
		f.replies = f.replies[1:]
		f.mu.Unlock()
		return nil, err
	}
	now := f.c.Now()
	f.times = append(f.times, now)
	f.rcpts += len(m.To)
	f.mu.Unlock()
	if f.onSend != nil {
		f.onSend(now, len(m.To))
	}
	res := make([]upstream.RcptResult, len(m.To))
	for i, r := range m.To {
		res[i].Rcpt = r
	}
	return res, nil
}
func (f *fake) Limits() upstream.Limits { return upstream.Limits{Concurrency: 10} }
func (f *fake) Close() error            { return nil }

func msg(n int) *upstream.Message {
	m := &upstream.Message{QueueID: "q", From: "a@b.c", Body: strings.NewReader("x"), Size: 1}
	for range n {
		m.To = append(m.To, "r@b.c")
	}
	return m
}

// run delivers count messages sequentially, advancing the clock whenever the
// pacer defers, as the scheduler would.
func run(t *testing.T, p *Paced, c *clock, count, rcpts int) (deferred int) {
	t.Helper()
	for i := 0; i < count; {
		_, err := p.Deliver(context.Background(), msg(rcpts))
		var ue *upstream.Error
		switch {
		case err == nil:
			i++
		case errors.As(err, &ue) && errors.Is(err, upstream.ErrPaced):
			if ue.Permanent || ue.RetryAfter <= 0 {
				t.Fatalf("deferral must be temporary with RetryAfter: %+v", ue)
			}
			deferred++
			c.Advance(ue.RetryAfter)
		default:
			t.Fatalf("message %d: %v", i, err)
		}
		if deferred > 100000 {
			t.Fatal("no progress")
		}
	}
	return deferred
}

func maxInWindow(ts []time.Time, w time.Duration) int {
	most := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < w; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

func TestMessagesPerMinute(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	f := &fake{c: c}
	p := Wrap(f, Options{MessagesPerMinute: 30, Clock: c.Now, Sleep: c.Sleep})
	start := c.Now()
	deferred := run(t, p, c, 300, 1)
	if got := maxInWindow(f.times, time.Minute); got > 30 {
		t.Errorf("got %d messages in one minute, want at most 30", got)
	}
	if el := c.Now().Sub(start); el > 10*time.Minute {
		t.Errorf("300 messages took %v of virtual time, want about 9m", el)
	}
	if deferred == 0 {
		t.Error("expected deferrals")
	}
}

func TestRecipientsPerDay(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	f := &fake{c: c}
	p := Wrap(f, Options{RecipientsPerDay: 1000, Clock: c.Now, Sleep: c.Sleep})
	run(t, p, c, 50, 100) // 5000 recipients: five days
	// Rolling 24 h: count recipients by time.
	for i := range f.times {
		n := 0
		for j := i; j < len(f.times) && f.times[j].Sub(f.times[i]) < 24*time.Hour; j++ {
			n += 100
		}
		if n > 1000 {
			t.Fatalf("%d recipients within 24h from %v", n, f.times[i])
		}
	}
}

func TestConcurrency(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	f := &fake{c: c}
	p := Wrap(f, Options{Concurrency: 3, Clock: c.Now, Sleep: c.Sleep})
	if got := p.Limits().Concurrency; got != 3 {
		t.Errorf("Limits().Concurrency = %d, want 3", got)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 20 {
				if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if f.peak > 3 {
		t.Errorf("peak concurrency %d, want at most 3", f.peak)
	}
}

func TestThrottleReplies(t *testing.T) {
	tests := []struct {
		name     string
		reply    *smtp.SMTPError
		cooldown time.Duration
	}{
		{"thread limit", &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}, time.Minute},
		{"ip throttle", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy. Please try again later"}, 5 * time.Minute},
		{"quota", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0}, Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}, time.Hour},
		// Azure Communication Services' limits, said as HTTP's 429 (its
		// SMTP reply code is not documented: a 5xx must not bounce).
		{"429 as 5xx", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "429 Too Many Requests"}, 5 * time.Minute},
		{"429 as 4xx", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Rate limit exceeded, try again later"}, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			f := &fake{c: c, replies: []error{tt.reply}}
			p := Wrap(f, Options{Clock: c.Now, Sleep: c.Sleep})
			_, err := p.Deliver(context.Background(), msg(1))
			ue := upstream.Classify(err)
			if ue.Permanent {
				t.Fatalf("throttling must stay temporary: %v", err)
			}
			if ue.RetryAfter != tt.cooldown {
				t.Errorf("RetryAfter = %v, want %v", ue.RetryAfter, tt.cooldown)
			}
			// During the cooldown nothing is attempted.
			_, err = p.Deliver(context.Background(), msg(1))
			if !errors.Is(err, upstream.ErrPaced) {
				t.Fatalf("during cooldown: got %v, want ErrPaced", err)
			}
			c.Advance(tt.cooldown)
			if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
				t.Fatalf("after cooldown: %v", err)
			}
			if got := p.Stats(); got.Throttled != 1 || got.Deferred != 1 {
				t.Errorf("stats %+v", got)
			}
		})
	}
}

func TestShortWaitBlocks(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	f := &fake{c: c, replies: []error{&upstream.Error{RetryAfter: 3 * time.Second, Err: errors.New("429")}}}
	p := Wrap(f, Options{Clock: c.Now, Sleep: c.Sleep})
	if _, err := p.Deliver(context.Background(), msg(1)); err == nil {
		t.Fatal("want the 429")
	}
	if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
		t.Fatalf("a 3s wait should happen inside Deliver: %v", err)
	}
}

func TestPermanentPassesThrough(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	r := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "Recipient not found"}
	f := &fake{c: c, replies: []error{r}}
	p := Wrap(f, Options{Clock: c.Now, Sleep: c.Sleep})
	_, err := p.Deliver(context.Background(), msg(1))
	if !upstream.IsPermanent(err) {
		t.Errorf("got %v, want permanent", err)
	}
}

func TestSplitCountsAsSeveral(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	f := &fake{c: c}
	p := Wrap(f, Options{MessagesPerMinute: 5, MaxRecipients: 2, Clock: c.Now, Sleep: c.Sleep, MaxWait: time.Second})
	// 5 recipients = 3 transactions; then only 2 more fit in the minute.
	if _, err := p.Deliver(context.Background(), msg(5)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Deliver(context.Background(), msg(4)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Deliver(context.Background(), msg(1)); !errors.Is(err, upstream.ErrPaced) {
		t.Fatalf("got %v, want a deferral", err)
	}
}

// Rolling-window refusals are holds: temporary, never bounced. The tenant's
// external recipient limit holds the message refused but not the upstream
// (internal mail still goes); the mailbox's limits stop everything.
func TestWindowRefusalsHold(t *testing.T) {
	tests := []struct {
		name  string
		reply *smtp.SMTPError
		stops bool
	}{
		{"tenant external rate 5.7.233", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 233}, Message: "tenant has exceeded its external recipient rate limit"}, false},
		{"recipient rate 5.1.90", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 90}, Message: "you've reached your daily limit for message recipients"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{now: time.Unix(1e9, 0)}
			f := &fake{c: c, replies: []error{tt.reply}}
			p := Wrap(f, Options{Clock: c.Now, Sleep: c.Sleep})
			_, err := p.Deliver(context.Background(), msg(1))
			ue := upstream.Classify(err)
			if ue.Permanent || ue.RetryAfter != time.Hour {
				t.Fatalf("got permanent=%v RetryAfter=%v, want a temporary hold of 1h: %v", ue.Permanent, ue.RetryAfter, err)
			}
			_, err = p.Deliver(context.Background(), msg(1))
			if got, want := errors.Is(err, upstream.ErrPaced), tt.stops; got != want {
				t.Errorf("next message paced = %v, want %v (%v)", got, want, err)
			}
		})
	}
}
