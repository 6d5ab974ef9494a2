package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

func TestStatusFollowsDeliveries(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(fake)
	cfg.Delivery.FirstRetry = config.Duration(60e9) // the deferred message stays queued while we look
	cfg.Delivery.MaxRetry = config.Duration(60e9)
	r, addr := run(t, cfg, relaytest.StateDir(t))

	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: one\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1)
	relaytest.Eventually(t, "delivery seen", func() bool { return r.Status().Counts[trace.Delivered] == 1 })
	st := r.Status()
	if st.Upstream.LastDelivered.IsZero() || st.Upstream.Failing() || st.Upstream.LastProblem != nil {
		t.Errorf("after a delivery: upstream %+v, want delivered and not failing", st.Upstream)
	}

	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later from [192.0.2.7]"))
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: two\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "deferral seen", func() bool { return r.Status().Counts[trace.Deferred] == 1 })
	st = r.Status()
	if !st.Upstream.Failing() {
		t.Errorf("after a deferral: Failing() = false, want true (%+v)", st.Upstream)
	}
	p := st.Upstream.LastProblem
	if p == nil || !strings.Contains(p.Reply, "4.7.500") || p.Hint == "" {
		t.Errorf("last problem = %+v, want the 451 4.7.500 reply with a hint", p)
	}
	if got, want := st.Queue.Messages, 1; got != want {
		t.Errorf("queue: got %d messages, want %d", got, want)
	}
	if got, want := st.Counts[trace.Received], uint64(2); got != want {
		t.Errorf("received: got %d, want %d", got, want)
	}
	if st.Upstream.Name == "" {
		t.Error("upstream has no name")
	}
}

func TestStatusDescribesListeners(t *testing.T) {
	hash, err := policy.HashPassword("secret")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"listeners":[
	  {"name":"smtp","address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"],"min_tls":"1.0"},
	  {"name":"submission","address":":587","mode":"submission","require_tls":true},
	  {"name":"plain","address":":26","mode":"smtp","starttls":false,"allowed_networks":["10.0.0.0/8"]}],
	 "accounts":[{"username":"u","password_hash":"` + hash + `"}],
	 "upstream":{"kind":"capture"}}`))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := run(t, cfg, relaytest.StateDir(t))
	got := r.Status().Listeners
	want := []ListenerStatus{
		{Name: "smtp", Mode: "smtp", TLS: "starttls", MinTLS: "1.0", Auth: "none", Loopback: true},
		{Name: "submission", Mode: "submission", TLS: "required", MinTLS: "1.2", Auth: "required", Loopback: true},
		{Name: "plain", Mode: "smtp", TLS: "none", Auth: "none", Loopback: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d listeners, want %d", len(got), len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i].Address, "127.0.0.1:") {
			t.Errorf("listener %d address %q, want the bound loopback address", i, got[i].Address)
		}
		got[i].Address = ""
		if got[i] != want[i] {
			t.Errorf("listener %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func TestStatusWarnsOfBasicAuthentication(t *testing.T) {
	cfg := config.Default()
	if got := warnings(cfg, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); got != nil {
		t.Errorf("capture upstream: warnings %q, want none", got)
	}
	cfg.Upstreams = map[string]config.Upstream{"legacy": {Kind: config.KindM365Password}}
	got := warnings(cfg, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if len(got) != 1 || !strings.Contains(got[0], "end of December 2026 (in 31 days)") || !strings.Contains(got[0], "m365-oauth") {
		t.Errorf("password upstream: warnings %q, want the dated basic-authentication warning", got)
	}
}
