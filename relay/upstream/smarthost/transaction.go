// One mail transaction on a connection: MAIL, RCPT and DATA, pipelined where
// the smarthost offers it, else step by step, and each recipient's outcome.

package smarthost

import (
	"context"
	"strconv"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/upstream"
)

// outcome of one transaction on a connection.
type outcome struct {
	results []upstream.RcptResult
	err     error
	// keep: the connection is in step and may be reused.
	keep bool
	// stale: the connection failed before the server accepted anything
	// (an idle connection the server had closed): safe to retry once.
	stale bool
}

// send runs one transaction for to (at most MaxRecipients).
func (c *conn) send(ctx context.Context, msg *upstream.Message, to []string, reset bool) outcome {
	o := &c.u.o
	if msg.UTF8 && !c.has("SMTPUTF8") {
		return outcome{keep: true, err: refusal(553, smtp.EnhancedCode{5, 6, 7},
			"The message has non-ASCII addresses and the upstream does not offer SMTPUTF8: use ASCII addresses for this device, or an upstream that offers it.",
			"the message needs SMTPUTF8 (non-ASCII addresses), which %s does not offer", o.Addr)}
	}
	if c.size > 0 && msg.Size > c.size {
		return outcome{keep: true, err: refusal(552, smtp.EnhancedCode{5, 3, 4},
			"The upstream accepts smaller messages than the relay does: set limits.max_message_bytes to its SIZE, "+
				"so that devices are told at once, and ask the sender for smaller attachments.",
			"message of %d bytes is larger than %s accepts (SIZE %d)", msg.Size, o.Addr, c.size)}
	}
	if !validAddr(msg.From) {
		return outcome{keep: true, err: refusal(553, smtp.EnhancedCode{5, 1, 7}, "",
			"invalid sender address %q", msg.From)}
	}
	results := make([]upstream.RcptResult, len(to))
	send := make([]bool, len(to))
	nsend := 0
	for i, rc := range to {
		results[i].Rcpt = rc
		if validAddr(rc) {
			send[i] = true
			nsend++
		} else {
			results[i].Err = refusal(553, smtp.EnhancedCode{5, 1, 3}, "", "invalid recipient address %q", rc)
		}
	}
	if nsend == 0 {
		return outcome{results: results, keep: true}
	}

	c.dirty = true
	c.deadline(o.CommandTimeout)
	if reset {
		c.bw.WriteString("RSET\r\n")
		if !c.pipe {
			if err := c.bw.Flush(); err != nil {
				return outcome{err: netErr(ctx, "RSET", err), stale: true}
			}
			r, err := c.readReply(false)
			if err != nil {
				return outcome{err: netErr(ctx, "RSET", err), stale: true}
			}
			if r.code != 250 {
				return outcome{err: replyErr("upstream refused RSET", r, true), stale: r.code == 421}
			}
		}
	}
	c.writeMail(msg)
	if !c.pipe {
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
		}
		if r.code != 250 {
			return outcome{err: replyErr("upstream refused MAIL FROM", r, false), keep: r.code != 421, stale: r.code == 421 && reset}
		}
		return c.finishStepwise(ctx, msg, to, send, results)
	}
	// With PIPELINING everything up to DATA goes out in one write.
	for i, rc := range to {
		if send[i] {
			c.bw.WriteString("RCPT TO:<")
			c.bw.WriteString(rc)
			c.bw.WriteString(">\r\n")
		}
	}
	c.bw.WriteString("DATA\r\n")
	if err := c.bw.Flush(); err != nil {
		return outcome{err: netErr(ctx, "MAIL FROM", err), stale: reset}
	}
	if reset {
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RSET", err), stale: true}
		}
		if r.code != 250 {
			// Out of step or closing: read nothing more.
			return outcome{err: replyErr("upstream refused RSET", r, true), stale: r.code == 421}
		}
	}
	return c.finishPipelined(ctx, msg, to, send, results)
}

func (c *conn) writeMail(msg *upstream.Message) {
	c.bw.WriteString("MAIL FROM:<")
	c.bw.WriteString(msg.From)
	c.bw.WriteString(">")
	if c.has("SIZE") {
		c.scratch = strconv.AppendInt(append(c.scratch[:0], " SIZE="...), msg.Size, 10)
		c.bw.Write(c.scratch)
	}
	if msg.EightBit && c.has("8BITMIME") {
		c.bw.WriteString(" BODY=8BITMIME")
	}
	if msg.UTF8 {
		c.bw.WriteString(" SMTPUTF8")
	}
	c.bw.WriteString("\r\n")
}

// finishPipelined reads the replies to MAIL, each RCPT and DATA, then
// sends the body.
func (c *conn) finishPipelined(ctx context.Context, msg *upstream.Message, to []string, send []bool, results []upstream.RcptResult) outcome {
	mr, err := c.readReply(false)
	if err != nil {
		return outcome{err: netErr(ctx, "MAIL FROM", err)}
	}
	closing := mr.code == 421
	accepted, refused := 0, 0
	for i, rc := range to {
		if !send[i] {
			refused++
			continue
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		closing = closing || r.code == 421
		switch {
		case mr.code != 250:
			// Refused as a consequence of MAIL; reported as MAIL's refusal.
		case r.code == 250 || r.code == 251:
			accepted++
		default:
			refused++
			results[i].Err = replyErr("upstream refused recipient <"+rc+">", r, false)
		}
	}
	dr, err := c.readReply(false)
	if err != nil {
		return outcome{err: netErr(ctx, "DATA", err)}
	}
	closing = closing || dr.code == 421
	if dr.code == 354 && (mr.code != 250 || accepted == 0) {
		// The server wants data it has nowhere to put: end it empty.
		c.deadline(c.u.o.CommandTimeout)
		c.bw.WriteString(".\r\n")
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "DATA", err)}
		}
		if _, err := c.readReply(false); err != nil {
			return outcome{err: netErr(ctx, "DATA", err)}
		}
	}
	if mr.code != 250 {
		return outcome{err: replyErr("upstream refused MAIL FROM", mr, false), keep: !closing}
	}
	if accepted == 0 {
		return outcome{results: results, keep: !closing}
	}
	if dr.code != 354 {
		return c.dataFailed(replyErr("upstream refused DATA", dr, false), results, refused, !closing)
	}
	return c.body(ctx, msg, results, refused)
}

// finishStepwise continues a transaction without PIPELINING once MAIL
// was accepted.
func (c *conn) finishStepwise(ctx context.Context, msg *upstream.Message, to []string, send []bool, results []upstream.RcptResult) outcome {
	accepted, refused := 0, 0
	for i, rc := range to {
		if !send[i] {
			refused++
			continue
		}
		c.bw.WriteString("RCPT TO:<")
		c.bw.WriteString(rc)
		c.bw.WriteString(">\r\n")
		if err := c.bw.Flush(); err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		r, err := c.readReply(false)
		if err != nil {
			return outcome{err: netErr(ctx, "RCPT TO", err)}
		}
		if r.code == 421 {
			return outcome{err: replyErr("upstream closing at RCPT TO", r, false)}
		}
		if r.code == 250 || r.code == 251 {
			accepted++
		} else {
			refused++
			results[i].Err = replyErr("upstream refused recipient <"+rc+">", r, false)
		}
	}
	if accepted == 0 {
		return outcome{results: results, keep: true}
	}
	r, err := c.cmd(false, "DATA")
	if err != nil {
		return outcome{err: netErr(ctx, "DATA", err)}
	}
	if r.code != 354 {
		return c.dataFailed(replyErr("upstream refused DATA", r, false), results, refused, r.code != 421)
	}
	return c.body(ctx, msg, results, refused)
}

// dataFailed reports a failure that struck every accepted recipient: as the
// call's error when no recipient had its own refusal, else per recipient.
func (c *conn) dataFailed(err error, results []upstream.RcptResult, refused int, keep bool) outcome {
	if refused == 0 {
		return outcome{err: err, keep: keep}
	}
	for i := range results {
		if results[i].Err == nil {
			results[i].Err = err
		}
	}
	return outcome{results: results, keep: keep}
}

// body sends the message and reads the final reply.
func (c *conn) body(ctx context.Context, msg *upstream.Message, results []upstream.RcptResult, refused int) outcome {
	c.deadline(c.u.o.DataTimeout)
	d := newDotWriter(c.bw)
	if err := d.copyBody(msg.Body, msg.Size, c.buf[:]); err != nil {
		// Either way the data must not end as if whole: drop the
		// connection without the final dot.
		return c.dataFailed(netErr(ctx, "sending message "+msg.QueueID, err), results, refused, false)
	}
	d.Close()
	if err := c.bw.Flush(); err != nil {
		return c.dataFailed(netErr(ctx, "sending the message", err), results, refused, false)
	}
	r, err := c.readReply(false)
	if err != nil {
		return c.dataFailed(netErr(ctx, "waiting for the reply to the message", err), results, refused, false)
	}
	if r.code != 250 {
		return c.dataFailed(replyErr("upstream refused the message", r, false), results, refused, r.code != 421)
	}
	c.dirty = false
	c.sent++
	return outcome{results: results, keep: true}
}
