package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/provisioning/server"
)

// fakeBox records what the API asked of it.
type fakeBox struct {
	mu    sync.Mutex
	calls []string
	// follow carries the records a follower gets after the first two.
	follow chan string
}

func (b *fakeBox) did(s string) {
	b.mu.Lock()
	b.calls = append(b.calls, s)
	b.mu.Unlock()
}

func (b *fakeBox) Calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func (b *fakeBox) Status(context.Context) (*api.Status, error) {
	return &api.Status{Site: "plant-a", Health: "ok", Queue: api.Queue{Messages: 1}}, nil
}
func (b *fakeBox) Sheet(context.Context) (*api.Sheet, error) {
	return &api.Sheet{Hostname: "relay-plant-a", Text: "Device setup sheet: relay-plant-a\n"}, nil
}
func (b *fakeBox) Queue(context.Context, api.QueueFilter) ([]api.QueueItem, error) {
	return []api.QueueItem{{ID: "q1", From: "mfp@plant.example"}}, nil
}
func (b *fakeBox) Message(_ context.Context, id string, body bool) (*api.Message, error) {
	if id != "q1" {
		return nil, server.ErrNotFound
	}
	m := &api.Message{ID: id}
	if body {
		m.Body = "the body"
	}
	return m, nil
}
func (b *fakeBox) op(name, id string) error {
	if id != "q1" {
		return server.ErrNotFound
	}
	b.did(name + " " + id)
	return nil
}
func (b *fakeBox) Retry(_ context.Context, id string) error  { return b.op("retry", id) }
func (b *fakeBox) Bounce(_ context.Context, id string) error { return b.op("bounce", id) }
func (b *fakeBox) Delete(_ context.Context, id string) error { return b.op("delete", id) }
func (b *fakeBox) Trace(context.Context, api.TraceQuery) ([]api.TraceEvent, error) {
	return []api.TraceEvent{{Kind: "received"}}, nil
}
func (b *fakeBox) Doctor(context.Context, string) ([]api.DoctorStep, error) {
	b.did("doctor")
	return []api.DoctorStep{{Name: "dns", OK: true}}, nil
}
func (b *fakeBox) Firmware() api.Firmware { return api.Firmware{Version: "v1.2.3"} }
func (b *fakeBox) Logs(ctx context.Context, q api.LogQuery, fn func([]byte) error) error {
	b.did(fmt.Sprintf("logs level=%s follow=%v since=%v", q.Level, q.Follow, !q.Since.IsZero()))
	for _, l := range []string{`{"time":"2026-12-07T10:00:00Z","level":"INFO","msg":"one","client_ip":"10.0.0.5"}`, `{"time":"2026-12-07T10:00:01Z","level":"WARN","msg":"two \u001b[31m"}`} {
		if err := fn([]byte(l)); err != nil {
			return err
		}
	}
	for q.Follow {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case l := <-b.follow:
			if err := fn([]byte(l)); err != nil {
				return err
			}
		}
	}
	return nil
}
func (b *fakeBox) Reload(context.Context) error {
	b.did("reload")
	return nil
}

type fakeUpdater struct{ b *fakeBox }

// Update refuses a signature "bad" as the box refuses a wrong one (400,
// nothing read).
func (f fakeUpdater) Update(_ context.Context, r io.Reader, n int64, o api.UpdateOptions) (*api.UpdateResult, error) {
	if string(o.Signature) == "bad" {
		return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Message: "firmware update refused: signed by key \"0123\", which this box does not trust"}
	}
	got, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	f.b.did(fmt.Sprintf("update %d of %d bytes testboot=%v downgrade=%v signature=%q", len(got), n, o.TestBoot, o.AllowDowngrade, o.Signature))
	return &api.UpdateResult{RootBytes: n, Mode: "switch", Version: "v1.3.0", KeyID: "abcd"}, nil
}

func (f fakeUpdater) Reboot(context.Context) error { f.b.did("reboot"); return nil }

type fakeCreds struct{ b *fakeBox }

func (f fakeCreds) List() ([]api.Credential, error) {
	return []api.Credential{{Name: "s", Kind: api.KindClientSecret}}, nil
}
func (f fakeCreds) Put(name string, p api.CredentialPut) (*api.Credential, error) {
	f.b.did("put " + name)
	return &api.Credential{Name: name, Kind: p.Kind}, nil
}
func (f fakeCreds) Delete(name string) error { f.b.did("delete cred " + name); return nil }

type fakeConfigs struct{ b *fakeBox }

func (f fakeConfigs) Get() (*api.ConfigDoc, error) {
	return &api.ConfigDoc{Version: 1, Config: json.RawMessage(`{}`)}, nil
}
func (f fakeConfigs) Versions() ([]api.ConfigVersion, error) {
	return []api.ConfigVersion{{Version: 1}}, nil
}
func (f fakeConfigs) Put(_ context.Context, doc []byte, by string, dry bool) (*api.ConfigResult, error) {
	if !dry {
		f.b.did("put config")
	}
	return &api.ConfigResult{Version: 2, DryRun: dry}, nil
}
func (f fakeConfigs) Rollback(_ context.Context, v int, by string) (*api.ConfigResult, error) {
	f.b.did(fmt.Sprint("rollback ", v))
	return &api.ConfigResult{Version: 3}, nil
}

type fakeDevices struct{ b *fakeBox }

func (f fakeDevices) Devices(context.Context) ([]api.SeenDevice, error) {
	return []api.SeenDevice{{Address: "10.20.5.7", Helo: []string{"boiler-scada"}, Messages: 3}}, nil
}
func (f fakeDevices) Adopt(_ context.Context, r api.AdoptRequest, by string) (*api.AdoptResult, error) {
	if !r.DryRun {
		f.b.did("adopt")
	}
	return &api.AdoptResult{Adopted: []api.AdoptedDevice{{Name: "boiler-scada"}}, DevicesOnly: true, Config: api.ConfigResult{Version: 2, DryRun: r.DryRun}}, nil
}

type rig struct {
	tn    *provtest.Tailnet
	relay *node.Node
	box   *fakeBox
	audit *audit.Log
}

func newRig(t *testing.T, admins ...string) *rig {
	t.Helper()
	tn := provtest.New(t)
	box := &fakeBox{}
	al, err := audit.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	r := &rig{tn: tn, box: box, audit: al}
	ctx, cancel := context.WithCancel(context.Background())
	var n *node.Node
	h := server.Handler(server.Options{
		WhoIs:  func(ctx context.Context, a string) (*apitype.WhoIsResponse, error) { return n.WhoIs(ctx, a) },
		Policy: authz.Policy{Site: "plant-a", Admins: admins},
		Audit:  al, Box: box, Credentials: fakeCreds{box}, Configs: fakeConfigs{box},
		Updater: fakeUpdater{box}, Devices: fakeDevices{box},
	})
	n = node.Start(ctx, node.Options{Dir: t.TempDir(), Hostname: "relay-plant-a", AuthKey: "test-key",
		ControlURL: tn.URL, Handler: h, Store: new(mem.Store), Ephemeral: true})
	t.Cleanup(func() { cancel(); <-n.Done() })
	waitUp(t, n)
	provtest.WaitDERP(t, n.Server())
	r.relay = n
	return r
}

func waitUp(t *testing.T, n *node.Node) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for n.State().State != node.Up {
		if time.Now().After(deadline) {
			t.Fatalf("relay node state %q after a minute", n.State().State)
		}
		time.Sleep(10 * time.Millisecond) // polling a state, not standing in for synchronisation
	}
}

func (r *rig) client(s *tsnet.Server) *api.Client {
	return api.NewClient(r.relay.State().IPs[0], s.Dial)
}

// grant gives every caller role (None revokes) and waits until the relay
// node sees it for caller.
func (r *rig) grant(t *testing.T, caller *tsnet.Server, role api.Role) {
	t.Helper()
	var want string
	if role == api.None {
		r.tn.Grant(nil)
	} else {
		want = fmt.Sprintf(`{"role":%q}`, role)
		r.tn.Grant(tailcfg.PeerCapMap{authz.Capability: {tailcfg.RawMessage(want)}})
	}
	provtest.WaitPeer(t, r.relay.Server(), provtest.IP(t, caller), func(_ []string, caps tailcfg.PeerCapMap) bool {
		v := caps[authz.Capability]
		if role == api.None {
			return len(v) == 0
		}
		var cv authz.CapValue
		return len(v) == 1 && json.Unmarshal([]byte(v[0]), &cv) == nil && cv.Role == role.String()
	})
}

// op is one API call and the least role it needs.
type op struct {
	name string
	need api.Role
	call func(ctx context.Context, c *api.Client) error
}

var ops = []op{
	{"status", api.Viewer, func(ctx context.Context, c *api.Client) error { _, err := c.Status(ctx); return err }},
	{"trace", api.Viewer, func(ctx context.Context, c *api.Client) error { _, err := c.Trace(ctx, api.TraceQuery{}); return err }},
	{"sheet", api.Viewer, func(ctx context.Context, c *api.Client) error {
		s, err := c.Sheet(ctx)
		if err == nil && s.Text != "Device setup sheet: relay-plant-a\n" {
			err = fmt.Errorf("sheet: got %+v", s)
		}
		return err
	}},
	{"queue list", api.Operator, func(ctx context.Context, c *api.Client) error { _, err := c.Queue(ctx, api.QueueFilter{}); return err }},
	{"queue show", api.Operator, func(ctx context.Context, c *api.Client) error { _, err := c.Message(ctx, "q1", false); return err }},
	{"queue show body", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Message(ctx, "q1", true); return err }},
	{"retry", api.Operator, func(ctx context.Context, c *api.Client) error { return c.Retry(ctx, "q1") }},
	{"bounce", api.Operator, func(ctx context.Context, c *api.Client) error { return c.Bounce(ctx, "q1") }},
	{"delete", api.Operator, func(ctx context.Context, c *api.Client) error { return c.Delete(ctx, "q1") }},
	{"logs", api.Operator, func(ctx context.Context, c *api.Client) error {
		return c.Logs(ctx, api.LogQuery{}, func(api.LogLine) error { return nil })
	}},
	{"doctor", api.Operator, func(ctx context.Context, c *api.Client) error { _, err := c.Doctor(ctx, ""); return err }},
	{"creds list", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Credentials(ctx); return err }},
	{"creds put", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.PutCredential(ctx, "s", api.CredentialPut{Kind: api.KindClientSecret, Secret: "x"})
		return err
	}},
	{"creds put ca-certificate", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.PutCredential(ctx, "proxy-ca", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: "-----BEGIN CERTIFICATE-----"})
		return err
	}},
	{"creds delete", api.Admin, func(ctx context.Context, c *api.Client) error { return c.DeleteCredential(ctx, "s") }},
	{"config get", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Config(ctx); return err }},
	{"config put", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.PutConfig(ctx, json.RawMessage(`{}`), false)
		return err
	}},
	{"config dry run", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.PutConfig(ctx, json.RawMessage(`{}`), true)
		return err
	}},
	{"config versions", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.ConfigVersions(ctx); return err }},
	{"rollback", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Rollback(ctx, 1); return err }},
	{"audit", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Audit(ctx, 10); return err }},
	{"firmware", api.Admin, func(ctx context.Context, c *api.Client) error { _, err := c.Firmware(ctx); return err }},
	{"update", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.Update(ctx, strings.NewReader("root"), 4, api.UpdateOptions{})
		return err
	}},
	{"devices", api.Viewer, func(ctx context.Context, c *api.Client) error { _, err := c.Devices(ctx); return err }},
	{"devices adopt", api.Admin, func(ctx context.Context, c *api.Client) error {
		_, err := c.Adopt(ctx, api.AdoptRequest{Addresses: []string{"10.20.5.7"}})
		return err
	}},
}

func TestRoleMatrix(t *testing.T) {
	r := newRig(t)
	caller := r.tn.Join(t, "laptop")
	c := r.client(caller)
	ctx := context.Background()
	for _, role := range []api.Role{api.None, api.Viewer, api.Operator, api.Admin} {
		r.grant(t, caller, role)
		t.Run(role.String(), func(t *testing.T) {
			w, err := c.WhoAmI(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if w.Role != role {
				t.Fatalf("whoami role = %v, want %v", w.Role, role)
			}
			for _, o := range ops {
				before := len(r.box.Calls())
				err := o.call(ctx, c)
				var ae *api.Error
				switch {
				case role >= o.need && err != nil:
					t.Errorf("%s as %s: %v, want allowed", o.name, role, err)
				case role < o.need && (!errors.As(err, &ae) || ae.Status != 403 || ae.Code != api.CodeForbidden):
					t.Errorf("%s as %s: err %v, want 403 forbidden", o.name, role, err)
				case role < o.need && len(r.box.Calls()) != before:
					t.Errorf("%s as %s was refused but changed something: %v", o.name, role, r.box.Calls()[before:])
				}
			}
		})
	}
	// Every changing call went to the audit log, refused ones too (those
	// of the caller with no role summarised: the count is in the entry).
	r.audit.Flush(time.Now().Add(time.Hour))
	entries, err := r.audit.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	var refused, allowed int
	for _, e := range entries {
		if e.Result == api.CodeForbidden {
			refused += max(e.Count, 1)
		} else if e.Result == "ok" {
			allowed++
		}
		if e.Node == "" || e.Time.IsZero() || e.Method == "GET" {
			t.Errorf("audit entry %+v: want node, time and a changing method", e)
		}
	}
	changing := 0
	for _, o := range ops {
		if slices.Contains([]string{"retry", "bounce", "delete", "doctor", "creds put", "creds put ca-certificate", "creds delete", "config put", "config dry run", "rollback", "update", "devices adopt"}, o.name) {
			changing++
		}
	}
	if got, want := refused+allowed, 4*changing; got != want {
		t.Errorf("audit has %d entries (%d refused, %d ok), want %d", got, refused, allowed, want)
	}
	caPuts := 0
	for _, e := range entries {
		if strings.Contains(e.What, "put credential proxy-ca (ca-certificate)") && e.Result == "ok" {
			caPuts++
		}
	}
	if caPuts != 1 {
		t.Errorf("%d audit entries say an admin put the CA certificate proxy-ca (ca-certificate), want 1", caPuts)
	}
}

func TestLogs(t *testing.T) {
	r := newRig(t)
	r.box.follow = make(chan string)
	caller := r.tn.Join(t, "laptop")
	c := r.client(caller)
	r.grant(t, caller, api.Operator)
	ctx := context.Background()
	var got []string
	if err := c.Logs(ctx, api.LogQuery{Ago: time.Hour, Level: "warn"}, func(l api.LogLine) error {
		got = append(got, l.Text())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"2026-12-07T10:00:00.000Z INFO  one client_ip=10.0.0.5", `2026-12-07T10:00:01.000Z WARN  two \x1b[31m`}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if calls := r.box.Calls(); calls[len(calls)-1] != "logs level=warn follow=false since=true" {
		t.Errorf("box asked %q", calls[len(calls)-1])
	}
	for _, bad := range []string{"since=yesterday", "level=loud", "follow=maybe"} {
		resp, err := c.HTTP.Get(c.Base + api.PathLogs + "?" + bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", bad, resp.StatusCode)
		}
	}

	// Following: the two records, then each new one as the box writes it.
	fctx, cancel := context.WithCancel(ctx)
	lines := make(chan string)
	done := make(chan error)
	go func() {
		done <- c.Logs(fctx, api.LogQuery{Follow: true}, func(l api.LogLine) error { lines <- l.Msg; return nil })
	}()
	for _, want := range []string{"one", "two \x1b[31m"} {
		if got := <-lines; got != want {
			t.Errorf("followed %q, want %q", got, want)
		}
	}
	r.box.follow <- `{"time":"2026-12-07T10:00:02Z","level":"ERROR","msg":"three"}`
	if got := <-lines; got != "three" {
		t.Errorf("followed %q, want three", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("a follow ended by its caller returned %v", err)
	}
}

func TestRevokeLocksOutNextRequest(t *testing.T) {
	r := newRig(t)
	caller := r.tn.Join(t, "laptop")
	c := r.client(caller)
	ctx := context.Background()
	r.grant(t, caller, api.Admin)
	if _, err := c.Audit(ctx, 1); err != nil {
		t.Fatalf("as admin: %v", err)
	}
	r.grant(t, caller, api.None)
	_, err := c.Status(ctx)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 403 {
		t.Fatalf("after revoking: %v, want 403", err)
	}
}

func TestSiteFileAdministrators(t *testing.T) {
	r := newRig(t, "tag:relay-admins")
	caller := r.tn.Join(t, "ci-runner")
	r.tn.Tag(t, caller, "tag:relay-admins")
	provtest.WaitPeer(t, r.relay.Server(), provtest.IP(t, caller), func(tags []string, _ tailcfg.PeerCapMap) bool {
		return slices.Contains(tags, "tag:relay-admins")
	})
	w, err := r.client(caller).WhoAmI(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if w.Role != api.Admin || w.Via != "site file" {
		t.Errorf("whoami = %+v, want admin via the site file", w)
	}
	other := r.tn.Join(t, "visitor")
	if _, err := r.client(other).Status(context.Background()); err == nil {
		t.Error("an untagged node without a grant read the status")
	}
}

// A changing call without the header a browser cannot send cross-site is
// refused before it reaches the box, and audited.
func TestChangingCallNeedsHeader(t *testing.T) {
	r := newRig(t)
	caller := r.tn.Join(t, "laptop")
	r.grant(t, caller, api.Admin)
	hc := r.client(caller).HTTP
	req, _ := http.NewRequest("POST", "http://"+r.relay.State().IPs[0]+"/v1/queue/q1/retry", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var eb api.ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	resp.Body.Close()
	if resp.StatusCode != 403 || eb.Error == nil || eb.Error.Code != api.CodeCSRF {
		t.Errorf("got %d %+v, want 403 %s", resp.StatusCode, eb.Error, api.CodeCSRF)
	}
	if calls := r.box.Calls(); len(calls) != 0 {
		t.Errorf("box was asked %v", calls)
	}
	e, _ := r.audit.Read(1)
	if len(e) != 1 || e[0].Result != api.CodeCSRF {
		t.Errorf("audit = %+v, want the refusal", e)
	}
}

func TestBadInput(t *testing.T) {
	r := newRig(t)
	caller := r.tn.Join(t, "laptop")
	r.grant(t, caller, api.Admin)
	hc := r.client(caller).HTTP
	base := "http://" + r.relay.State().IPs[0]
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code, field              string
	}{
		{"malformed JSON", "PUT", "/v1/credentials/s", `{"kind":`, 400, api.CodeBadRequest, ""},
		{"unknown field", "PUT", "/v1/credentials/s", `{"kind":"password","secrett":"x"}`, 400, api.CodeBadRequest, "secrett"},
		{"wrong type", "PUT", "/v1/credentials/s", `{"kind":7}`, 400, api.CodeBadRequest, "kind"},
		{"two values", "PUT", "/v1/credentials/s", `{"kind":"password"} {}`, 400, api.CodeBadRequest, ""},
		{"oversized", "PUT", "/v1/credentials/s", `{"secret":"` + strings.Repeat("a", api.MaxBody) + `"}`, 413, api.CodeTooLarge, ""},
		{"no such queue id", "POST", "/v1/queue/nope/retry", `{}`, 404, api.CodeNotFound, "id"},
		{"no such path", "GET", "/v1/nothing", ``, 404, api.CodeNotFound, ""},
		{"bad filter", "GET", "/v1/queue?older_than=soon", ``, 400, api.CodeBadRequest, "older_than"},
		{"rollback to nothing", "POST", "/v1/config/rollback", `{"version":0}`, 400, api.CodeBadRequest, "version"},
		{"adopt: unknown field", "POST", "/v1/devices/adopt", `{"address":["10.1.1.1"]}`, 400, api.CodeBadRequest, "address"},
		{"adopt: wrong type", "POST", "/v1/devices/adopt", `{"devices_only":"yes"}`, 400, api.CodeBadRequest, "devices_only"},
		{"adopt: not an address", "POST", "/v1/devices/adopt", `{"addresses":["10.1.1.1","printer"]}`, 400, api.CodeBadRequest, "addresses[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(r.box.Calls())
			req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			req.Header.Set(api.CSRFHeader, api.CSRFValue)
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb api.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || eb.Error == nil {
				t.Fatalf("answer is not a JSON error: %v", err)
			}
			if resp.StatusCode != tc.status || eb.Error.Code != tc.code || eb.Error.Field != tc.field {
				t.Errorf("got %d %s field %q (%s), want %d %s field %q", resp.StatusCode, eb.Error.Code, eb.Error.Field, eb.Error.Message, tc.status, tc.code, tc.field)
			}
			if eb.Error.Message == "" {
				t.Error("error without a message")
			}
			if got := r.box.Calls()[before:]; len(got) != 0 {
				t.Errorf("bad input changed something: %v", got)
			}
		})
	}
}

func TestLANRefusal(t *testing.T) {
	rec := httptest.NewRecorder()
	server.LANRefusal().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/status", nil))
	if rec.Code != 403 || !strings.Contains(rec.Body.String(), `"forbidden"`) {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
}

// An update streams the body to the Updater, is audited with what it
// wrote, and reboots only after its audit entry is written.
func TestUpdate(t *testing.T) {
	r := newRig(t)
	caller := r.tn.Join(t, "laptop")
	r.grant(t, caller, api.Admin)
	c := r.client(caller)
	ctx := context.Background()
	body := strings.Repeat("squashfs", 4096)
	res, err := c.Update(ctx, strings.NewReader(body), int64(len(body)), api.UpdateOptions{Signature: []byte("sig"), TestBoot: true, Reboot: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Rebooting || res.RootBytes != int64(len(body)) {
		t.Errorf("got %+v, want rebooting and %d bytes", res, len(body))
	}
	// The reboot runs after the answer: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(r.box.Calls(), "reboot") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a call made after the answer
	}
	got := r.box.Calls()
	want := []string{fmt.Sprintf("update %d of %d bytes testboot=true downgrade=false signature=\"sig\"", len(body), len(body)), "reboot"}
	if !slices.Equal(got, want) {
		t.Errorf("got calls %v, want %v", got, want)
	}
	entries, err := r.audit.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Result != "ok" || entries[1].Result != api.AuditResultStarted ||
		entries[0].What != fmt.Sprintf("firmware update from v1.2.3: %d-byte root file system, test boot, to v1.3.0 signed by key abcd, reboot", len(body)) {
		t.Errorf("got audit %+v, want the update with its size, test boot, version, key and reboot", entries)
	}

	// A refusal by the box is a 400 and audited with its words; no reboot.
	_, err = c.Update(ctx, strings.NewReader(body), int64(len(body)), api.UpdateOptions{Signature: []byte("bad"), AllowDowngrade: true, Reboot: true})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("got %v, want the box's 400", err)
	}
	if entries, _ = r.audit.Read(0); len(entries) != 4 || entries[0].Status != 400 ||
		!strings.Contains(entries[0].What, "downgrade allowed, refused: firmware update refused: signed by key") {
		t.Errorf("got audit %+v, want the refusal with its words", entries)
	}

	// A body without a length, or one larger than a root partition, is
	// refused before anything is written.
	hc := c.HTTP
	for _, tc := range []struct {
		name       string
		length     int64
		wantStatus int
	}{
		{"no length", -1, http.StatusLengthRequired},
		{"too large", api.MaxRootBytes + 1, http.StatusRequestEntityTooLarge},
	} {
		req, _ := http.NewRequest("POST", c.Base+api.PathUpdate+"?reboot=0", strings.NewReader("x"))
		req.ContentLength = tc.length
		if tc.length > 1 {
			req.Body = io.NopCloser(io.LimitReader(zeros{}, tc.length))
		}
		req.Header.Set(api.CSRFHeader, api.CSRFValue)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.wantStatus {
			t.Errorf("%s: got %d, want %d", tc.name, resp.StatusCode, tc.wantStatus)
		}
	}
	// A signature header that is not base64.
	req, _ := http.NewRequest("POST", c.Base+api.PathUpdate+"?reboot=0", strings.NewReader("x"))
	req.Header.Set(api.CSRFHeader, api.CSRFValue)
	req.Header.Set(api.HeaderSignature, "not base64!")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 400 {
		t.Errorf("signature not base64: got %v %v, want 400", resp, err)
	} else {
		resp.Body.Close()
	}
	if got := r.box.Calls(); len(got) != 2 {
		t.Errorf("refused updates reached the box: %v", got[2:])
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
