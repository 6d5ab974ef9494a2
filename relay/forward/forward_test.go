package forward

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/forward/forwardtest"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

var t0 = time.Date(2026, 12, 7, 13, 30, 0, 123456000, time.UTC)

func TestFormat(t *testing.T) {
	tgt := Target{Facility: 16, AppName: "siterelay"}
	tests := []struct {
		name, host, stream string
		e                  Entry
		want               string
	}{
		{"trace delivered", "plant-7", StreamTrace,
			TraceEntry(trace.Event{Time: t0, Kind: trace.Delivered, QueueID: "q1", Device: "printer", Upstream: "m365", From: "a@x", To: []string{"b@y", "c@y"}, Attempt: 2, Subject: "secret plans"}),
			`<134>1 2026-12-07T13:30:00.123456Z plant-7 siterelay - trace [siterelay@32473 result="delivered" queue_id="q1" device="printer" upstream="m365" from="a@x" to="b@y,c@y" attempt="2"] delivered q1`},
		{"deferred is a warning", "h", StreamTrace,
			TraceEntry(trace.Event{Time: t0, Kind: trace.Deferred, QueueID: "q2", Hint: "throttled"}),
			`<132>1 2026-12-07T13:30:00.123456Z h siterelay - trace [siterelay@32473 result="deferred" queue_id="q2"] deferred q2: throttled`},
		{"a failed renewal step names its credential and step, and is a warning", "plant-7", StreamTrace,
			TraceEntry(trace.Event{Time: t0, Kind: trace.Renewal, Credential: "m365-cert", Step: "addKey", KeyID: "k-2", Result: "failed", Reply: "403 Authorization_RequestDenied", Hint: "tenant policy caps certificate lifetime"}),
			`<132>1 2026-12-07T13:30:00.123456Z plant-7 siterelay - trace [siterelay@32473 result="renewal" credential="m365-cert" step="addKey" key_id="k-2" outcome="failed" reply="403 Authorization_RequestDenied"] renewal of m365-cert: addKey failed: tenant policy caps certificate lifetime`},
		{"escapes and control characters", "", StreamLogs,
			Entry{Time: t0, Severity: SevError, Params: []Param{{"v", `a"b\c]d` + "\r\n"}}, Msg: "line\nbreak"},
			`<131>1 2026-12-07T13:30:00.123456Z - siterelay - logs [siterelay@32473 v="a\"b\\c\]d  "] line break`},
		{"audit: who, what, how it ended", "plant-7", StreamAudit,
			AuditEntry(Audit{Time: t0, Actor: "ana@example.com", Node: "laptop", Role: "admin", Action: "put credential m365 (client-secret)", Method: "PUT", Path: "/v1/credentials/m365", Outcome: "ok", Status: 200, Seq: 7}),
			`<133>1 2026-12-07T13:30:00.123456Z plant-7 siterelay - audit [siterelay@32473 actor="ana@example.com" node="laptop" role="admin" action="put credential m365 (client-secret)" outcome="ok" status="200" method="PUT" path="/v1/credentials/m365" seq="7"] ana@example.com put credential m365 (client-secret): ok`},
		{"audit: a summarised refusal is a warning", "plant-7", StreamAudit,
			AuditEntry(Audit{Time: t0, Actor: "stranger", Node: "stranger", Role: "none", Action: "PUT /v1/config", Outcome: "forbidden", Status: 403, Seq: 8, Count: 12, Cut: true}),
			`<132>1 2026-12-07T13:30:00.123456Z plant-7 siterelay - audit [siterelay@32473 actor="stranger" node="stranger" role="none" action="PUT /v1/config" outcome="forbidden" status="403" seq="8" count="12" cut="true"] stranger PUT /v1/config: forbidden`},
		{"host name with a space", "my host", StreamAudit,
			Entry{Time: t0, Severity: SevNotice},
			`<133>1 2026-12-07T13:30:00.123456Z myhost siterelay - audit [siterelay@32473]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(format(nil, tgt, tt.host, tt.stream, tt.e))
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// queueIDs are the queue ids of the trace messages received, in order.
func queueIDs(msgs []string) []string {
	var ids []string
	for _, m := range msgs {
		_, rest, _ := strings.Cut(m, `queue_id="`)
		id, _, _ := strings.Cut(rest, `"`)
		ids = append(ids, id)
	}
	return ids
}

// harness runs a forwarder whose retries happen when the test says.
type harness struct {
	f       *Forwarder
	waiting chan struct{} // a retry is waiting
	retry   chan time.Time
	cancel  context.CancelFunc
	done    chan struct{}
}

func run(t *testing.T, dir string, tgt *Target) *harness {
	h := &harness{waiting: make(chan struct{}, 100), retry: make(chan time.Time), done: make(chan struct{})}
	h.f = New(Options{Dir: dir, Clock: func() time.Time { return t0 }, After: func(time.Duration) <-chan time.Time {
		h.waiting <- struct{}{}
		return h.retry
	}})
	if err := h.f.Configure(tgt); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.f.Run(ctx)
		close(h.done)
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

func (h *harness) sendN(from, n int) {
	for i := from; i < from+n; i++ {
		h.f.Send(StreamTrace, TraceEntry(trace.Event{Time: t0, Kind: trace.Received, QueueID: fmt.Sprintf("q%04d", i)}))
	}
}

func wantIDs(n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("q%04d", i))
	}
	return ids
}

func TestCollectorRestartLosesNothing(t *testing.T) {
	c := forwardtest.New(t)
	h := run(t, t.TempDir(), &Target{Address: c.Addr(), Facility: 16, AppName: "siterelay", Hostname: "h", Streams: Streams, MaxBytes: 1 << 20})
	h.sendN(0, 100)
	relaytest.Eventually(t, "the first 100 arrive", func() bool { return len(c.Messages()) == 100 })
	c.Stop()
	h.sendN(100, 100)
	<-h.waiting // the sender saw the collector gone and waits to retry
	if s := h.f.Stats(); s.Connected || s.State != StateBuffering || s.LastError == "" {
		t.Errorf("stats %+v while the collector is down: want buffering, the error named", s)
	}
	h.sendN(200, 100)
	c.Start()
	h.retry <- t0
	relaytest.Eventually(t, "all 300 arrive", func() bool { return len(c.Messages()) >= 300 })
	if got, want := strings.Join(queueIDs(c.Messages()), " "), strings.Join(wantIDs(300), " "); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	relaytest.Eventually(t, "the buffer emptied", func() bool { return h.f.Stats().BufferedBytes == 0 })
	if s := h.f.Stats(); s.Dropped[StreamTrace] != 0 || s.State != StateConnected {
		t.Errorf("stats %+v: want nothing dropped, connected", s)
	}
}

func TestBufferFullDropsAndCounts(t *testing.T) {
	one := format(nil, Target{Facility: 16, AppName: "a"}, "h", StreamTrace, TraceEntry(trace.Event{Time: t0, Kind: trace.Received, QueueID: "q0000"}))
	size := len(strconv.Itoa(len(one))) + 1 + len(one)
	dir := t.TempDir()
	// A closed port: every connection is refused.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	h := run(t, dir, &Target{Address: addr, Facility: 16, AppName: "a", Hostname: "h", Streams: []string{StreamTrace}, MaxBytes: int64(3*size + size/2)})
	h.sendN(0, 10)
	h.f.Send(StreamAudit, Entry{Msg: "not a forwarded stream"})
	relaytest.Eventually(t, "7 dropped", func() bool { return h.f.Stats().Dropped[StreamTrace] == 7 })
	<-h.waiting // the refusal is noted before the sender waits to retry (the drops may come first)
	if s := h.f.Stats(); s.BufferedBytes != int64(3*size) || s.Dropped[StreamAudit] != 0 || s.LastError == "" {
		t.Errorf("stats %+v: want %d bytes buffered, the refusal named", s, 3*size)
	}
	h.stop()

	// The buffer outlives the relay: a new forwarder sends what was kept.
	c := forwardtest.New(t)
	h2 := run(t, dir, &Target{Address: c.Addr(), Facility: 16, AppName: "a", Hostname: "h", Streams: []string{StreamTrace}, MaxBytes: 1 << 20})
	relaytest.Eventually(t, "the 3 kept arrive", func() bool { return len(c.Messages()) == 3 })
	if got, want := strings.Join(queueIDs(c.Messages()), " "), strings.Join(wantIDs(3), " "); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	_ = h2
}

func TestLogHandler(t *testing.T) {
	c := forwardtest.New(t)
	h := run(t, t.TempDir(), &Target{Address: c.Addr(), Facility: 16, AppName: "a", Hostname: "h", Streams: []string{StreamLogs}, MaxBytes: 1 << 20})
	var out relaytest.Buffer
	log := slog.New(NewHandler(slog.NewTextHandler(&out, nil), h.f)).With("queue_id", "q1").WithGroup("up")
	log.Warn("upstream slow", "ms", 900)
	relaytest.Eventually(t, "the line arrives", func() bool { return len(c.Messages()) == 1 })
	got := c.Messages()[0]
	for _, want := range []string{"<132>1 ", ` logs [siterelay@32473 level="WARN" queue_id="q1" up.ms="900"] upstream slow`} {
		if !strings.Contains(got, want) {
			t.Errorf("got %s, want it to contain %s", got, want)
		}
	}
	if !strings.Contains(out.String(), "upstream slow") {
		t.Errorf("the line did not reach the next handler: %q", out.String())
	}
}
