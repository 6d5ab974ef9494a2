// Package forward sends the relay's streams (the message trace, the admin
// API's audit log, the log lines) to a syslog collector: RFC 5424 messages
// over TCP with octet-counted framing (RFC 6587), or over TLS (RFC 5425).
//
// Nothing the relay does waits for the collector. Send frames a message and
// hands it to a writer that appends it to a bounded file in the state
// directory; a sender reads that file and writes it to the collector,
// reconnecting with backoff. What does not fit (the file is full, or the
// writer is far behind) is dropped and counted per stream: a collector that
// is down for a while loses nothing that fits in the buffer.
//
// TCP syslog has no acknowledgement: bytes the kernel accepted just before
// the collector died are gone (RELP would say; rsyslog's imtcp does not).
// The sender narrows that window by noticing a closed connection before it
// writes; a crash of the box may send the last messages twice.
package forward

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siterelay/siterelay/relay/trace"
)

// Target is where and what to forward (config forward.syslog).
type Target struct {
	Address  string      // host:port
	TLS      *tls.Config // nil: plain TCP
	Facility int         // 0 to 23 (16 is local0)
	AppName  string
	Hostname string
	Streams  []string
	// MaxBytes bounds the buffer on disk.
	MaxBytes int64
}

// Options are what a forwarder needs besides its target.
type Options struct {
	// Dir is the buffer's directory (layout.Dir.Forward), made on first use.
	Dir   string
	Clock func() time.Time
	// After is the backoff's timer (time.After by default); tests inject
	// their own to decide when a retry happens.
	After func(time.Duration) <-chan time.Time
	// MinBackoff (default 1s) doubles after each failure up to MaxBackoff
	// (default 1m).
	MinBackoff, MaxBackoff time.Duration
	// MaxPending bounds the framed messages waiting for the writer, in
	// bytes (default 4 MiB).
	MaxPending int
	Logger     *slog.Logger
}

// Stats is what status shows of the forwarder.
type Stats struct {
	Address string `json:"address"`
	// State is StateConnected, StateBuffering or StateIdle.
	State         string            `json:"state"`
	Connected     bool              `json:"connected"`
	BufferedBytes int64             `json:"buffered_bytes"`
	Dropped       map[string]uint64 `json:"dropped"`
	LastError     string            `json:"last_error,omitempty"`
	LastErrorAt   time.Time         `json:"last_error_at,omitzero"`
}

// The forwarder's states, in words status shows.
const (
	// StateConnected: a connection to the collector is open; what is
	// buffered is being sent.
	StateConnected = "connected"
	// StateBuffering: messages wait on disk and the collector does not
	// take them (down, refusing, unreachable); retried with backoff.
	StateBuffering = "buffering"
	// StateIdle: no connection and nothing waits (none is opened before
	// there is something to send).
	StateIdle = "idle"
)

// The buffer's files below Options.Dir: the framed messages, and the offset
// of the first one not yet sent.
const (
	queueFile = "queue"
	sentFile  = "sent"
)

type pend struct {
	stream string
	frame  []byte
}

// Forwarder is one relay's syslog forwarding. Its zero configuration
// (no target) forwards nothing and keeps no file.
type Forwarder struct {
	o       Options
	tgt     atomic.Pointer[Target]
	dropped *prometheus.CounterVec

	flushWake chan struct{}
	sendWake  chan struct{}

	mu           sync.Mutex
	gen          int // bumped by Configure: the sender reconnects
	pending      []pend
	pendingBytes int
	file         *os.File // nil until a target is configured
	size, sent   int64
	drops        map[string]uint64
	connected    bool
	lastErr      string
	lastErrAt    time.Time
}

// New makes a forwarder; Configure gives it a target, Run runs it.
func New(o Options) *Forwarder {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 4 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Forwarder{o: o, flushWake: make(chan struct{}, 1), sendWake: make(chan struct{}, 1), drops: map[string]uint64{}}
	f.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "siterelay_forward_dropped_total",
		Help: "Messages not forwarded to the syslog collector because the buffer was full, by stream.",
	}, []string{"stream"})
	for _, s := range Streams {
		f.dropped.WithLabelValues(s)
	}
	return f
}

// Collectors are the forwarder's metrics: siterelay_forward_dropped_total
// (by stream) and siterelay_forward_buffered_bytes.
func (f *Forwarder) Collectors() []prometheus.Collector {
	return []prometheus.Collector{f.dropped, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "siterelay_forward_buffered_bytes",
		Help: "Bytes waiting in the syslog forwarding buffer on disk.",
	}, func() float64 { return float64(f.Stats().BufferedBytes) })}
}

// Configure sets the target (nil: forward nothing more; what is buffered
// stays for a later target). It opens the buffer on first use.
func (f *Forwarder) Configure(t *Target) error {
	if t != nil {
		if err := f.open(); err != nil {
			return err
		}
		c := *t
		c.Streams = slices.Clone(t.Streams)
		t = &c
	}
	f.mu.Lock()
	f.gen++
	f.mu.Unlock()
	f.tgt.Store(t)
	poke(f.sendWake)
	return nil
}

// wants says whether stream goes out under the target in force.
func (f *Forwarder) wants(stream string) bool {
	t := f.tgt.Load()
	return t != nil && slices.Contains(t.Streams, stream)
}

// Send queues one message of stream. It never blocks: when the writer is
// too far behind, the message is dropped and counted.
func (f *Forwarder) Send(stream string, e Entry) {
	t := f.tgt.Load()
	if t == nil || !slices.Contains(t.Streams, stream) {
		return
	}
	if e.Time.IsZero() {
		e.Time = f.o.Clock()
	}
	msg := format(make([]byte, 0, 256), *t, t.Hostname, stream, e)
	frame := strconv.AppendInt(make([]byte, 0, len(msg)+8), int64(len(msg)), 10)
	frame = append(append(frame, ' '), msg...)
	f.mu.Lock()
	if f.pendingBytes+len(frame) > f.o.MaxPending {
		f.dropLocked(stream)
		f.mu.Unlock()
		return
	}
	f.pending = append(f.pending, pend{stream, frame})
	f.pendingBytes += len(frame)
	f.mu.Unlock()
	poke(f.flushWake)
}

// SendTrace is the trace subscriber.
// It checks the target first: building the entry costs allocations on every
// message, for nothing when no target takes the trace stream.
func (f *Forwarder) SendTrace(e trace.Event) {
	if t := f.tgt.Load(); t == nil || !slices.Contains(t.Streams, StreamTrace) {
		return
	}
	f.Send(StreamTrace, TraceEntry(e))
}

func (f *Forwarder) dropLocked(stream string) {
	f.drops[stream]++
	f.dropped.WithLabelValues(stream).Inc()
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Stats is the forwarder's state now.
func (f *Forwarder) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Stats{Connected: f.connected, BufferedBytes: f.size - f.sent + int64(f.pendingBytes),
		Dropped: make(map[string]uint64, len(Streams)), LastError: f.lastErr, LastErrorAt: f.lastErrAt}
	if t := f.tgt.Load(); t != nil {
		s.Address = t.Address
	}
	for _, st := range Streams {
		s.Dropped[st] = f.drops[st]
	}
	switch {
	case s.Connected:
		s.State = StateConnected
	case s.BufferedBytes > 0:
		s.State = StateBuffering
	default:
		s.State = StateIdle
	}
	return s
}

// open opens the buffer, keeping what an earlier run left unsent: the
// offset is read back, and a torn frame at the end (a crash while writing)
// is cut off.
func (f *Forwarder) open() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.file != nil {
		return nil
	}
	if err := os.MkdirAll(f.o.Dir, 0o700); err != nil {
		return fmt.Errorf("forward buffer: %w", err)
	}
	file, err := os.OpenFile(filepath.Join(f.o.Dir, queueFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("forward buffer: %w", err)
	}
	data, err := io.ReadAll(file)
	if err != nil {
		file.Close()
		return fmt.Errorf("forward buffer: %w", err)
	}
	sent, _ := os.ReadFile(filepath.Join(f.o.Dir, sentFile))
	off, err := strconv.ParseInt(string(bytes.TrimSpace(sent)), 10, 64)
	if err != nil || off < 0 || off > int64(len(data)) {
		off = 0
	}
	// Walk the frames from the start: off must be on a boundary, and the
	// file ends at the last whole frame.
	end, onBoundary := int64(0), off == 0
	for {
		n := frameLen(data[end:])
		if n == 0 {
			break
		}
		end += int64(n)
		if end == off {
			onBoundary = true
		}
	}
	if !onBoundary {
		off = 0
	}
	if end != int64(len(data)) {
		if err := file.Truncate(end); err != nil {
			file.Close()
			return fmt.Errorf("forward buffer: %w", err)
		}
	}
	f.file, f.size, f.sent = file, end, off
	return nil
}

// frameLen is the length of the whole frame at the start of b, 0 if there
// is none.
func frameLen(b []byte) int {
	sp := bytes.IndexByte(b, ' ')
	if sp < 1 || sp > 10 {
		return 0
	}
	n, err := strconv.Atoi(string(b[:sp]))
	if err != nil || n <= 0 || sp+1+n > len(b) {
		return 0
	}
	return sp + 1 + n
}

// Run writes and sends until ctx ends, then writes what is pending to the
// buffer so that the next start sends it.
func (f *Forwarder) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.sender(ctx)
	}()
	for {
		f.flush()
		select {
		case <-ctx.Done():
			f.flush()
			<-done
			f.mu.Lock()
			if f.file != nil {
				f.file.Close()
				f.file = nil
			}
			f.mu.Unlock()
			return
		case <-f.flushWake:
		}
	}
}

// flush appends the pending frames to the buffer, dropping (and counting)
// those that do not fit under the target's MaxBytes.
func (f *Forwarder) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tgt.Load()
	if len(f.pending) == 0 || f.file == nil || t == nil {
		return
	}
	var buf []byte
	for _, p := range f.pending {
		if f.size-f.sent+int64(len(buf)+len(p.frame)) > t.MaxBytes {
			f.dropLocked(p.stream)
			continue
		}
		buf = append(buf, p.frame...)
	}
	f.pending, f.pendingBytes = nil, 0
	if len(buf) == 0 {
		return
	}
	if _, err := f.file.WriteAt(buf, f.size); err != nil {
		// The disk refused: these messages are lost, counted as logs
		// (the stream is not known per byte any more).
		f.noteLocked(fmt.Errorf("writing the buffer: %w", err))
		f.drops[StreamLogs]++
		f.dropped.WithLabelValues(StreamLogs).Inc()
		return
	}
	f.size += int64(len(buf))
	poke(f.sendWake)
}

func (f *Forwarder) noteLocked(err error) {
	f.lastErr, f.lastErrAt = err.Error(), f.o.Clock()
}

// sender writes the buffer to the collector, one connection at a time.
func (f *Forwarder) sender(ctx context.Context) {
	var conn net.Conn
	var connGen int
	backoff := f.o.MinBackoff
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	fail := func(err error) bool {
		f.mu.Lock()
		f.connected = false
		f.noteLocked(err)
		f.mu.Unlock()
		f.o.Logger.Warn("syslog forwarding: will retry", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return false
		case <-f.o.After(backoff):
		}
		backoff = min(2*backoff, f.o.MaxBackoff)
		return true
	}
	for {
		f.mu.Lock()
		t, gen, chunk := f.tgt.Load(), f.gen, f.chunkLocked()
		f.mu.Unlock()
		if conn != nil && (t == nil || gen != connGen) {
			conn.Close()
			conn = nil
		}
		if t == nil || len(chunk) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-f.sendWake:
			}
			continue
		}
		if conn != nil && peerClosed(conn) {
			conn.Close()
			conn = nil
		}
		if conn == nil {
			c, err := dial(ctx, t)
			if err != nil {
				if !fail(fmt.Errorf("connecting to %s: %w", t.Address, err)) {
					return
				}
				continue
			}
			conn, connGen = c, gen
			f.mu.Lock()
			f.connected = true
			f.mu.Unlock()
		}
		conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		n, err := conn.Write(chunk)
		// Only whole frames count as sent; a torn one goes again.
		whole := 0
		for {
			l := frameLen(chunk[whole:n])
			if l == 0 {
				break
			}
			whole += l
		}
		f.advance(int64(whole))
		if err != nil {
			conn.Close()
			conn = nil
			if !fail(fmt.Errorf("writing to %s: %w", t.Address, err)) {
				return
			}
			continue
		}
		backoff = f.o.MinBackoff
	}
}

// maxChunk is the most the sender writes at once.
const maxChunk = 256 << 10

// chunkLocked reads whole frames from the first unsent byte, at most
// maxChunk (or one frame, if that is bigger).
func (f *Forwarder) chunkLocked() []byte {
	if f.file == nil || f.sent >= f.size {
		return nil
	}
	n := min(f.size-f.sent, maxChunk)
	b := make([]byte, n)
	if _, err := f.file.ReadAt(b, f.sent); err != nil {
		f.noteLocked(fmt.Errorf("reading the buffer: %w", err))
		return nil
	}
	whole := 0
	for {
		l := frameLen(b[whole:])
		if l == 0 {
			break
		}
		whole += l
	}
	return b[:whole]
}

// advance records n more bytes as sent; an emptied buffer starts over, and
// one whose sent part has grown past MaxBytes is rewritten without it.
func (f *Forwarder) advance(n int64) {
	if n == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent += n
	t := f.tgt.Load()
	switch {
	case f.sent == f.size:
		if err := f.file.Truncate(0); err == nil {
			f.size, f.sent = 0, 0
		}
	case t != nil && f.sent > t.MaxBytes:
		if err := f.compactLocked(); err != nil {
			f.noteLocked(err)
		}
	}
	os.WriteFile(filepath.Join(f.o.Dir, sentFile), strconv.AppendInt(nil, f.sent, 10), 0o600)
}

func (f *Forwarder) compactLocked() error {
	rest := make([]byte, f.size-f.sent)
	if _, err := f.file.ReadAt(rest, f.sent); err != nil {
		return fmt.Errorf("compacting the buffer: %w", err)
	}
	tmp := filepath.Join(f.o.Dir, queueFile+".tmp")
	if err := os.WriteFile(tmp, rest, 0o600); err != nil {
		return fmt.Errorf("compacting the buffer: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(f.o.Dir, queueFile)); err != nil {
		return fmt.Errorf("compacting the buffer: %w", err)
	}
	file, err := os.OpenFile(filepath.Join(f.o.Dir, queueFile), os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("compacting the buffer: %w", err)
	}
	f.file.Close()
	f.file, f.size, f.sent = file, int64(len(rest)), 0
	return nil
}

func dial(ctx context.Context, t *Target) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if t.TLS != nil {
		d := tls.Dialer{Config: t.TLS}
		return d.DialContext(ctx, "tcp", t.Address)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", t.Address)
}

// readClosed says whether a read on c within d ends other than by its
// deadline: a collector sends nothing, so EOF, a reset or data all mean
// the connection is no use any more. A deadline that has passed before
// the read starts (a busy machine) fails it at once, unread: so this is
// only the fallback and the TLS step of peerClosed (peer_*.go).
func readClosed(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	_, err := c.Read(b[:])
	c.SetReadDeadline(time.Time{})
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}
