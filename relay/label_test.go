package relay

import (
	"slices"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
)

// TestM365Label: every Microsoft 365 upstream is named by what tells it
// apart; m365-direct and m365-connector have no tenant and were named by
// their kind alone ("m365-direct ").
func TestM365Label(t *testing.T) {
	for _, tc := range []struct {
		kind config.Kind
		m    config.M365
		want string
	}{
		{config.KindM365OAuth, config.M365{Tenant: "contoso.onmicrosoft.com", Mailbox: "scan@contoso.com"}, "m365-oauth contoso.onmicrosoft.com"},
		{config.KindGraph, config.M365{Tenant: "contoso.onmicrosoft.com"}, "graph contoso.onmicrosoft.com"},
		{config.KindM365Direct, config.M365{Domain: "contoso.com"}, "m365-direct contoso.com"},
		{config.KindM365Connector, config.M365{Domain: "contoso.com", Tenant: "ignored"}, "m365-connector contoso.com"},
		{config.KindM365Connector, config.M365{MXHost: "contoso-com.mail.protection.outlook.com"}, "m365-connector contoso-com.mail.protection.outlook.com"},
		{config.KindM365Password, config.M365{Mailbox: "scan@contoso.com"}, "m365-password scan@contoso.com"},
		{config.KindHVE, config.M365{Mailbox: "alarms@contoso.com"}, "hve alarms@contoso.com"},
	} {
		if got := upstreamLabel(tc.kind, m365What(tc.kind, tc.m)); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.kind, got, tc.want)
		}
	}
}

// TestSenderRule: what the device setup sheet says of From.
func TestSenderRule(t *testing.T) {
	oauth := config.Upstream{Kind: config.KindM365OAuth}
	fromMailbox := config.Upstream{Kind: config.KindGraph, M365: config.M365{FromMailbox: true}}
	smtp := config.Upstream{Kind: config.KindSMTP}
	for _, tc := range []struct {
		name      string
		cfg       config.Config
		wantKinds []string
		want      string
	}{
		{"oauth", config.Config{Upstream: oauth}, []string{"m365-oauth"}, "mailbox"},
		{"oauth with rewrite_from", config.Config{Upstream: oauth, Senders: config.Senders{RewriteFrom: "scan@contoso.com"}}, []string{"m365-oauth"}, "rewritten"},
		{"from_mailbox", config.Config{Upstream: fromMailbox}, []string{"graph"}, "rewritten"},
		{"smarthost", config.Config{Upstream: smtp}, []string{"smtp"}, ""},
		{"routes, one mailbox not rewritten", config.Config{
			Routes:    []config.Route{{Name: "a", Upstreams: []string{"x", "y"}}},
			Upstreams: map[string]config.Upstream{"x": fromMailbox, "y": oauth}}, []string{"graph", "m365-oauth"}, "mailbox"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kinds, got := senderRule(&tc.cfg)
			if got != tc.want || !slices.Equal(kinds, tc.wantKinds) {
				t.Errorf("got %q %q, want %q %q", kinds, got, tc.wantKinds, tc.want)
			}
		})
	}
}
