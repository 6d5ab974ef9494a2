package trace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Filter selects events. Empty fields match everything; the string matches
// ignore case. Sender, Recipient and Subject match substrings (so a domain
// finds all its addresses, and a full address finds itself); QueueID,
// MessageID (with or without angle brackets), ClientIP and Kind must be equal.
type Filter struct {
	QueueID   string
	MessageID string
	Sender    string
	Recipient string
	ClientIP  string
	Kind      Kind
	Subject   string
	Since     time.Time // inclusive
	Until     time.Time // exclusive
	Limit     int       // default DefaultLimit, at most MaxLimit
}

// Query limits.
const (
	DefaultLimit = 1000
	MaxLimit     = 100000
)

// Query returns the events that match f, newest first. Events still in
// memory are written out first, so a query sees everything recorded before
// it. Damaged lines are skipped.
func (s *Store) Query(ctx context.Context, f Filter) ([]Event, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, fmt.Errorf("querying trace: %w", err)
	}
	return Search(ctx, s.dir, f)
}

// Search is Query on a trace directory without opening it as a Store: it
// only reads, so it can run beside the relay that writes (relayd trace).
// Events the relay still holds in memory (at most a second's) are not seen.
func Search(ctx context.Context, dir string, f Filter) ([]Event, error) {
	if f.Limit < 0 || f.Limit > MaxLimit {
		return nil, fmt.Errorf("querying trace: limit %d outside 0..%d", f.Limit, MaxLimit)
	}
	if f.Limit == 0 {
		f.Limit = DefaultLimit
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return nil, fmt.Errorf("querying trace: until %v is not after since %v", f.Until, f.Since)
	}
	m := newMatcher(f)
	days, err := listDays(dir)
	if err != nil {
		return nil, fmt.Errorf("querying trace: %w", err)
	}
	var out []Event
	for _, d := range slices.Backward(days) {
		if !f.Since.IsZero() && d < dayOf(f.Since) {
			break
		}
		if !f.Until.IsZero() && d > dayOf(f.Until) {
			continue
		}
		// A day file holds only that day's events, so every match in it is
		// newer than any match in an older file.
		got, err := scanFile(ctx, filepath.Join(dir, dayName(d)), m)
		if err != nil {
			return nil, fmt.Errorf("querying trace: %w", err)
		}
		slices.SortStableFunc(got, func(a, b Event) int { return b.Time.Compare(a.Time) })
		out = append(out, got...)
		if len(out) >= f.Limit {
			return out[:f.Limit], nil
		}
	}
	return out, nil
}

func scanFile(ctx context.Context, path string, m matcher) ([]Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) { // removed by retention meanwhile
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	var out []Event
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && m.prefilter(line) {
			if e, perr := parseLine(line); perr == nil && m.match(&e) {
				out = append(out, e)
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
		}
	}
}

type matcher struct {
	f Filter
	// Lower case (ASCII only, addresses and IDs are ASCII in practice;
	// subject is folded fully).
	queueID, clientIP, sender, recipient, subject string
	messageID                                     string // also without angle brackets
	// needle is a lower-case string every matching line must contain, to
	// skip parsing most lines of a large file.
	needle string
}

func newMatcher(f Filter) matcher {
	m := matcher{
		f:         f,
		queueID:   lowerASCII(f.QueueID),
		clientIP:  lowerASCII(f.ClientIP),
		sender:    lowerASCII(f.Sender),
		recipient: lowerASCII(f.Recipient),
		subject:   strings.ToLower(f.Subject),
		messageID: lowerASCII(strings.Trim(f.MessageID, "<>")),
	}
	// Only plain ASCII needles without JSON escapes are safe to look for in
	// the raw line.
	for _, s := range []string{m.queueID, m.messageID, m.recipient, m.sender} {
		if s != "" && isPlain(s) {
			m.needle = s
			break
		}
	}
	return m
}

func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func (m *matcher) prefilter(line []byte) bool {
	if m.needle == "" {
		return true
	}
	return containsFold(line, m.needle)
}

// containsFold reports whether b contains the lower-case needle, ignoring
// ASCII case only (so that the raw-line prefilter and the match agree),
// without allocating.
func containsFold[T string | []byte](b T, needle string) bool {
	n := len(needle)
	for i := 0; i+n <= len(b); i++ {
		j := 0
		for ; j < n; j++ {
			c := b[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != needle[j] {
				break
			}
		}
		if j == n {
			return true
		}
	}
	return false
}

func (m *matcher) match(e *Event) bool {
	f := &m.f
	switch {
	case !f.Since.IsZero() && e.Time.Before(f.Since),
		!f.Until.IsZero() && !e.Time.Before(f.Until),
		f.Kind != "" && e.Kind != f.Kind,
		m.queueID != "" && !equalFold(e.QueueID, m.queueID),
		m.messageID != "" && !equalFold(strings.Trim(e.MessageID, "<>"), m.messageID),
		m.clientIP != "" && !equalFold(e.ClientIP, m.clientIP),
		m.sender != "" && !containsFold(e.From, m.sender) && !containsFold(e.FromReceived, m.sender),
		m.subject != "" && !strings.Contains(strings.ToLower(e.Subject), m.subject):
		return false
	}
	if m.recipient != "" {
		for _, to := range e.To {
			if containsFold(to, m.recipient) {
				return true
			}
		}
		return false
	}
	return true
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// equalFold compares s with the lower-case t, ignoring ASCII case only.
func equalFold(s, t string) bool {
	return len(s) == len(t) && containsFold(s, t)
}

// WriteText writes events for people, one block per event:
//
//	2026-11-23 14:00:01Z  deferred   01A20A504C2CF0CC3  attempt 1  via m365-oauth smtp.office365.com:587
//	    from scanner@plant.example to a@example.com  (4196 bytes, "scan 17", <id@mfp>, 10.20.0.31)
//	    reply: 451 4.7.500 Server busy. Please try again later
//	    hint: Microsoft is throttling …
func WriteText(w io.Writer, events []Event) error {
	bw := bufio.NewWriter(w)
	for _, e := range events {
		fmt.Fprintf(bw, "%s  %-9s  %s", e.Time.UTC().Format("2006-01-02 15:04:05Z"), e.Kind, e.QueueID)
		if e.Attempt > 0 {
			fmt.Fprintf(bw, "  attempt %d", e.Attempt)
		}
		if e.Upstream != "" {
			fmt.Fprintf(bw, "  via %s", e.Upstream)
		}
		from := e.From
		if from == "" {
			from = "<>"
		}
		if e.FromReceived != "" {
			from += " (sent as " + e.FromReceived + ")"
		}
		if e.Device != "" {
			from += " [device " + e.Device + "]"
		}
		fmt.Fprintf(bw, "\n    from %s to %s", from, strings.Join(e.To, ", "))
		var facts []string
		if e.Size > 0 {
			facts = append(facts, fmt.Sprintf("%d bytes", e.Size))
		}
		if e.Subject != "" {
			facts = append(facts, strconv.Quote(e.Subject))
		}
		for _, f := range []string{e.MessageID, e.ClientIP} {
			if f != "" {
				facts = append(facts, f)
			}
		}
		if len(facts) > 0 {
			fmt.Fprintf(bw, "  (%s)", strings.Join(facts, ", "))
		}
		bw.WriteByte('\n')
		if e.Reply != "" {
			fmt.Fprintf(bw, "    reply: %s\n", e.Reply)
		}
		if e.Hint != "" {
			fmt.Fprintf(bw, "    hint: %s\n", e.Hint)
		}
	}
	return bw.Flush()
}
