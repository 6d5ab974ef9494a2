// Package m365test is an in-process Microsoft 365 for tests: an Entra-like
// token endpoint, an Exchange-like SMTP server (client submission with
// XOAUTH2, or the MX host with connectors and direct send), a Graph-like
// sendMail endpoint, a DNS server with crafted records, a test CA and a
// virtual clock. Everything listens on 127.0.0.1 with port 0.
//
// The fakes answer with Microsoft's documented replies (docs/m365.md) so that
// the relay's hints and pacing are tested against what it will meet.
package m365test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// Clock is virtual time shared by the relay's parts and the fakes. Sleep
// moves it forward at once, so a test covers hours in milliseconds.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts at a fixed instant.
func NewClock() *Clock { return &Clock{now: time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)} }

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Sleep advances the clock by d (unless ctx is done).
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	return nil
}

// CA is the certificate authority of the fakes and of the relay under test
// (server names, connector client certificates, RSA app credentials): the
// same as the upstream tests use.
type CA = upstreamtest.TestCA

// NewCA makes a CA valid for a day around now.
func NewCA(t testing.TB) *CA { return upstreamtest.NewTestCA(t) }

// A tenant's fixed names, as NewTenant sets it up.
const (
	TenantDomain  = "contoso.test"
	TenantApp     = "app1"
	TenantMailbox = "scanner@contoso.test"
)

// Tenant is a whole fake tenant on one virtual clock: Entra with the app
// TenantApp (its client secret given), allowed to send as TenantMailbox by
// client submission (Exchange) and by Graph.
type Tenant struct {
	Clock    *Clock
	CA       *CA
	Entra    *Entra
	Exchange *Exchange
	Graph    *Graph
}

// NewTenant starts the fakes of a tenant whose app has secret.
func NewTenant(t testing.TB, secret string) *Tenant {
	t.Helper()
	return NewTenantWith(t, TenantOptions{Secret: secret})
}

// TenantOptions shape a tenant beyond its app's secret. The zero value is
// NewTenant's tenant: Entra and Graph on httptest's own certificate,
// everything on 127.0.0.1 with port 0.
type TenantOptions struct {
	Secret string
	// Names, when set, puts Entra and Graph on certificates of the
	// tenant's CA (as Exchange always is) naming 127.0.0.1 and these
	// names and addresses too, so that a client trusting only CAPEM (a
	// relay's ca_file, a VM guest that reaches the host as 10.0.2.2)
	// verifies all three.
	Names []string
	// EntraAddr, GraphAddr and SMTPAddr are where each listens, default
	// 127.0.0.1:0 (a VM's site file names fixed ports).
	EntraAddr, GraphAddr, SMTPAddr string
	// Clock, when set, replaces the virtual clock's time for Entra's token
	// expiry and Exchange's limits (a relay on another machine, a VM,
	// keeps real time).
	Clock func() time.Time
}

// NewTenantWith starts the fakes of a tenant as o says.
func NewTenantWith(t testing.TB, o TenantOptions) *Tenant {
	t.Helper()
	tt := &Tenant{Clock: NewClock(), CA: NewCA(t)}
	now := tt.Clock.Now
	if o.Clock != nil {
		now = o.Clock
	}
	web := func(addr string) Serving { return Serving{Addr: addr} }
	if len(o.Names) > 0 {
		web = func(addr string) Serving { return Serving{Addr: addr, CA: tt.CA, Names: o.Names} }
	}
	tt.Entra = NewEntraOn(t, TenantDomain, now, web(o.EntraAddr))
	tt.Entra.AddApp(App{ClientID: TenantApp, Secret: o.Secret})
	tt.Exchange = NewExchange(t, ExchangeOptions{CA: tt.CA, Clock: now, Entra: tt.Entra, Names: o.Names, Listen: o.SMTPAddr})
	tt.Exchange.Grant(TenantApp, TenantMailbox)
	tt.Graph = NewGraphOn(t, tt.Entra, web(o.GraphAddr))
	tt.Graph.Grant(TenantApp, TenantMailbox)
	return tt
}

// CAPEM is the tenant's CA certificate (PEM): what a relay's
// upstream.m365.ca_file holds to trust the fakes, as a plant behind a
// TLS-inspecting proxy gives the proxy's CA. With TenantOptions.Names it
// verifies Entra, Exchange and Graph; otherwise Exchange only.
func (tt *Tenant) CAPEM() []byte { return tt.CA.PEM() }

// Serving says how a fake HTTPS endpoint listens: on Addr (default
// 127.0.0.1:0) with, when CA is set, a certificate of CA naming 127.0.0.1
// and Names; otherwise on httptest's own certificate.
type Serving struct {
	Addr  string
	CA    *CA
	Names []string
}

// start serves h as s says; it stops with the test.
func (s Serving) start(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	if s.Addr != "" {
		l, err := net.Listen("tcp", s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener.Close()
		srv.Listener = l
	}
	if s.CA != nil {
		names := append([]string{"localhost"}, s.Names...)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{s.CA.ServerCert(t, names...)}}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// SMTPPort is the port client submission listens on (on 127.0.0.1).
func (tt *Tenant) SMTPPort() int {
	_, p, _ := net.SplitHostPort(tt.Exchange.Addr)
	n, _ := strconv.Atoi(p)
	return n
}
