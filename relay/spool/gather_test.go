package spool

import (
	"testing"
	"time"
)

// TestGatherWaitsForTheLastBatchsCallers drives gather on a bare writer.
// Its kick channel is unbuffered here, so a send completes only when
// gather is waiting for more: it has looked at the count and not let go.
func TestGatherWaitsForTheLastBatchsCallers(t *testing.T) {
	type result struct {
		stop bool
		n    int
	}
	tests := []struct {
		name     string
		want     int
		hold     time.Duration
		eager    int  // in the batch when gather starts
		forced   bool // a sync() waits
		arrive   int  // eager records that then arrive, one kick each
		stop     bool // then the writer is asked to stop
		wantN    int
		wantStop bool
	}{
		{name: "lets go once as many as last time are pending", want: 3, hold: time.Hour, eager: 1, arrive: 2, wantN: 3},
		{name: "a lone caller is not held", want: 1, hold: time.Hour, eager: 1, wantN: 1},
		{name: "after an idle spell", want: 0, hold: time.Hour, eager: 1, wantN: 1},
		{name: "a sync is not held", want: 3, hold: time.Hour, eager: 1, forced: true, wantN: 1},
		{name: "at most hold", want: 3, hold: time.Nanosecond, eager: 1, wantN: 1},
		{name: "a stop ends the wait", want: 3, hold: time.Hour, eager: 1, arrive: 1, stop: true, wantN: 2, wantStop: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &writer{cur: newBatch(), kick: make(chan struct{}), stop: make(chan struct{})}
			w.cur.eager, w.cur.forced = tt.eager, tt.forced
			done := make(chan result, 1)
			go func() {
				stop, n := w.gather(tt.want, tt.hold)
				done <- result{stop, n}
			}()
			for i := 0; i < tt.arrive; i++ {
				// The kick that reaches gather after it saw the count short.
				select {
				case w.kick <- struct{}{}:
				case r := <-done:
					t.Fatalf("let go at %d eager records (stop %v), want it waiting for %d", r.n, r.stop, tt.want)
				}
				w.mu.Lock()
				w.cur.eager++
				w.mu.Unlock()
				if i < tt.arrive-1 || tt.stop {
					continue
				}
				// The last one: gather rechecks after this kick.
				select {
				case w.kick <- struct{}{}:
				case r := <-done:
					done <- r
				}
			}
			if tt.stop {
				select {
				case w.kick <- struct{}{}: // gather is waiting again
				case r := <-done:
					t.Fatalf("let go at %d before the stop", r.n)
				}
				close(w.stop)
			}
			select {
			case r := <-done:
				if r.n != tt.wantN || r.stop != tt.wantStop {
					t.Errorf("gather let go at %d (stop %v), want %d (stop %v)", r.n, r.stop, tt.wantN, tt.wantStop)
				}
			case <-time.After(time.Minute): // a bound, not a timing: a broken gather waits for its hour
				t.Fatal("gather did not let go")
			}
		})
	}
}
