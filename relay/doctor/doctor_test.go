package doctor_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

func cfg(kind config.Kind, m config.M365) *config.Config {
	c := config.Default()
	c.Upstream = config.Upstream{Kind: kind, M365: m}
	c.SetDefaults()
	return c
}

func TestDNSChecks(t *testing.T) {
	good := m365test.NewDNS(t,
		"contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.",
		`contoso.test. 300 IN TXT "v=spf1 ip4:203.0.113.0/24 include:spf.protection.outlook.com ~all"`,
		`contoso.test. 300 IN TXT "MS=ms12345678"`,
		"selector1._domainkey.contoso.test. 300 IN CNAME selector1-contoso-test._domainkey.contoso.onmicrosoft.com.",
		"selector2._domainkey.contoso.test. 300 IN CNAME selector2-contoso-test._domainkey.contoso.onmicrosoft.com.",
		`_dmarc.contoso.test. 300 IN TXT "v=DMARC1; p=quarantine; rua=mailto:d@contoso.test"`,
	)
	bad := m365test.NewDNS(t,
		"contoso.test. 300 IN MX 10 mx.elsewhere.test.",
		`contoso.test. 300 IN TXT "v=spf1 mx -all"`,
		`contoso.test. 300 IN TXT "v=spf1 a -all"`,
		`selector1._domainkey.contoso.test. 300 IN CNAME www.contoso.test.`,
	)
	noSPF := m365test.NewDNS(t, "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.",
		`contoso.test. 300 IN TXT "v=spf1 include:spf.protection.outlook.com -all"`)
	direct := config.M365{Domain: "contoso.test", PublicIP: "203.0.113.9"}
	tests := []struct {
		name     string
		dns      *m365test.DNS
		kind     config.Kind
		m        config.M365
		step     string
		ok       bool
		contains string
	}{
		{"mx good", good, "m365-direct", direct, "MX contoso.test", true, "contoso-test.mail.protection.outlook.com"},
		{"spf with ip", good, "m365-direct", direct, "SPF contoso.test", true, "ip4:203.0.113.0/24"},
		{"dkim1", good, "m365-direct", direct, "DKIM selector1._domainkey.contoso.test", true, "onmicrosoft.com"},
		{"dkim2", good, "m365-direct", direct, "DKIM selector2._domainkey.contoso.test", true, "selector2"},
		{"dmarc", good, "m365-direct", direct, "DMARC _dmarc.contoso.test", true, "p=quarantine"},
		{"mx elsewhere", bad, "m365-direct", direct, "MX contoso.test", false, "mx_host"},
		{"two spf", bad, "m365-direct", direct, "SPF contoso.test", false, "merge them"},
		{"dkim wrong", bad, "m365-direct", direct, "DKIM selector1._domainkey.contoso.test", false, "Get-DkimSigningConfig"},
		{"dkim missing", bad, "m365-direct", direct, "DKIM selector2._domainkey.contoso.test", false, "Set-DkimSigningConfig"},
		{"dmarc missing", bad, "m365-direct", direct, "DMARC _dmarc.contoso.test", false, "v=DMARC1"},
		{"spf without site ip", noSPF, "m365-connector", direct, "SPF contoso.test", false, "ip4:203.0.113.9"},
		{"spf fine for oauth", noSPF, "m365-oauth", config.M365{Tenant: "t", ClientID: "c", ClientSecretSecret: "s", Mailbox: "scanner@contoso.test"}, "SPF contoso.test", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := doctor.Run(context.Background(), cfg(tt.kind, tt.m), doctor.Deps{Resolver: tt.dns.Addr})
			for _, s := range steps {
				if s.Name == tt.step {
					if s.OK != tt.ok || !strings.Contains(s.Detail, tt.contains) {
						t.Errorf("got %+v, want ok=%v and %q", s, tt.ok, tt.contains)
					}
					return
				}
			}
			t.Errorf("no step %q in %+v", tt.step, steps)
		})
	}
}

func TestNoDomain(t *testing.T) {
	d := m365test.NewDNS(t)
	tests := []struct {
		name      string
		c         *config.Config
		wantSteps string // name:state of each step
	}{
		{"capture", cfg("capture", config.M365{}), "upstream:ok"},
		{"smarthost without a sender domain", smarthost("127.0.0.1:1", ""), "DNS:skip|connection:skip"},
		{"microsoft kind without a domain", cfg("m365-connector", config.M365{}), "DNS:FAIL|connection:skip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := doctor.Run(context.Background(), tt.c, doctor.Deps{Resolver: d.Addr})
			if got := states(steps); got != tt.wantSteps {
				t.Errorf("got %s, want %s (%+v)", got, tt.wantSteps, steps)
			}
		})
	}
}

func smarthost(addr, rewriteFrom string) *config.Config {
	c := config.Default()
	c.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: addr, TLS: "none"}}
	c.Senders.RewriteFrom = rewriteFrom
	c.SetDefaults()
	return c
}

func states(steps []upstream.Step) string {
	var out []string
	for _, s := range steps {
		st := "FAIL"
		switch {
		case s.OK:
			st = "ok"
		case s.Skipped:
			st = "skip"
		}
		out = append(out, s.Name+":"+st)
	}
	return strings.Join(out, "|")
}

// A DNS server that does not answer is not a missing record: the steps say
// they could not check, never what to add.
func TestDNSUnreachable(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close() // nothing listens there now: the query is refused at once
	c := cfg("m365-direct", config.M365{Domain: "contoso.test", PublicIP: "203.0.113.9"})
	steps := doctor.Run(context.Background(), c, doctor.Deps{Resolver: dead})
	dns := 0
	for _, s := range steps {
		if !strings.HasPrefix(s.Name, "MX ") && !strings.HasPrefix(s.Name, "SPF ") && !strings.HasPrefix(s.Name, "DKIM ") && !strings.HasPrefix(s.Name, "DMARC ") {
			continue
		}
		dns++
		if s.OK || !s.Skipped || !strings.Contains(s.Detail, "could not check") || strings.Contains(s.Detail, "add ") || strings.Contains(s.Detail, "publish") {
			t.Errorf("step %q: got %+v, want skipped with \"could not check\" and no advice to add records", s.Name, s)
		}
	}
	if dns != 5 {
		t.Errorf("%d DNS steps, want 5 (MX, SPF, 2 DKIM, DMARC): %+v", dns, steps)
	}
}

// Without an upstream (a secret not provisioned yet) the DNS checks still
// run, and the steps that need the upstream say why they could not.
func TestNoUpstreamStillChecksDNS(t *testing.T) {
	d := m365test.NewDNS(t, "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.")
	c := cfg("m365-oauth", config.M365{Tenant: "t", ClientID: "c", ClientSecretSecret: "entra-secret", Mailbox: "scanner@contoso.test"})
	steps := doctor.Run(context.Background(), c, doctor.Deps{Resolver: d.Addr, TestTo: "ops@contoso.test",
		UpstreamErr: errors.New(`upstream.m365.client_secret_secret: reading secret "entra-secret": no such file`)})
	got := states(steps)
	for _, want := range []string{"MX contoso.test:ok", "upstream:FAIL", "connection:skip", "test message to ops@contoso.test:skip"} {
		if !strings.Contains(got, want) {
			t.Errorf("steps %s lack %s", got, want)
		}
	}
	for _, s := range steps {
		if s.Skipped && !strings.Contains(s.Detail, "entra-secret") {
			t.Errorf("skipped step %q does not say why: %q", s.Name, s.Detail)
		}
	}
}

// stub is an upstream that takes everything and cannot be probed.
type stub struct{ sent int }

func (s *stub) Deliver(_ context.Context, m *upstream.Message) ([]upstream.RcptResult, error) {
	s.sent++
	return []upstream.RcptResult{{Rcpt: m.To[0]}}, nil
}
func (s *stub) Limits() upstream.Limits { return upstream.Limits{} }
func (s *stub) Close() error            { return nil }

// A smarthost's test message needs a sender: without one doctor says so
// instead of passing; with one it is sent.
func TestSmarthostTestMessageSender(t *testing.T) {
	d := m365test.NewDNS(t)
	tests := []struct {
		name, rewriteFrom string
		wantSent          int
		wantStep          string
	}{
		{"no sender", "", 0, "test message to ops@example.com:skip"},
		{"rewrite_from", "relay@plant.example", 1, "test message to ops@example.com:ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := &stub{}
			steps := doctor.Run(context.Background(), smarthost("127.0.0.1:1", tt.rewriteFrom),
				doctor.Deps{Resolver: d.Addr, Upstream: up, TestTo: "ops@example.com"})
			if got := states(steps); !strings.Contains(got, tt.wantStep) {
				t.Errorf("steps %s, want %s", got, tt.wantStep)
			}
			if up.sent != tt.wantSent {
				t.Errorf("sent %d, want %d", up.sent, tt.wantSent)
			}
		})
	}
}
