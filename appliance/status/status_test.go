package status

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/forward"
	"github.com/siterelay/siterelay/relay/trace"
	"github.com/siterelay/siterelay/relay/upstream/route"
)

var now = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)

// samplePage is a relay that delivered an hour ago and is now deferred by
// Microsoft's throttling, with a hint that must be escaped.
func samplePage() Page {
	return Page{
		Hostname: "relay-plant-a", MDNSName: "relay-plant-a-2.local", Version: "v1.2.3", Now: now,
		Relay: &relay.Status{
			Started: now.Add(-26 * time.Hour),
			Listeners: []relay.ListenerStatus{
				{Name: "smtp", Address: "[::]:25", Mode: "smtp", TLS: "starttls", MinTLS: "1.0", Auth: "none"},
				{Name: "submission", Address: "10.20.0.5:587", Mode: "submission", TLS: "required", MinTLS: "1.2", Auth: "required"},
				{Name: "local", Address: "127.0.0.1:2525", Mode: "smtp", TLS: "none", Auth: "none", Loopback: true},
			},
			MaxMessageBytes: 35 << 20,
			Upstream: relay.UpstreamStatus{
				Name:          "m365-oauth smtp.office365.com:587",
				LastDelivered: now.Add(-time.Hour),
				LastProblem: &relay.Problem{Time: now.Add(-2 * time.Minute), Kind: trace.Deferred,
					Reply: "451 4.7.500 Server busy. Please try again later", Hint: "Microsoft is throttling <this> relay."},
			},
			Queue: relay.QueueStatus{Messages: 12, Bytes: 3 << 20, Oldest: now.Add(-90 * time.Minute),
				Backlog: []relay.DeviceBacklog{{Device: "scada-line-3", Class: "normal", Messages: 11, DrainSeconds: 150}}},
			Counts: map[trace.Kind]uint64{trace.Received: 140, trace.Delivered: 128, trace.Deferred: 9},
		},
	}
}

func TestHealth(t *testing.T) {
	ok := samplePage()
	ok.Relay.Upstream.LastProblem = nil
	ok.Relay.Queue = relay.QueueStatus{}
	bounceOnly := samplePage()
	bounceOnly.Relay.Upstream.LastProblem.Kind = trace.Bounced
	bounceOnly.Relay.Queue = relay.QueueStatus{}
	yes, no := true, false
	synced, unsynced := samplePage(), samplePage()
	for _, p := range []*Page{&synced, &unsynced} {
		p.Relay.Upstream.LastProblem = nil
		p.Relay.Queue = relay.QueueStatus{}
	}
	synced.Relay.ClockSynchronised = &yes
	unsynced.Relay.ClockSynchronised = &no
	recovered := samplePage()
	recovered.Relay.Upstream.LastDelivered = now
	recovered.Relay.Queue.Oldest = now.Add(-time.Minute)
	for _, tc := range []struct {
		name      string
		page      Page
		want      string
		wantNotes []string
	}{
		{"healthy", ok, "ok", nil},
		{"clock synchronised", synced, "ok", nil},
		{"clock not synchronised", unsynced, "warning", []string{"clock is not synchronised", "ntp servers"}},
		{"clock nobody can judge (nil)", ok, "ok", nil},
		{"a bounce is not an upstream failure", bounceOnly, "ok", nil},
		{"delivered since the deferral", recovered, "ok", nil},
		{"deferred and old mail", samplePage(), "warning", []string{"Server busy", "throttling <this> relay", "1 h 30 min"}},
		{"storage unusable", Page{Hostname: "r", Problem: "/perm is not mounted"}, "down", []string{"/perm is not mounted"}},
		{"no relay", Page{Hostname: "r"}, "down", []string{"not running"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.page.Health()
			if got := h.State; got != tc.want {
				t.Errorf("state: got %q, want %q (notes %q)", got, tc.want, h.Notes)
			}
			all := strings.Join(h.Notes, "\n")
			for _, w := range tc.wantNotes {
				if !strings.Contains(all, w) {
					t.Errorf("notes %q lack %q", all, w)
				}
			}
			if tc.wantNotes == nil && len(h.Notes) > 0 {
				t.Errorf("notes: got %q, want none", h.Notes)
			}
		})
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestPageShowsWhatATechnicianNeeds(t *testing.T) {
	code, body := get(t, Handler(samplePage), "/")
	if code != http.StatusOK {
		t.Errorf("status %d, want 200", code)
	}
	for _, want := range []string{
		"relay-plant-a-2.local",                // the name in use after a conflict
		"relay-plant-a-2.local port 25",        // wildcard listener: the mDNS name
		"10.20.0.5 port 587",                   // bound address as it is
		"(this machine only)",                  // loopback listener
		"STARTTLS offered", "TLS 1.0 or newer", // old printers
		"STARTTLS required", "35.0 MiB", // limits
		"451 4.7.500 Server busy",                             // the reply
		"throttling &lt;this&gt; relay",                       // hint, escaped
		"1 h 0 min ago",                                       // last delivery
		"Accepting mail, but it is not all going",             // the verdict
		"<td class=\"num\">12</td>",                           // queue
		"<td class=\"num\">140</td>",                          // received since start
		"<td>scada-line-3</td>", `<td class="num">2 min</td>`, // the device that floods, and how long it takes
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<this>") {
		t.Error("hint not escaped")
	}
}

func TestUnusableStorageAnswers503(t *testing.T) {
	page := func() Page {
		return Page{Hostname: "relay", Now: now, Problem: "the state directory /perm/relay is not on /perm"}
	}
	code, body := get(t, Handler(page), "/")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "is not on /perm") || !strings.Contains(body, "Not accepting mail") {
		t.Errorf("got %d %q", code, body)
	}
	if strings.Contains(body, "/metrics") {
		t.Error("links to metrics that a holding box does not serve")
	}
	code, body = get(t, Handler(page), "/status.json")
	var got struct {
		Problem string `json:"problem"`
		Health  Health `json:"health"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("status.json: %v: %s", err, body)
	}
	if code != http.StatusServiceUnavailable || got.Health.State != "down" || got.Problem == "" {
		t.Errorf("status.json: %d %+v", code, got)
	}
}

func TestJSON(t *testing.T) {
	code, body := get(t, Handler(samplePage), "/status.json")
	var got struct {
		MDNSName string       `json:"mdns_name"`
		Relay    relay.Status `json:"relay"`
		Health   Health       `json:"health"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if code != 200 || got.MDNSName != "relay-plant-a-2.local" || got.Health.State != "warning" ||
		got.Relay.Queue.Messages != 12 || got.Relay.Counts[trace.Received] != 140 || got.Relay.Upstream.LastProblem == nil {
		t.Errorf("status.json: %d %+v", code, got)
	}
}

func TestOtherPathsAreNotFound(t *testing.T) {
	for _, path := range []string{"/x", "/status.json/x", "/index.html"} {
		if code, _ := get(t, Handler(samplePage), path); code != http.StatusNotFound {
			t.Errorf("GET %s: got %d, want 404", path, code)
		}
	}
}

func TestForPeople(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0 s"}, {59 * time.Second, "59 s"}, {time.Minute, "1 min"}, {90 * time.Minute, "1 h 30 min"},
		{47 * time.Hour, "47 h 0 min"}, {50 * time.Hour, "2 days 2 h"},
	} {
		if got := duration(tc.d); got != tc.want {
			t.Errorf("duration(%v): got %q, want %q", tc.d, got, tc.want)
		}
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {35 << 20, "35.0 MiB"}, {3 << 30, "3.0 GiB"},
	} {
		if got := byteSize(tc.n); got != tc.want {
			t.Errorf("byteSize(%d): got %q, want %q", tc.n, got, tc.want)
		}
	}
}

// A route that failed over shows which upstream it uses now, why, and when
// the first is tried again; the verdict says so.
func TestRoutesShown(t *testing.T) {
	p := samplePage()
	p.Relay.Upstream.LastProblem = nil
	p.Relay.Queue = relay.QueueStatus{}
	p.Relay.Routes = []route.Status{
		{Name: "internal", Upstream: "hve", Upstreams: []string{"hve", "oauth"}},
		{Name: "external", Upstream: "graph", Upstreams: []string{"oauth", "graph"}, FailedOver: true, Since: now.Add(-12 * time.Minute),
			Reason: "535 5.7.139 Authentication unsuccessful", NextTry: now.Add(8 * time.Minute)},
	}
	h := p.Health()
	if h.State != "warning" || !strings.Contains(strings.Join(h.Notes, " "), "Route external sends by graph: its first upstream oauth answered “535 5.7.139") {
		t.Errorf("health %+v", h)
	}
	_, body := get(t, Handler(func() Page { return p }), "/")
	for _, want := range []string{`id="routes"`, "<code>internal</code>", "<code>hve</code> → <code>oauth</code>", "failover</strong> since 12 min ago", "535 5.7.139", "tried again in 8 min"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestConfigurationWarningsShown(t *testing.T) {
	p := samplePage()
	p.Relay.Upstream.LastProblem = nil
	p.Relay.Queue = relay.QueueStatus{}
	p.Relay.Warnings = []string{"kind m365-password logs in with the mailbox's password: move to kind m365-oauth"}
	h := p.Health()
	if h.State != "warning" || !strings.Contains(strings.Join(h.Notes, " "), "The configuration needs an admin: kind m365-password") {
		t.Errorf("health %+v", h)
	}
	_, body := get(t, Handler(func() Page { return p }), "/")
	if !strings.Contains(body, "move to kind m365-oauth") {
		t.Errorf("page lacks the warning:\n%s", body)
	}
}

// A box whose join key was refused says so (without the key) and relays.
func TestTailnetStateShown(t *testing.T) {
	for _, tc := range []struct{ state, want string }{
		{"join failed: invalid authkey", "<p id=\"tailnet\">tailnet: join failed: invalid authkey</p>"},
		{"up", "<p id=\"tailnet\">tailnet: up</p>"},
		{"", ""},
	} {
		page := func() Page { p := samplePage(); p.Tailnet = tc.state; return p }
		_, body := get(t, Handler(page), "/")
		if tc.want != "" && !strings.Contains(body, tc.want) {
			t.Errorf("state %q: page lacks %q", tc.state, tc.want)
		}
		if tc.want == "" && strings.Contains(body, "tailnet:") {
			t.Errorf("no tailnet, but the page has a tailnet line")
		}
		_, js := get(t, Handler(page), "/status.json")
		var got struct {
			Tailnet string `json:"tailnet"`
		}
		if err := json.Unmarshal([]byte(js), &got); err != nil || got.Tailnet != tc.state {
			t.Errorf("status.json tailnet %q (%v), want %q", got.Tailnet, err, tc.state)
		}
	}
}

// The syslog forwarding's state is on the page (and in status.json) when
// forward.syslog is set, and absent when not.
func TestForwardShown(t *testing.T) {
	p := samplePage()
	p.Relay.Forward = &forward.Stats{Address: "siem.plant.example:6514", State: forward.StateBuffering, BufferedBytes: 2 << 20,
		Dropped: map[string]uint64{"trace": 3, "audit": 0, "logs": 1}, LastError: "connecting to siem.plant.example:6514: connection <refused>", LastErrorAt: now.Add(-5 * time.Minute)}
	_, body := get(t, Handler(func() Page { return p }), "/")
	for _, want := range []string{`id="forward"`, "<code>siem.plant.example:6514</code>", "<strong>buffering</strong>", "2.0 MiB", "audit 0 logs 1 trace 3", "5 min ago", "connection &lt;refused&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	_, js := get(t, Handler(func() Page { return p }), "/status.json")
	var got struct {
		Relay struct {
			Forward forward.Stats `json:"forward"`
		} `json:"relay"`
	}
	if err := json.Unmarshal([]byte(js), &got); err != nil || got.Relay.Forward.State != "buffering" || got.Relay.Forward.Dropped["trace"] != 3 {
		t.Errorf("status.json forward %+v (%v)", got.Relay.Forward, err)
	}
	p.Relay.Forward = nil
	if _, body := get(t, Handler(func() Page { return p }), "/"); strings.Contains(body, `id="forward"`) {
		t.Errorf("no forward.syslog, but the page shows forwarding")
	}
}
