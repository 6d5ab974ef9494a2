package status

import (
	"net/http"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay"
)

func TestSheet(t *testing.T) {
	oauth := samplePage()
	oauth.Addresses = []string{"10.20.0.5"}
	oauth.Relay.UpstreamKinds, oauth.Relay.SenderRule = []string{"m365-oauth"}, "mailbox"
	rewritten := samplePage()
	rewritten.Relay.SenderRule = "rewritten"
	tls12 := samplePage()
	tls12.Relay.Listeners = []relay.ListenerStatus{{Name: "smtp", Address: "[::]:25", Mode: "smtp", TLS: "starttls", MinTLS: "1.2", Auth: "none"}}
	onlyLoopback := samplePage()
	onlyLoopback.MDNSName = ""
	onlyLoopback.Relay.Listeners = onlyLoopback.Relay.Listeners[2:]
	for _, tc := range []struct {
		name          string
		page          Page
		want, notWant []string
	}{
		{"oauth, old TLS and a login", oauth,
			[]string{"SMTP server:      relay-plant-a-2.local or relay-plant-a", "Address:          10.20.0.5",
				"Largest message:  35.0 MiB",
				"smtp         relay-plant-a-2.local    25     STARTTLS (optional)  TLS 1.0 to 1.3  off",
				"submission   10.20.0.5                587    STARTTLS (required)  TLS 1.2 to 1.3  required",
				`"Username:" and "Password:"`, "only an e-mail address as the login name", "SendAs", "5.7.60",
				"speaks only TLS 1.0 or 1.1: this relay accepts it", "552 5.3.4", "450 4.7.1", "POP before SMTP"},
			[]string{"\nlocal ", "2525", "127.0.0.1", "Reply-To", "leave SMTP authentication off"}},
		{"From rewritten by the relay", rewritten, []string{"Reply-To"}, []string{"5.7.60"}},
		{"TLS 1.2 only, no login", tls12,
			[]string{"TLS 1.2 to 1.3", "must send without STARTTLS", "leave SMTP authentication off"},
			[]string{"Xerox", "Microsoft 365 sender", "1.0 to"}},
		{"nothing on the plant network", onlyLoopback,
			[]string{"SMTP server:      relay-plant-a\n", "No listener is reachable"}, []string{"2525"}},
		{"no relay", Page{Hostname: "r"}, []string{"Device setup sheet: r", "SMTP server:      r\n"}, []string{"Largest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NewSheet(tc.page).Text()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("sheet lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("sheet has %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestSheetPage: GET /sheet is the same sheet as HTML, escaped, with
// nothing the status page may not show.
func TestSheetPage(t *testing.T) {
	page := func() Page {
		p := samplePage()
		p.Hostname = "relay<b>"
		p.Addresses = []string{"10.20.0.5", "fd00::5"}
		p.Relay.SenderRule = "mailbox"
		return p
	}
	code, body := get(t, Handler(page), "/sheet")
	if code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	for _, w := range []string{"Device setup sheet: relay&lt;b&gt;", "10.20.0.5, fd00::5", "<td>STARTTLS (optional)</td>", "<td>TLS 1.0 to 1.3</td>",
		"35.0 MiB", "SendAs", "Xerox"} {
		if !strings.Contains(body, w) {
			t.Errorf("sheet page lacks %q", w)
		}
	}
	// The page's people: the queue's device and the upstream's reply are
	// status facts, not sheet facts, and the loopback listener is the box's own.
	for _, w := range []string{"relay<b>", "scada-line-3", "Server busy", "127.0.0.1"} {
		if strings.Contains(body, w) {
			t.Errorf("sheet page shows %q", w)
		}
	}
	if _, status := get(t, Handler(page), "/"); !strings.Contains(status, `href="/sheet"`) {
		t.Error("the status page does not link the sheet")
	}
}
