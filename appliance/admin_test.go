package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/appliance/logring"
	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

const captureConfig = `{"hostname":"relay-%s","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
  "upstream":{"kind":"capture","capture":{"directory":"%s"}},
  "limits":{"messages_per_minute":100000,"burst":10000},
  "delivery":{"first_retry":"1h","max_retry":"1h"}}`

// box is one relay run by Run, on the test tailnet.
type box struct {
	site   string
	dir    string
	smtp   string
	http   string
	node   *node.Node
	logs   *relaytest.Buffer
	ring   *logring.Ring
	cancel func()
	done   chan error
}

func writeConfig(t *testing.T, dir, cfg string) {
	t.Helper()
	// As the first boot writes it (moveBootstrap).
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startBox runs a box for site with cfg on tn; each of with may change its
// Options first.
func startBox(t *testing.T, tn *provtest.Tailnet, site, cfg string, with ...func(*Options)) *box {
	t.Helper()
	dir := relaytest.StateDir(t)
	writeConfig(t, dir, cfg)
	nodes := make(chan *node.Node, 1)
	o := Options{StateDir: dir, Tailnet: &Tailnet{Site: site, AuthKey: "tskey-auth-test-" + site, ControlURL: tn.URL,
		Store: new(mem.Store), Ephemeral: true, Node: func(n *node.Node) { nodes <- n }}}
	for _, f := range with {
		f(&o)
	}
	b := runBox(t, o)
	b.site = site
	b.node = <-nodes
	relaytest.Eventually(t, site+" on the tailnet", func() bool { return b.node.State().State == node.Up })
	provtest.WaitDERP(t, b.node.Server())
	tn.Tag(t, b.node.Server(), ctl.DefaultTag)
	return b
}

// runBox runs Run with o (its StateDir holding config.json) until the test ends.
func runBox(t *testing.T, o Options) *box {
	t.Helper()
	b := &box{dir: o.StateDir, logs: &relaytest.Buffer{}, done: make(chan error, 1)}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	o.HTTPAddr = "127.0.0.1:0"
	if o.ClockSynchronised == nil {
		o.ClockSynchronised = clockSynchronised // the verdicts tests expect, whatever this machine's kernel says
	}
	// As relayd: one handler for "stderr" and the log ring beside it.
	if o.Log == nil {
		o.Log = logring.New(0)
	}
	o.Logger = slog.New(logring.Handler(o.Log, slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: logring.Escape}), slog.LevelDebug))
	o.Ready = func(s []net.Addr, h net.Addr) {
		if len(s) > 0 { // none when no configuration builds
			b.smtp = s[0].String()
		}
		b.http = h.String()
		close(ready)
	}
	b.ring = o.Log
	go func() { b.done <- Run(ctx, o) }()
	t.Cleanup(b.stop)
	select {
	case <-ready:
	case err := <-b.done:
		t.Fatalf("Run ended before it was ready: %v", err)
	case <-time.After(time.Until(relaytest.Deadline(t))):
		t.Fatal("Run never got ready")
	}
	return b
}

func (b *box) stop() {
	if b.cancel != nil {
		b.cancel()
		<-b.done
		b.cancel = nil
	}
}

func (b *box) send(t *testing.T, subject string) error {
	t.Helper()
	c, err := smtp.Dial(b.smtp)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendMail("mfp@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: "+subject+"\r\n\r\nscan\r\n"))
}

func files(dir, sub string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, sub, "*.eml"))
	return m
}

// relayctl runs the command line against the test tailnet with its own
// tsnet node, and keeps every answer for the secrets search.
type relayctl struct {
	t       *testing.T
	tn      *provtest.Tailnet
	node    *tsnet.Server // nil: join with -tsnet on every run
	dir     string
	mu      sync.Mutex
	answers bytes.Buffer
}

func newRelayctl(t *testing.T, tn *provtest.Tailnet) *relayctl {
	return &relayctl{t: t, tn: tn, dir: t.TempDir()}
}

func (r *relayctl) run(stdin string, args ...string) (int, string, string) {
	r.t.Helper()
	full := append([]string{"-timeout", "20s"}, args...)
	if r.node == nil {
		full = append([]string{"-tsnet", "-tsnet-dir", r.dir, "-control-url", r.tn.URL}, full...)
	}
	return r.exec(stdin, r.node, full)
}

// runWith runs relayctl with args alone: its own way to the tailnet
// (the machine's tailscaled unless args say otherwise).
func (r *relayctl) runWith(args ...string) (int, string, string) {
	r.t.Helper()
	return r.exec("", nil, append([]string{"-timeout", "20s"}, args...))
}

func (r *relayctl) exec(stdin string, node *tsnet.Server, full []string) (int, string, string) {
	r.t.Helper()
	var out, errb bytes.Buffer
	args := full
	start := time.Now()
	code := ctl.Main(context.Background(), full, ctl.IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Node: node})
	r.t.Logf("relayctl %s: exit %d in %v %s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), errb.String())
	r.mu.Lock()
	r.answers.Write(out.Bytes())
	r.answers.Write(errb.Bytes())
	r.mu.Unlock()
	return code, out.String(), errb.String()
}

func (r *relayctl) ok(stdin string, args ...string) string {
	r.t.Helper()
	code, out, errs := r.run(stdin, args...)
	if code != 0 {
		r.t.Fatalf("relayctl %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

// node is relayctl's own node, once it has joined (after a first run).
func grantAll(t *testing.T, tn *provtest.Tailnet, role api.Role) {
	if role == api.None {
		tn.Grant(nil)
		return
	}
	tn.Grant(tailcfg.PeerCapMap{authz.Capability: {tailcfg.RawMessage(fmt.Sprintf(`{"role":%q}`, role))}})
}

func TestRelayctlEndToEnd(t *testing.T) {
	const password = "Pl4nt-smarthost-PASSWORD-6c1d"
	tn := provtest.New(t)
	ca := upstreamtest.NewTestCA(t)
	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{CA: ca, AuthMechanisms: []string{"PLAIN"}, RequireAuth: true,
		CheckAuth: func(mech, user, secret string) error {
			if secret != password {
				return errors.New("bad password")
			}
			return nil
		}})
	b := startBox(t, tn, "plant-a", fmt.Sprintf(captureConfig, "plant-a", "outbox"))
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	R := []string{"-relay", "plant-a"}
	cmd := func(args ...string) []string { return append(slices.Clone(R), args...) }

	// Wait until the grant has reached the relay for relayctl's node;
	// the first run joins with -tsnet like an operator's laptop would, the
	// others reuse one node (a new node start costs a WireGuard handshake
	// retry, 5 s, on its first request).
	relaytest.Eventually(t, "admin role for relayctl", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	rc.node = tn.Join(t, "laptop")
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})

	// Provision the smarthost's password from stdin.
	rc.ok(password+"\n", cmd("creds", "put", "smarthost", "-kind", "password", "-from", "-")...)
	out := rc.ok("", cmd("-json", "creds", "list")...)
	var creds []api.Credential
	if err := json.Unmarshal([]byte(out), &creds); err != nil || len(creds) != 1 || creds[0].Name != "smarthost" || creds[0].Kind != "password" {
		t.Fatalf("creds list = %s", out)
	}

	// Switch the upstream to the authenticated smarthost; a dry run first.
	smarthost := fmt.Sprintf(`{"hostname":"relay-plant-a","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"smtp","smtp":{"address":%q,"tls":"starttls","min_tls":"1.2","ca_file":%q,"server_name":"localhost","auth":"plain","username":"relay@example.com","password_secret":"smarthost"}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, fake.Addr, ca.WriteFile(t))
	cfgFile := filepath.Join(t.TempDir(), "smarthost.json")
	os.WriteFile(cfgFile, []byte(smarthost), 0o600)
	out = rc.ok("", cmd("config", "put", cfgFile, "-dry-run")...)
	if !strings.Contains(out, "upstream.kind") || !strings.Contains(out, "nothing applied") {
		t.Errorf("dry run said:\n%s", out)
	}
	if err := b.send(t, "before"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "capture before the switch", func() bool { return len(files(b.dir, "outbox")) == 1 })
	out = rc.ok("", cmd("config", "put", cfgFile)...)
	if !strings.Contains(out, "version 2 in force") {
		t.Errorf("config put said:\n%s", out)
	}
	if err := b.send(t, "after the switch"); err != nil {
		t.Fatalf("send after the switch: %v", err)
	}
	msgs := fake.WaitMessages(t, 1)
	if !strings.Contains(string(msgs[0].Data), "after the switch") {
		t.Errorf("smarthost got %q", msgs[0].Data)
	}

	// waitDeferred waits for the attempt that set a message's last reply
	// to be over (its deferral traced), so that an admin's delete or
	// bounce does not race the attempt still in flight.
	waitDeferred := func(id string) {
		t.Helper()
		relaytest.Eventually(t, "the deferral of "+id+" traced", func() bool {
			var ev []api.TraceEvent
			out := rc.ok("", cmd("-json", "trace", "-id", id, "-kind", "deferred")...)
			return json.Unmarshal([]byte(out), &ev) == nil && len(ev) > 0
		})
	}

	// A refused attempt leaves mail queued: list, show, retry, delete.
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	if err := b.send(t, "to retry"); err != nil {
		t.Fatal(err)
	}
	var q []api.QueueItem
	relaytest.Eventually(t, "a deferred message", func() bool {
		out := rc.ok("", cmd("-json", "queue", "-pending")...)
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	out = rc.ok("", cmd("queue", "show", q[0].ID)...)
	if !strings.Contains(out, "Subject: to retry") || !strings.Contains(out, "451") {
		t.Errorf("queue show:\n%s", out)
	}
	if code, _, errs := rc.run("", cmd("queue", "show", "no-such-id")...); code != ctl.ExitFailed || !strings.Contains(errs, "not_found") {
		t.Errorf("show of a missing id: exit %d %s", code, errs)
	}
	rc.ok("", cmd("queue", "retry", q[0].ID)...)
	fake.WaitMessages(t, 2)
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	if err := b.send(t, "to delete"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "a deferred message", func() bool {
		out := rc.ok("", cmd("-json", "queue")...)
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	waitDeferred(q[0].ID)
	rc.ok("", cmd("queue", "delete", q[0].ID)...)
	if out := rc.ok("", cmd("-json", "queue")...); strings.TrimSpace(out) != "[]" {
		t.Errorf("queue after delete: %s", out)
	}
	fake.FailNext(upstreamtest.StageMail, 1, upstreamtest.Reply(451, "4.7.500", "Server busy. Please try again later"))
	if err := b.send(t, "to bounce"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "a deferred message", func() bool {
		out := rc.ok("", cmd("-json", "queue")...)
		return json.Unmarshal([]byte(out), &q) == nil && len(q) == 1 && q[0].LastReply != ""
	})
	waitDeferred(q[0].ID)
	rc.ok("", cmd("queue", "bounce", q[0].ID)...)
	if dsn := fake.WaitMessages(t, 3)[2]; dsn.From != "" || !strings.Contains(string(dsn.Data), "to bounce") {
		t.Errorf("third delivery from %q is not the bounce: %.200s", dsn.From, dsn.Data)
	}

	// Roll back: mail goes to the capture upstream again.
	out = rc.ok("", cmd("config", "rollback", "1")...)
	if !strings.Contains(out, "version 3 in force") {
		t.Errorf("rollback said:\n%s", out)
	}
	if err := b.send(t, "after rollback"); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, "capture after rollback", func() bool { return len(files(b.dir, "outbox")) == 2 })
	if got := fake.Count(); got != 3 {
		t.Errorf("smarthost got %d, want 3", got)
	}
	if out := rc.ok("", cmd("config", "get")...); !strings.Contains(out, `"capture"`) {
		t.Errorf("config get after rollback:\n%s", out)
	}
	if code, out, errs := rc.run("", cmd("doctor")...); code != ctl.ExitOK && code != ctl.ExitFailed {
		t.Errorf("doctor: exit %d\n%s%s", code, out, errs)
	}

	// Read-only views work and the audit log has every change.
	t.Logf("relayctl status:\n%s", rc.ok("", cmd("status")...))
	var st api.Status
	if err := json.Unmarshal([]byte(rc.ok("", append([]string{"-json"}, cmd("status")...)...)), &st); err != nil || st.RSSBytes <= 0 {
		t.Errorf("status -json: rss_bytes %d (%v), want relayd's resident memory", st.RSSBytes, err)
	}
	// The sheet over the tailnet is the LAN page's, made by the same function.
	if out := rc.ok("", cmd("sheet")...); !strings.Contains(out, "Device setup sheet: ") || !strings.Contains(out, "Every device") {
		t.Errorf("relayctl sheet:\n%s", out)
	}
	t.Logf("relayctl queue:\n%s", rc.ok("", cmd("queue")...))
	t.Logf("relayctl creds list:\n%s", rc.ok("", cmd("creds", "list")...))
	t.Logf("relayctl audit:\n%s", rc.ok("", cmd("audit", "-limit", "4")...))
	rc.ok("", cmd("trace", "-kind", "delivered")...)
	// F20: relayctl trace takes relayd trace's -since forms and filters.
	// (The trace is written every second: ask until the event is there.)
	relaytest.Eventually(t, "trace with -since DATE -until -client -subject -status", func() bool {
		var evs []api.TraceEvent
		out := rc.ok("", cmd("-json", "trace", "-since", time.Now().UTC().Format(time.DateOnly), "-until", "0s", "-client", "127.0.0.1", "-subject", "after the switch", "-status", "received")...)
		return json.Unmarshal([]byte(out), &evs) == nil && len(evs) == 1 && evs[0].Subject == "after the switch"
	})
	if code, _, _ := rc.run("", cmd("trace", "-since", "yesterday")...); code != ctl.ExitUsage {
		t.Errorf("trace -since yesterday: exit %d, want %d", code, ctl.ExitUsage)
	}
	rc.ok("", cmd("firmware")...)
	rc.ok("", cmd("config", "versions")...)
	out = rc.ok("", cmd("-json", "audit")...)
	var audit []api.AuditEntry
	json.Unmarshal([]byte(out), &audit)
	var whats []string
	for _, a := range audit {
		whats = append(whats, a.What)
	}
	for _, want := range []string{"put credential smarthost (password)", "dry run of a configuration", "put configuration (version 2", "retry message", "delete message", "bounce message", "doctor", "roll configuration back to version 1"} {
		if !slices.ContainsFunc(whats, func(w string) bool { return strings.Contains(w, want) }) {
			t.Errorf("audit lacks %q: %q", want, whats)
		}
	}

	// Bad input through relayctl: a configuration with key errors, all listed.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"listeners":[{"name":"x","address":"nowhere","mode":"lmtp"}],"upstream":{"kind":"pigeon"}}`), 0o600)
	code, _, errs := rc.run("", cmd("config", "put", bad)...)
	if code != ctl.ExitFailed || !strings.Contains(errs, "invalid_config") || !strings.Contains(errs, "upstream.kind") {
		t.Errorf("bad config: exit %d\n%s", code, errs)
	}
	if code, _, _ := rc.run("", cmd("queue", "show")...); code != ctl.ExitUsage {
		t.Errorf("usage error: exit %d, want %d", code, ctl.ExitUsage)
	}

	// The status page's listener never serves the API.
	resp, err := http.Get("http://" + b.http + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	lan, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("LAN /v1/status: %d %s, want 403", resp.StatusCode, lan)
	}

	// relayctl logs: the log ring, with what this test did in it.
	out = rc.ok("", cmd("logs", "-level", "debug", "-since", "1h")...)
	for _, want := range []string{"configuration reloaded", "tailnet up"} {
		if !strings.Contains(out, want) {
			t.Errorf("relayctl logs lacks %q:\n%s", want, out)
		}
	}

	rc.ok("", cmd("creds", "delete", "smarthost")...)
	if out := rc.ok("", cmd("-json", "creds", "list")...); strings.TrimSpace(out) != "[]" {
		t.Errorf("creds after delete: %s", out)
	}

	// Revoked: locked out on the next request, exit code 4.
	grantAll(t, tn, api.None)
	relaytest.Eventually(t, "revocation", func() bool {
		code, _, _ := rc.run("", cmd("status")...)
		return code == ctl.ExitForbidden
	})

	// The secret is nowhere: logs, trace, audit, metrics, API answers,
	// any file of the state directory but the secret store.
	resp, err = http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	b.stop()
	ring, _ := b.ring.Read(logring.Query{Level: slog.LevelDebug})
	var ringText strings.Builder
	for _, e := range ring {
		ringText.Write(e.Line)
	}
	if !strings.Contains(ringText.String(), "configuration reloaded") {
		t.Error("the log ring was not fed")
	}
	places := map[string]string{"logs": b.logs.String(), "log ring": ringText.String(), "metrics": string(metrics), "relayctl answers": rc.answers.String(), "LAN answer": string(lan)}
	filepath.Walk(b.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && !strings.HasPrefix(path, layout.Dir(b.dir).Secrets()+string(filepath.Separator)) {
			data, _ := os.ReadFile(path)
			places[path] = string(data)
		}
		return nil
	})
	checkStateModes(t, b.dir)
	if !strings.Contains(places["logs"], "configuration reloaded") {
		t.Error("the logs were not captured")
	}
	for where, text := range places {
		if strings.Contains(text, password) {
			t.Errorf("the provisioned password appears in %s", where)
		}
	}
}

// checkStateModes walks a state directory after a run: every file is the
// relay's alone (0600 or less), every directory too (0700 or less).
func checkStateModes(t *testing.T, dir string) {
	t.Helper()
	var files int
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		switch {
		case info.Mode().IsRegular():
			files++
			if info.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
			}
		case info.IsDir() && path != dir:
			if info.Mode().Perm()&0o077 != 0 {
				t.Errorf("directory %s has mode %v, want 0700", path, info.Mode().Perm())
			}
		}
		return nil
	})
	if files < 5 {
		t.Errorf("only %d files in the state directory %s: the walk saw nothing", files, dir)
	}
}

// clockSynchronised is a clock kept in step, for tests that expect an "ok"
// verdict on a machine whose kernel may say the clock is not.
func clockSynchronised() *bool { t := true; return &t }
