package pace

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
)

// A caller that marks its context WithoutWaiting (the scheduler) hears
// ErrPaced at once even for a wait Deliver would otherwise sleep through.
func TestWithoutWaitingAnswersAtOnce(t *testing.T) {
	c := &clock{now: time.Unix(1700000000, 0)}
	f := &fake{c: c}
	p := Wrap(f, Options{MessagesPerMinute: 10, Clock: c.Now, Sleep: c.Sleep, MaxWait: time.Minute})
	ctx := upstream.WithoutWaiting(context.Background())
	for range 10 {
		if _, err := p.Deliver(ctx, msg(1)); err != nil {
			t.Fatal(err)
		}
	}
	start := c.Now()
	_, err := p.Deliver(ctx, msg(1))
	ue := upstream.Classify(err)
	if !errors.Is(err, upstream.ErrPaced) || ue.RetryAfter <= 0 || ue.RetryAfter > time.Minute {
		t.Fatalf("got %v (retry after %v), want ErrPaced within a minute", err, ue.RetryAfter)
	}
	if !c.Now().Equal(start) {
		t.Errorf("Deliver slept %v", c.Now().Sub(start))
	}
	// Without the mark the same wait is slept through (MaxWait 1m).
	if _, err := p.Deliver(context.Background(), msg(1)); err != nil {
		t.Errorf("waiting Deliver: %v", err)
	}
}
