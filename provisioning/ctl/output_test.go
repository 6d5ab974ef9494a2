package ctl_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
)

// raw are the runes a terminal obeys or that reorder text.
var raw = []string{"\x1b", "\r", "\x07", "\x08", "\x7f", "\u009b", "\u0085", "\u202e", "\u2066", "\u200f", "\u2028"}

func inert(t *testing.T, what, out string) {
	t.Helper()
	for _, r := range raw {
		if strings.Contains(out, r) {
			t.Errorf("%s prints %q raw:\n%q", what, r, out)
		}
	}
}

// TestHostileOutput: what devices and peers sent (a subject, a HELO, an
// audit row forged by a caller without a role, the relay's error message)
// reaches the terminal escaped, in tables and in -json, and cannot add or
// erase lines.
func TestHostileOutput(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	tn := provtest.New(t)
	laptop := tn.Join(t, "laptop")
	f := startFake(t, tn, "relay-plant-h", ctl.DefaultTag)
	waitSeen(t, laptop, f, true)
	now := time.Now()
	f.set("/v1/queue/Q1", api.Message{ID: "Q1", From: "mfp@plant\x1b[31m.example", Received: now, Size: 100, ClientIP: "10.0.0.5",
		Subject:    "Invoice \x1b]0;owned\x07\x1b[2J\u202eexe.pdf",
		Recipients: []api.Recipient{{Addr: "ops@example.com", State: "pending", Reply: "451 \x1b[1A\x1b[2Kbusy"}},
		Headers:    "Subject: Invoice \x1b[2J\r\nX-Evil: \u009b1A\r\n", Body: "scan\r\n\x1b[2J\x1b[H\r\n"})
	f.set("/v1/devices", []api.SeenDevice{{Address: "10.0.0.5", Helo: []string{"mfp\x1b[2J\x1b[H\rPRINTER"}, Senders: []string{"a@b\u202ec"}, Mails: 1, Messages: 1, LastMessage: now}})
	f.set("/v1/audit", []api.AuditEntry{
		{Time: now, Login: "alice@example.com", Node: "laptop", Role: api.Admin, What: "put credential smarthost (password)", Result: "ok"},
		{Time: now, Node: "evil\n2026-12-07T00:00:00Z  alice@example.com  laptop  admin  rollback", What: "GET \x1b[1A\x1b[2K\x1b[1A\x1b[2K\r\u202e", Result: "forbidden"},
	})
	f.set("/v1/status", api.ErrorBody{Error: &api.Error{Code: "forbidden", Message: "no role \x1b[2J\u202e"}})
	R := []string{"-relay", "relay-plant-h"}

	code, out, errs := relayctl(t, laptop, "", append(R, "queue", "show", "Q1", "-body")...)
	inert(t, "queue show", out+errs)
	for _, want := range []string{`Invoice \x1b]0;owned\x07\x1b[2J\u202eexe.pdf`, `mfp@plant\x1b[31m.example`, `451 \x1b[1A\x1b[2Kbusy`, "X-Evil: \\u009b1A\n", "scan\n\\x1b[2J\\x1b[H\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show (exit %d) does not show %q:\n%s", code, want, out)
		}
	}

	code, out, _ = relayctl(t, laptop, "", append(R, "devices")...)
	inert(t, "devices", out)
	if !strings.Contains(out, `mfp\x1b[2J\x1b[H\x0dPRINTER`) || !strings.Contains(out, `a@b\u202ec`) || strings.Count(out, "\n") != 2 {
		t.Errorf("devices (exit %d):\n%s", code, out)
	}

	code, out, _ = relayctl(t, laptop, "", append(R, "audit")...)
	inert(t, "audit", out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 3 || !strings.Contains(lines[1], "put credential smarthost") || !strings.Contains(lines[2], `evil\x0a2026`) {
		t.Errorf("audit: exit %d, %d lines, want the header and 2 rows, the forged one on one line:\n%s", code, len(lines), out)
	}

	code, out, _ = relayctl(t, laptop, "", append(R, "-json", "audit")...)
	inert(t, "audit -json", out)
	var back []api.AuditEntry
	if err := json.Unmarshal([]byte(out), &back); err != nil || len(back) != 2 || back[1].What != "GET \x1b[1A\x1b[2K\x1b[1A\x1b[2K\r\u202e" {
		t.Errorf("audit -json (exit %d) does not decode to the relay's rows: %v\n%s", code, err, out)
	}

	code, _, errs = relayctl(t, laptop, "", append(R, "status")...)
	inert(t, "an error from the relay", errs)
	if code != ctl.ExitForbidden || !strings.Contains(errs, `no role \x1b[2J\u202e`) {
		t.Errorf("status: exit %d %q", code, errs)
	}
}
