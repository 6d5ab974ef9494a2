package route_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

const (
	tenant  = m365test.TenantDomain
	mailbox = m365test.TenantMailbox
	secret  = "Xy7~client.secret-VALUE-0123456789"
)

// tenantEnv is a fake Microsoft 365: Entra, client submission, Graph.
type tenantEnv struct {
	clock *m365test.Clock
	ca    *m365test.CA
	entra *m365test.Entra
	x     *m365test.Exchange
	graph *m365test.Graph
}

func newTenant(t *testing.T) *tenantEnv {
	tt := m365test.NewTenant(t, secret)
	return &tenantEnv{clock: tt.Clock, ca: tt.CA, entra: tt.Entra, x: tt.Exchange, graph: tt.Graph}
}

func (e *tenantEnv) deps(t *testing.T) m365.Deps {
	return m365.Deps{
		Secret: func(name string) ([]byte, error) {
			switch name {
			case "m365-secret":
				return []byte(secret), nil
			case "pw":
				return []byte("hunter2"), nil
			}
			return nil, errors.New("no such secret")
		},
		Clock: e.clock.Now, Sleep: e.clock.Sleep, HTTPClient: e.graph.Client(), RootCAs: e.ca.Pool, LocalName: "relay.test", // no Dir: pacing windows in memory, no fsync per message
	}
}

// build makes the named upstream of kind through the real parser and m365.New.
func (e *tenantEnv) build(t *testing.T, name string, kind config.Kind, m config.M365) route.Named {
	t.Helper()
	m.Tenant, m.TokenURL = tenant, e.entra.URL
	if m.PasswordSecret == "" && kind.Microsoft() && !kind.MX() {
		if m.ClientID == "" {
			m.ClientID = "app1"
		}
		m.ClientSecretSecret = "m365-secret"
	}
	c := config.Default()
	c.Upstream = config.Upstream{Kind: kind, M365: m}
	c.SetDefaults()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	up, err := m365.New(kind, c.Upstream.M365, e.deps(t))
	if err != nil {
		t.Fatal(err)
	}
	return route.Named{Name: name, Label: string(kind) + " " + m.Mailbox, Up: up}
}

func (e *tenantEnv) submission(t *testing.T) route.Named {
	host, port := splitAddr(e.x.Addr)
	return e.build(t, "oauth", config.KindM365OAuth, config.M365{Mailbox: mailbox, SMTPHost: host, SMTPPort: port, FromMailbox: true})
}

func splitAddr(a string) (string, int) {
	i := strings.LastIndexByte(a, ':')
	var p int
	fmt.Sscan(a[i+1:], &p)
	return a[:i], p
}

func alarm(i int, to ...string) *upstream.Message { return alarmFrom(i, mailbox, to...) }

func alarmFrom(i int, from string, to ...string) *upstream.Message {
	m := msg(from, to...)
	b := fmt.Appendf(nil, "From: %s\r\nTo: %s\r\nSubject: alarm %d\r\n\r\nline 4 stopped\r\n", from, strings.Join(to, ", "), i)
	m.Body, m.Size, m.QueueID = bytesReader(b), int64(len(b)), fmt.Sprint("q", i)
	return m
}

// TestFailoverSubmissionToGraphAndBack is the proof: the tenant
// turns SMTP AUTH off (535 5.7.139); the route moves its mail to Graph in
// the same attempt, says so in the result (the trace) and the status,
// tries client submission again with backoff, and goes back to it once
// the tenant turns SMTP AUTH on again. Nothing bounces.
func TestFailoverSubmissionToGraphAndBack(t *testing.T) {
	e := newTenant(t)
	var moves []string
	r := newRouter(t, route.Options{
		Routes: []config.Route{routeCfg("external", nil, "oauth", "graph")},
		Upstreams: map[string]route.Named{
			"oauth": e.submission(t),
			"graph": e.build(t, "graph", config.KindGraph, config.M365{Mailbox: mailbox, GraphURL: e.graph.URL}),
		},
		Clock: e.clock.Now, Failover: func(rt, from, to, why string) { moves = append(moves, from+"→"+to) },
	})
	ctx := context.Background()
	deliver := func(i int) upstream.RcptResult {
		t.Helper()
		res, err := r.Deliver(ctx, alarm(i, "ops@fabrikam.test"))
		if err != nil || len(res) != 1 {
			t.Fatalf("message %d: %v %v", i, res, err)
		}
		return res[0]
	}
	if res := deliver(1); res.Err != nil || res.Upstream != "external: m365-oauth "+mailbox {
		t.Fatalf("open path: %+v", res)
	}
	e.x.Refuse(m365test.AtAuth, m365test.ErrBasicOff)
	e.clock.Advance(2 * time.Minute) // the idle session is gone: the next one logs in
	res := deliver(2)
	if res.Err != nil || !strings.Contains(res.Upstream, "graph "+mailbox+" (failover from oauth: ") || !strings.Contains(res.Upstream, "535 5.7.139") {
		t.Fatalf("after SMTP AUTH was turned off: %+v, want delivered by Graph, named a failover", res)
	}
	st := r.Status()[0]
	if st.Upstream != "graph" || !st.FailedOver || !strings.Contains(st.Reason, "5.7.139") {
		t.Errorf("status %+v", st)
	}
	// Each later try of the closed path doubles the wait: 5, 10, 20 min.
	var tries []string
	for i := 3; i < 40; i++ {
		e.clock.Advance(time.Minute)
		before := e.x.Connections()
		if res := deliver(i); res.Err != nil {
			t.Fatalf("message %d while submission is closed: %v", i, res.Err)
		}
		if e.x.Connections() > before {
			tries = append(tries, e.clock.Now().Sub(st.Since).String())
		}
	}
	if got, want := fmt.Sprint(tries), "[5m0s 15m0s 35m0s]"; got != want {
		t.Errorf("submission tried again after %s, want %s", got, want)
	}
	e.x.Refuse(m365test.AtAuth, nil) // the admin turns SMTP AUTH back on
	e.clock.Advance(time.Hour)
	if res := deliver(100); res.Err != nil || res.Upstream != "external: m365-oauth "+mailbox {
		t.Errorf("after SMTP AUTH is on again: %+v, want back on submission", res)
	}
	if r.Status()[0].FailedOver {
		t.Errorf("status still failed over: %+v", r.Status()[0])
	}
	if got, want := len(e.x.Received())+len(e.graph.Sent()), 1+1+37+1; got != want {
		t.Errorf("delivered %d, want %d (every message once)", got, want)
	}
	if fmt.Sprint(moves) != "[oauth→graph]" {
		t.Errorf("failovers %v", moves)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// TestEachClosedPathFailsOver: each answer that closes a path for the
// tenant, from the fakes, moves the route to its next upstream in the same
// attempt.
func TestEachClosedPathFailsOver(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T, e *tenantEnv) route.Named
		want  string
	}{
		{"direct send rejected", func(t *testing.T, e *tenantEnv) route.Named {
			x := m365test.NewExchange(t, m365test.ExchangeOptions{CA: e.ca, Clock: e.clock.Now, MX: true, TenantDomains: []string{"contoso.test"}})
			x.Refuse(m365test.AtMail, m365test.ErrRejectDirect)
			host, port := splitAddr(x.Addr)
			return e.build(t, "first", config.KindM365Direct, config.M365{Domain: "contoso.test", MXHost: host, SMTPPort: port})
		}, "550 5.7.68"},
		{"basic authentication off", func(t *testing.T, e *tenantEnv) route.Named {
			x := m365test.NewExchange(t, m365test.ExchangeOptions{CA: e.ca, Clock: e.clock.Now, Passwords: map[string]string{mailbox: "hunter2"}})
			x.Refuse(m365test.AtAuth, m365test.ErrBasicRetired)
			host, port := splitAddr(x.Addr)
			return e.build(t, "first", config.KindM365Password, config.M365{Mailbox: mailbox, PasswordSecret: "pw", SMTPHost: host, SMTPPort: port})
		}, "550 5.7.30"},
		{"SMTP AUTH off for HVE", func(t *testing.T, e *tenantEnv) route.Named {
			x, hve := e.hveUpstream(t)
			x.Refuse(m365test.AtAuth, m365test.ErrBasicOff)
			return hve
		}, "535 5.7.139"},
		{"Graph without Mail.Send", func(t *testing.T, e *tenantEnv) route.Named {
			e.entra.AddApp(m365test.App{ClientID: "app2", Secret: secret, Roles: []string{m365test.RoleSMTP}})
			e.graph.Grant("app2", mailbox)
			return e.build(t, "first", config.KindGraph, config.M365{ClientID: "app2", Mailbox: mailbox, GraphURL: e.graph.URL})
		}, "Graph 403"},
		{"token endpoint refuses the app", func(t *testing.T, e *tenantEnv) route.Named {
			return e.build(t, "first", config.KindGraph, config.M365{ClientID: "app-not-in-tenant", Mailbox: mailbox, GraphURL: e.graph.URL})
		}, "AADSTS700016"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTenant(t)
			first := tt.first(t, e)
			first.Name = "first"
			r := newRouter(t, route.Options{
				Routes:    []config.Route{routeCfg("all", nil, "first", "oauth")},
				Upstreams: map[string]route.Named{"first": first, "oauth": e.submission(t)},
				Clock:     e.clock.Now,
			})
			res, err := r.Deliver(context.Background(), alarmFrom(1, mailbox, "ops@contoso.test"))
			if err != nil || len(res) != 1 {
				t.Fatal(res, err)
			}
			if res[0].Err != nil || !strings.Contains(res[0].Upstream, "(failover from first: ") || !strings.Contains(res[0].Upstream, tt.want) {
				t.Errorf("result %+v, want delivered by oauth, a failover for %s", res[0], tt.want)
			}
			if got := len(e.x.Received()); got != 1 {
				t.Errorf("submission received %d, want 1", got)
			}
		})
	}
}
