package relay

import (
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

var metricName = regexp.MustCompile(`siterelay_[a-z0-9_]+`)

// Every metric the docs name is exported (an alert on a metric that does
// not exist never fires).
func TestDocumentedMetricsAreExported(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs found: %v", err)
	}
	files = append(files, "../README.md", "../docs/alerts.yml", "../docs/alerts_test.yml", "../docs/grafana-dashboard.json")
	documented := map[string][]string{} // name -> files naming it
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range metricName.FindAllString(string(b), -1) {
			if !slices.Contains(documented[n], f) {
				documented[n] = append(documented[n], f)
			}
		}
	}
	if len(documented) < 5 {
		t.Fatalf("found only %d metric names in the docs", len(documented))
	}

	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(fake)
	cfg.Upstream.SMTP.MessagesPerMinute = 6000 // a smarthost with a limit has its allowance exported
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nhigh\r\n"); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1)
	var body []byte
	// The self-signed STARTTLS certificate is made in the background on a
	// first start; its expiry is exported once it is there.
	relaytest.Eventually(t, "the TLS certificate's expiry exported", func() bool {
		rec := httptest.NewRecorder()
		r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ = io.ReadAll(rec.Body)
		return strings.Contains(string(body), `credential="tls_certificate"`)
	})
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
		}
	}
	for name, in := range documented {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			t.Errorf("%s is documented (%s) but not exported", name, strings.Join(in, ", "))
		}
	}
	if !strings.Contains(string(body), "\nsiterelay_upstream_connections 1\n") {
		t.Errorf("siterelay_upstream_connections is not the one pooled connection:\n%s", grepLines(string(body), "siterelay_upstream_connections"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
