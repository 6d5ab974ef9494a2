package doctor_test

import (
	"context"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/doctor"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

func TestProbeAndTestMessage(t *testing.T) {
	tt := m365test.NewTenant(t, "s3cret-value")
	clock, ca, entra, x, port := tt.Clock, tt.CA, tt.Entra, tt.Exchange, tt.SMTPPort()
	d := m365test.NewDNS(t, "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.")
	c := cfg("m365-oauth", config.M365{Tenant: "contoso.test", ClientID: "app1", ClientSecretSecret: "s", Mailbox: "scanner@contoso.test",
		TokenURL: entra.URL, SMTPHost: "127.0.0.1", SMTPPort: port})
	up, err := m365.New("m365-oauth", c.Upstream.M365, m365.Deps{
		Secret: func(string) ([]byte, error) { return []byte("s3cret-value"), nil }, Clock: clock.Now, Sleep: clock.Sleep,
		HTTPClient: entra.Client(), RootCAs: ca.Pool})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	steps := doctor.Run(context.Background(), c, doctor.Deps{Resolver: d.Addr, Upstream: up, TestTo: "ops@contoso.test"})
	var names []string
	for _, s := range steps {
		names = append(names, s.Name)
		if strings.HasPrefix(s.Name, "token") && !s.OK {
			t.Errorf("token step failed: %+v", s)
		}
		if strings.HasPrefix(s.Name, "test message") && !s.OK {
			t.Errorf("test message failed: %+v", s)
		}
	}
	all := strings.Join(names, "|")
	if !strings.Contains(all, "token from") || !strings.Contains(all, "test message") {
		t.Errorf("steps %s", all)
	}
	if len(x.Received()) != 1 {
		t.Errorf("test message not received")
	}
	for _, s := range steps {
		if strings.Contains(s.Detail, "s3cret-value") {
			t.Errorf("secret in step %q", s.Name)
		}
		for _, tok := range entra.Tokens() {
			if strings.Contains(s.Detail, tok) {
				t.Errorf("token in step %q", s.Name)
			}
		}
	}
	t.Logf("steps: %+v", steps)
}
