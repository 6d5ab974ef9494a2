//go:build integration

package metrics

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/trace"
)

// A real scrape over HTTP, judged by Prometheus' own linter.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (Debian package prometheus, in .ci/apt-packages): %v", err)
	}
	m := New(allGauges())
	for _, k := range trace.Kinds {
		m.Observe(trace.Event{Kind: k, To: []string{"a@example.com"}, Size: 100})
	}
	for _, r := range Reasons {
		m.Refused(r)
	}
	m.ObserveAccept(4 * time.Millisecond)
	m.ObserveDelivery(3 * time.Second)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: status %d, %v", resp.StatusCode, err)
	}
	if !bytes.Contains(body, []byte("siterelay_queue_oldest_message_age_seconds")) {
		t.Fatalf("scrape lacks the relay's metrics:\n%s", body)
	}

	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
