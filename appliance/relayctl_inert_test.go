package appliance

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// TestRelayctlPrintsDeviceDataInertly: a device's subject and HELO with
// escape sequences and a bidi control, kept as they came by the real
// relay, print inertly through relayctl queue show and devices.
func TestRelayctlPrintsDeviceDataInertly(t *testing.T) {
	tn := provtest.New(t)
	ca := upstreamtest.NewTestCA(t)
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{CA: ca})
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-e","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"smtp","smtp":{"address":%q,"tls":"starttls","min_tls":"1.2","ca_file":%q,"server_name":"localhost"}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, fake.Addr, ca.WriteFile(t))
	b := startBox(t, tn, "plant-e", cfg)
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-e"}, args...) }
	waitRole(t, rc, cmd, api.Admin)

	const subject = "Invoice \x1b]0;owned\x07\x1b[2J\u202eexe.pdf"
	helo := "mfp\x1b[2J\x1b[H\u202e"
	c, err := smtp.Dial(b.smtp)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello(helo); err != nil {
		// The front end may refuse such a HELO: then the subject alone.
		t.Logf("HELO with escapes refused (%v): the subject alone", err)
		c.Close()
		if c, err = smtp.Dial(b.smtp); err != nil {
			t.Fatal(err)
		}
		helo = ""
	}
	if err := c.SendMail("mfp@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: "+subject+"\r\n\r\nscan\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var q []api.QueueItem
	relaytest.Eventually(t, "a deferred message", func() bool {
		out := rc.ok("", cmd("-json", "queue", "-pending")...)
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	var m api.Message
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "queue", "show", q[0].ID)...)), &m); err != nil || m.Subject != subject {
		t.Fatalf("queue show -json: subject %q (%v), want the device's bytes %q", m.Subject, err, subject)
	}
	raw := []string{"\x1b", "\x07", "\u202e"}
	out := rc.ok("", cmd("queue", "show", q[0].ID)...)
	for _, r := range raw {
		if strings.Contains(out, r) {
			t.Errorf("queue show prints %q raw:\n%q", r, out)
		}
	}
	if !strings.Contains(out, `Invoice \x1b]0;owned\x07\x1b[2J\u202eexe.pdf`) {
		t.Errorf("queue show does not show the subject escaped:\n%s", out)
	}
	out = rc.ok("", cmd("devices")...)
	for _, r := range raw {
		if strings.Contains(out, r) {
			t.Errorf("devices prints %q raw:\n%q", r, out)
		}
	}
	if helo != "" && !strings.Contains(out, `mfp\x1b[2J\x1b[H\u202e`) {
		t.Errorf("devices does not show the HELO escaped:\n%s", out)
	}
}
