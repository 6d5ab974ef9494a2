package heaplimit

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestLimit(t *testing.T) {
	tests := []struct {
		live uint64
		want int64
	}{
		{0, Floor},
		{10 << 20, Floor},
		{14 << 20, Floor},
		{20 << 20, 40 << 20},
		{1 << 40, 2 << 40},
		{^uint64(0), 1 << 62},
	}
	for _, tt := range tests {
		if got := Limit(tt.live); got != tt.want {
			t.Errorf("Limit(%d) = %d, want %d", tt.live, got, tt.want)
		}
	}
}

// The limit follows the live heap after a collection: holding 64 MiB live
// raises it to twice that, and letting go brings it back to the floor.
func TestFollowsTheLiveHeap(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	if !Start() {
		t.Fatal("Start did nothing without GOMEMLIMIT")
	}
	hold := make([][]byte, 64)
	for i := range hold {
		hold[i] = make([]byte, 1<<20)
	}
	collectUntil(t, func(limit int64) bool { return limit >= 2*64<<20 })
	runtime.KeepAlive(hold)
	hold = nil
	collectUntil(t, func(limit int64) bool { return limit == Floor })
}

// collectUntil collects until the limit the cleanups set satisfies ok.
// Cleanups run after a collection, in their own goroutine: each round
// waits for one more adjustment (bounded by the test's deadline).
func collectUntil(t *testing.T, ok func(int64) bool) {
	t.Helper()
	deadline, _ := t.Deadline()
	for {
		before := adjusted.Load()
		runtime.GC()
		for adjusted.Load() == before {
			if !deadline.IsZero() && time.Now().After(deadline) {
				t.Fatal("no adjustment after a collection")
			}
			runtime.Gosched()
		}
		if got := debug.SetMemoryLimit(-1); ok(got) {
			return
		} else if !deadline.IsZero() && time.Now().After(deadline) {
			t.Fatalf("limit %d never satisfied the condition", got)
		}
	}
}

func TestGOMEMLIMITWins(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "100MiB")
	if Start() {
		t.Error("Start set a limit over the operator's GOMEMLIMIT")
	}
}
