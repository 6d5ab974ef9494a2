package appliance

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestStatusRefused: devices the listener refuses (here a client outside
// allowed_networks) are counted in the status relayctl reads, as
// siterelay_refused_total counts them, so a roll-out's refusals gate sees
// them; relayctl status shows the count.
func TestStatusRefused(t *testing.T) {
	tn := provtest.New(t)
	cfg := strings.Replace(fmt.Sprintf(captureConfig, "plant-r", "outbox"), `"allowed_networks":["127.0.0.0/8"]`, `"allowed_networks":["127.0.0.2/32"]`, 1)
	b := startBox(t, tn, "plant-r", cfg)
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-r"}, args...) }
	refused := func() uint64 {
		var st api.Status
		if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &st); err != nil {
			t.Fatal(err)
		}
		return st.Refused
	}
	relaytest.Eventually(t, "admin role for relayctl", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	rc.node = tn.Join(t, "laptop")
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	if got := refused(); got != 0 {
		t.Fatalf("refused before any device: %d, want 0", got)
	}
	for i := range 2 {
		if err := b.send(t, "from outside"); err == nil {
			t.Fatalf("send %d from 127.0.0.1 was accepted; allowed_networks is 127.0.0.2/32", i)
		}
	}
	relaytest.Eventually(t, "two refusals in the status", func() bool { return refused() == 2 })
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, "2 device commands or messages since start") {
		t.Errorf("relayctl status does not show the refusals:\n%s", out)
	}
}
