// Package heaplimit keeps relayd's Go memory inside the box's budget
// without ever starving the collector.
//
// Why: by default Go lets the heap grow to twice what is live before it
// collects (GOGC=100). Under load (50 devices each sending 64 KiB) the live
// heap is some 12 MiB, so the heap swung up to 24 MiB and more, and relayd's
// resident size past its 40 MiB budget, though nothing needed the memory.
// A soft limit (runtime/debug.SetMemoryLimit) makes the collector run
// earlier instead: with a 28 MiB floor the peak fell from 43–44 to
// 37–38 MiB at no CPU cost that could be measured.
//
// A fixed limit is dangerous, though: once the live heap itself nears it
// (a large tailnet's network map, hundreds of sessions with big messages),
// the collector would run back to back, up to the half of the CPU Go's
// limiter allows. So after every collection the limit is set again, to the
// floor or twice the live heap, whichever is larger: never tighter than
// Go's default pacing once the memory is really needed.
//
// GOMEMLIMIT in the environment (gokrazy: the package's environment in
// the instance's config.json) is the operator's choice and wins: then the
// package does nothing.
package heaplimit

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Floor is the least the limit is: what relayd's Go memory may take before
// the collector runs early.
const Floor = 28 << 20

// Limit is the soft limit for a live heap of live bytes: Floor, or twice
// the live heap, the heap Go's default pacing would allow it.
func Limit(live uint64) int64 {
	return max(Floor, 2*int64(min(live, 1<<61)))
}

// Start sets the limit and keeps it following the live heap after every
// collection. It reports whether it did: false when GOMEMLIMIT is set.
func Start() bool {
	if os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	adjust()
	arm()
	return true
}

// adjusted counts the limit's updates (for the test that they follow the
// collections).
var adjusted atomic.Int64

// adjust sets the limit for the live heap the last collection found.
func adjust() {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	var live uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		live = s[0].Value.Uint64()
	}
	debug.SetMemoryLimit(Limit(live))
	adjusted.Add(1)
}

// sentinel is an object only the collector's cleanup refers to: when a
// collection finds it unreachable, its cleanup adjusts the limit and arms
// a new one. It holds a pointer so that it is never a tiny allocation
// (those share a block and may never be freed alone).
type sentinel struct{ _ *byte }

func arm() {
	runtime.AddCleanup(new(sentinel), func(struct{}) {
		adjust()
		arm()
	}, struct{}{})
}
