package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
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
	"github.com/siterelay/siterelay/provisioning/configstore"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/provisioning/web"
	"github.com/siterelay/siterelay/relay/layout"
)

// The callers of a guard rig, each at its own loopback address.
var (
	adminAddr    = netip.MustParseAddr("127.0.0.1")
	nobodyAddr   = netip.MustParseAddr("127.0.0.2") // a tailnet node with no role
	strangerAddr = netip.MustParseAddr("127.0.0.3") // WhoIs knows it not
)

const relayName = "relay-plant-a.tail-test.ts.net"

// relayNames are the relay node's names in a guard rig.
var relayNames = []string{relayName, "relay-plant-a", "100.64.0.1", "fd7a:115c:a1e0::1"}

func fakeWhoIs(_ context.Context, remote string) (*apitype.WhoIsResponse, error) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return nil, err
	}
	switch ap.Addr() {
	case adminAddr:
		return &apitype.WhoIsResponse{Node: &tailcfg.Node{Name: "laptop-admin.tail-test.ts.net."},
			UserProfile: &tailcfg.UserProfile{LoginName: "admin@example.com"},
			CapMap:      tailcfg.PeerCapMap{authz.Capability: {`{"role":"admin"}`}}}, nil
	case nobodyAddr:
		return &apitype.WhoIsResponse{Node: &tailcfg.Node{Name: "intruder.tail-test.ts.net."},
			UserProfile: &tailcfg.UserProfile{LoginName: "guest@example.com"}}, nil
	}
	return nil, errors.New("no such peer")
}

// guardRig is the tailnet listener's whole handler (Guard before the API
// and the admin page) on a loopback server, with a fake WhoIs.
type guardRig struct {
	srv   *httptest.Server
	box   *fakeBox
	audit *audit.Log
}

func newGuardRig(t *testing.T, auditDir string, readTimeout, headerTimeout time.Duration) *guardRig {
	t.Helper()
	if auditDir == "" {
		auditDir = t.TempDir()
	}
	al, err := audit.Open(auditDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	box := &fakeBox{}
	policy := authz.Policy{Site: "plant-a"}
	mux := http.NewServeMux()
	mux.Handle(api.Version+"/", server.Handler(server.Options{WhoIs: fakeWhoIs, Policy: policy, Audit: al, Box: box,
		Credentials: fakeCreds{box}, Configs: fakeConfigs{box}, Updater: fakeUpdater{box}, Devices: fakeDevices{box}}))
	mux.Handle("/", web.Handler(web.Options{WhoIs: fakeWhoIs, Policy: policy, Audit: al, Box: box, Key: []byte("k")}))
	h := server.Guard(server.GuardOptions{
		Names: func(context.Context) ([]string, error) { return relayNames, nil },
		WhoIs: fakeWhoIs, Policy: policy, Audit: al, ReadTimeout: readTimeout,
	}, mux)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ReadHeaderTimeout = headerTimeout
	srv.Start()
	t.Cleanup(srv.Close)
	return &guardRig{srv: srv, box: box, audit: al}
}

// client calls the rig from the loopback address from.
func (g *guardRig) client(from netip.Addr) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 10 * time.Second}
	addr := g.srv.Listener.Addr().String()
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type req struct {
	method, path, host, origin, body string
	hdr                              map[string]string
}

func (g *guardRig) do(t *testing.T, from netip.Addr, r req) (int, string) {
	t.Helper()
	hr, err := http.NewRequest(r.method, "http://relay"+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	hr.Host = r.host
	if r.origin != "" {
		hr.Header.Set("Origin", r.origin)
	}
	hr.Header.Set(api.CSRFHeader, api.CSRFValue)
	hr.Header.Set("Content-Type", "application/json")
	for k, v := range r.hdr {
		hr.Header.Set(k, v)
	}
	resp, err := g.client(from).Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Requests as a rebound page sends them (Host and Origin another site's,
// the browser calling it same-origin) get 421 and change nothing; the
// relay's own names and addresses, with or without a port, are served.
func TestRebindingRefused(t *testing.T) {
	g := newGuardRig(t, "", 0, 0)
	evil := map[string]string{"Sec-Fetch-Site": "same-origin"}
	form := url.Values{web.TokenField: {"x"}}.Encode()
	for _, tc := range []struct {
		name string
		r    req
		want int
	}{
		{"config", req{method: "GET", path: "/v1/config", host: "evil.example", origin: "http://evil.example", hdr: evil}, 421},
		{"message body", req{method: "GET", path: "/v1/queue/q1?body=1", host: "evil.example", hdr: evil}, 421},
		{"admin page", req{method: "GET", path: "/admin/", host: "evil.example:80", hdr: evil}, 421},
		{"put credential", req{method: "PUT", path: "/v1/credentials/s", host: "evil.example", origin: "http://evil.example", hdr: evil,
			body: `{"kind":"client-secret","secret":"stolen"}`}, 421},
		{"page form", req{method: "POST", path: "/admin/queue/q1/retry", host: "evil.example", origin: "http://evil.example", body: form,
			hdr: map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"}}, 421},
		{"own host, foreign origin", req{method: "PUT", path: "/v1/credentials/s", host: relayName, origin: "http://evil.example",
			body: `{"kind":"client-secret","secret":"stolen"}`}, 421},
		{"own name with a suffix", req{method: "GET", path: "/v1/config", host: relayName + ".evil.example"}, 421},
		{"a name that only starts like ours", req{method: "GET", path: "/v1/config", host: "relay-plant-a-evil"}, 421},
		{"no host", req{method: "GET", path: "/v1/config", host: ""}, 421},
		{"foreign origin, https", req{method: "DELETE", path: "/v1/queue/q1", host: relayName, origin: "https://evil.example"}, 421},
		{"origin null (a no-referrer page's own form)", req{method: "GET", path: "/v1/config", host: relayName, origin: "null"}, 200},
		{"full name", req{method: "GET", path: "/v1/config", host: relayName}, 200},
		{"full name, dot and port", req{method: "GET", path: "/v1/config", host: "Relay-Plant-A.tail-test.ts.net.:80"}, 200},
		{"short name", req{method: "GET", path: "/v1/config", host: "relay-plant-a"}, 200},
		{"IPv4 with port", req{method: "GET", path: "/v1/config", host: "100.64.0.1:80", origin: "http://100.64.0.1:80"}, 200},
		{"IPv6", req{method: "GET", path: "/v1/config", host: "[fd7a:115c:a1e0::1]"}, 200},
		{"IPv6 with port", req{method: "GET", path: "/admin/", host: "[fd7a:115c:a1e0::1]:80"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(g.box.Calls())
			status, body := g.do(t, adminAddr, tc.r)
			if status != tc.want {
				t.Fatalf("got %d, want %d\n%.300s", status, tc.want, body)
			}
			if status == 421 {
				if !strings.Contains(body, api.CodeMisdirected) || strings.Contains(body, "the body") || strings.Contains(body, web.TokenField) {
					t.Errorf("421 answer %.300s: want the misdirected error and nothing of the relay's", body)
				}
				if got := g.box.Calls()[before:]; len(got) != 0 {
					t.Errorf("a misdirected request changed something: %v", got)
				}
				e, _ := g.audit.Read(1)
				if len(e) != 1 || e[0].Result != api.CodeMisdirected || e[0].Status != 421 {
					t.Errorf("newest audit entry %+v, want the misdirected request", e)
				}
			}
		})
	}
	if got := g.box.Calls(); len(got) != 0 {
		t.Errorf("box calls %v, want none", got)
	}
}

// OwnHost compares names without case, port or trailing dot and
// addresses as addresses.
func TestOwnHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{relayName, true}, {"RELAY-PLANT-A", true}, {"relay-plant-a:8080", true}, {"100.64.0.1", true},
		{"[fd7a:115c:a1e0:0::1]:80", true}, {"fd7a:115c:a1e0::1", true},
		{"[fd7a:115c:a1e0::1%eth0]", false}, {"100.64.0.2", false}, {"evil.example", false}, {"", false}, {":80", false},
		{"relay-plant-a.evil", false}, {"127.0.0.1", false},
	} {
		if got := server.OwnHost(tc.host, relayNames); got != tc.want {
			t.Errorf("OwnHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

// Changing requests nothing routes (an unknown path, a wrong method) are
// audited too, as are those of callers with no role.
func TestUnroutedChangesAudited(t *testing.T) {
	g := newGuardRig(t, "", 0, 0)
	for _, tc := range []struct {
		from         netip.Addr
		method, path string
	}{
		{adminAddr, "DELETE", "/v1/status"},
		{adminAddr, "POST", "/v1/nothing"},
		{adminAddr, "PATCH", "/admin/nothing"},
		{adminAddr, "PUT", "/v1/queue/q1/retry"},
	} {
		before, _ := g.audit.Read(0)
		status, _ := g.do(t, tc.from, req{method: tc.method, path: tc.path, host: relayName, body: "{}"})
		after, _ := g.audit.Read(0)
		if status < 400 {
			t.Errorf("%s %s answered %d", tc.method, tc.path, status)
		}
		if len(after) != len(before)+1 || after[0].Method != tc.method || after[0].Path != tc.path || after[0].Status != status {
			t.Errorf("%s %s (%d): audit %+v, want one entry more for it", tc.method, tc.path, status, after[:min(1, len(after))])
		}
	}
}

// A change that cannot be audited is not made: every changing call (the
// API's and the page's) is 503 naming the audit log, and the box is
// never asked.
func TestAuditFailsClosed(t *testing.T) {
	dir := t.TempDir()
	// A full disk under the audit log (root cannot write /dev/full
	// either).
	if err := os.Symlink("/dev/full", filepath.Join(dir, "audit.jsonl")); err != nil {
		t.Fatal(err)
	}
	g := newGuardRig(t, dir, 0, 0)
	form := func(op string) req {
		return req{method: "POST", path: "/admin/queue/q1/" + op, host: relayName, origin: "http://" + relayName,
			body: url.Values{web.TokenField: {pageToken(t, g)}}.Encode(),
			hdr:  map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"}}
	}
	for _, tc := range []struct {
		name string
		r    req
	}{
		{"config put", req{method: "PUT", path: "/v1/config", host: relayName, body: `{}`}},
		{"rollback", req{method: "POST", path: "/v1/config/rollback", host: relayName, body: `{"version":1}`}},
		{"creds put", req{method: "PUT", path: "/v1/credentials/s", host: relayName, body: `{"kind":"client-secret","secret":"x"}`}},
		{"creds delete", req{method: "DELETE", path: "/v1/credentials/s", host: relayName}},
		{"queue retry", req{method: "POST", path: "/v1/queue/q1/retry", host: relayName, body: `{}`}},
		{"queue bounce", req{method: "POST", path: "/v1/queue/q1/bounce", host: relayName, body: `{}`}},
		{"queue delete", req{method: "DELETE", path: "/v1/queue/q1", host: relayName}},
		{"adopt", req{method: "POST", path: "/v1/devices/adopt", host: relayName, body: `{}`}},
		{"update", req{method: "POST", path: api.PathUpdate + "?reboot=0", host: relayName, body: "squashfs"}},
		{"page retry", form("retry")},
		{"page delete", form("delete")},
	} {
		status, body := g.do(t, adminAddr, tc.r)
		if status != 503 || !strings.Contains(body, "audit") {
			t.Errorf("%s: got %d %.200s, want 503 naming the audit log", tc.name, status, body)
		}
	}
	if got := g.box.Calls(); len(got) != 0 {
		t.Errorf("changes made without an audit entry: %v", got)
	}
	if h := g.audit.Health(); h.WriteFailures == 0 || h.Problem == "" {
		t.Errorf("audit health %+v, want the failures counted and named", h)
	}
}

// pageToken reads the admin's form token off the page.
func pageToken(t *testing.T, g *guardRig) string {
	t.Helper()
	_, page := g.do(t, adminAddr, req{method: "GET", path: "/admin/", host: relayName})
	_, rest, ok := strings.Cut(page, `name="`+web.TokenField+`" value="`)
	if !ok {
		t.Fatalf("no token on the page")
	}
	tok, _, _ := strings.Cut(rest, `"`)
	return tok
}

// A 1 MB path and a flood of refusals of callers with no role leave every
// admin entry readable through GET /v1/audit.
func TestAuditHoldsAgainstNoRole(t *testing.T) {
	g := newGuardRig(t, "", 0, 0)
	var want []string
	for i := range 5 {
		status, _ := g.do(t, adminAddr, req{method: "POST", path: "/v1/queue/q1/retry", host: relayName, body: "{}"})
		if status != 200 {
			t.Fatalf("admin retry %d: %d", i, status)
		}
		want = append(want, "retry message q1")
	}
	huge := "/v1/" + strings.Repeat("%1b%5b2J", (900<<10)/8)
	for _, from := range []netip.Addr{nobodyAddr, strangerAddr, adminAddr} {
		status, _ := g.do(t, from, req{method: "PUT", path: huge, host: relayName, body: "{}"})
		if status < 400 {
			t.Fatalf("the huge path answered %d", status)
		}
	}
	for i := range 300 {
		from := []netip.Addr{nobodyAddr, strangerAddr}[i%2]
		g.do(t, from, req{method: "PUT", path: "/v1/credentials/m365", host: relayName, body: `{"kind":"password","secret":"x"}`})
	}
	status, body := g.do(t, adminAddr, req{method: "GET", path: "/v1/audit?limit=0", host: relayName})
	if status != 200 {
		t.Fatalf("GET /v1/audit: %d %.300s", status, body)
	}
	var entries []api.AuditEntry
	if err := json.Unmarshal([]byte(body), &entries); err != nil {
		t.Fatal(err)
	}
	var got []string
	var cut bool
	for _, e := range entries {
		if e.Role == api.Admin && e.Result == "ok" {
			got = append(got, e.What)
		}
		cut = cut || e.Cut
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("admin entries %q, want %q", got, want)
	}
	if !cut {
		t.Error("no entry marked cut: the huge path was kept whole or lost")
	}
	if len(entries) > 20 {
		t.Errorf("%d entries: the no-role flood was not summarised", len(entries))
	}
}

// Callers with no role that trickle their requests are all disconnected by
// the server once its timeouts pass: those that never finish the header,
// and those that send a header and then never the body.
func TestTricklingNoRoleClosed(t *testing.T) {
	g := newGuardRig(t, "", 200*time.Millisecond, 200*time.Millisecond)
	addr := g.srv.Listener.Addr().String()
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := []netip.Addr{nobodyAddr, strangerAddr}[i%2]
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			var head string
			switch i % 4 {
			case 0, 1: // a header that never ends
				head = "POST /admin/doctor HTTP/1.1\r\nHost: " + relayName + "\r\nX-Slow: "
			case 2: // a form promised and never sent
				head = "POST /admin/doctor HTTP/1.1\r\nHost: " + relayName + "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ncsrf="
			case 3: // an API body promised and never sent
				head = "PUT /v1/config HTTP/1.1\r\nHost: " + relayName + "\r\n" + api.CSRFHeader + ": " + api.CSRFValue + "\r\nContent-Length: 100000\r\n\r\n{"
			}
			if _, err := io.WriteString(c, head); err != nil {
				errs <- err
				return
			}
			// Read whatever the server answers until it hangs up; the
			// deadline only ends a test that would otherwise hang.
			c.SetReadDeadline(time.Now().Add(time.Minute))
			_, err = io.Copy(io.Discard, bufio.NewReader(c))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				errs <- fmt.Errorf("connection %d (kind %d) still open after a minute", i, i%4)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := g.box.Calls(); len(got) != 0 {
		t.Errorf("box calls %v", got)
	}
}

// Two PUT /v1/config at once with one If-Match: exactly one 409
// stale_version naming both versions; GET answers the version as ETag.
func TestConfigIfMatch(t *testing.T) {
	dir := layout.Dir(t.TempDir())
	const doc = `{"hostname":"relay.plant-a","listeners":[{"name":"smtp","address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture","capture":{"directory":"%s"}}}`
	if err := os.WriteFile(dir.Config(), []byte(fmt.Sprintf(doc, "outbox")), 0o600); err != nil {
		t.Fatal(err)
	}
	box := &fakeBox{}
	al, _ := audit.Open(t.TempDir(), 0)
	t.Cleanup(func() { al.Close() })
	h := server.Handler(server.Options{WhoIs: fakeWhoIs, Policy: authz.Policy{Site: "plant-a"}, Audit: al, Box: box,
		Credentials: fakeCreds{box}, Configs: configstore.New(dir, func(context.Context) error { return nil }, 3, nil)})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	g := &guardRig{srv: srv, box: box, audit: al}
	status, _ := g.do(t, adminAddr, req{method: "GET", path: "/v1/config", host: relayName})
	if status != 200 {
		t.Fatalf("get: %d", status)
	}
	hr, _ := http.NewRequest("GET", "http://relay/v1/config", nil)
	resp, err := g.client(adminAddr).Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("ETag"); got != `"1"` {
		t.Errorf("ETag %q, want \"1\"", got)
	}
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	bodies := make([]string, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], bodies[i] = g.do(t, adminAddr, req{method: "PUT", path: "/v1/config", host: relayName,
				body: fmt.Sprintf(doc, fmt.Sprint("outbox", i)), hdr: map[string]string{api.IfMatchHeader: `"1"`}})
		}()
	}
	wg.Wait()
	if !(statuses[0] == 200 && statuses[1] == 409 || statuses[0] == 409 && statuses[1] == 200) {
		t.Fatalf("statuses %v, want one 200 and one 409\n%s\n%s", statuses, bodies[0], bodies[1])
	}
	stale := bodies[0]
	if statuses[1] == 409 {
		stale = bodies[1]
	}
	if !strings.Contains(stale, api.CodeStale) || !strings.Contains(stale, "version 1") || !strings.Contains(stale, "version 2") {
		t.Errorf("409 answer %s: want stale_version naming versions 1 and 2", stale)
	}
	if status, body := g.do(t, adminAddr, req{method: "PUT", path: "/v1/config", host: relayName, body: "{}", hdr: map[string]string{api.IfMatchHeader: "seven"}}); status != 400 || !strings.Contains(body, api.IfMatchHeader) {
		t.Errorf("a bad If-Match: %d %s, want 400 naming it", status, body)
	}
}
