package appliance

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// webFixture is a relay on the test tailnet delivering to a fake
// smarthost, with one message delivered and one deferred, and relayctl web
// forwarding a loopback port to its admin page as an admin.
type webFixture struct {
	tn       *provtest.Tailnet
	b        *box
	fake     *upstreamtest.FakeServer
	rc       *relayctl
	login    string // the URL relayctl web printed
	base     string // http://127.0.0.1:PORT
	deferred string // the deferred message's queue id
}

func startWeb(t *testing.T) *webFixture {
	t.Helper()
	f := &webFixture{tn: provtest.New(t)}
	ca := upstreamtest.NewTestCA(t)
	f.fake = upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{CA: ca})
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-w","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"smtp","smtp":{"address":%q,"tls":"starttls","min_tls":"1.2","ca_file":%q,"server_name":"localhost"}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, f.fake.Addr, ca.WriteFile(t))
	f.b = startBox(t, f.tn, "plant-w", cfg)
	grantAll(t, f.tn, api.Admin)
	f.rc = newRelayctl(t, f.tn)
	f.rc.node = f.tn.Join(t, "laptop")
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := f.rc.run("", "-relay", "plant-w", "-json", "whoami")
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	if err := f.b.send(t, "goes out"); err != nil {
		t.Fatal(err)
	}
	f.fake.WaitMessages(t, 1)
	f.fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	// The device's last message comes over STARTTLS (the relay's generated
	// certificate): the page shows its TLS version.
	c, err := smtp.DialStartTLS(f.b.smtp, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("mfp@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: to retry from the page\r\n\r\nscan\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var q []api.QueueItem
	relaytest.Eventually(t, "a deferred message", func() bool {
		out := f.rc.ok("", "-relay", "plant-w", "-json", "queue", "-pending")
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	f.deferred = q[0].ID

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	stderr := &relaytest.Buffer{}
	go func() {
		done <- ctl.Main(ctx, []string{"-relay", "plant-w", "web"}, ctl.IO{Stdout: pw, Stderr: stderr, Node: f.rc.node})
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != ctl.ExitOK {
			t.Errorf("relayctl web: exit %d %s", code, stderr)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("relayctl web printed no address: %v %s", err, stderr)
	}
	go io.Copy(io.Discard, pr)
	f.login = strings.TrimSpace(line)
	u, err := url.Parse(f.login)
	if err != nil || u.Path != ctl.WebLoginPath || u.Query().Get("token") == "" || !strings.HasPrefix(u.Host, "127.0.0.1:") {
		t.Fatalf("relayctl web printed %q", line)
	}
	f.base = "http://" + u.Host
	return f
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// TestAdminPageOverTheTailnet goes through relayctl web as a browser
// would, without a browser (the integration test adds one).
func TestAdminPageOverTheTailnet(t *testing.T) {
	f := startWeb(t)
	plain := &http.Client{}

	// The LAN listener refuses the admin page.
	if code, body := get(t, plain, "http://"+f.b.http+"/admin/"); code != 403 || !strings.Contains(body, "only on the tailnet") {
		t.Errorf("LAN /admin/: %d %s", code, body)
	}
	// relayctl web listens on loopback only: it acts as its user.
	if code, _, errs := f.rc.run("", "-relay", "plant-w", "web", "-listen", "0.0.0.0:0"); code != ctl.ExitUsage || !strings.Contains(errs, "only a loopback address") {
		t.Errorf("relayctl web -listen 0.0.0.0:0: exit %d %s", code, errs)
	}
	// The forwarder: nothing without the printed token, nothing for another Host.
	if code, _ := get(t, plain, f.base+"/admin/"); code != 403 {
		t.Errorf("forwarder without its token: %d, want 403", code)
	}
	if code, _ := get(t, plain, f.base+ctl.WebLoginPath+"?token=wrong"); code != 403 {
		t.Errorf("forwarder with a wrong token: %d, want 403", code)
	}
	jar, _ := cookiejar.New(nil)
	br := &http.Client{Jar: jar}
	code, page := get(t, br, f.login)
	if code != 200 {
		t.Fatalf("admin page: %d %s", code, page)
	}
	for _, want := range []string{"role <strong>admin</strong>", `id="health"`, "Warning", "451 4.7.500 Server busy", f.deferred, "to retry from the page",
		`<svg id="chart"`, "received <strong>2</strong>", "delivered <strong>1</strong>", "deferred <strong>1</strong>", "127.0.0.1", "TLS 1.3", "Recent changes (audit log)"} {
		if !strings.Contains(page, want) {
			t.Errorf("admin page lacks %q", want)
		}
	}
	req, _ := http.NewRequest("GET", f.base+"/admin/", nil)
	req.Host = "rebound.example:80"
	if resp, err := br.Do(req); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("another Host: %v %v, want 421", resp.StatusCode, err)
	}

	// /metrics over the tailnet: the LAN listener's registry.
	_, lan := get(t, plain, "http://"+f.b.http+"/metrics")
	code, tn := get(t, br, f.base+"/metrics")
	types := func(s string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "# TYPE ") {
				out = append(out, l)
			}
		}
		return out
	}
	if code != 200 || len(types(tn)) == 0 || !slices.Equal(types(tn), types(lan)) {
		t.Errorf("tailnet /metrics: %d, %d families; LAN %d", code, len(types(tn)), len(types(lan)))
	}

	// A form from another site is refused, even with the token, and audited.
	tok := csrfRE.FindStringSubmatch(page)
	if tok == nil {
		t.Fatal("no CSRF token on the admin's page")
	}
	post := func(path, origin, site string) (int, string) {
		req, _ := http.NewRequest("POST", f.base+path, strings.NewReader(url.Values{"csrf": {tok[1]}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		req.Header.Set("Sec-Fetch-Site", site)
		resp, err := br.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	retry := "/admin/queue/" + f.deferred + "/retry"
	// Another site's Origin is not one of the relay's names (421); a
	// browser that marks the request cross-site is refused by the page.
	if code, body := post(retry, "http://evil.example", "cross-site"); code != 421 || !strings.Contains(body, "DNS rebinding") {
		t.Errorf("cross-site retry: %d %s", code, body)
	}
	if code, body := post(retry, f.base, "cross-site"); code != 403 || !strings.Contains(body, "another site") {
		t.Errorf("cross-site retry with our origin: %d %s", code, body)
	}
	if code, body := post(retry, f.base, "same-origin"); code != 200 || !strings.Contains(body, "Retry of message "+f.deferred) {
		t.Errorf("retry: %d %s", code, body)
	}
	f.fake.WaitMessages(t, 2)
	relaytest.Eventually(t, "the retried message in the trace", func() bool {
		_, body := get(t, br, f.base+"/admin/trace?queue_id="+f.deferred+"&kind=delivered")
		return strings.Contains(body, "<strong>delivered</strong>")
	})
	out := f.rc.ok("", "-relay", "plant-w", "-json", "audit")
	var audit []api.AuditEntry
	json.Unmarshal([]byte(out), &audit)
	var got []string
	for _, a := range audit {
		got = append(got, a.What+": "+a.Result)
	}
	for _, want := range []string{"misdirected POST /admin/queue/" + f.deferred + "/retry: misdirected", "retry message " + f.deferred + " (admin page): missing_header",
		"retry message " + f.deferred + " (admin page): started", "retry message " + f.deferred + " (admin page): ok"} {
		if !slices.Contains(got, want) {
			t.Errorf("audit lacks %q: %q", want, got)
		}
	}

	// Doctor from the page: the box's own checks, shown as a page.
	if code, body := post("/admin/doctor", f.base, "same-origin"); code != 200 || !strings.Contains(body, `id="steps"`) || !strings.Contains(body, "connected to "+f.fake.Addr) {
		t.Errorf("doctor from the page: %d %s", code, body)
	}

	// A viewer, on the next request: no buttons, and a POST is refused and audited.
	grantAll(t, f.tn, api.Viewer)
	relaytest.Eventually(t, "the viewer role on the page", func() bool {
		_, body := get(t, br, f.base+"/admin/")
		return strings.Contains(body, "role <strong>viewer</strong>")
	})
	if _, body := get(t, br, f.base+"/admin/"); strings.Contains(body, `method="post"`) {
		t.Error("a viewer's page has forms")
	}
	if code, body := post("/admin/doctor", f.base, "same-origin"); code != 403 || !strings.Contains(body, "needs operator") {
		t.Errorf("viewer's doctor: %d %s", code, body)
	}
	grantAll(t, f.tn, api.Admin)
	relaytest.Eventually(t, "admin again", func() bool {
		_, out, _ := f.rc.run("", "-relay", "plant-w", "-json", "whoami")
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	out = f.rc.ok("", "-relay", "plant-w", "-json", "audit", "-limit", "5")
	audit = nil
	json.Unmarshal([]byte(out), &audit)
	if !slices.ContainsFunc(audit, func(a api.AuditEntry) bool {
		return a.What == "doctor (admin page)" && a.Role == api.Viewer && a.Result == api.CodeForbidden && a.Status == 403
	}) {
		t.Errorf("the viewer's refused POST is not audited:\n%s", out)
	}
}
