//go:build integration

package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// logged waits for re's first group in tailscaled's log.
func (ts *tailscaled) logged(t *testing.T, what string, re *regexp.Regexp) string {
	t.Helper()
	var got string
	relaytest.Eventually(t, what, func() bool {
		m := re.FindStringSubmatch(ts.logs.String())
		if m != nil {
			got = m[1]
		}
		return m != nil
	})
	return got
}

// freeLoopbackAddr is a loopback address with a port free a moment ago,
// for a program that cannot listen on port 0 and say which it got
// (Prometheus): the caller retries with another if it is taken since.
func freeLoopbackAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestPrometheusScrapesTheFleet is the company's Prometheus watching three
// relays across the tailnet, as docs/alerts.md sets it up: Debian's real
// prometheus, on a machine whose tailscaled runs in userspace networking,
// scrapes every relay through tailscaled's outbound HTTP proxy, the
// targets coming from relayctl's service discovery (the file_sd file of
// relayctl fleet -prometheus-sd in one job, relayctl sd's http_sd in
// another); promtool then queries a series of each relay by its site.
//
// Why tailscaled's proxy and not a tsnet node: it is what a Prometheus host
// without a TUN device (a container, an unprivileged VM) runs, with
// Prometheus' own proxy_url and no code of ours in the path; a tsnet proxy
// would be a program the company would have to run. (With tailscaled in
// kernel mode no proxy is needed at all; the targets are the same.)
func TestPrometheusScrapesTheFleet(t *testing.T) {
	for _, tool := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian's prometheus: .ci/apt-packages)", tool)
		}
	}
	tn := provtest.New(t)
	sites := []string{"plant-1", "plant-2", "plant-3"}
	for _, s := range sites {
		startBox(t, tn, s, fmt.Sprintf(captureConfig, s, "outbox"))
	}
	grantAll(t, tn, api.Viewer) // Prometheus' node may read /metrics, nothing more
	ts := startTailscaled(t, tn, "prometheus", "--outbound-http-proxy-listen=127.0.0.1:0")
	proxy := ts.logged(t, "tailscaled's HTTP proxy address", regexp.MustCompile(`HTTP proxy listening on (127\.0\.0\.1:\d+)`))

	// The file_sd file, as a cron job on the Prometheus host writes it.
	rc := newRelayctl(t, tn)
	var groups []ctl.SDGroup
	relaytest.Eventually(t, "relayctl fleet -prometheus-sd lists the three relays with their sites", func() bool {
		// A short timeout a try: the relays answer once the tailnet's
		// paths to them are up.
		code, out, _ := rc.exec("", nil, []string{"-timeout", "5s", "-socket", ts.sock, "fleet", "-prometheus-sd"})
		groups = nil
		if code != 0 || json.Unmarshal([]byte(out), &groups) != nil || len(groups) != len(sites) {
			return false
		}
		for _, g := range groups {
			if g.Labels["site"] == "" {
				return false // not answered yet
			}
		}
		return true
	})
	dir := t.TempDir()
	sdFile := filepath.Join(dir, "siterelay.json")
	b, _ := json.Marshal(groups)
	if err := os.WriteFile(sdFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// relayctl sd beside Prometheus, for http_sd.
	sdLog := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	sdDone := make(chan int, 1)
	go func() {
		sdDone <- ctl.Main(ctx, []string{"-socket", ts.sock, "sd", "-listen", "127.0.0.1:0"}, ctl.IO{Stdin: strings.NewReader(""), Stdout: sdLog, Stderr: sdLog})
	}()
	t.Cleanup(func() { cancel(); <-sdDone })
	var sdURL string
	relaytest.Eventually(t, "relayctl sd serving", func() bool {
		m := regexp.MustCompile(`serving Prometheus http_sd on (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(sdLog.String())
		if m != nil {
			sdURL = m[1]
		}
		return m != nil
	})

	// The scrape configuration of docs/alerts.md, with the proxy.
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: siterelay-file
    metrics_path: /metrics
    proxy_url: http://%[1]s
    file_sd_configs:
      - files: [%[2]q]
        refresh_interval: 1s
  - job_name: siterelay-http
    metrics_path: /metrics
    proxy_url: http://%[1]s
    http_sd_configs:
      - url: %[3]s
        refresh_interval: 1s
`, proxy, sdFile, sdURL)
	confFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "config", confFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	web := startPrometheus(t, confFile, dir)

	// Bounded: poll Prometheus' API until every target is up, or the
	// test's deadline.
	type target struct {
		Labels     map[string]string `json:"labels"`
		Health     string            `json:"health"`
		LastError  string            `json:"lastError"`
		ScrapePool string            `json:"scrapePool"`
	}
	var targets []target
	relaytest.Eventually(t, "all six targets up in Prometheus", func() bool {
		resp, err := http.Get("http://" + web + "/api/v1/targets?state=active")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Data struct {
				ActiveTargets []target `json:"activeTargets"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&body) != nil {
			return false
		}
		targets = body.Data.ActiveTargets
		up := 0
		for _, tg := range targets {
			if tg.Health == "up" {
				up++
			}
		}
		return len(targets) == 2*len(sites) && up == len(targets)
	})
	// Each target carries the labels relayctl gave it (Prometheus drops
	// empty ones: a test build's version is "").
	byInstance := map[string]map[string]string{}
	for _, g := range groups {
		byInstance[g.Targets[0]] = g.Labels
	}
	for _, tg := range targets {
		want := byInstance[tg.Labels["instance"]]
		if want == nil || !slices.Contains(sites, tg.Labels["site"]) {
			t.Errorf("target %+v: not one of relayctl's %v", tg, groups)
			continue
		}
		for k, v := range want {
			if tg.Labels[k] != v {
				t.Errorf("target %s: label %s=%q, relayctl said %q", tg.Labels["instance"], k, tg.Labels[k], v)
			}
		}
	}

	// promtool gets a series of each relay, by site, from each job.
	for _, job := range []string{"siterelay-file", "siterelay-http"} {
		var out []byte
		relaytest.Eventually(t, "promtool query instant: a series of each relay in "+job, func() bool {
			var err error
			out, err = exec.Command("promtool", "query", "instant", "http://"+web,
				fmt.Sprintf(`siterelay_queue_messages{job=%q}`, job)).CombinedOutput()
			if err != nil {
				return false
			}
			for _, s := range sites {
				if !strings.Contains(string(out), fmt.Sprintf(`site="%s"`, s)) {
					return false
				}
			}
			return true
		})
		t.Logf("promtool query instant siterelay_queue_messages{job=%q}:\n%s", job, out)
	}

	// The dashboard's fleet overview, against this Prometheus: the health,
	// queue and oldest-message columns have a row for every site (these
	// relays have delivered nothing and hold no certificate, so the
	// deliveries and expiry columns are empty here; relay's TestDashboard
	// checks they name exported series).
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	db, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(db, &dash); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(dash.Panels, func(p struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}) bool {
		return strings.HasPrefix(p.Title, "Fleet overview")
	})
	if i < 0 || len(dash.Panels[i].Targets) < 3 {
		t.Fatal("no fleet overview panel in the dashboard")
	}
	for _, tg := range dash.Panels[i].Targets[:3] {
		expr := strings.ReplaceAll(tg.Expr, "$site", "plant-.*")
		relaytest.Eventually(t, "the overview's "+expr+" for every site", func() bool {
			out, err := exec.Command("promtool", "query", "instant", "http://"+web, expr).CombinedOutput()
			if err != nil {
				return false
			}
			for _, s := range sites {
				if !strings.Contains(string(out), fmt.Sprintf(`{site="%s"}`, s)) {
					return false
				}
			}
			return true
		})
	}
}

// startPrometheus runs prometheus with confFile until the test ends and
// returns its web address, once it answers ready.
func startPrometheus(t *testing.T, confFile, dir string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		web := freeLoopbackAddr(t)
		logs := &relaytest.Buffer{}
		cmd := exec.Command("prometheus", "--config.file="+confFile, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprint("data", attempt)),
			"--web.listen-address="+web)
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		ended := false
		relaytest.Eventually(t, "prometheus ready", func() bool {
			select {
			case <-done:
				ended = true
				return true
			default:
			}
			resp, err := http.Get("http://" + web + "/-/ready")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		if ended {
			if attempt < 2 && strings.Contains(logs.String(), "address already in use") {
				continue // the port was taken since it was free: another
			}
			t.Fatalf("prometheus ended:\n%s", logs.String())
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			<-done
			if t.Failed() {
				t.Logf("prometheus's log:\n%s", logs.String())
			}
		})
		return web
	}
}
