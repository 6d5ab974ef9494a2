package appliance

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// Learning mode, devices, adopt, lock down, through relayctl on the test
// tailnet: the relay learns the boiler that sends; relayctl devices lists
// it as not adopted; devices adopt makes it a device in a new
// configuration version with devices_only; afterwards an unknown client
// is refused, the boiler still relays, and relayctl trace -device finds
// its mail. A viewer sees the devices but cannot adopt (403, audited).
func TestRelayctlDevicesAdoptLockDown(t *testing.T) {
	tn := provtest.New(t)
	b := startBox(t, tn, "plant-d", fmt.Sprintf(captureConfig, "plant-d", "outbox"))
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-d"}, args...) }
	rc.node = tn.Join(t, "laptop")
	waitRole(t, rc, cmd, api.Admin)

	boiler, intruder := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	if err := relaytest.SendFrom(t, boiler, b.smtp, "boiler-scada", "BOILER ALARM 1"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "the first message captured", func() bool { return len(files(b.dir, "outbox")) == 1 })

	// What learning mode saw: the boiler, not adopted.
	var seen []api.SeenDevice
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "devices")...)), &seen); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0].Address != "127.0.0.1" || seen[0].Adopted || seen[0].Messages != 1 || seen[0].LastMessage.IsZero() ||
		!slices.Contains(seen[0].Helo, "boiler-scada") || !slices.Contains(seen[0].Senders, "boiler@plant.example") {
		t.Fatalf("devices = %+v", seen)
	}
	out := rc.ok("", cmd("devices")...)
	for _, want := range []string{"ADDRESS", "127.0.0.1", "(not adopted)", "none", "boiler-scada"} {
		if !strings.Contains(out, want) {
			t.Errorf("devices table lacks %q:\n%s", want, out)
		}
	}

	// A dry run changes nothing; a wrong address is named.
	out = rc.ok("", cmd("devices", "adopt", "-dry-run")...)
	if !strings.Contains(out, "adopted boiler-scada") || !strings.Contains(out, "nothing applied") || !strings.Contains(out, "devices_only") {
		t.Errorf("adopt -dry-run said:\n%s", out)
	}
	code, _, errs := rc.run("", cmd("devices", "adopt", "-address", "127.0.0.1,10.9.9.9")...)
	if code != ctl.ExitFailed || !strings.Contains(errs, "addresses[1]") || !strings.Contains(errs, "nothing was learned from 10.9.9.9") {
		t.Errorf("adopt of an address never seen: exit %d %s", code, errs)
	}
	if err := relaytest.SendFrom(t, intruder, b.smtp, "intruder", "still open"); err != nil {
		t.Fatalf("before lock-down an unknown client relays as before: %v", err)
	}
	relaytest.Eventually(t, "the unknown client's message captured", func() bool { return len(files(b.dir, "outbox")) == 2 })

	// Adopt the boiler only, and lock the relay to it.
	var res api.AdoptResult
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "devices", "adopt", "-address", "127.0.0.1")...)), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Adopted) != 1 || res.Adopted[0].Name != "boiler-scada" || !res.DevicesOnly || res.Config.Version != 2 || res.Config.DryRun {
		t.Fatalf("adopt = %+v", res)
	}
	if out := rc.ok("", cmd("config", "get")...); !strings.Contains(out, `"devices_only": true`) || !strings.Contains(out, `"boiler-scada"`) {
		t.Errorf("configuration after adopt:\n%s", out)
	}
	err := relaytest.SendFrom(t, intruder, b.smtp, "intruder", "after lock-down")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || !strings.Contains(se.Message, "devices_only") || !strings.Contains(se.Message, "relayctl devices adopt") {
		t.Errorf("an unknown client after lock-down: got %v, want 550 naming devices_only and relayctl devices adopt", err)
	}
	if err := relaytest.SendFrom(t, boiler, b.smtp, "boiler-scada", "BOILER ALARM 2"); err != nil {
		t.Errorf("the adopted device after lock-down: %v", err)
	}
	relaytest.Eventually(t, "the device's message captured", func() bool { return len(files(b.dir, "outbox")) == 3 })
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "devices")...)), &seen); err != nil {
		t.Fatal(err)
	}
	for _, d := range seen {
		if d.Adopted != (d.Address == "127.0.0.1") || d.Adopted && d.Device != "boiler-scada" {
			t.Errorf("after adopt: %s adopted %v device %q", d.Address, d.Adopted, d.Device)
		}
	}

	// The trace by device: the device's mail since it is one.
	var ev []api.TraceEvent
	relaytest.Eventually(t, "the device's mail delivered in the trace", func() bool {
		out := rc.ok("", cmd("-json", "trace", "-device", "boiler-scada")...)
		return json.Unmarshal([]byte(out), &ev) == nil && slices.ContainsFunc(ev, func(e api.TraceEvent) bool { return e.Kind == "delivered" })
	})
	for _, e := range ev {
		if e.Device != "boiler-scada" || e.Subject != "BOILER ALARM 2" {
			t.Errorf("trace -device boiler-scada gave %+v", e)
		}
	}
	if out := rc.ok("", cmd("trace", "-device", "boiler-scada")...); !strings.Contains(out, "DEVICE") || !strings.Contains(out, "boiler-scada") {
		t.Errorf("trace table:\n%s", out)
	}

	// A viewer sees the devices and cannot adopt; the refusal is audited.
	grantAll(t, tn, api.Viewer)
	waitRole(t, rc, cmd, api.Viewer)
	rc.ok("", cmd("devices")...)
	if code, _, errs := rc.run("", cmd("devices", "adopt")...); code != ctl.ExitForbidden || !strings.Contains(errs, "forbidden") {
		t.Errorf("adopt as a viewer: exit %d %s, want %d forbidden", code, errs, ctl.ExitForbidden)
	}
	grantAll(t, tn, api.Admin)
	waitRole(t, rc, cmd, api.Admin)
	var audit []api.AuditEntry
	json.Unmarshal([]byte(rc.ok("", cmd("-json", "audit")...)), &audit)
	var got []string
	for _, a := range audit {
		if strings.Contains(a.What, "adopt") && a.Result != api.AuditResultStarted {
			got = append(got, a.Role.String()+" "+a.What+" = "+a.Result)
		}
	}
	slices.Reverse(got) // oldest first
	want := []string{
		"admin dry run of adopting devices = ok",
		"admin adopt devices at 127.0.0.1, 10.9.9.9 = bad_request",
		"admin adopt devices at 127.0.0.1 (1 adopted, devices_only true, version 2) = ok",
		"viewer POST /v1/devices/adopt = forbidden",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit of adopting:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// waitRole waits until the relay gives relayctl's node role.
func waitRole(t *testing.T, rc *relayctl, cmd func(...string) []string, role api.Role) {
	t.Helper()
	relaytest.Eventually(t, role.String()+" role for relayctl", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == role
	})
}
