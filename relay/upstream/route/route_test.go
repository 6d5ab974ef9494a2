package route_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

// fake records what it got; refuse answers every recipient with an error
// (nil: accept); only, when set, is the one domain it can reach.
type fake struct {
	mu      sync.Mutex
	got     [][]string
	refuse  error
	only    string
	maxRcpt int
	maxSize int64
}

func (f *fake) Deliver(_ context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.maxRcpt > 0 && len(m.To) > f.maxRcpt {
		return nil, fmt.Errorf("%d recipients, limit %d", len(m.To), f.maxRcpt)
	}
	if f.refuse != nil {
		return nil, f.refuse
	}
	f.got = append(f.got, slices.Clone(m.To))
	res := make([]upstream.RcptResult, len(m.To))
	for i, r := range m.To {
		res[i].Rcpt = r
	}
	return res, nil
}

func (f *fake) Limits() upstream.Limits {
	return upstream.Limits{Concurrency: 3, MaxRecipients: f.maxRcpt, MaxSize: f.maxSize}
}
func (f *fake) Close() error { return nil }
func (f *fake) CheckRecipient(rcpt string) error {
	if f.only != "" && !strings.HasSuffix(strings.ToLower(rcpt), "@"+f.only) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 54}, Message: "only " + f.only}
	}
	return nil
}
func (f *fake) received() [][]string { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.got) }
func (f *fake) set(err error)        { f.mu.Lock(); f.refuse = err; f.mu.Unlock() }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func routeCfg(name string, domains []string, ups ...string) config.Route {
	return config.Route{Name: name, RecipientDomains: domains, Upstreams: ups,
		FailbackAfter: config.Duration(5 * time.Minute), FailbackMax: config.Duration(time.Hour)}
}

func msg(from string, to ...string) *upstream.Message {
	b := []byte("Subject: alarm\r\n\r\nline 4\r\n")
	return &upstream.Message{QueueID: "q1", From: from, To: to, Size: int64(len(b)), Body: bytes.NewReader(b)}
}

func newRouter(t *testing.T, o route.Options) *route.Router {
	t.Helper()
	r, err := route.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func named(ups map[string]*fake) map[string]route.Named {
	out := map[string]route.Named{}
	for n, f := range ups {
		out[n] = route.Named{Name: n, Label: "fake " + n, Up: f}
	}
	return out
}

func TestMixedMessageSplitByRoute(t *testing.T) {
	hve, oauth, lab := &fake{only: "contoso.test", maxRcpt: 2}, &fake{}, &fake{}
	r := newRouter(t, route.Options{
		Routes: []config.Route{
			routeCfg("internal", []string{"contoso.test"}, "hve", "oauth"),
			{Name: "lab", Devices: []string{"10.9.0.0/16"}, Upstreams: []string{"lab"}, FailbackAfter: config.Duration(time.Minute), FailbackMax: config.Duration(time.Hour)},
			{Name: "scanners", Senders: []string{"@scan.contoso.test"}, Upstreams: []string{"lab"}, FailbackAfter: config.Duration(time.Minute), FailbackMax: config.Duration(time.Hour)},
			routeCfg("external", nil, "oauth"),
		},
		Upstreams: named(map[string]*fake{"hve": hve, "oauth": oauth, "lab": lab}),
	})
	m := msg("plc@plant.test", "a@contoso.test", "x@fabrikam.test", "b@CONTOSO.test", "c@contoso.test", "y@example.test")
	res, err := r.Deliver(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for i, x := range res {
		if x.Rcpt != m.To[i] || x.Err != nil {
			t.Errorf("result %d = %+v, want %s delivered", i, x, m.To[i])
		}
		got[x.Rcpt] = x.Upstream
	}
	want := map[string]string{"a@contoso.test": "internal: fake hve", "b@CONTOSO.test": "internal: fake hve", "c@contoso.test": "internal: fake hve",
		"x@fabrikam.test": "external: fake oauth", "y@example.test": "external: fake oauth"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parts by upstream\n got %v\nwant %v", got, want)
	}
	// HVE takes 2 recipients a message: the router splits its part.
	if g, w := fmt.Sprint(hve.received()), "[[a@contoso.test b@CONTOSO.test] [c@contoso.test]]"; g != w {
		t.Errorf("hve got %s, want %s", g, w)
	}
	if g, w := fmt.Sprint(oauth.received()), "[[x@fabrikam.test y@example.test]]"; g != w {
		t.Errorf("oauth got %s, want %s", g, w)
	}
	// By device, and by sender.
	m = msg("plc@plant.test", "z@fabrikam.test")
	m.ClientIP = "10.9.3.4"
	r.Deliver(context.Background(), m)
	r.Deliver(context.Background(), msg("mfp@scan.contoso.test", "w@fabrikam.test"))
	if g, w := fmt.Sprint(lab.received()), "[[z@fabrikam.test] [w@fabrikam.test]]"; g != w {
		t.Errorf("lab got %s, want %s", g, w)
	}
	if l := r.Limits(); l.Concurrency != 3+3+3 || l.MaxRecipients != 0 {
		t.Errorf("limits %+v, want the three first upstreams' concurrency and no recipient limit", l)
	}
}

func TestCheckRecipientRoutes(t *testing.T) {
	hve := &fake{only: "contoso.test"}
	onlyHVE := newRouter(t, route.Options{Routes: []config.Route{routeCfg("all", nil, "hve")}, Upstreams: named(map[string]*fake{"hve": hve})})
	if err := onlyHVE.CheckRecipient("a@contoso.test"); err != nil {
		t.Errorf("internal refused: %v", err)
	}
	var se *smtp.SMTPError
	if err := onlyHVE.CheckRecipient("x@fabrikam.test"); !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "route all") {
		t.Errorf("external with only HVE: got %v, want a 550 naming the route", err)
	}
	both := newRouter(t, route.Options{
		Routes:    []config.Route{routeCfg("internal", []string{"contoso.test"}, "hve"), routeCfg("external", nil, "oauth")},
		Upstreams: named(map[string]*fake{"hve": hve, "oauth": {}}),
	})
	if err := both.CheckRecipient("x@fabrikam.test"); err != nil {
		t.Errorf("external with an external route: %v", err)
	}
}

// TestFailoverAndBack with fakes: the first upstream's path closes, the
// route moves on in the same attempt, tries the first again with backoff,
// and comes back when it opens.
func TestFailoverAndBack(t *testing.T) {
	clk := &clock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	oauth, graph := &fake{}, &fake{}
	var moves []string
	stateFile := filepath.Join(t.TempDir(), "routes.json")
	r := newRouter(t, route.Options{
		Routes: []config.Route{routeCfg("all", nil, "oauth", "graph")}, Upstreams: named(map[string]*fake{"oauth": oauth, "graph": graph}),
		Clock: clk.Now, Failover: func(rt, from, to, why string) { moves = append(moves, rt+":"+from+"→"+to) },
		StateFile: stateFile,
	})
	ctx := context.Background()
	closed := upstream.FromReply(&smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."})
	oauth.set(closed)
	res, _ := r.Deliver(ctx, msg("a@contoso.test", "x@fabrikam.test"))
	if res[0].Err != nil || !strings.Contains(res[0].Upstream, "fake graph (failover from oauth: 535 5.7.139") {
		t.Fatalf("closed first path: %+v, want delivered by graph saying it is a failover", res[0])
	}
	st := r.Status()[0]
	if st.Upstream != "graph" || !st.FailedOver || !strings.Contains(st.Reason, "5.7.139") || !st.NextTry.Equal(clk.Now().Add(5*time.Minute)) {
		t.Errorf("status %+v", st)
	}
	// Before the failback time: graph only, oauth not asked.
	clk.Advance(time.Minute)
	oauth.set(errors.New("must not be called"))
	r.Deliver(ctx, msg("a@contoso.test", "x@fabrikam.test"))
	oauth.set(closed)
	// Due: oauth tried again, still closed, next try after 10 minutes.
	clk.Advance(4 * time.Minute)
	res, _ = r.Deliver(ctx, msg("a@contoso.test", "x@fabrikam.test"))
	if res[0].Err != nil || r.Status()[0].Upstream != "graph" || !r.Status()[0].NextTry.Equal(clk.Now().Add(10*time.Minute)) {
		t.Errorf("failback try on a closed path: %+v, status %+v", res[0], r.Status()[0])
	}
	// A restart keeps the state.
	again := newRouter(t, route.Options{
		Routes: []config.Route{routeCfg("all", nil, "oauth", "graph")}, Upstreams: named(map[string]*fake{"oauth": oauth, "graph": graph}),
		Clock: clk.Now, StateFile: stateFile,
	})
	if st := again.Status()[0]; st.Upstream != "graph" || !strings.Contains(st.Reason, "5.7.139") {
		t.Errorf("after a restart: %+v, want still on graph", st)
	}
	// Open again: the next due try comes back.
	oauth.set(nil)
	clk.Advance(10 * time.Minute)
	res, _ = r.Deliver(ctx, msg("a@contoso.test", "x@fabrikam.test"))
	if res[0].Err != nil || res[0].Upstream != "all: fake oauth" || r.Status()[0].FailedOver {
		t.Errorf("after the path opened: %+v, status %+v", res[0], r.Status()[0])
	}
	if g, w := len(graph.received()), 3; g != w {
		t.Errorf("graph got %d, want %d", g, w)
	}
	if fmt.Sprint(moves) != "[all:oauth→graph]" {
		t.Errorf("failovers %v", moves)
	}
	// Every upstream closed: the mail waits (temporary), it never bounces.
	graph.set(upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 30}, Message: "Basic authentication is not supported for Client Submission."}))
	oauth.set(closed)
	res, _ = r.Deliver(ctx, msg("a@contoso.test", "x@fabrikam.test"))
	if res[0].Err == nil || upstream.IsPermanent(res[0].Err) {
		t.Errorf("every path closed: %v, want a temporary failure", res[0].Err)
	}
}

func TestClosedReplies(t *testing.T) {
	tests := []struct {
		err    error
		closed bool
	}{
		{upstream.FromReply(&smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "x"}), true},
		{upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 30}, Message: "x"}), true},
		{upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 68}, Message: "x"}), true},
		{&upstream.Error{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Graph 403 ErrorAccessDenied: Access is denied."}}, true},
		{&upstream.Error{Err: &m365.TokenError{Status: 400, Code: "unauthorized_client", AADSTS: 700016}}, true},
		{&upstream.Error{Err: &m365.TokenError{Status: 503, Code: "temporarily_unavailable"}}, false},
		{upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "not found"}), false},
		{upstream.FromReply(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "busy"}), false},
		{errors.New("connection refused"), false},
	}
	for _, tt := range tests {
		if _, got := route.Closed(tt.err); got != tt.closed {
			t.Errorf("Closed(%v) = %v, want %v", tt.err, got, tt.closed)
		}
	}
}

// A failback try skipped because the message is too large for the first
// upstream does not keep the first from being tried again later.
func TestSkippedFailbackTryIsGivenBack(t *testing.T) {
	clk := &clock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	first, second := &fake{maxSize: 10}, &fake{}
	r := newRouter(t, route.Options{
		Routes: []config.Route{routeCfg("all", nil, "first", "second")}, Upstreams: named(map[string]*fake{"first": first, "second": second}),
		Clock: clk.Now,
	})
	ctx := context.Background()
	closed := upstream.FromReply(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 68}, Message: "TenantInboundAttribution; Direct Send not allowed"})
	first.set(closed)
	small := func() *upstream.Message { m := msg("a@contoso.test", "x@contoso.test"); m.Size = 5; return m }
	r.Deliver(ctx, small())
	if r.Status()[0].Upstream != "second" {
		t.Fatalf("no failover: %+v", r.Status()[0])
	}
	first.set(nil)
	clk.Advance(5 * time.Minute)
	r.Deliver(ctx, msg("a@contoso.test", "x@contoso.test")) // 27 bytes: too large for first
	clk.Advance(5 * time.Minute)
	if res, _ := r.Deliver(ctx, small()); res[0].Upstream != "all: fake first" {
		t.Errorf("after a skipped try: %+v, want the first tried again and back", res[0])
	}
}
