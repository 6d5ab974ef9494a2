package doctor_test

import (
	"context"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
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
	steps := doctor.Run(context.Background(), cfg("capture", config.M365{}), doctor.Deps{Resolver: d.Addr})
	if len(steps) != 1 || steps[0].OK {
		t.Errorf("got %+v", steps)
	}
}
