package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/m365"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// Scripted traffic through Microsoft 365 client submission (the fake
// Entra and Exchange): a token is obtained once, a throttling reply and
// the pacer's own holds are counted, and the allowance and the token's
// remaining life read as they should.
func TestMetricsAgainstFakeMicrosoft365(t *testing.T) {
	tt := m365test.NewTenant(t, "s3cret")
	clock, ca, entra, x, port := tt.Clock, tt.CA, tt.Entra, tt.Exchange, tt.SMTPPort()

	c := config.Default()
	c.Upstream = config.Upstream{Kind: config.KindM365OAuth, M365: config.M365{Tenant: "contoso.test", ClientID: "app1",
		ClientSecretSecret: "secret", Mailbox: "scanner@contoso.test", TokenURL: entra.URL, SMTPHost: "127.0.0.1", SMTPPort: port}}
	c.SetDefaults()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	m := New(Gauges{Clock: clock.Now})
	m.Upstreams("m365-oauth")
	up, err := m365.New(config.KindM365OAuth, c.Upstream.M365, m365.Deps{
		Secret: func(string) ([]byte, error) { return []byte("s3cret"), nil },
		Clock:  clock.Now, Sleep: clock.Sleep, HTTPClient: entra.Client(), RootCAs: ca.Pool, LocalName: "relay.test",
		TokenRenewed: m.TokenRenewed, ClientCertificate: m.ClientCertificate,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	in := m.Instrument(up, func() string { return "m365-oauth" })

	ctx := context.Background()
	delivered, throttled, paced := 0, 0, 0
	for i := range 13 { // ten delivered, the eleventh throttled, then the pacer cools down
		if i == 10 {
			x.Script(m365test.AtData, m365test.ErrIPThrottled)
		}
		b := []byte(fmt.Sprintf("From: scanner@contoso.test\r\nSubject: %d\r\n\r\nx\r\n", i))
		msg := &upstream.Message{QueueID: fmt.Sprint("q", i), From: "scanner@contoso.test", To: []string{"ops@fabrikam.test"}, Size: int64(len(b)), Body: bytes.NewReader(b)}
		_, err := in.Deliver(ctx, msg)
		switch {
		case err == nil:
			delivered++
		case errors.Is(err, upstream.ErrPaced):
			paced++
		case Throttling(err):
			throttled++
		default:
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if delivered != 10 || paced != 2 || throttled != 1 {
		t.Fatalf("delivered %d, paced %d, throttled %d: the script did not run as meant", delivered, paced, throttled)
	}
	body := scrape(t, m)
	wantLines(t, body,
		`siterelay_token_renewals_total{result="ok"} 1`,
		`siterelay_token_renewals_total{result="failed"} 0`,
		`siterelay_credential_expires_in_seconds{credential="token"} 3599`,
		`siterelay_upstream_throttled_total{upstream="m365-oauth"} 1`,
		fmt.Sprintf(`siterelay_upstream_paced_total{upstream="m365-oauth"} %d`, paced),
		fmt.Sprintf(`siterelay_upstream_attempt_duration_seconds_count{upstream="m365-oauth"} %d`, delivered+throttled),
		fmt.Sprintf(`siterelay_upstream_allowance_used_ratio{upstream="m365-oauth",window="minute"} %g`, float64(delivered+throttled)/30),
	)
	t.Logf("delivered %d, throttled %d, paced %d", delivered, throttled, paced)

	// An hour on, the token is renewed; Entra down counts a failure.
	clock.Advance(time.Hour)
	entra.SetDown(true)
	b := []byte("Subject: later\r\n\r\nx\r\n")
	in.Deliver(ctx, &upstream.Message{QueueID: "q-late", From: "scanner@contoso.test", To: []string{"ops@fabrikam.test"}, Size: int64(len(b)), Body: bytes.NewReader(b)})
	wantLines(t, scrape(t, m), `siterelay_token_renewals_total{result="failed"} 1`)
}
