package delivery

import (
	"fmt"
	"testing"
)

// BenchmarkReadyQueue is the cost per message of the ready queue with
// 5,000 messages queued from 40 devices (one pop and one push an
// operation), against the FIFO slice it replaced.
func BenchmarkReadyQueue(b *testing.B) {
	const queued, devices = 5000, 40
	ids := make([]string, queued)
	ws := make([]where, queued)
	for i := range ids {
		ids[i] = fmt.Sprint("Q", i)
		ws[i] = where{flow: fmt.Sprint("device-", i%devices), rank: i % 3}
	}
	b.Run("fair", func(b *testing.B) {
		var q fairQueue
		for i := range ids {
			q.push(ids[i], ws[i])
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id, _, _ := q.pop()
			_ = id
			q.push(ids[i], ws[i])
			i = (i + 1) % queued
		}
	})
	b.Run("fifo-before", func(b *testing.B) {
		var q []string
		q = append(q, ids...)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id := q[0]
			q[0] = ""
			q = q[1:]
			_ = id
			q = append(q, ids[i])
			i = (i + 1) % queued
		}
	})
}
