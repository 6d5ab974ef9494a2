package relay

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

func stepNamed(steps []upstream.Step, prefix string) (upstream.Step, bool) {
	for _, s := range steps {
		if strings.HasPrefix(s.Name, prefix) {
			return s, true
		}
	}
	return upstream.Step{}, false
}

// For a smarthost, doctor -to sends the test message (it used to print
// "all checks passed" without sending), and checks the sender domain's DNS.
func TestDoctorSmarthostSendsTheTestMessage(t *testing.T) {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	dns := m365test.NewDNS(t, "plant.example. 300 IN MX 10 mail.plant.example.")
	cfg := smarthostConfig(fake)
	cfg.Senders.RewriteFrom = "relay@plant.example"
	steps, err := Doctor(context.Background(), cfg, relaytest.StateDir(t), Deps{Resolver: dns.Addr}, "ops@example.com")
	if err != nil {
		t.Fatal(err)
	}
	st, ok := stepNamed(steps, "test message to ops@example.com")
	if !ok || !st.OK {
		t.Fatalf("test message step %+v (found %v) in %+v", st, ok, steps)
	}
	msgs := fake.WaitMessages(t, 1)
	if got := msgs[0].From; got != "relay@plant.example" {
		t.Errorf("test message from %q, want senders.rewrite_from", got)
	}
	if st, ok := stepNamed(steps, "MX plant.example"); !ok || !st.OK {
		t.Errorf("MX step %+v (found %v): the sender domain's DNS was not checked", st, ok)
	}
	if st, ok := stepNamed(steps, "banner"); !ok || !st.OK {
		t.Errorf("banner step %+v (found %v): the smarthost was not probed", st, ok)
	}
}

// doctor -to with the capture upstream (relayd -dev) writes the test
// message to the capture directory; it used to say "nothing to check" and
// send nothing.
func TestDoctorCaptureHonoursTo(t *testing.T) {
	cfg := config.Default()
	dir := relaytest.StateDir(t)
	steps, err := Doctor(context.Background(), cfg, dir, Deps{}, "ops@example.com")
	if err != nil {
		t.Fatal(err)
	}
	st, ok := stepNamed(steps, "test message to ops@example.com")
	if !ok || !st.OK {
		t.Fatalf("test message step %+v (found %v) in %+v", st, ok, steps)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
	if len(m) != 1 {
		t.Errorf("capture directory holds %v, want the test message", m)
	}
}

// F24: every FAIL line says what to change, whatever failed: a secret not
// provisioned, a smarthost nobody answers at.
func TestDoctorFailuresSayWhatToDo(t *testing.T) {
	dns := m365test.NewDNS(t, "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.")
	secretMissing := config.Default()
	secretMissing.Upstream = config.Upstream{Kind: config.KindM365OAuth, M365: config.M365{Tenant: "contoso.test", ClientID: "app1",
		ClientSecretSecret: "entra-client-secret", Mailbox: "scanner@contoso.test"}}
	secretMissing.SetDefaults()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close() // nobody answers there now
	noAnswer := config.Default()
	noAnswer.Upstream = config.Upstream{Kind: "smtp", SMTP: config.SMTPUpstream{Address: closed, TLS: "none", MinTLS: "1.2", Concurrency: 1, MaxRecipients: 10}}
	noAnswer.Senders.RewriteFrom = "relay@contoso.test"
	for name, cfg := range map[string]*config.Config{"secret missing": secretMissing, "nobody answers": noAnswer} {
		steps, _ := Doctor(context.Background(), cfg, relaytest.StateDir(t), Deps{Resolver: dns.Addr}, "ops@contoso.test")
		failed := 0
		for _, s := range steps {
			if s.OK || s.Skipped {
				continue
			}
			failed++
			if !strings.Contains(s.Detail, " — ") {
				t.Errorf("%s: FAIL %s %q says nothing about what to change", name, s.Name, s.Detail)
			}
		}
		if failed == 0 {
			t.Errorf("%s: nothing failed: %+v", name, steps)
		}
	}
}

// A new box has no secrets yet: doctor still runs the DNS checks and says
// which steps it could not run, and why.
func TestDoctorMissingSecretStillChecksDNS(t *testing.T) {
	dns := m365test.NewDNS(t, "contoso.test. 300 IN MX 0 contoso-test.mail.protection.outlook.com.")
	cfg := config.Default()
	cfg.Upstream = config.Upstream{Kind: config.KindM365OAuth, M365: config.M365{Tenant: "contoso.test", ClientID: "app1",
		ClientSecretSecret: "entra-client-secret", Mailbox: "scanner@contoso.test"}}
	cfg.SetDefaults()
	steps, err := Doctor(context.Background(), cfg, relaytest.StateDir(t), Deps{Resolver: dns.Addr}, "ops@contoso.test")
	if err != nil {
		t.Fatalf("doctor stopped at the missing secret: %v", err)
	}
	if st, ok := stepNamed(steps, "MX contoso.test"); !ok || !st.OK {
		t.Errorf("MX step %+v (found %v), want it checked", st, ok)
	}
	if st, ok := stepNamed(steps, "upstream"); !ok || st.OK || !strings.Contains(st.Detail, "entra-client-secret") {
		t.Errorf("upstream step %+v (found %v), want a failure naming the secret", st, ok)
	}
	if st, ok := stepNamed(steps, "test message"); !ok || !st.Skipped {
		t.Errorf("test message step %+v (found %v), want skipped with the reason", st, ok)
	}
}
