package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/forward/forwardtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestAuditStreamForwarded: with forward.syslog naming the audit stream,
// every audit entry goes to the collector as it is written, in order, with
// who, what and how it ended as structured data; a credential's value
// never goes out, and the audit entries of the first boot are not lost to
// the relay starting after the admin side.
func TestAuditStreamForwarded(t *testing.T) {
	col := forwardtest.New(t)
	tn := provtest.New(t)
	cfg := strings.TrimSuffix(fmt.Sprintf(captureConfig, "plant-a", "outbox"), "}") +
		fmt.Sprintf(`,"forward":{"syslog":{"address":%q,"streams":["audit"],"facility":"auth"}}}`, col.Addr())
	startBox(t, tn, "plant-a", cfg)
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-a"}, args...) }
	const secret = "Zq8~secret-VALUE-never-sent"
	rc.ok(secret+"\n", cmd("creds", "put", "smarthost", "-kind", "password", "-from", "-")...)
	rc.run("", cmd("queue", "retry", "nosuch")...)

	var msgs []string
	relaytest.Eventually(t, "the audit entries at the collector", func() bool {
		msgs = col.Stream("audit")
		return len(msgs) >= 4 && strings.Contains(msgs[len(msgs)-1], `outcome="not_found"`)
	})
	all := strings.Join(msgs, "\n")
	if strings.Contains(all, secret) || strings.Contains(strings.Join(col.Stream(""), "\n"), secret) {
		t.Fatalf("the secret went out:\n%s", all)
	}
	if n := len(col.Stream("trace")) + len(col.Stream("logs")); n != 0 {
		t.Errorf("%d messages of streams not configured went out", n)
	}
	// The last four: the credential put (started, ok), the retry (started,
	// not_found), each with actor, action and outcome.
	type want struct{ pri, action, outcome string }
	wants := []want{
		{"<37>1 ", `action="PUT /v1/credentials/smarthost"`, `outcome="started"`},
		{"<37>1 ", `action="put credential smarthost (password)"`, `outcome="ok"`},
		{"<37>1 ", `action="POST /v1/queue/nosuch/retry"`, `outcome="started"`},
		{"<36>1 ", `action="retry message nosuch"`, `outcome="not_found"`},
	}
	last := msgs[len(msgs)-len(wants):]
	var prevSeq int
	for i, w := range wants {
		m := last[i]
		for _, s := range []string{w.pri, " relay-plant-a siterelay - audit [siterelay@32473 actor=\"", `role="admin"`, w.action, w.outcome} {
			if !strings.Contains(m, s) {
				t.Errorf("message %d: %s\nwant it to contain %s", i, m, s)
			}
		}
		_, rest, _ := strings.Cut(m, ` seq="`)
		seq, _ := strconv.Atoi(rest[:strings.IndexByte(rest, '"')])
		if seq <= prevSeq {
			t.Errorf("message %d: seq %d after %d, want increasing", i, seq, prevSeq)
		}
		prevSeq = seq
	}

	// The forwarding's state in the admin API's status and relayctl status.
	var st api.Status
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &st); err != nil {
		t.Fatal(err)
	}
	if f := st.Forward; f == nil || f.Address != col.Addr() || f.State != "connected" || f.DroppedTotal() != 0 {
		t.Errorf("status forward %+v, want connected to the collector, nothing dropped", f)
	}
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, col.Addr()+" connected, ") || !strings.Contains(out, "none dropped") {
		t.Errorf("relayctl status lacks the syslog line:\n%s", out)
	}
	// And relayctl doctor checks the collector on the box.
	if _, out, _ := rc.run("", cmd("doctor")...); !strings.Contains(out, "syslog collector "+col.Addr()) || !strings.Contains(out, "takes connections over TCP") {
		t.Errorf("relayctl doctor lacks the collector's check:\n%s", out)
	}
}

// Entries written before the relay exists are held (at most maxEarlyAudit)
// and handed on in order when it does; the rest are counted as dropped.
func TestAuditEntriesBeforeTheRelay(t *testing.T) {
	dir := relaytest.StateDir(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close() // nothing listens: everything stays buffered
	cfg := config.Default()
	cfg.Listeners[0].Address = "127.0.0.1:0"
	cfg.Forward.Syslog = &config.Syslog{Address: addr, Streams: []string{"audit"}}
	cfg.SetDefaults()
	r, err := relay.New(cfg, dir, relay.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var s auditForward
	for i := range maxEarlyAudit + 5 {
		s.entry(api.AuditEntry{Node: "laptop", Role: api.Admin, What: fmt.Sprint("early ", i), Result: "ok", Seq: uint64(i + 1)})
	}
	before := r.Forwarder().Stats().BufferedBytes
	s.attach(r)
	s.entry(api.AuditEntry{Node: "laptop", Role: api.Admin, What: "after", Result: "ok"})
	st := r.Forwarder().Stats()
	if st.Dropped["audit"] != 5 {
		t.Errorf("dropped %v, want 5 audit entries (past the %d held)", st.Dropped, maxEarlyAudit)
	}
	if st.BufferedBytes <= before {
		t.Errorf("buffered %d bytes after attaching, %d before: the held entries did not go to the forwarder", st.BufferedBytes, before)
	}
}
