package config

import (
	"strings"
	"testing"
)

func m365Doc(kind, m365 string) string {
	return `{"listeners":[{"name":"smtp","address":":25","mode":"smtp","allowed_networks":["10.0.0.0/8"]}],
"upstream":{"kind":"` + kind + `","m365":{` + m365 + `}}}`
}

func TestM365Valid(t *testing.T) {
	tests := []struct {
		name, kind, m365 string
		check            func(t *testing.T, m M365)
	}{
		{"oauth secret", "m365-oauth", `"tenant":"contoso.onmicrosoft.com","client_id":"11111111-2222-3333-4444-555555555555","client_secret_secret":"m365-secret","mailbox":"scanner@contoso.com"`,
			func(t *testing.T, m M365) {
				if m.SMTPHost != "smtp.office365.com" || m.SMTPPort != 587 || m.Scope != M365SMTPScope || m.TokenURL != M365TokenURL {
					t.Errorf("defaults: got %+v", m)
				}
				if got, want := m.Limits, (M365Limits{MessagesPerMinute: 30, Concurrency: 3, RecipientsPerDay: 10000, MaxRecipients: 500, MaxMessageBytes: 35 << 20}); got != want {
					t.Errorf("limits: got %+v, want %+v", got, want)
				}
			}},
		{"oauth certificate", "m365-oauth", `"tenant":"t","client_id":"c","certificate_file":"app.pem","certificate_key_secret":"app-key","mailbox":"a@b.com","assertion_alg":"RS256"`, nil},
		{"password", "m365-password", `"mailbox":"a@b.com","password_secret":"pw","limits":{"messages_per_minute":10}`,
			func(t *testing.T, m M365) {
				if m.Limits.MessagesPerMinute != 10 {
					t.Errorf("override lost: %+v", m.Limits)
				}
			}},
		{"connector", "m365-connector", `"domain":"contoso.com","connector_certificate_file":"c.pem","connector_key_secret":"ck"`,
			func(t *testing.T, m M365) {
				if m.SMTPPort != 25 || m.Limits.MessagesPerMinute != 0 {
					t.Errorf("defaults: %+v", m)
				}
			}},
		{"direct", "m365-direct", `"domain":"contoso.com"`,
			func(t *testing.T, m M365) {
				if len(m.AcceptedDomains) != 1 || m.AcceptedDomains[0] != "contoso.com" {
					t.Errorf("accepted domains: %v", m.AcceptedDomains)
				}
			}},
		{"graph", "graph", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com"`,
			func(t *testing.T, m M365) {
				if m.Scope != M365GraphScope || m.Limits.Concurrency != 4 || m.GraphURL != M365GraphURL {
					t.Errorf("defaults: %+v", m)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(m365Doc(tt.kind, tt.m365)))
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c.Upstream.M365)
			}
		})
	}
}

func TestM365Errors(t *testing.T) {
	tests := []struct {
		kind, m365, key, problem string
	}{
		{"m365-oauth", `"client_id":"c","client_secret_secret":"s","mailbox":"a@b.com"`, "upstream.m365.tenant", "missing"},
		{"m365-oauth", `"tenant":"a/b","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com"`, "upstream.m365.tenant", "neither"},
		{"m365-oauth", `"tenant":"t","client_secret_secret":"s","mailbox":"a@b.com"`, "upstream.m365.client_id", "missing"},
		{"m365-oauth", `"tenant":"t","client_id":"c","mailbox":"a@b.com"`, "upstream.m365.client_secret_secret", "missing"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","certificate_file":"f","certificate_key_secret":"k","mailbox":"a@b.com"`, "upstream.m365.client_secret_secret", "not both"},
		{"m365-oauth", `"tenant":"t","client_id":"c","certificate_file":"f","mailbox":"a@b.com"`, "upstream.m365.certificate_file", "go together"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"nobody"`, "upstream.m365.mailbox", "sending mailbox"},
		{"m365-oauth", `"tenant":"t","client_id":"0a1b2c3d-0000-4000-8000-000000000001","certificate_file":"f","certificate_key_secret":"k","mailbox":"a@b.com","application_object_id":"0A1B2C3D-0000-4000-8000-000000000001"`, "upstream.m365.application_object_id", "not its Application (client) ID"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","application_object_id":"5e1f0c7a-0b7d-4d5c-9a51-0f7c2e9b1d34"`, "upstream.m365.application_object_id", "certificate made on the box"},
		{"m365-oauth", `"tenant":"t","client_id":"c","certificate_file":"f","certificate_key_secret":"k","mailbox":"a@b.com","application_object_id":"my-app"`, "upstream.m365.application_object_id", "GUID"},
		{"m365-oauth", `"tenant":"t","client_id":"c","certificate_file":"f","certificate_key_secret":"k","mailbox":"a@b.com","renew_before_days":90,"certificate_days":60`, "upstream.m365.renew_before_days", "not shorter"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","assertion_alg":"HS256"`, "upstream.m365.assertion_alg", "PS256"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","token_url":"http://login.example"`, "upstream.m365.token_url", "https"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","scope":"SMTP.Send"`, "upstream.m365.scope", ".default"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","smtp_host":"bad host"`, "upstream.m365.smtp_host", "host name"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","password_secret":"p"`, "upstream.m365.password_secret", "only used"},
		{"m365-oauth", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","connector_key_secret":"p"`, "upstream.m365.connector_certificate_file", "only used"},
		{"m365-password", `"mailbox":"a@b.com"`, "upstream.m365.password_secret", "missing"},
		{"m365-connector", `"smtp_port":70000`, "upstream.m365.domain", "missing"},
		{"m365-connector", `"domain":"c.com","smtp_port":70000`, "upstream.m365.smtp_port", "65535"},
		{"m365-connector", `"domain":"bad_domain!"`, "upstream.m365.domain", "not a domain"},
		{"m365-connector", `"domain":"c.com","mx_host":"bad host"`, "upstream.m365.mx_host", "host name"},
		{"m365-connector", `"domain":"c.com","connector_key_secret":"k"`, "upstream.m365.connector_certificate_file", "go together"},
		{"m365-direct", `"mx_host":"mx.c.com"`, "upstream.m365.accepted_domains", "list them"},
		{"m365-direct", `"domain":"c.com","accepted_domains":["x y"]`, "upstream.m365.accepted_domains[0]", "not a domain"},
		{"m365-direct", `"domain":"c.com","public_ip":"2001:db8::1"`, "upstream.m365.public_ip", "IPv4"},
		{"m365-direct", `"domain":"c.com","dkim_selectors":["a b"]`, "upstream.m365.dkim_selectors[0]", "DNS label"},
		{"m365-direct", `"domain":"c.com","limits":{"messages_per_minute":-1}`, "upstream.m365.limits", "negative"},
		{"m365-direct", `"domain":"c.com","limits":{"concurrency":99}`, "upstream.m365.limits.concurrency", "1 to 50"},
		{"m365-direct", `"domain":"c.com","limits":{"max_recipients":1001}`, "upstream.m365.limits.max_recipients", "1 to 1000"},
		{"m365-direct", `"domain":"c.com","limits":{"max_message_bytes":10}`, "upstream.m365.limits.max_message_bytes", "too small"},
		{"graph", `"tenant":"t","client_id":"c","client_secret_secret":"s","mailbox":"a@b.com","graph_url":"ftp://x"`, "upstream.m365.graph_url", "https"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			_, err := Parse([]byte(m365Doc(tt.kind, tt.m365)))
			errs, ok := err.(Errors)
			if !ok {
				t.Fatalf("got %v, want Errors", err)
			}
			for _, e := range errs {
				ke, ok := e.(*KeyError)
				if ok && ke.Key == tt.key && strings.Contains(ke.Problem, tt.problem) {
					return
				}
			}
			t.Errorf("got %v, want key %s with %q", errs, tt.key, tt.problem)
		})
	}
}
