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

	"github.com/siterelay/siterelay/relay/metrics"
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
	for _, n := range metrics.RenewalMetricNames {
		exported[n] = true // only with a box-made certificate to renew: relay/metrics TestRenewalMetrics
	}
	exported[metrics.SecretExpiresMetric] = true // only with a secret whose expiry is known: TestSecretExpiryWarned, relay/metrics TestSecretExpiryMetric
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
	checkDocumentedLabels(t, string(body))
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

var (
	tableRow  = regexp.MustCompile("^\\| `(siterelay_[a-z0-9_]+)` \\| [a-z]+ \\|([^|]*)\\|")
	sampleRow = regexp.MustCompile(`^(siterelay_[a-z0-9_]+)(?:\{([^}]*)\})? `)
	labelName = regexp.MustCompile(`([a-z_]+)="`)
)

// checkDocumentedLabels: the labels of each metric in the metrics table
// of docs/trace.md are the labels it is exported with (a dashboard or an
// alert on a label that is not there shows nothing).
func checkDocumentedLabels(t *testing.T, body string) {
	t.Helper()
	doc, err := os.ReadFile("../docs/trace.md")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		m := sampleRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[1]
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			name = strings.TrimSuffix(name, suffix)
		}
		if exported[name] == nil {
			exported[name] = map[string]bool{}
		}
		for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
			if l[1] != "le" {
				exported[name][l[1]] = true
			}
		}
	}
	rows := 0
	for _, line := range strings.Split(string(doc), "\n") {
		m := tableRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows++
		var want []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" {
				want = append(want, l)
			}
		}
		got, ok := exported[m[1]]
		if !ok {
			continue // exported without a sample in this scrape (TestDocumentedMetricsAreExported checks the name)
		}
		var have []string
		for l := range got {
			have = append(have, l)
		}
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(want, have) {
			t.Errorf("docs/trace.md gives %s the labels %v; it is exported with %v", m[1], want, have)
		}
	}
	if rows < 20 {
		t.Errorf("found only %d metric rows in docs/trace.md", rows)
	}
}
