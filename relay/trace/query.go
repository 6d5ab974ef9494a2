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
// ignore case. Sender and Recipient given as a whole address
// (anna@example.com) match that address; otherwise (@example.com, anna)
// any address containing them. Sender matches the envelope sender as
// received or as sent. Subject matches a substring; QueueID, MessageID
// (with or without angle brackets), ClientIP, Device and Kind must be
// equal. Device is a configured device's name (Event.Device); the login
// (Event.Account) and the listener's name (Event.Listener) match too, for
// events from before a client was a device.
//
// A filter with a queue ID, a message ID, a whole address or a device is
// answered from the day files' indexes; the others scan the days in range.
type Filter struct {
	QueueID   string
	MessageID string
	Sender    string
	Recipient string
	ClientIP  string
	Device    string
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
	return search(ctx, dir, f, true)
}

// search is Search, with or without the indexes (the benchmark's linear
// scan is the same search without them).
func search(ctx context.Context, dir string, f Filter, useIndex bool) ([]Event, error) {
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
	if (f.Sender == "" && f.Device == "") || f.Kind == "" || f.Kind == Received {
		out, err := searchDays(ctx, dir, days, f, m, useIndex)
		if err != nil {
			return nil, err
		}
		return joinMessages(ctx, dir, days, f, m, out, useIndex)
	}
	// A kind other than received, by sender or device: find the messages
	// by their received events first.
	all := f
	all.Kind = ""
	all.Limit = MaxLimit
	am := newMatcher(all)
	out, err := searchDays(ctx, dir, days, all, am, useIndex)
	if err != nil {
		return nil, err
	}
	if out, err = joinMessages(ctx, dir, days, all, am, out, useIndex); err != nil {
		return nil, err
	}
	out = slices.DeleteFunc(out, func(e Event) bool { return e.Kind != f.Kind })
	return out[:min(len(out), f.Limit)], nil
}

func searchDays(ctx context.Context, dir string, days []int64, f Filter, m matcher, useIndex bool) ([]Event, error) {
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
		got, err := searchDay(ctx, dir, d, m, useIndex)
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

// joinMessages adds the later events of messages whose received event
// matched by what only that event carries: the sender as the device gave
// it (FromReceived) and the listener. The spool keeps the envelope as
// sent, so delivery events of messages spooled before devices existed
// have neither; without the join a search by a device's own sender address
// would find its mail received and never delivered. Events that matched by
// themselves are not added twice.
func joinMessages(ctx context.Context, dir string, days []int64, f Filter, m matcher, out []Event, useIndex bool) ([]Event, error) {
	if f.Sender == "" && f.Device == "" {
		return out, nil
	}
	rest := f
	rest.Sender, rest.Device, rest.QueueID = "", "", ""
	key := func(e Event) string {
		return e.QueueID + "\x00" + string(e.Kind) + "\x00" + e.Time.Format(time.RFC3339Nano) + "\x00" + strings.Join(e.To, ",")
	}
	have := make(map[string]bool, len(out))
	for _, e := range out {
		have[key(e)] = true
	}
	var joined []Event
	for _, e := range out {
		if e.Kind != Received || e.QueueID == "" ||
			(f.Sender == "" || m.addrMatches(e.From, m.sender, m.wholeSender)) &&
				(f.Device == "" || equalFold(e.Account, m.device) || equalFold(e.Device, m.device)) {
			continue // its other events match by themselves
		}
		q := rest
		q.QueueID = e.QueueID
		if q.Since.Before(e.Time) {
			q.Since = e.Time
		}
		if !q.Until.IsZero() && !q.Until.After(q.Since) {
			continue
		}
		qm := newMatcher(q)
		got, err := searchDays(ctx, dir, days, q, qm, useIndex)
		if err != nil {
			return nil, err
		}
		for _, g := range got {
			if g.Kind != Received && !have[key(g)] {
				have[key(g)] = true
				joined = append(joined, g)
			}
		}
	}
	if len(joined) == 0 {
		return out, nil
	}
	out = append(out, joined...)
	slices.SortStableFunc(out, func(a, b Event) int { return b.Time.Compare(a.Time) })
	return out[:min(len(out), f.Limit)], nil
}

// searchDay finds the matches in one day file: through its index where
// the filter has a key and the index covers the file, by scanning the
// rest.
func searchDay(ctx context.Context, dir string, d int64, m matcher, useIndex bool) ([]Event, error) {
	path := filepath.Join(dir, dayName(d))
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) { // removed by retention meanwhile
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var out []Event
	var covered int64
	if h, ok := m.key(); ok && useIndex {
		out, covered, err = indexed(f, filepath.Join(dir, indexName(d)), st.Size(), h, m)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
		}
	}
	rest, err := scanFile(ctx, f, covered, m)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	return append(out, rest...), nil
}

// indexed reads the lines the index of df holds for h and returns those
// that match, and how much of df the index covers (0 without an index).
func indexed(df *os.File, idxPath string, size int64, h uint32, m matcher) ([]Event, int64, error) {
	f, err := os.Open(idxPath)
	if err != nil {
		return nil, 0, nil // no index (an old box's day, or not yet rebuilt): scan it all
	}
	defer f.Close()
	segs, covered, _, err := readChain(f, size, false)
	if err != nil {
		return nil, 0, nil
	}
	var es []entry
	for _, seg := range segs {
		if es, err = lookup(f, seg, h, es); err != nil {
			return nil, 0, nil
		}
	}
	// Newest first, so that a limit stops the reading early.
	slices.SortFunc(es, func(a, b entry) int {
		if a.ms != b.ms {
			return cmpU32(b.ms, a.ms)
		}
		return cmpU32(b.off, a.off)
	})
	var out []Event
	var buf []byte
	for _, e := range es {
		if len(out) >= m.f.Limit && m.f.Limit > 0 {
			break
		}
		if e.n == 0 || e.n > 1<<20 {
			continue
		}
		buf = slices.Grow(buf[:0], int(e.n))[:e.n]
		if _, err := df.ReadAt(buf, int64(e.off)); err != nil {
			return nil, 0, err
		}
		if ev, perr := parseLine(buf); perr == nil && m.match(&ev) {
			out = append(out, ev)
		}
	}
	return out, covered, nil
}

// scanFile parses every line of f from offset from on.
func scanFile(ctx context.Context, f *os.File, from int64, m matcher) ([]Event, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(f, from, 1<<62), 64<<10)
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
			return nil, err
		}
	}
}

type matcher struct {
	f Filter
	// Lower case (ASCII only, addresses and IDs are ASCII in practice;
	// subject is folded fully).
	queueID, clientIP, sender, recipient, subject, device string
	messageID                                             string // also without angle brackets
	// wholeSender and wholeRecipient: the filter is a whole address, to
	// match equal (and to look up in the index).
	wholeSender, wholeRecipient bool
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
		device:    lowerASCII(f.Device),
	}
	m.wholeSender, m.wholeRecipient = wholeAddress(m.sender), wholeAddress(m.recipient)
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

// key is the index key to look the filter up by, the most selective one
// it has; false when it has none (a scan then).
func (m *matcher) key() (uint32, bool) {
	switch {
	case m.queueID != "":
		return hashKey(tagQueue, m.queueID), true
	case m.messageID != "":
		return hashKey(tagMessage, m.messageID), true
	case m.wholeRecipient:
		return hashKey(tagRecipient, m.recipient), true
	case m.wholeSender:
		return hashKey(tagSender, m.sender), true
	case m.device != "":
		return hashKey(tagDevice, m.device), true
	}
	return 0, false
}

// wholeAddress: local@domain, nothing missing on either side.
func wholeAddress(s string) bool {
	at := strings.LastIndexByte(s, '@')
	return at > 0 && at < len(s)-1 && !strings.ContainsAny(s, " \t<>")
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
		m.sender != "" && !m.senderMatches(e),
		m.device != "" && !equalFold(e.Account, m.device) && !equalFold(e.Listener, m.device) && !equalFold(e.Device, m.device),
		m.subject != "" && !strings.Contains(strings.ToLower(e.Subject), m.subject):
		return false
	}
	if m.recipient != "" {
		for _, to := range e.To {
			if m.addrMatches(to, m.recipient, m.wholeRecipient) {
				return true
			}
		}
		return false
	}
	return true
}

func (m *matcher) senderMatches(e *Event) bool {
	return m.addrMatches(e.From, m.sender, m.wholeSender) ||
		e.FromReceived != "" && m.addrMatches(e.FromReceived, m.sender, m.wholeSender)
}

func (m *matcher) addrMatches(addr, want string, whole bool) bool {
	if whole {
		return equalFold(addr, want)
	}
	return containsFold(addr, want)
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
		if e.Kind == Renewal {
			writeRenewal(bw, e)
			continue
		}
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
			from += " (received as " + e.FromReceived + ")"
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
		if e.Account != "" {
			facts = append(facts, "login "+e.Account)
		}
		if e.Listener != "" {
			facts = append(facts, "on "+e.Listener)
		}
		if e.TLSVersion != "" {
			facts = append(facts, "TLS "+e.TLSVersion)
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

// writeRenewal writes a Renewal event for people:
//
//	2026-11-23 14:00:01Z  renewal    entra-cert  addKey failed  key id 3f2a…
//	    reply: certificate renewal, addKey: HTTP 400 Request_BadRequest: …
//	    hint: A tenant app management policy caps certificate lifetimes: …
func writeRenewal(bw *bufio.Writer, e Event) {
	fmt.Fprintf(bw, "%s  %-9s  %s  %s %s", e.Time.UTC().Format("2006-01-02 15:04:05Z"), e.Kind, e.Credential, e.Step, e.Result)
	if e.KeyID != "" {
		fmt.Fprintf(bw, "  key id %s", e.KeyID)
	}
	bw.WriteByte('\n')
	if e.Reply != "" {
		fmt.Fprintf(bw, "    %s\n", e.Reply)
	}
	if e.Hint != "" {
		fmt.Fprintf(bw, "    hint: %s\n", e.Hint)
	}
}
