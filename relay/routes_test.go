package relay

import (
	"context"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// routesConfig sends contoso.test's recipients to one smarthost and the
// rest to another.
func routesConfig(internal, external *upstreamtest.FakeServer) *config.Config {
	cfg := smarthostConfig(internal)
	in, ex := cfg.Upstream, cfg.Upstream
	ex.SMTP.Address = external.Addr
	cfg.Upstream = config.Upstream{}
	cfg.Upstreams = map[string]config.Upstream{"inside": in, "outside": ex}
	cfg.Routes = []config.Route{
		{Name: "internal", RecipientDomains: []string{"contoso.test"}, Upstreams: []string{"inside"}},
		{Name: "external", Upstreams: []string{"outside"}},
	}
	cfg.SetDefaults()
	return cfg
}

// TestRoutesSplitAMixedMessage: one message to internal and external
// recipients reaches each smarthost with its own recipients only, and the
// trace has one delivery per part naming its route and upstream.
func TestRoutesSplitAMixedMessage(t *testing.T) {
	in := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	out := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := routesConfig(in, out)
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@contoso.test", "vendor@fabrikam.test", "shift@contoso.test"}, "Subject: alarm\r\n\r\nline 4\r\n"); err != nil {
		t.Fatal(err)
	}
	if got := in.WaitMessages(t, 1)[0].To; strings.Join(got, ",") != "ops@contoso.test,shift@contoso.test" {
		t.Errorf("internal smarthost got %v", got)
	}
	if got := out.WaitMessages(t, 1)[0].To; strings.Join(got, ",") != "vendor@fabrikam.test" {
		t.Errorf("external smarthost got %v", got)
	}
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{Kind: trace.Delivered})
	var parts []string
	for _, e := range ev {
		parts = append(parts, e.Upstream+" "+strings.Join(e.To, ","))
	}
	slices.Sort(parts)
	want := []string{
		"external: outside (smtp " + out.Addr + ") vendor@fabrikam.test",
		"internal: inside (smtp " + in.Addr + ") ops@contoso.test,shift@contoso.test",
	}
	if !slices.Equal(parts, want) {
		t.Errorf("delivered parts in the trace\n got %q\nwant %q", parts, want)
	}
	st := r.Status()
	if len(st.Routes) != 2 || st.Routes[0].Name != "internal" || st.Routes[0].Upstream != "inside" || st.Routes[1].Upstream != "outside" {
		t.Errorf("status routes %+v", st.Routes)
	}
	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), `siterelay_route_failovers_total{route="external"} 0`) {
		t.Errorf("no failover series for route external:\n%s", grepLines(string(body), "siterelay_route"))
	}
}

// A reload from one upstream to routes (and back) swaps the whole router.
func TestReloadToRoutes(t *testing.T) {
	in := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	out := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	r, addr := run(t, smarthostConfig(out), relaytest.StateDir(t))
	cfg := routesConfig(in, out)
	cfg.Listeners[0].Address = "127.0.0.1:0"
	if err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := send(t, addr, "plc@plant.example", []string{"ops@contoso.test"}, "Subject: one\r\n\r\n1\r\n"); err != nil {
		t.Fatal(err)
	}
	in.WaitMessages(t, 1)
	if got := r.Status().Routes; len(got) != 2 {
		t.Errorf("routes after reload %+v", got)
	}
	back := smarthostConfig(out)
	back.Listeners[0].Address = "127.0.0.1:0"
	if err := r.Reload(back); err != nil {
		t.Fatal(err)
	}
	if got := r.Status().Routes; got != nil {
		t.Errorf("routes after reload to one upstream %+v, want none", got)
	}
}

// TestRouteFailoverThroughTheRelay: the first smarthost of a route refuses
// with 550 5.7.68 (its path closed); the message is delivered by the second
// in the same attempt, the trace says it was a failover, the status shows
// it, the counter counts it, and nothing bounces.
func TestRouteFailoverThroughTheRelay(t *testing.T) {
	first := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	second := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	first.FailNext(upstreamtest.StageMail, 1000, upstreamtest.Reply(550, "5.7.68", "TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources"))
	cfg := routesConfig(first, second)
	cfg.Routes = []config.Route{{Name: "all", Upstreams: []string{"inside", "outside"}}}
	cfg.SetDefaults()
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@contoso.test"}, "Subject: alarm\r\n\r\nline 4\r\n"); err != nil {
		t.Fatal(err)
	}
	second.WaitMessages(t, 1)
	relaytest.Eventually(t, "queue empty", func() bool { return r.Spool().Stats().Messages == 0 })
	r.Trace().Flush(context.Background())
	ev, _ := r.Trace().Query(context.Background(), trace.Filter{})
	var delivered []trace.Event
	for _, e := range ev {
		switch e.Kind {
		case trace.Delivered:
			delivered = append(delivered, e)
		case trace.Bounced, trace.Failed:
			t.Errorf("a closed path bounced mail: %+v", e)
		}
	}
	if len(delivered) != 1 || !strings.Contains(delivered[0].Upstream, "all: outside (smtp "+second.Addr+") (failover from inside: ") || !strings.Contains(delivered[0].Upstream, "5.7.68") {
		t.Errorf("delivered events %+v, want one by outside naming the failover", delivered)
	}
	if st := r.Status().Routes; len(st) != 1 || st[0].Upstream != "outside" || !st[0].FailedOver {
		t.Errorf("status routes %+v", st)
	}
	rec := httptest.NewRecorder()
	r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), `siterelay_route_failovers_total{route="all"} 1`) {
		t.Errorf("failover not counted:\n%s", grepLines(string(body), "siterelay_route"))
	}
}

func TestDoctorEachNamedUpstream(t *testing.T) {
	in := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	out := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	steps, err := Doctor(context.Background(), routesConfig(in, out), relaytest.StateDir(t), Deps{}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"inside: banner", "outside: banner"} {
		if st, ok := stepNamed(steps, want); !ok || !st.OK {
			t.Errorf("step %q: %+v (found %v) in %+v", want, st, ok, steps)
		}
	}
}

// TestHVEOnlyRouteRefusesAtRCPT: with every recipient routed to HVE, a
// device hears at RCPT that an external recipient has no way, with the
// route's name and what to add; internal ones are accepted.
func TestHVEOnlyRouteRefusesAtRCPT(t *testing.T) {
	cfg := config.Default()
	cfg.Upstreams = map[string]config.Upstream{"hve": {Kind: config.KindHVE, M365: config.M365{
		Mailbox: "alarms-hve@contoso.test", PasswordSecret: "hve-pw", AcceptedDomains: []string{"contoso.test"}, SMTPHost: "127.0.0.1", SMTPPort: 1}}}
	cfg.Routes = []config.Route{{Name: "all", Upstreams: []string{"hve"}}}
	cfg.Upstream = config.Upstream{}
	cfg.SetDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for i := range cfg.Listeners {
		cfg.Listeners[i].Address = "127.0.0.1:0"
	}
	r, err := New(cfg, relaytest.StateDir(t), Deps{Secret: func(string) ([]byte, error) { return []byte("pw"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c, err := smtp.Dial(r.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("plc@contoso.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ops@contoso.test", nil); err != nil {
		t.Errorf("internal recipient: %v", err)
	}
	err = c.Rcpt("vendor@fabrikam.test", nil)
	var se *smtp.SMTPError
	if !asSMTP(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "route all") || !strings.Contains(se.Message, "High Volume Email") || !strings.Contains(se.Message, "routes[]") {
		t.Errorf("external recipient: %v, want a 550 naming the route and what to add", err)
	}
}
