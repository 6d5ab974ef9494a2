package spool

import "sync"

// Buffers that every message would otherwise allocate anew and grow by
// copying: its content while the device sends it (Message.buf), its
// record, which the writer writes as its own frame (pwritev) and returns
// here once it is on disk. With 50 sessions of
// 64 KiB messages these copies were most of the heap at any moment, and
// the garbage they left set the collector's target (issue 22: peak RSS).
// The pools keep them between messages; a buffer grown past its pool's
// limit is dropped, so that one large message does not pin memory.
type bufPool struct {
	p        sync.Pool
	min, max int // smallest and largest capacity kept
}

// contentBufs holds Message.buf (inline messages: InlineMax is 256 KiB by
// default) and encoded records.
var contentBufs = &bufPool{min: 16 << 10, max: 512 << 10}

// get returns an empty buffer, with room for at least n bytes when it had
// to make one.
func (bp *bufPool) get(n int) []byte {
	if b, ok := bp.p.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, n)
}

// put keeps b for a later get; b must not be used after.
func (bp *bufPool) put(b []byte) {
	if b == nil || cap(b) < bp.min || cap(b) > bp.max {
		return
	}
	bp.p.Put(&b)
}
