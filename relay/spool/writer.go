package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// writer appends frames to the current segment with group commit: callers
// add frames to a pending list and wait on the batch that will cover them;
// one goroutine writes the whole list and fdatasyncs once. While it syncs,
// the next batch fills, and it is held back a moment (gather) for the
// callers the last sync released: otherwise they miss it by the
// millisecond they take to send their next message, and on a slow flush
// the sessions split into two cohorts that take turns, each message
// waiting two flushes.
type writer struct {
	s       *Spool
	mu      sync.Mutex
	seg     *segment
	pend    []chunk
	cur     *batch
	broken  map[*segment]bool
	kick    chan struct{}
	lazy    chan struct{} // a record that need not be flushed at once
	stop    chan struct{}
	stopped chan error
	rotated chan struct{}
	filler  []byte       // the filler record's buffer (padBlock)
	flushes atomic.Int64 // batches written and synced (tests)
}

// chunk is a run of frames for one segment starting at off.
// chunk is the frames a batch writes to one segment, contiguous from off.
// Each frame is its record's own buffer (header room first, see
// newRecord), written with pwritev: a message's content is not copied
// into the batch.
type chunk struct {
	seg    *segment
	off    int64
	frames [][]byte
	// pooled are the buffers the frames lie in that go back to
	// contentBufs once written: a frame framed in place starts inside its
	// buffer, and pooling the frame itself would lose the room before it
	// (the next message's buffer would then be too small and made anew).
	pooled [][]byte
}

type batch struct {
	done chan struct{}
	err  error
	// eager counts the records that asked for a flush (not lazy);
	// forced says a caller waits for everything so far (sync). Both are
	// changed with w.mu held while the batch is w.cur.
	eager  int
	forced bool
	// after runs once the batch is durable (not on failure), before done
	// closes.
	after []func()
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

func (b *batch) wait() error {
	<-b.done
	return b.err
}

func (w *writer) init(s *Spool, seg *segment) {
	w.s, w.seg = s, seg
	w.cur = newBatch()
	w.broken = map[*segment]bool{}
	w.kick = make(chan struct{}, 1)
	w.lazy = make(chan struct{}, 1)
	w.stop = make(chan struct{})
	w.stopped = make(chan error, 1)
	w.rotated = make(chan struct{}, 1)
}

// append adds one record and returns the batch that will make it durable.
func (w *writer) append(body []byte) (*batch, error) {
	b, _, _, err := w.appendFrame(framed(body), nil, false, nil)
	return b, err
}

// appendLazy adds one record that causes no flush of its own: it waits for
// the next batch another record starts, or for LazyFlush.
func (w *writer) appendLazy(body []byte) (*batch, error) {
	return w.appendLazyThen(body, nil)
}

// appendLazyThen is appendLazy with after (when not nil) run once the
// record is durable.
func (w *writer) appendLazyThen(body []byte, after func()) (*batch, error) {
	b, _, _, err := w.appendFrame(framed(body), nil, true, after)
	return b, err
}

// newRecord is an empty record buffer with room for frameHeader and then
// size bytes of body: a record encoded after it needs no copy to be framed.
func newRecord(size int) []byte {
	return contentBufs.get(frameHeader + size)[:frameHeader]
}

// framed copies a small record's body after a frame header's room.
func framed(body []byte) []byte {
	return append(make([]byte, frameHeader, frameHeader+len(body)), body...)
}

// appendFrame adds one record (rec: frameHeader bytes of room, then the
// body; the writer owns it from here) to the current batch and wakes the
// writer: at once, or (lazy) within LazyFlush unless another record wakes
// it first.
func (w *writer) appendFrame(rec, pooled []byte, lazy bool, after func()) (*batch, *segment, int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur == nil {
		return nil, nil, 0, errors.New("spool is closed")
	}
	n := int64(len(rec))
	if w.broken[w.seg] || (w.seg.size > 0 && w.seg.size+n > w.s.opts.SegmentBytes) {
		if err := w.rotate(); err != nil {
			return nil, nil, 0, err
		}
	}
	g := w.seg
	off := w.grow(g, n)
	body := rec[frameHeader:]
	binary.LittleEndian.PutUint32(rec, uint32(len(body)))
	binary.LittleEndian.PutUint32(rec[4:], checksum(g.seq, body))
	if k := len(w.pend); k == 0 || w.pend[k-1].seg != g {
		w.pend = append(w.pend, chunk{seg: g, off: off})
	}
	c := &w.pend[len(w.pend)-1]
	c.frames = append(c.frames, rec)
	if pooled != nil {
		c.pooled = append(c.pooled, pooled)
	}
	if after != nil {
		w.cur.after = append(w.cur.after, after)
	}
	if !lazy {
		w.cur.eager++
	}
	wake := w.kick
	if lazy {
		wake = w.lazy
	}
	select {
	case wake <- struct{}{}:
	default:
	}
	return w.cur, g, off, nil
}

// rotate starts a new segment; called with w.mu held.
func (w *writer) rotate() error {
	g, err := w.s.createSegment(w.seg.seq + 1)
	if err != nil {
		return mapNoSpace(err)
	}
	g.rotated = w.s.opts.Clock()
	w.s.segMu.Lock()
	w.s.segments = append(w.s.segments, g)
	w.s.segMu.Unlock()
	w.seg = g
	select {
	case w.rotated <- struct{}{}:
	default:
	}
	return nil
}

// appendMessage appends a new message and waits until it is durable. It
// returns the segment and the offset of the inline content; the segment's
// inflight count stays raised for the caller to drop once the message is
// adopted.
func (w *writer) appendMessage(m *messageRec) (*segment, int64, error) {
	rec := m.record()
	head := int64(len(rec) - len(m.Data)) // the frame before the content
	b, g, off, err := w.appendFrame(rec, m.pooled(rec), false, nil)
	if err != nil {
		return nil, 0, err
	}
	g.inflight.Add(1)
	if err := b.wait(); err != nil {
		g.inflight.Add(-1)
		return nil, 0, fmt.Errorf("writing to the spool: %w", err)
	}
	return g, off + head, nil
}

// appendCopy appends a compaction copy without waiting; compaction syncs
// before it removes the old segment.
func (w *writer) appendCopy(m *messageRec) (*segment, int64, error) {
	rec := m.record()
	head := int64(len(rec) - len(m.Data))
	_, g, off, err := w.appendFrame(rec, m.pooled(rec), false, nil)
	if err != nil {
		return nil, 0, err
	}
	return g, off + head, nil
}

// sync waits until everything appended so far is durable.
func (w *writer) sync() error {
	w.mu.Lock()
	if w.cur == nil {
		w.mu.Unlock()
		return errors.New("spool is closed")
	}
	b := w.cur
	b.forced = true
	select {
	case w.kick <- struct{}{}:
	default:
	}
	w.mu.Unlock()
	return b.wait()
}

func (w *writer) run() {
	defer w.s.wg.Done()
	var lastErr error
	var lazyTimer *time.Timer
	var lazyDue <-chan time.Time // armed while lazy records wait for a batch
	var want int                 // eager records the last batch carried, and the next had by its end
	var hold time.Duration       // how long the next may wait for as many
	for {
		stopping := false
		select {
		case <-w.kick:
			stopping, _ = w.gather(want, hold)
		case <-w.lazy:
			if lazyDue == nil {
				lazyTimer = time.NewTimer(w.s.opts.LazyFlush)
				lazyDue = lazyTimer.C
			}
			continue
		case <-lazyDue:
		case <-w.stop:
			stopping = true
		}
		if lazyTimer != nil {
			lazyTimer.Stop()
			lazyTimer, lazyDue = nil, nil
		}
		w.mu.Lock()
		w.padBlock()
		chunks, b := w.pend, w.cur
		w.pend = nil
		if stopping {
			w.cur = nil
		} else {
			w.cur = newBatch()
		}
		w.mu.Unlock()
		start := time.Now()
		b.err = w.flush(chunks)
		// The next batch waits for the callers this one releases and for
		// those already waiting: sessions that fell into alternate batches
		// are merged back into one.
		want, hold = b.eager, time.Since(start)/4
		w.mu.Lock()
		if w.cur != nil {
			want += w.cur.eager
		}
		w.mu.Unlock()
		if w.s.opts.gatherHold > 0 {
			hold = w.s.opts.gatherHold
		}
		for _, c := range chunks {
			for _, buf := range c.pooled {
				contentBufs.put(buf) // written: the next records reuse them
			}
		}
		if b.err != nil {
			lastErr = b.err
		} else {
			for _, f := range b.after {
				f()
			}
		}
		close(b.done)
		if stopping {
			w.stopped <- lastErr
			return
		}
	}
}

// gather holds the pending batch back until it has as many eager records
// as the last batch carried (the callers that batch released, sending
// again), for at most hold: a quarter of the last flush, so microseconds on
// a fast disk and a few milliseconds on an SD card, where it saves a whole
// flush. It lets go at once for a sync() and for a lone caller. It returns
// whether the writer was asked to stop meanwhile, and the count it let go
// at (tests).
func (w *writer) gather(want int, hold time.Duration) (stop bool, n int) {
	var timer *time.Timer
	for {
		w.mu.Lock()
		forced := w.cur != nil && w.cur.forced
		if w.cur != nil {
			n = w.cur.eager
		}
		w.mu.Unlock()
		if want <= 1 || hold <= 0 || n >= want || forced {
			return false, n
		}
		if timer == nil {
			timer = time.NewTimer(hold)
			defer timer.Stop()
		}
		select {
		case <-w.kick:
		case <-timer.C:
			return false, n
		case <-w.stop:
			return true, n
		}
	}
}

// padBlock ends the pending frames at a file-system block boundary with a
// filler record, so that the next batch starts on a block of its own:
// otherwise its fdatasync writes again the block this batch ended in, a
// whole block per flush (670 B of the 5.1 KB written per 4 KiB message at
// six messages a flush). The filler costs segment space, half a block a
// flush on average, not device writes: that half block is written once
// either way. Called with w.mu held, before the batch is taken.
func (w *writer) padBlock() {
	k := len(w.pend)
	if k == 0 {
		return
	}
	c := &w.pend[k-1]
	g := c.seg
	if g != w.seg || w.broken[g] {
		return
	}
	pad := -g.size & (blockSize - 1)
	if pad == 0 || g.size+pad > w.s.opts.SegmentBytes {
		return
	}
	if w.filler == nil {
		w.filler = make([]byte, blockSize)
	}
	// One buffer serves every filler: the last batch's write is done.
	rec := fillerRecord(w.filler, int(pad))
	if rec == nil {
		return // too short a gap for a record: the block is written twice
	}
	body := rec[frameHeader:]
	binary.LittleEndian.PutUint32(rec, uint32(len(body)))
	binary.LittleEndian.PutUint32(rec[4:], checksum(g.seq, body))
	c.frames = append(c.frames, rec)
	w.grow(g, pad)
}

// grow reserves n bytes at the end of g and returns where they start;
// called with w.mu held.
func (w *writer) grow(g *segment, n int64) (off int64) {
	off = g.size
	g.size += n
	if off <= w.s.opts.SegmentBytes/2 && g.size > w.s.opts.SegmentBytes/2 {
		// Half full: have the next segment's file ready in time.
		select {
		case w.s.needSpare <- struct{}{}:
		default:
		}
	}
	return off
}

// blockSize is the unit fdatasync writes a file in: ext4's block (and the
// page size of the kernels the relay runs on).
const blockSize = 4096

// fillerRecord is a frame of exactly n bytes made in buf (header room
// included, to be filled in) that recovery reads and ignores: a done record for an id of
// zero bytes, which no message has (ids are hex digits). Relays that
// predate fillers read it the same way. It is nil when no record is n
// bytes long (n below 10, or 138).
func fillerRecord(buf []byte, n int) []byte {
	for vl := 1; vl <= 2; vl++ {
		idLen := n - frameHeader - 1 - vl
		if idLen >= 0 && len(binary.AppendUvarint(nil, uint64(idLen))) == vl && n <= cap(buf) {
			rec := buf[:n]
			clear(rec)
			rec = append(rec[:frameHeader], recDone)
			rec = binary.AppendUvarint(rec, uint64(idLen))
			return rec[:n] // the id: zeros
		}
	}
	return nil
}

// flush writes chunks and syncs every segment they touched. A segment that
// fails a write or sync is never written again: frames queued behind the
// failure would otherwise land after a hole.
func (w *writer) flush(chunks []chunk) error {
	if len(chunks) > 0 {
		w.flushes.Add(1)
	}
	var err error
	var touched []*segment
	for _, c := range chunks {
		if w.isBroken(c.seg) {
			err = errors.Join(err, errors.New("segment failed earlier"))
			continue
		}
		if werr := writeFrames(c.seg.f, c.frames, c.off); werr != nil {
			w.markBroken(c.seg)
			err = errors.Join(err, mapNoSpace(werr))
			continue
		}
		if len(touched) == 0 || touched[len(touched)-1] != c.seg {
			touched = append(touched, c.seg)
		}
	}
	for _, g := range touched {
		if serr := unix.Fdatasync(int(g.f.Fd())); serr != nil {
			w.markBroken(g)
			err = errors.Join(err, fmt.Errorf("fdatasync: %w", mapNoSpace(serr)))
		}
	}
	return err
}

// writeFrames writes frames contiguously from off with pwritev, as many
// at a time as the kernel takes (IOV_MAX 1024), resuming after a short
// write.
func writeFrames(f *os.File, frames [][]byte, off int64) error {
	iov := slices.Clone(frames) // resliced below; the frames go back to their pool whole
	fd := int(f.Fd())
	for len(iov) > 0 {
		n, err := unix.Pwritev(fd, iov[:min(len(iov), 1024)], off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: err}
		}
		if n == 0 {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: io.ErrShortWrite}
		}
		off += int64(n)
		for n > 0 {
			if n < len(iov[0]) {
				iov[0] = iov[0][n:]
				break
			}
			n -= len(iov[0])
			iov = iov[1:]
		}
	}
	return nil
}

func (w *writer) isBroken(g *segment) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.broken[g]
}

func (w *writer) markBroken(g *segment) {
	w.mu.Lock()
	w.broken[g] = true
	w.mu.Unlock()
	w.s.log.Error("spool: a segment failed to write; new records go to a fresh segment", "segment", g.path)
}

func (w *writer) close() error {
	close(w.stop)
	return <-w.stopped
}

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
