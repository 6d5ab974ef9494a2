package pace

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkDeliverStateFile measures what keeping the state file costs a
// delivery: 100 messages a second on the pacer's clock (virtual: it moves
// 10 ms per message), a day window so the file stays a few hundred bytes,
// the file on the test's temporary directory (a real fsync). It reports
// state-file writes per message (writes/op).
func BenchmarkDeliverStateFile(b *testing.B) {
	c := &clock{now: time.Unix(1e9, 0)}
	p := Wrap(&fake{c: c}, Options{RecipientsPerDay: 1 << 30, Clock: c.Now, Sleep: c.Sleep,
		StateFile: filepath.Join(b.TempDir(), "pace", "m365.json")})
	m := msg(1)
	b.ResetTimer()
	for range b.N {
		if _, err := p.Deliver(context.Background(), m); err != nil {
			b.Fatal(err)
		}
		c.Advance(10 * time.Millisecond)
	}
	b.StopTimer()
	p.Close()
	b.ReportMetric(float64(p.stateWrites())/float64(b.N), "writes/op")
}
