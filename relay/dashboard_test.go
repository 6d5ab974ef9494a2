package relay

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/siterelay/siterelay/relay/metrics"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// promBuiltins are the series Prometheus makes itself, which a panel may
// name beside the relay's own.
var promBuiltins = []string{"up"}

// seriesName finds the series a PromQL expression selects: a name before a
// selector, or a siterelay_ name alone.
var seriesName = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{|\b(siterelay_[a-z0-9_]+)\b`)

// TestDashboard: docs/grafana-dashboard.json parses, has the site variable
// (from the site label relayctl's service discovery gives each relay), a
// fleet overview table of one row a site with the health, queue, oldest
// message, deliveries and nearest expiry, and every query of every panel
// names only series a relay exports (or Prometheus' own up) and keeps to
// the chosen sites.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		RefID   string `json:"refId"`
		Expr    string `json:"expr"`
		Instant bool   `json:"instant"`
		Format  string `json:"format"`
	}
	type panel struct {
		ID      int      `json:"id"`
		Type    string   `json:"type"`
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
	}
	var d struct {
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
				Multi      bool   `json:"multi"`
			} `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("the dashboard does not parse: %v", err)
	}
	exported := exportedSeries(t)

	// The site variable.
	i := slices.IndexFunc(d.Templating.List, func(v struct {
		Name       string `json:"name"`
		Type       string `json:"type"`
		Definition string `json:"definition"`
		Multi      bool   `json:"multi"`
	}) bool {
		return v.Name == "site"
	})
	if i < 0 {
		t.Fatal("no site variable")
	}
	v := d.Templating.List[i]
	m := regexp.MustCompile(`^label_values\((siterelay_[a-z_]+), site\)$`).FindStringSubmatch(v.Definition)
	if v.Type != "query" || !v.Multi || m == nil || !exported[m[1]] {
		t.Errorf("site variable %+v: want a multi-value query label_values(EXPORTED_METRIC, site)", v)
	}

	// The fleet overview: one query a column, each by site, instant, as a table.
	wantColumns := []string{"up", "siterelay_queue_messages", "siterelay_queue_oldest_message_age_seconds", "siterelay_deliveries_total", "siterelay_credential_expires_in_seconds"}
	i = slices.IndexFunc(d.Panels, func(p panel) bool { return strings.HasPrefix(p.Title, "Fleet overview") })
	if i < 0 {
		t.Fatal("no fleet overview panel")
	}
	ov := d.Panels[i]
	var got []string
	for _, tg := range ov.Targets {
		names := series(tg.Expr)
		got = append(got, names...)
		if !strings.Contains(tg.Expr, "by (site)") || !tg.Instant || tg.Format != "table" {
			t.Errorf("overview query %s %q: want an instant table query by (site)", tg.RefID, tg.Expr)
		}
	}
	if ov.Type != "table" || strings.Join(got, " ") != strings.Join(wantColumns, " ") {
		t.Errorf("overview %s of %v, want a table of %v", ov.Type, got, wantColumns)
	}

	// Every query: real series, the chosen sites.
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			names := series(tg.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q: %q names no series", p.Title, tg.Expr)
			}
			for _, n := range names {
				if !exported[n] && !slices.Contains(promBuiltins, n) {
					t.Errorf("panel %q: %q names %s, which no relay exports", p.Title, tg.Expr, n)
				}
			}
			if strings.Count(tg.Expr, `site=~"$site"`) != len(names) || strings.Contains(tg.Expr, "instance") {
				t.Errorf("panel %q: %q: want every series selected by site=~\"$site\", none by instance", p.Title, tg.Expr)
			}
		}
	}
}

func series(expr string) []string {
	var out []string
	for _, m := range seriesName.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1]+m[2])
	}
	return out
}

// exportedSeries are the series names a relay with a smarthost and a
// STARTTLS certificate exports (with the _bucket, _sum and _count of its
// histograms), and the renewal metrics only a box-made certificate has.
func exportedSeries(t *testing.T) map[string]bool {
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	cfg := smarthostConfig(fake)
	cfg.Upstream.SMTP.MessagesPerMinute = 6000
	r, addr := run(t, cfg, relaytest.StateDir(t))
	if err := send(t, addr, "plc@plant.example", []string{"ops@example.com"}, "Subject: alarm\r\n\r\nhigh\r\n"); err != nil {
		t.Fatal(err)
	}
	fake.WaitMessages(t, 1)
	var body string
	relaytest.Eventually(t, "the TLS certificate's expiry exported", func() bool {
		rec := httptest.NewRecorder()
		r.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		body = string(b)
		return strings.Contains(body, `credential="tls_certificate"`)
	})
	exported := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
			if f[3] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					exported[f[2]+s] = true
				}
			}
		}
	}
	for _, n := range metrics.RenewalMetricNames {
		exported[n] = true
	}
	return exported
}
