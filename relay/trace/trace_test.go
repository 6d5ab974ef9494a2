package trace

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// clock is a settable clock for tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T, dir string, c *clock) *Store {
	t.Helper()
	s, err := Open(dir, Options{Clock: c.now, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sample() []Event {
	return []Event{
		{Time: t0, Kind: Received, QueueID: "Q1", MessageID: "<a1@printer>", ClientIP: "10.1.2.3",
			From: "scanner@plant.example", To: []string{"Anna@Example.com", "bob@example.com"}, Subject: "Scan 0042", Size: 123456},
		{Time: t0.Add(1 * time.Second), Kind: Deferred, QueueID: "Q1", MessageID: "<a1@printer>",
			From: "scanner@plant.example", To: []string{"Anna@Example.com"}, Attempt: 1,
			Reply: "451 4.7.500 Server busy", Hint: "Microsoft is throttling; the relay retries later.", Upstream: "smtp.office365.com"},
		{Time: t0.Add(2 * time.Second), Kind: Bounced, QueueID: "Q1", MessageID: "<a1@printer>",
			From: "scanner@plant.example", To: []string{"bob@example.com"}, Attempt: 1,
			Reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound", Hint: "The recipient does not exist.", Upstream: "smtp.office365.com"},
		{Time: t0.Add(3 * time.Second), Kind: Delivered, QueueID: "Q1", MessageID: "<a1@printer>",
			From: "scanner@plant.example", To: []string{"Anna@Example.com"}, Attempt: 2, Reply: "250 2.0.0 OK", Upstream: "smtp.office365.com"},
		{Time: t0.Add(4 * time.Second), Kind: Received, QueueID: "Q2", ClientIP: "10.1.2.4",
			From: "alarm@scada.example", To: []string{"ops@example.com"}, Subject: "Störung Linie 3 \"Presse\"", Size: 900},
		{Time: t0.Add(25 * time.Hour), Kind: Expired, QueueID: "Q3", From: "", To: []string{"x@example.org"}, Attempt: 40,
			Reply: "421 4.4.2 connection dropped"},
	}
}

func TestRecordQuery(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t0.Add(26 * time.Hour)}
	s := open(t, dir, c)
	for _, e := range sample() {
		s.Record(e)
	}
	ev := sample()
	ctx := context.Background()
	tests := []struct {
		name string
		f    Filter
		want []Event
	}{
		{"all, newest first", Filter{}, []Event{ev[5], ev[4], ev[3], ev[2], ev[1], ev[0]}},
		{"queue id", Filter{QueueID: "q1"}, []Event{ev[3], ev[2], ev[1], ev[0]}},
		{"message id with brackets", Filter{MessageID: "<A1@printer>"}, []Event{ev[3], ev[2], ev[1], ev[0]}},
		{"message id without brackets", Filter{MessageID: "a1@printer"}, []Event{ev[3], ev[2], ev[1], ev[0]}},
		{"recipient exact, other case", Filter{Recipient: "anna@example.com"}, []Event{ev[3], ev[1], ev[0]}},
		{"recipient domain", Filter{Recipient: "@example.org"}, []Event{ev[5]}},
		{"sender substring", Filter{Sender: "SCADA"}, []Event{ev[4]}},
		{"client ip", Filter{ClientIP: "10.1.2.3"}, []Event{ev[0]}},
		{"kind", Filter{Kind: Bounced}, []Event{ev[2]}},
		{"subject, unicode case", Filter{Subject: "STÖRUNG"}, []Event{ev[4]}},
		{"subject with quote", Filter{Subject: `"presse"`}, []Event{ev[4]}},
		{"since inclusive", Filter{Since: t0.Add(3 * time.Second)}, []Event{ev[5], ev[4], ev[3]}},
		{"until exclusive", Filter{Until: t0.Add(1 * time.Second)}, []Event{ev[0]}},
		{"since and until", Filter{Since: t0.Add(time.Second), Until: t0.Add(3 * time.Second)}, []Event{ev[2], ev[1]}},
		{"limit", Filter{Limit: 2}, []Event{ev[5], ev[4]}},
		{"limit within a day", Filter{Limit: 3}, []Event{ev[5], ev[4], ev[3]}},
		{"combined", Filter{QueueID: "Q1", Recipient: "bob", Kind: Received}, []Event{ev[0]}},
		{"no match", Filter{Recipient: "nobody"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Query(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %d events:\n%+v\nwant %d:\n%+v", len(got), got, len(tt.want), tt.want)
			}
		})
	}
	// One file per UTC day.
	for _, name := range []string{"2026-11-23.jsonl", "2026-11-24.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	if got, want := s.Stats(), (Stats{Recorded: 6}); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

func TestRecordSetsTimeAndCopies(t *testing.T) {
	c := &clock{t0}
	s := open(t, t.TempDir(), c)
	to := []string{"a@example.com"}
	s.Record(Event{Kind: Received, From: "p@x", To: to})
	to[0] = "changed@example.com" // the caller reuses its slice
	got, err := s.Query(context.Background(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Event{{Time: t0, Kind: Received, From: "p@x", To: []string{"a@example.com"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// What a device sent reaches subscribers and the files with its control
// characters escaped, whoever records the event (inbound, delivery from
// the spool's raw envelope, the admin API); the upstream's reply is kept.
func TestRecordEscapesControlCharacters(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t0})
	var sub Event
	s.Subscribe(func(e Event) { sub = e })
	s.Record(Event{Kind: Deferred, From: "a\x1b[2J\x1b@x", FromReceived: "\u009b@x", To: []string{"ok@x", "b\u202e@x"},
		Subject: "s\x1b]0;t\x07", MessageID: "<m\r\n@x>", Account: "u\u2066", Reply: "451 4.3.0 busy\nretry", Hint: "wait"})
	want := Event{Time: t0, Kind: Deferred, From: `a\x1b[2J\x1b@x`, FromReceived: `\u009b@x`, To: []string{"ok@x", `b\u202e@x`},
		Subject: `s\x1b]0;t\x07`, MessageID: `<m\x0d\x0a@x>`, Account: `u\u2066`, Reply: "451 4.3.0 busy\nretry", Hint: "wait"}
	if !reflect.DeepEqual(sub, want) {
		t.Errorf("subscriber got %+v,\nwant %+v", sub, want)
	}
	got, err := s.Query(context.Background(), Filter{})
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("stored %+v (%v),\nwant %+v", got, err, want)
	}
}

func TestSubscribe(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t0})
	var got []Kind
	s.Subscribe(func(e Event) { got = append(got, e.Kind) })
	s.Subscribe(func(e Event) { got = append(got, e.Kind+"!") })
	s.Record(Event{Kind: Received})
	s.Record(Event{Kind: Delivered})
	if want := []Kind{Received, Received + "!", Delivered, Delivered + "!"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestMalformedLinesSkipped(t *testing.T) {
	dir := t.TempDir()
	good := appendEvent(nil, &Event{Time: t0, Kind: Received, QueueID: "OK1", From: "a@b"})
	content := "not json\n" +
		"\n" +
		`{"time":"2026-11-23T10:00:00Z"}` + "\n" + // no kind
		`{"kind":"received"}` + "\n" + // no time
		string(good) +
		"\x00\x00\x00\x00\n" + // zeroed blocks after a crash
		string(good[:len(good)/2]) // cut off mid-line: the last write before a crash
	if err := os.WriteFile(filepath.Join(dir, "2026-11-23.jsonl"), []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir, &clock{t0})
	s.Record(Event{Time: t0.Add(time.Minute), Kind: Delivered, QueueID: "OK2", From: "a@b"})
	got, err := s.Query(context.Background(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.QueueID)
	}
	// OK2 survives because the store starts a new line after the torn one.
	if want := []string{"OK2", "OK1"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("got %v, want %v", ids, want)
	}
}

func TestRetention(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"2026-10-24.jsonl", "2026-10-25.jsonl", "2026-11-23.jsonl", "notes.txt", "2026-13-01.jsonl"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	c := &clock{t0} // 2026-11-23: 30 days kept are 2026-10-25 .. 2026-11-23
	s, err := newStore(dir, Options{Clock: c.now})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(t, dir), []string{"2026-10-25.jsonl", "2026-11-23.jsonl", "2026-13-01.jsonl", "notes.txt"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after open: %v, want %v", got, want)
	}
	c.t = t0.Add(24 * time.Hour)
	if err := s.prune(); err != nil {
		t.Fatal(err)
	}
	if got, want := names(t, dir), []string{"2026-11-23.jsonl", "2026-13-01.jsonl", "notes.txt"}; !reflect.DeepEqual(got, want) {
		t.Errorf("a day later: %v, want %v", got, want)
	}
}

func TestRetentionMaxBytes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"2026-11-20.jsonl", "2026-11-21.jsonl", "2026-11-22.jsonl", "2026-11-23.jsonl"} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 100), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		max  int64
		want []string
	}{
		{400, []string{"2026-11-20.jsonl", "2026-11-21.jsonl", "2026-11-22.jsonl", "2026-11-23.jsonl"}},
		{250, []string{"2026-11-22.jsonl", "2026-11-23.jsonl"}},
		{10, []string{"2026-11-23.jsonl"}}, // today's file stays
	} {
		if _, err := newStore(dir, Options{Clock: (&clock{t0}).now, MaxBytes: tt.max}); err != nil {
			t.Fatal(err)
		}
		if got := names(t, dir); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("MaxBytes %d: %v, want %v", tt.max, got, tt.want)
		}
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// When the writer cannot keep up, Record drops and counts instead of
// blocking, and every event it did not drop reaches the file.
func TestDropsWhenFull(t *testing.T) {
	dir := t.TempDir()
	s, err := newStore(dir, Options{Clock: (&clock{t0}).now, BufferBytes: 4096, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// The writer is not running yet, so the buffer fills.
	e := Event{Time: t0, Kind: Received, QueueID: "Q", From: "a@b", Subject: strings.Repeat("x", 100)}
	const n = 200
	for range n {
		s.Record(e)
	}
	st := s.Stats()
	if st.Dropped == 0 || st.Recorded+st.Dropped != n {
		t.Fatalf("stats %+v: want some dropped, %d in all", st, n)
	}
	go s.writer()
	got, err := s.Query(context.Background(), Filter{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(got)) != st.Recorded {
		t.Errorf("%d events on disk, want %d", len(got), st.Recorded)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Record(e)
	if got := s.Stats().Dropped; got != st.Dropped+1 {
		t.Errorf("after close dropped %d, want %d", got, st.Dropped+1)
	}
}

func TestCloseFlushes(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t0}
	s, err := Open(dir, Options{Clock: c.now, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s.Record(Event{Kind: Received, QueueID: "Q9"})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err == nil {
		t.Error("second Close: no error")
	}
	if err := s.Flush(context.Background()); err == nil {
		t.Error("Flush after Close: no error")
	}
	b, err := os.ReadFile(filepath.Join(dir, "2026-11-23.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"time":"2026-11-23T10:00:00Z","kind":"received","queue_id":"Q9","from":""}`+"\n"; got != want {
		t.Errorf("file %q, want %q", got, want)
	}
}

func TestWriteError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trace")
	s := open(t, dir, &clock{t0})
	// Replace the directory by a file: the day file cannot be created.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	s.Record(Event{Kind: Received})
	s.Record(Event{Kind: Delivered})
	if err := s.Flush(context.Background()); err == nil || !strings.Contains(err.Error(), "opening trace file") {
		t.Errorf("Flush: got %v, want an error opening the trace file", err)
	}
	if got, want := s.Stats(), (Stats{Recorded: 2, Dropped: 2, WriteErrors: 1}); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

func TestErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o640)
	for _, tt := range []struct {
		name string
		dir  string
		opts Options
		want string
	}{
		{"negative retention", t.TempDir(), Options{RetentionDays: -1}, "RetentionDays -1 is negative"},
		{"negative max bytes", t.TempDir(), Options{MaxBytes: -1}, "MaxBytes -1 is negative"},
		{"small buffer", t.TempDir(), Options{BufferBytes: 100}, "BufferBytes 100 is below 4096"},
		{"negative interval", t.TempDir(), Options{FlushInterval: -time.Second}, "FlushInterval -1s is negative"},
		{"dir is a file", file, Options{}, "not a directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(tt.dir, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}

	s := open(t, t.TempDir(), &clock{t0})
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tt := range []struct {
		name string
		ctx  context.Context
		f    Filter
		want string
	}{
		{"negative limit", ctx, Filter{Limit: -1}, "limit -1 outside"},
		{"huge limit", ctx, Filter{Limit: MaxLimit + 1}, "outside 0..100000"},
		{"until before since", ctx, Filter{Since: t0, Until: t0}, "is not after since"},
		{"cancelled", cancelled, Filter{}, "context canceled"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Query(tt.ctx, tt.f)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEncodeEscapes(t *testing.T) {
	e := Event{Time: t0, Kind: Received, From: "a\"b\\c\n\r\t\x01\x7f", Subject: "bad \xff utf8 ok ü", To: []string{"<x@y>"}}
	got := string(appendEvent(nil, &e))
	want := `{"time":"2026-11-23T10:00:00Z","kind":"received","from":"a\"b\\c\n\r\t\u0001\u007f","to":["<x@y>"],"subject":"bad \ufffd utf8 ok ü"}` + "\n"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	back, err := parseLine([]byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if back.From != e.From || back.Subject != "bad \uFFFD utf8 ok ü" {
		t.Errorf("parsed back %+v", back)
	}
	long := Event{Time: t0, Kind: Received, Subject: strings.Repeat("s", 3*maxField)}
	back, err = parseLine(appendEvent(nil, &long))
	if err != nil || len(back.Subject) != maxField {
		t.Errorf("long subject: %d bytes, err %v; want %d", len(back.Subject), err, maxField)
	}
}

func FuzzParseLine(f *testing.F) {
	for _, e := range sample() {
		f.Add(appendEvent(nil, &e))
	}
	f.Add([]byte(`{"time":"2026-11-23T10:00:00Z","kind":"x","to":null}`))
	f.Add([]byte(`{"time":"2026-11-23T10:00:00Z","kind":"x","size":1e400}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := parseLine(line)
		if err != nil {
			return
		}
		// What parses must survive our own encoding unchanged, unless its
		// strings are not valid UTF-8 or too long (they are cleaned).
		for _, s := range append([]string{e.QueueID, e.MessageID, e.ClientIP, e.From, e.Subject, e.Reply, e.Hint, e.Upstream, string(e.Kind)}, e.To...) {
			if len(s) > maxField {
				return
			}
		}
		if e.Time.Year() < 0 || e.Time.Year() > 9999 {
			return
		}
		again, err := parseLine(appendEvent(nil, &e))
		if err != nil {
			t.Fatalf("re-encoded line does not parse: %v", err)
		}
		if len(e.To) == 0 {
			e.To = nil
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, e)
		}
	})
}

func FuzzAppendEvent(f *testing.F) {
	f.Add("Q1", "scanner@plant", "a@b", "Scan \"1\"\n", "550 5.1.1 x", int64(5), 3)
	f.Fuzz(func(t *testing.T, queueID, from, to, subject, reply string, size int64, attempt int) {
		e := Event{Time: t0, Kind: Deferred, QueueID: queueID, From: from, To: []string{to}, Subject: subject, Reply: reply, Size: size, Attempt: attempt}
		line := appendEvent(nil, &e)
		if strings.Count(string(line), "\n") != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("not one line: %q", line)
		}
		got, err := parseLine(line)
		if err != nil {
			t.Fatalf("%v: %q", err, line)
		}
		clean := func(s string) string {
			if len(s) > maxField {
				s = s[:maxField]
			}
			var b strings.Builder
			for i := 0; i < len(s); {
				r, n := utf8.DecodeRuneInString(s[i:])
				b.WriteRune(r)
				i += n
			}
			return b.String()
		}
		want := Event{Time: t0, Kind: Deferred, QueueID: clean(queueID), From: clean(from), To: []string{clean(to)}, Subject: clean(subject), Reply: clean(reply), Size: size, Attempt: attempt}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})
}

func TestWriteText(t *testing.T) {
	at := time.Date(2026, 11, 23, 13, 31, 7, 0, time.UTC)
	for _, tc := range []struct {
		name string
		e    Event
		want string
	}{
		{"received", Event{Time: at, Kind: Received, QueueID: "Q1", From: "plc@plant.example", To: []string{"a@example.com", "b@example.com"},
			Size: 812, Subject: `alarm "7"`, MessageID: "<x@plc>", ClientIP: "10.20.0.31"},
			"2026-11-23 13:31:07Z  received   Q1\n    from plc@plant.example to a@example.com, b@example.com  (812 bytes, \"alarm \\\"7\\\"\", <x@plc>, 10.20.0.31)\n"},
		{"deferred", Event{Time: at, Kind: Deferred, QueueID: "Q1", From: "plc@plant.example", To: []string{"a@example.com"}, Attempt: 2,
			Upstream: "smarthost", Reply: "421 4.3.2 busy", Hint: "try later"},
			"2026-11-23 13:31:07Z  deferred   Q1  attempt 2  via smarthost\n    from plc@plant.example to a@example.com\n    reply: 421 4.3.2 busy\n    hint: try later\n"},
		{"null sender", Event{Time: at, Kind: Failed, QueueID: "Q2", To: []string{"x@example.com"}},
			"2026-11-23 13:31:07Z  failed     Q2\n    from <> to x@example.com\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := WriteText(&b, []Event{tc.e}); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestSearchReadsWithoutAStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Record(Event{Kind: Received, QueueID: "Q1"})
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The store is still open and writing: Search only reads beside it.
	got, err := Search(context.Background(), dir, Filter{QueueID: "Q1"})
	if err != nil || len(got) != 1 {
		t.Errorf("Search: got %v, %v; want the one event", got, err)
	}
	s.Close()
	if _, err := Search(context.Background(), filepath.Join(dir, "missing"), Filter{}); err == nil || !strings.Contains(err.Error(), "listing trace files") {
		t.Errorf("Search of a missing directory: got %v, want an error saying so", err)
	}
}

// TestOriginalSenderOnEveryEventIsFoundOnce: when every event of a message
// carries the sender as the device gave it (devices keep it in the spool),
// a search by that sender finds each event once, not once by itself and
// again through the join by queue ID.
func TestOriginalSenderOnEveryEventIsFoundOnce(t *testing.T) {
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c)
	for _, e := range []Event{
		{Time: t0, Kind: Received, QueueID: "Q9", From: "relay@contoso.com", FromReceived: "root@scada.local", Device: "boiler", To: []string{"ops@example.com"}},
		{Time: t0.Add(time.Second), Kind: Delivered, QueueID: "Q9", From: "relay@contoso.com", FromReceived: "root@scada.local", Device: "boiler", To: []string{"ops@example.com"}},
	} {
		s.Record(e)
	}
	s.Flush(context.Background())
	for _, f := range []Filter{{Sender: "root@scada.local"}, {Device: "boiler"}} {
		got, err := s.Query(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Kind != Delivered || got[1].Kind != Received {
			t.Errorf("Query(%+v) = %d events %v, want delivered and received once each", f, len(got), got)
		}
	}
}

// A renewal step is kept with its own fields and found by its kind only:
// no message kind's search returns it, and WriteText shows it as a step.
func TestRenewalEvent(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t0})
	s.Record(Event{Time: t0, Kind: Received, QueueID: "Q1", From: "p@x", To: []string{"a@x"}})
	want := Event{Time: t0.Add(time.Second), Kind: Renewal, Credential: "entra-cert", Step: "addKey", KeyID: "3f2a", Result: "failed",
		Reply: "certificate renewal, addKey: HTTP 400 Request_BadRequest", Hint: "lower certificate_days"}
	s.Record(want)
	ctx := context.Background()
	got, err := s.Query(ctx, Filter{Kind: Renewal})
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("renewal events %+v (%v), want %+v", got, err, want)
	}
	if got, _ := s.Query(ctx, Filter{Kind: Received}); len(got) != 1 || got[0].Kind != Received {
		t.Errorf("received events %+v", got)
	}
	if Renewal.Message() || !Deferred.Message() || !slices.Contains(SearchKinds, Renewal) || slices.Contains(Kinds, Renewal) {
		t.Error("Renewal must be searchable and not a message kind")
	}
	var b strings.Builder
	WriteText(&b, got)
	if w := "2026-11-23 10:00:01Z  renewal    entra-cert  addKey failed  key id 3f2a\n    certificate renewal, addKey: HTTP 400 Request_BadRequest\n    hint: lower certificate_days\n"; b.String() != w {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), w)
	}
}
