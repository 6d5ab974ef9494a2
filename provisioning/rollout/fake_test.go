package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// fakeClock advances only when the engine sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return nil
}

var errDark = errors.New("dial tcp: i/o timeout")

// fakeRelay is a relay's admin API in memory. after says what the
// relay does once changed.
type fakeRelay struct {
	mu      sync.Mutex
	clock   *fakeClock
	site    string
	version string
	started time.Time
	health  string
	queue   int
	counts  map[string]uint64
	refused uint64
	lastDel time.Time
	docs    []json.RawMessage // docs[v-1] is version v
	cur     int
	dark    bool
	puts    int
	updates int
	// after runs on every accepted put or update (under the lock).
	after func(f *fakeRelay, doc json.RawMessage)
	// fallBack: an update reboots into the old version.
	fallBack bool
	// refuse: every put is an invalid configuration.
	refuse bool
}

func newFake(clock *fakeClock, site, doc string) *fakeRelay {
	return &fakeRelay{clock: clock, site: site, version: "v1.0.0", started: clock.Now().Add(-time.Hour), health: "ok",
		counts: map[string]uint64{}, docs: []json.RawMessage{json.RawMessage(doc)}, cur: 1}
}

func (f *fakeRelay) Status(ctx context.Context) (*api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dark {
		return nil, fmt.Errorf("%w: %v", api.ErrUnreachable, errDark)
	}
	c := map[string]uint64{}
	for k, v := range f.counts {
		c[k] = v
	}
	return &api.Status{Site: f.site, Version: f.version, Now: f.clock.Now(), Started: f.started, Health: f.health,
		Queue: api.Queue{Messages: f.queue}, Counts: c, Refused: f.refused, Upstream: api.Upstream{LastDelivered: f.lastDel}, ConfigVersion: f.cur}, nil
}

func (f *fakeRelay) Config(ctx context.Context) (*api.ConfigDoc, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dark {
		return nil, fmt.Errorf("%w: %v", api.ErrUnreachable, errDark)
	}
	return &api.ConfigDoc{Version: f.cur, Config: f.docs[f.cur-1]}, nil
}

func (f *fakeRelay) PutConfig(ctx context.Context, doc json.RawMessage, base int, dry bool) (*api.ConfigResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dark {
		return nil, fmt.Errorf("%w: %v", api.ErrUnreachable, errDark)
	}
	if base != f.cur {
		return nil, api.StaleVersion(base, f.cur)
	}
	if f.refuse {
		return nil, &api.Error{Status: 400, Code: api.CodeInvalidConfig, Message: "the configuration has 1 error(s); nothing was changed"}
	}
	ch := []api.ConfigChange{{Key: "k"}}
	if dry {
		return &api.ConfigResult{Version: f.cur, DryRun: true, Changes: ch}, nil
	}
	f.puts++
	f.docs = append(f.docs, doc)
	f.cur = len(f.docs)
	v := f.cur
	if f.after != nil {
		f.after(f, doc)
	}
	return &api.ConfigResult{Version: v, Changes: ch}, nil
}

func (f *fakeRelay) Update(ctx context.Context) (*api.UpdateResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dark {
		return nil, fmt.Errorf("%w: %v", api.ErrUnreachable, errDark)
	}
	f.updates++
	from := f.version
	f.started = f.clock.Now()
	if !f.fallBack {
		f.version = "v2.0.0"
	}
	if f.after != nil {
		f.after(f, nil)
	}
	return &api.UpdateResult{From: from, Version: "v2.0.0", Mode: "testboot", KeyID: "k1", Rebooting: true}, nil
}

func (f *fakeRelay) doc() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(f.docs[f.cur-1])
}

func (f *fakeRelay) count() (puts, updates int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.puts, f.updates
}
