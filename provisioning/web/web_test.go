package web

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/tailcfg"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/server"
)

var now = time.Date(2026, 12, 1, 10, 30, 0, 0, time.UTC)

// fakeBox is a relay with one deferred message.
type fakeBox struct {
	mu    sync.Mutex
	calls []string // "retry ID by WHO"
	queue []api.QueueItem
}

func (b *fakeBox) Status(ctx context.Context) (*api.Status, error) {
	return &api.Status{Site: "plant-a", Hostname: "relay-plant-a", Version: "v1.2.3", Now: now, Started: now.Add(-time.Hour), Health: "warning",
		Upstream: api.Upstream{Name: "smtp.example.com:587", Failing: true, LastDelivered: now.Add(-2 * time.Hour),
			LastProblem: &api.UpstreamProblem{Time: now.Add(-time.Minute), Kind: "deferred", Reply: "451 4.7.500 Server busy", Hint: "Microsoft is throttling <this> relay"}},
		Queue:                 api.Queue{Messages: len(b.queue), Bytes: 2048, Oldest: now.Add(-10 * time.Minute)},
		Devices:               []api.Device{{ClientIP: "10.1.2.3", LastSeen: now.Add(-5 * time.Minute), Messages: 7, TLSVersion: "1.0"}},
		Credentials:           []api.Credential{{Name: "m365-cert", Kind: api.KindCertificate, NotAfter: time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)}},
		TLSCertificateExpires: time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC), ClockSynchronised: new(false),
		NearestExpiry: time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC), Tailnet: api.Tailnet{State: "up"}}, nil
}

func (b *fakeBox) Queue(ctx context.Context, f api.QueueFilter) ([]api.QueueItem, error) {
	return b.queue, nil
}
func (b *fakeBox) Message(ctx context.Context, id string, body bool) (*api.Message, error) {
	return nil, server.ErrNotFound
}
func (b *fakeBox) op(ctx context.Context, op, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if id != "q1" {
		return server.ErrNotFound
	}
	b.calls = append(b.calls, op+" "+id+" by "+server.Caller(ctx))
	return nil
}
func (b *fakeBox) Retry(ctx context.Context, id string) error  { return b.op(ctx, "retry", id) }
func (b *fakeBox) Bounce(ctx context.Context, id string) error { return b.op(ctx, "bounce", id) }
func (b *fakeBox) Delete(ctx context.Context, id string) error { return b.op(ctx, "delete", id) }
func (b *fakeBox) Trace(ctx context.Context, q api.TraceQuery) ([]api.TraceEvent, error) {
	if q.Device != "" && q.Device != "mfp-hall-2" {
		return nil, nil
	}
	if q.Kind != "" && q.Kind != "deferred" {
		return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "kind", Message: "want a kind"}
	}
	return []api.TraceEvent{
		{Time: now.Add(-time.Minute), Kind: "deferred", QueueID: "q1", Device: "mfp-hall-2", From: "mfp@plant.example", To: []string{"ops@example.com"}, Subject: "scan <b>1</b>", Reply: "451 4.7.500 Server busy"},
		{Time: now.Add(-2 * time.Minute), Kind: "received", QueueID: "q1", From: "mfp@plant.example", To: []string{"ops@example.com"}, Subject: "scan <b>1</b>"},
		{Time: now.Add(-3 * time.Hour), Kind: "delivered", QueueID: "q0", From: "mfp@plant.example", To: []string{"ops@example.com"}},
	}, nil
}
func (b *fakeBox) Doctor(ctx context.Context, to string) ([]api.DoctorStep, error) {
	b.op(ctx, "doctor", "q1")
	return []api.DoctorStep{{Name: "connect", OK: true, Detail: "smtp.example.com:587"}, {Name: "send to " + to, OK: to != ""}}, nil
}
func (b *fakeBox) Firmware() api.Firmware { return api.Firmware{} }
func (b *fakeBox) Logs(ctx context.Context, q api.LogQuery, fn func([]byte) error) error {
	lines := []string{
		`{"time":"2026-12-07T09:00:00Z","level":"INFO","msg":"relay started","listener":"plant"}`,
		`{"time":"2026-12-07T09:01:00Z","level":"WARN","msg":"HELO <b>x</b> \u001b[2J","client_ip":"10.1.2.3"}`,
	}
	if q.Level == "warn" {
		lines = lines[1:]
	}
	for _, l := range lines {
		if err := fn([]byte(l)); err != nil {
			return err
		}
	}
	return nil
}
func (b *fakeBox) Sheet(context.Context) (*api.Sheet, error) {
	return &api.Sheet{Hostname: "relay-plant-a", Text: "Device setup sheet: relay-plant-a\n"}, nil
}
func (b *fakeBox) Reload(ctx context.Context) error { return nil }

// callers: the remote address names the caller and its role.
var roles = map[string]api.Role{"100.64.0.1:1": api.Viewer, "100.64.0.2:1": api.Operator, "100.64.0.3:1": api.Admin, "100.64.0.4:1": api.None}

func whoIs(ctx context.Context, addr string) (*apitype.WhoIsResponse, error) {
	r, ok := roles[addr]
	if !ok {
		return nil, errors.New("no such peer")
	}
	w := &apitype.WhoIsResponse{Node: &tailcfg.Node{Name: "laptop-" + r.String() + ".example.ts.net."},
		UserProfile: &tailcfg.UserProfile{LoginName: r.String() + "@example.com"}}
	if r != api.None {
		w.CapMap = tailcfg.PeerCapMap{authz.Capability: {tailcfg.RawMessage(`{"role":"` + r.String() + `"}`)}}
	}
	return w, nil
}

type harness struct {
	t     testing.TB
	box   *fakeBox
	audit *audit.Log
	h     http.Handler
	site  *site
}

func newHarness(t testing.TB) *harness {
	al, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	b := &fakeBox{queue: []api.QueueItem{{ID: "q1", From: "mfp@plant.example", To: []string{"ops@example.com"}, Subject: "scan <script>alert(1)</script>",
		Size: 2048, Received: now.Add(-10 * time.Minute), Pending: 1, LastReply: "451 4.7.500 Server busy"}}}
	o := Options{WhoIs: whoIs, Policy: authz.Policy{Site: "plant-a"}, Audit: al, Box: b, Key: []byte("test key"), Clock: func() time.Time { return now },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "siterelay_up 1\n") })}
	h := Handler(o)
	return &harness{t: t, box: b, audit: al, h: h, site: &site{Options: o}}
}

func (h *harness) token(role api.Role) string {
	w, _ := whoIs(context.Background(), map[api.Role]string{api.Viewer: "100.64.0.1:1", api.Operator: "100.64.0.2:1", api.Admin: "100.64.0.3:1"}[role])
	return h.site.Token(authz.Policy{}.Decide(w).Identity)
}

func (h *harness) do(method, target, from string, form url.Values, hdr map[string]string) *httptest.ResponseRecorder {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r := httptest.NewRequest(method, "http://127.0.0.1:8080"+target, body)
	r.RemoteAddr = from
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.h.ServeHTTP(w, r)
	return w
}

const viewer, operator, admin, nobody, stranger = "100.64.0.1:1", "100.64.0.2:1", "100.64.0.3:1", "100.64.0.4:1", "100.64.9.9:1"

func TestOverviewByRole(t *testing.T) {
	h := newHarness(t)
	common := []string{
		`<section class="box health warning" id="health">`,
		"451 4.7.500 Server busy", "Microsoft is throttling &lt;this&gt; relay", // upstream, last error, hint (escaped)
		`<svg id="chart"`, `<polyline class="received"`, `<polyline class="delivered"`, `<polyline class="deferred"`, `<polyline class="bounced"`,
		"received <strong>1</strong>", "delivered <strong>1</strong>", "deferred <strong>1</strong>", "bounced <strong>0</strong>",
		"10.1.2.3", "TLS 1.0", // devices
		"2027-03-01 00:00:00 UTC", // expiry
		`<p id="tls-certificate">Listeners' STARTTLS certificate expires <strong>2027-06-01 00:00:00 UTC</strong>`,
		`<p id="clock">Clock: <strong>not synchronised</strong>`,
		`action="/admin/trace"`,
		"Queue: 1 messages",
	}
	for _, tc := range []struct {
		from        string
		want, never []string
	}{
		{viewer, append(common, "role <strong>viewer</strong>", "needs the operator role"), []string{`method="post"`, "q1", "csrf", `id="audit"`, "alert(1)"}},
		{operator, append(common, `action="/admin/queue/q1/retry"`, `name="csrf" value="`+h.token(api.Operator)+`"`, `id="doctor"`, `id="test-send"`,
			"scan &lt;script&gt;alert(1)&lt;/script&gt;"), []string{"<script>", `id="audit"`}},
		{admin, append(common, `action="/admin/queue/q1/bounce"`, `action="/admin/queue/q1/delete"`, "No changes yet."), []string{"<script>"}},
	} {
		w := h.do("GET", "/admin/", tc.from, nil, nil)
		if w.Code != 200 {
			t.Fatalf("%s: GET /admin/ = %d %s", tc.from, w.Code, w.Body)
		}
		got := w.Body.String()
		for _, s := range tc.want {
			if !strings.Contains(got, s) {
				t.Errorf("%s: page lacks %q", tc.from, s)
			}
		}
		for _, s := range tc.never {
			if strings.Contains(got, s) {
				t.Errorf("%s: page has %q", tc.from, s)
			}
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "script-src") {
			t.Errorf("CSP %q", csp)
		}
	}
}

func TestLogsPage(t *testing.T) {
	h := newHarness(t)
	w := h.do("GET", "/admin/logs", operator, nil, nil)
	if w.Code != 200 {
		t.Fatalf("GET /admin/logs = %d %s", w.Code, w.Body)
	}
	got := w.Body.String()
	for _, want := range []string{"relay started", "HELO &lt;b&gt;x&lt;/b&gt; \\x1b[2J", "10.1.2.3", "2 lines", `<option selected>info</option>`} {
		if !strings.Contains(got, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(got, "\x1b") || strings.Index(got, "HELO") > strings.Index(got, "relay started") {
		t.Errorf("raw control character, or not newest first:\n%s", got)
	}
	if w := h.do("GET", "/admin/logs?level=warn", operator, nil, nil); !strings.Contains(w.Body.String(), "1 lines") {
		t.Errorf("level=warn: %s", w.Body)
	}
	if w := h.do("GET", "/admin/logs?level=loud", operator, nil, nil); w.Code != 400 {
		t.Errorf("level=loud: %d", w.Code)
	}
	if w := h.do("GET", "/admin/logs", viewer, nil, nil); w.Code != 403 {
		t.Errorf("a viewer got the log: %d", w.Code)
	}
	if w := h.do("GET", "/admin/", viewer, nil, nil); strings.Contains(w.Body.String(), `href="/admin/logs"`) {
		t.Errorf("a viewer is offered the log")
	}
	if w := h.do("GET", "/admin/", operator, nil, nil); !strings.Contains(w.Body.String(), `href="/admin/logs"`) {
		t.Errorf("an operator is not offered the log")
	}
}

func TestRefusals(t *testing.T) {
	h := newHarness(t)
	same := map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:8080"}
	form := func(tok string) url.Values { return url.Values{TokenField: {tok}} }
	for _, tc := range []struct {
		name   string
		method string
		path   string
		from   string
		form   url.Values
		hdr    map[string]string
		status int
		result string // audit result; "" for none (GET)
	}{
		{"stranger", "GET", "/admin/", stranger, nil, nil, 401, ""},
		{"no role", "GET", "/admin/", nobody, nil, nil, 403, ""},
		{"no role metrics", "GET", "/metrics", nobody, nil, nil, 403, ""},
		{"viewer metrics", "GET", "/metrics", viewer, nil, nil, 200, ""},
		{"root redirects", "GET", "/", viewer, nil, nil, 303, ""},
		{"unknown path", "GET", "/admin/nothing", viewer, nil, nil, 404, ""},
		{"viewer retry", "POST", "/admin/queue/q1/retry", viewer, form(h.token(api.Viewer)), same, 403, api.CodeForbidden},
		{"no token", "POST", "/admin/queue/q1/retry", operator, url.Values{}, same, 403, api.CodeCSRF},
		{"another's token", "POST", "/admin/queue/q1/retry", operator, form(h.token(api.Admin)), same, 403, api.CodeCSRF},
		{"cross-site", "POST", "/admin/queue/q1/retry", operator, form(h.token(api.Operator)), map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, 403, api.CodeCSRF},
		{"same-site other origin", "POST", "/admin/queue/q1/retry", operator, form(h.token(api.Operator)), map[string]string{"Sec-Fetch-Site": "same-site"}, 403, api.CodeCSRF},
		{"other origin, old browser", "POST", "/admin/queue/q1/retry", operator, form(h.token(api.Operator)), map[string]string{"Origin": "http://evil.example"}, 403, api.CodeCSRF},
		{"stranger post", "POST", "/admin/queue/q1/retry", stranger, form(""), same, 401, api.CodeUnauthorized},
		{"missing message", "POST", "/admin/queue/q9/retry", operator, form(h.token(api.Operator)), same, 404, api.CodeNotFound},
		{"bad op", "POST", "/admin/queue/q1/explode", operator, form(h.token(api.Operator)), same, 404, api.CodeNotFound},
		{"bad kind", "GET", "/admin/trace?kind=pigeon", viewer, nil, nil, 400, ""},
		{"bad since", "GET", "/admin/trace?since=yesterday", viewer, nil, nil, 400, ""},
		{"viewer doctor", "POST", "/admin/doctor", viewer, form(h.token(api.Viewer)), same, 403, api.CodeForbidden},
	} {
		before := outcomes(h.audit)
		w := h.do(tc.method, tc.path, tc.from, tc.form, tc.hdr)
		if w.Code != tc.status {
			t.Errorf("%s: %s %s = %d, want %d\n%s", tc.name, tc.method, tc.path, w.Code, tc.status, w.Body)
		}
		if w.Code >= 400 && !strings.Contains(w.Body.String(), `id="problem"`) {
			t.Errorf("%s: refusal is not the problem page: %s", tc.name, w.Body)
		}
		after := outcomes(h.audit)
		switch {
		case tc.result == "" && len(after) != len(before):
			t.Errorf("%s: a GET was audited", tc.name)
		case tc.result != "" && len(after) != len(before)+1:
			t.Errorf("%s: %d audit entries, want one more than %d", tc.name, len(after), len(before))
		case tc.result != "":
			if got := after[0]; got.Result != tc.result || got.Status != tc.status || got.Path != tc.path {
				t.Errorf("%s: audit entry %+v, want result %s status %d", tc.name, got, tc.result, tc.status)
			}
		}
	}
	if len(h.box.calls) != 0 {
		t.Errorf("refused calls reached the box: %q", h.box.calls)
	}
}

func TestOperations(t *testing.T) {
	h := newHarness(t)
	same := map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:8080"}
	for _, op := range []string{"retry", "bounce", "delete"} {
		w := h.do("POST", "/admin/queue/q1/"+op, operator, url.Values{TokenField: {h.token(api.Operator)}}, same)
		if w.Code != 303 || w.Header().Get("Location") != "/admin/?done="+op+"&id=q1#queue" {
			t.Errorf("%s: %d to %q", op, w.Code, w.Header().Get("Location"))
		}
		page := h.do("GET", "/admin/?done="+op+"&id=q1", operator, nil, nil).Body.String()
		if !strings.Contains(page, `id="notice"`) || !strings.Contains(page, "q1") {
			t.Errorf("%s: no notice on the page after", op)
		}
	}
	// No Sec-Fetch-Site and no Origin: not a browser's cross-site request;
	// the token still decides.
	if w := h.do("POST", "/admin/doctor", admin, url.Values{TokenField: {h.token(api.Admin)}, "to": {"ops@example.com"}}, nil); w.Code != 200 ||
		!strings.Contains(w.Body.String(), "send to ops@example.com") || !strings.Contains(w.Body.String(), "Every check passed.") {
		t.Errorf("doctor: %d %s", w.Code, w.Body)
	}
	want := []string{"retry q1 by operator@example.com on laptop-operator.example.ts.net", "bounce q1 by operator@example.com on laptop-operator.example.ts.net",
		"delete q1 by operator@example.com on laptop-operator.example.ts.net", "doctor q1 by admin@example.com on laptop-admin.example.ts.net"}
	if got := h.box.calls; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("box calls:\n%q\nwant\n%q", got, want)
	}
	entries, _ := h.audit.Read(0)
	var whats []string
	for _, e := range entries {
		whats = append(whats, e.What+" "+e.Result)
	}
	// Each change's start is on record before it is made, its outcome after.
	wantAudit := []string{"doctor with a test message to ops@example.com (admin page) ok", "doctor (admin page) started", "delete message q1 (admin page) ok", "delete message q1 (admin page) started",
		"bounce message q1 (admin page) ok", "bounce message q1 (admin page) started", "retry message q1 (admin page) ok", "retry message q1 (admin page) started"}
	if strings.Join(whats, "\n") != strings.Join(wantAudit, "\n") {
		t.Errorf("audit:\n%q\nwant\n%q", whats, wantAudit)
	}
	page := h.do("GET", "/admin/", admin, nil, nil).Body.String()
	if !strings.Contains(page, "retry message q1 (admin page)") {
		t.Error("the admin's page does not show the audit log")
	}
}

func TestTracePage(t *testing.T) {
	h := newHarness(t)
	w := h.do("GET", "/admin/trace?queue_id=q1&kind=deferred&since=2h", viewer, nil, nil)
	got := w.Body.String()
	for _, s := range []string{"3 events", "<strong>deferred</strong>", "scan &lt;b&gt;1&lt;/b&gt;", `value="q1"`, `<option selected>deferred</option>`, `value="2h"`} {
		if !strings.Contains(got, s) {
			t.Errorf("trace page lacks %q", s)
		}
	}
	if strings.Contains(got, "<b>1</b>") {
		t.Error("a subject is not escaped")
	}
	for _, tc := range []struct{ device, want string }{
		{"mfp-hall-2", "device mfp-hall-2"},
		{"boiler-scada", "0 events"},
	} {
		got := h.do("GET", "/admin/trace?device="+tc.device, viewer, nil, nil).Body.String()
		if !strings.Contains(got, tc.want) || !strings.Contains(got, `name="device" type="text" size="16" value="`+tc.device+`"`) {
			t.Errorf("trace page for device %s lacks %q or the device field", tc.device, tc.want)
		}
	}
}

func TestHourly(t *testing.T) {
	ev := []api.TraceEvent{
		{Time: now, Kind: "received"},                        // this hour: last bucket
		{Time: now.Add(-23 * time.Hour), Kind: "received"},   // first bucket (09:00 yesterday... hour start 11:00-24h)
		{Time: now.Add(-25 * time.Hour), Kind: "received"},   // before the chart
		{Time: now.Add(time.Hour), Kind: "delivered"},        // after it
		{Time: now.Add(-90 * time.Minute), Kind: "bounced"},  // bucket 22
		{Time: now.Add(-90 * time.Minute), Kind: "expired"},  // not charted
		{Time: now.Add(-30 * time.Minute), Kind: "deferred"}, // 10:00: this hour
		{Time: now.Add(-31 * time.Minute), Kind: "deferred"}, // 09:59: bucket 22
	}
	ss := hourly(ev, now)
	for _, tc := range []struct {
		kind    string
		total   int
		buckets map[int]int
	}{
		{"received", 2, map[int]int{0: 1, 23: 1}},
		{"delivered", 0, nil},
		{"deferred", 2, map[int]int{22: 1, 23: 1}},
		{"bounced", 1, map[int]int{22: 1}},
	} {
		var s *series
		for i := range ss {
			if ss[i].Kind == tc.kind {
				s = &ss[i]
			}
		}
		if s == nil {
			t.Fatalf("no series %s", tc.kind)
		}
		if s.Total != tc.total {
			t.Errorf("%s total = %d, want %d", tc.kind, s.Total, tc.total)
		}
		for i, n := range s.counts {
			if n != tc.buckets[i] {
				t.Errorf("%s bucket %d = %d, want %d", tc.kind, i, n, tc.buckets[i])
			}
		}
	}
	if n := strings.Count(string(svg(ss, now)), "<polyline"); n != 4 {
		t.Errorf("%d lines, want 4", n)
	}
}

// outcomes are the audit entries but those written as a change starts.
func outcomes(l *audit.Log) []api.AuditEntry {
	all, _ := l.Read(0)
	var out []api.AuditEntry
	for _, e := range all {
		if e.Result != api.AuditResultStarted {
			out = append(out, e)
		}
	}
	return out
}
