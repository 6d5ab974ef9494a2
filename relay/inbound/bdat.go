package inbound

// BDAT (CHUNKING): a message arriving in chunks, streamed to the spool.

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// bdatTx is a message arriving in BDAT chunks: Prepare runs in its own
// goroutine, reading the chunks through a pipe, so that a message is
// streamed to the spool however many chunks it has.
type bdatTx struct {
	pw     *io.PipeWriter
	n      int64 // bytes so far
	result chan bdatResult
	done   bool // chunks complete (LAST read in full)
}

type bdatResult struct{ reply, readErr error }

var errChunkAborted = errors.New("BDAT transaction abandoned")

func (b *bdatTx) abort() {
	b.pw.CloseWithError(errChunkAborted)
	<-b.result
}

// bdatCmd runs one BDAT chunk; false ends the session.
func (ss *session) bdatCmd(arg string) bool {
	f := strings.Fields(arg)
	var size int64
	var err error
	if len(f) >= 1 {
		size, err = strconv.ParseInt(f[0], 10, 64)
	}
	if len(f) < 1 || len(f) > 2 || err != nil || size < 0 || len(f) == 2 && !strings.EqualFold(f[1], "LAST") {
		// Without a size the chunk's end cannot be found: the dialogue
		// cannot continue.
		ss.reply(501, smtp.EnhancedCode{5, 5, 4}, "syntax: BDAT <size> [LAST]; closing, the chunk's end cannot be found")
		return false
	}
	last := len(f) == 2
	if !ss.inTx || len(ss.rcpts) == 0 {
		if _, err := io.CopyN(io.Discard, ss.r, size); err != nil {
			ss.finishTx(nil, err)
			return false
		}
		ss.reply(503, smtp.EnhancedCode{5, 5, 1}, "send MAIL and RCPT first")
		return true
	}
	if ss.bdat == nil {
		pr, pw := io.Pipe()
		b := &bdatTx{pw: pw, result: make(chan bdatResult, 1)}
		go func() {
			reply, readErr := ss.store(pr, func() bool { return b.done })
			pr.CloseWithError(errChunkAborted) // unblocks a writer if store stopped early
			b.result <- bdatResult{reply, readErr}
		}()
		ss.bdat = b
	}
	b := ss.bdat
	b.n += size
	if max := ss.maxBytes(); max > 0 && b.n > max {
		ss.bdat = nil
		b.abort()
		if _, err := io.CopyN(io.Discard, ss.r, size); err != nil {
			return ss.finishTx(nil, err)
		}
		return ss.finishTx(ss.refuse("too_big", ss.tooBig(max)), nil)
	}
	if _, err := io.CopyN(b.pw, ss.r, size); err != nil {
		// A chunk shorter than declared is never committed.
		var readErr error = err
		if err == io.EOF {
			readErr = io.ErrUnexpectedEOF
		}
		ss.bdat = nil
		b.pw.CloseWithError(readErr)
		<-b.result
		return ss.finishTx(nil, readErr)
	}
	ss.lastSeen.Store(time.Now().UnixNano())
	if !last {
		ss.reply(250, smtp.EnhancedCode{2, 0, 0}, "%d bytes received", size)
		return true
	}
	ss.bdat = nil
	b.done = true
	b.pw.Close()
	res := <-b.result
	return ss.finishTx(res.reply, res.readErr)
}
