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
	"net"
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
	tt := &Tenant{Clock: NewClock(), CA: NewCA(t)}
	tt.Entra = NewEntra(t, TenantDomain, tt.Clock.Now)
	tt.Entra.AddApp(App{ClientID: TenantApp, Secret: secret})
	tt.Exchange = NewExchange(t, ExchangeOptions{CA: tt.CA, Clock: tt.Clock.Now, Entra: tt.Entra})
	tt.Exchange.Grant(TenantApp, TenantMailbox)
	tt.Graph = NewGraph(t, tt.Entra)
	tt.Graph.Grant(TenantApp, TenantMailbox)
	return tt
}

// SMTPPort is the port client submission listens on (on 127.0.0.1).
func (tt *Tenant) SMTPPort() int {
	_, p, _ := net.SplitHostPort(tt.Exchange.Addr)
	n, _ := strconv.Atoi(p)
	return n
}
