package appliance

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// The previous run's last lines and how it ended are read over the
// tailnet after a restart (relayctl logs), and said on the console.
func TestLogsSurviveARestart(t *testing.T) {
	dir := relaytest.StateDir(t)
	writeConfig(t, dir, fmt.Sprintf(captureConfig, "plant-log", "outbox"))
	first := logring.New(0)
	b := runBox(t, Options{StateDir: dir, Log: first})
	if err := b.send(t, "before the restart"); err != nil {
		t.Fatal(err)
	}
	b.stop()
	// As relayd's main does when Run returns.
	slog.New(logring.Handler(first, slog.DiscardHandler, slog.LevelInfo)).Error(logring.StopMsg, "reason", "stopped: terminated signal received")
	first.Close()

	tn := provtest.New(t)
	var console strings.Builder
	startBox(t, tn, "plant-log", fmt.Sprintf(captureConfig, "plant-log", "outbox"), func(o *Options) {
		o.StateDir = dir
		o.Console = &console
	})
	if got, want := console.String(), "relayd: previous run ended: stopped: terminated signal received\n"; got != want {
		t.Errorf("console %q, want %q", got, want)
	}
	grantAll(t, tn, api.Operator)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	R := []string{"-relay", "plant-log"}
	var out string
	relaytest.Eventually(t, "relayctl logs as operator", func() bool {
		code, o, _ := rc.run("", append(R, "logs")...)
		out = o
		return code == ctl.ExitOK
	})
	first1 := strings.Index(out, "relay starting")
	stop := strings.Index(out, "relayd stopped reason=\"stopped: terminated signal received\"")
	prev := strings.Index(out, "the previous run of relayd ended how=\"stopped: terminated signal received\"")
	if first1 < 0 || stop < first1 || prev < stop {
		t.Errorf("relayctl logs, want the first run's lines, its stop, then the note of it:\n%s", out)
	}
	// -level and -since narrow it; a bad one is a usage error.
	if out := rc.ok("", append(R, "logs", "-level", "error")...); strings.Contains(out, "INFO") {
		t.Errorf("logs -level error has info lines:\n%s", out)
	}
	if code, _, _ := rc.run("", append(R, "logs", "-since", "yesterday")...); code != ctl.ExitUsage {
		t.Errorf("-since yesterday: exit %d, want %d", code, ctl.ExitUsage)
	}
	// A viewer may not read it (addresses and subjects are in it).
	grantAll(t, tn, api.Viewer)
	relaytest.Eventually(t, "viewer refused the log", func() bool {
		code, _, _ := rc.run("", append(R, "logs")...)
		return code == ctl.ExitForbidden
	})
}
