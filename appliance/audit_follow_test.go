package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// relayctl audit -follow prints the newest entry, then the changes made
// while it runs (each once), until interrupted.
func TestRelayctlAuditFollow(t *testing.T) {
	tn := provtest.New(t)
	startBox(t, tn, "plant-f", fmt.Sprintf(captureConfig, "plant-f", "outbox"))
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-f"}, args...) }
	waitRole(t, rc, cmd, api.Admin)
	rc.run("", cmd("queue", "retry", "before")...) // the newest entry when -follow starts

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &relaytest.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- ctl.Main(ctx, append([]string{"-timeout", "20s"}, cmd("-json", "audit", "-follow", "-limit", "1")...),
			ctl.IO{Stdin: strings.NewReader(""), Stdout: out, Stderr: io.Discard, Node: rc.node})
	}()
	relaytest.Eventually(t, "the newest entry printed", func() bool { return strings.Contains(out.String(), "retry message before") })
	rc.run("", cmd("queue", "retry", "after")...)
	relaytest.Eventually(t, "the new entry followed", func() bool { return strings.Contains(out.String(), "retry message after") })
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("audit -follow exit %d, want 0 when interrupted", code)
	}
	var whats []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e api.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q is not an entry: %v", line, err)
		}
		whats = append(whats, e.What+" "+e.Result)
	}
	want := []string{"retry message before not_found", "POST /v1/queue/after/retry started", "retry message after not_found"}
	if strings.Join(whats, "\n") != strings.Join(want, "\n") {
		t.Errorf("followed:\n%s\nwant\n%s", strings.Join(whats, "\n"), strings.Join(want, "\n"))
	}
}
