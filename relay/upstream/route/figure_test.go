package route_test

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

const hveAccount = "hve-alarms@contoso.test"

// hveUpstream is an HVE endpoint of the tenant and the hve upstream to it.
func (e *tenantEnv) hveUpstream(t *testing.T) (*m365test.Exchange, route.Named) {
	x := m365test.NewExchange(t, m365test.ExchangeOptions{CA: e.ca, Clock: e.clock.Now, Entra: e.entra, HVE: true,
		Hostname: "smtp.hve.test", TenantDomains: []string{"contoso.test"}})
	x.Grant("app1", hveAccount)
	host, port := splitAddr(x.Addr)
	return x, e.build(t, "hve", config.KindHVE, config.M365{Mailbox: hveAccount, SMTPHost: host, SMTPPort: port, AcceptedDomains: []string{"contoso.test"}, FromMailbox: true})
}

// drain delivers msgs like the scheduler does, on the virtual clock: each
// attempt at its due time, a paced or temporary failure due again after
// its RetryAfter (at least a second), and returns the virtual time until
// the last was delivered. Pacing waits short enough to be taken inside
// Deliver move the clock too.
func drain(t *testing.T, e *tenantEnv, up upstream.Upstream, msgs []*upstream.Message) (time.Duration, int) {
	t.Helper()
	start := e.clock.Now()
	q := &dueHeap{}
	for i, m := range msgs {
		heap.Push(q, due{at: start, seq: i, m: m})
	}
	seq, temporary := len(msgs), 0
	ctx := context.Background()
	for q.Len() > 0 {
		d := heap.Pop(q).(due)
		if wait := d.at.Sub(e.clock.Now()); wait > 0 {
			e.clock.Advance(wait)
		}
		res, err := up.Deliver(ctx, d.m)
		if err == nil {
			for _, r := range res {
				if r.Err != nil {
					err = r.Err
				}
			}
		}
		if err == nil {
			continue
		}
		ue := upstream.Classify(err)
		if ue.Permanent {
			t.Fatalf("message %s: permanent failure %v", d.m.QueueID, err)
		}
		if !errors.Is(err, upstream.ErrPaced) {
			temporary++
		}
		seq++
		heap.Push(q, due{at: e.clock.Now().Add(max(ue.RetryAfter, time.Second)), seq: seq, m: d.m})
	}
	return e.clock.Now().Sub(start), temporary
}

type due struct {
	at  time.Time
	seq int
	m   *upstream.Message
}

type dueHeap []due

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	return h[i].at.Before(h[j].at) || h[i].at.Equal(h[j].at) && h[i].seq < h[j].seq
}
func (h dueHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)   { *h = append(*h, x.(due)) }
func (h *dueHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// backlog is n alarms of one recipient each from a SCADA system, one in
// five to an outside service company, the rest to the plant's own staff.
// Each upstream sends them from its own mailbox (from_mailbox).
func backlog(n int) []*upstream.Message {
	var msgs []*upstream.Message
	for i := range n {
		to := fmt.Sprintf("shift%d@contoso.test", i%7)
		if i%5 == 4 {
			to = "service@fabrikam.test"
		}
		msgs = append(msgs, alarmFrom(i, "scada@plant.contoso.test", to))
	}
	return msgs
}

// TestFigureBacklogDrain prints the time to drain a 10,000-message alarm
// backlog through one mailbox (client submission: 30 messages a minute)
// and with the internal recipients routed to HVE (no per-minute limit)
// and the external ones to the same mailbox.
func TestFigureBacklogDrain(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a figure (10,000 messages): not under -short or -race")
	}
	const n = 10000
	single := newTenant(t)
	oauth := single.submission(t)
	defer oauth.Up.Close()
	singleTime, singleTemp := drain(t, single, oauth.Up, backlog(n))
	if got := len(single.x.Received()); got != n {
		t.Fatalf("single mailbox: received %d, want %d", got, n)
	}

	e := newTenant(t)
	hx, hve := e.hveUpstream(t)
	r := newRouter(t, route.Options{
		Routes: []config.Route{
			routeCfg("internal", []string{"contoso.test"}, "hve", "oauth"),
			routeCfg("external", nil, "oauth"),
		},
		Upstreams: map[string]route.Named{"hve": hve, "oauth": e.submission(t)},
		Clock:     e.clock.Now,
	})
	routedTime, routedTemp := drain(t, e, r, backlog(n))
	internal, external := len(hx.Received()), len(e.x.Received())
	if internal+external != n || external != n/5 {
		t.Fatalf("routed: HVE received %d, submission %d, want %d and %d", internal, external, n-n/5, n/5)
	}
	if v := append(single.x.Violations(), e.x.Violations()...); len(v) > 0 {
		t.Errorf("the fakes had to enforce limits: %v", v[:min(3, len(v))])
	}
	if hx.ExpiringRefused() > 0 {
		t.Errorf("HVE refused %d expiring tokens", hx.ExpiringRefused())
	}
	t.Logf("FIGURES: %d-message alarm backlog (1 recipient each, 1 in 5 external), virtual time to drain: one mailbox (client submission, 30/min) %v (%d temporary failures); internal to HVE + external to the mailbox %v (%d temporary failures: HVE %d messages, submission %d); %.1f× faster",
		n, singleTime.Round(time.Minute), singleTemp, routedTime.Round(time.Minute), routedTemp, internal, external, singleTime.Seconds()/routedTime.Seconds())
}
