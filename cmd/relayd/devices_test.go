package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
)

func startRelay(t *testing.T, cfg *config.Config, state string) (*relay.Relay, string, func()) {
	t.Helper()
	cfg.Listeners[0].Address = "127.0.0.1:0"
	r, err := relay.New(cfg, state, relay.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return r, r.Addrs()[0].String(), stop
}

// Learning mode, adopt, lock down, end to end: the relay learns the
// client that sends, `relayd devices adopt` turns it into a device entry,
// and with that configuration reloaded (devices_only) the device still
// sends while an unknown client is refused with words naming the key.
func TestLearnAdoptLockDown(t *testing.T) {
	state := relaytest.StateDir(t)
	cfg := config.Default()
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(layout.Dir(state).Config(), b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, addr, stop := startRelay(t, cfg, state)
	if err := relaytest.SendFrom(t, net.IPv4(127, 0, 0, 1), addr, "boiler-scada", "BOILER ALARM"); err != nil {
		t.Fatal(err)
	}
	stop() // the store is saved at stop (and at most once a minute before)

	var out, errOut bytes.Buffer
	if code := runDevices([]string{"-state", state, "list"}, &out, &errOut); code != 0 {
		t.Fatalf("list: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"127.0.0.1", "(unknown)", "boiler-scada", "boiler@plant.example"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("list lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := runDevices([]string{"-state", state, "adopt"}, &out, &errOut); code != 0 {
		t.Fatalf("adopt: exit %d: %s", code, errOut.String())
	}
	var adopted struct {
		Devices     []config.Device `json:"devices"`
		DevicesOnly bool            `json:"devices_only"`
	}
	if err := json.Unmarshal(out.Bytes(), &adopted); err != nil {
		t.Fatalf("adopt output: %v\n%s", err, out.String())
	}
	if len(adopted.Devices) != 1 || adopted.Devices[0].Name != "boiler-scada" || !adopted.DevicesOnly {
		t.Fatalf("adopted %+v", adopted)
	}

	// A relay learning as before; then the adopted configuration is
	// reloaded into it.
	r, addr, stop := startRelay(t, config.Default(), state)
	defer stop()
	locked := config.Default()
	locked.Devices, locked.DevicesOnly = adopted.Devices, adopted.DevicesOnly
	locked.Listeners[0].Address = r.Config().Listeners[0].Address
	if errs := locked.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	if err := r.Reload(locked); err != nil {
		t.Fatal(err)
	}
	if err := relaytest.SendFrom(t, net.IPv4(127, 0, 0, 1), addr, "boiler-scada", "BOILER ALARM"); err != nil {
		t.Errorf("the adopted device after lock-down: %v", err)
	}
	err := relaytest.SendFrom(t, net.IPv4(127, 0, 0, 2), addr, "intruder", "BOILER ALARM")
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != 550 || !strings.Contains(se.Message, "devices_only") || !strings.Contains(se.Message, "relayd devices adopt") {
		t.Errorf("an unknown client after lock-down: got %v, want 550 naming devices_only and the adopt command", err)
	}
}

func TestDevicesCommandUsage(t *testing.T) {
	state := relaytest.StateDir(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-state", state}, 2, "usage"},
		{[]string{"-state", state, "frobnicate"}, 2, "usage"},
		{[]string{"-state", state, "list"}, 1, "nothing learned yet"},
	} {
		var out, errOut bytes.Buffer
		if got := runDevices(tc.args, &out, &errOut); got != tc.code || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d (%s), want %d and %q", tc.args, got, errOut.String(), tc.code, tc.want)
		}
	}
}
