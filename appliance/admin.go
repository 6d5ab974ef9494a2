package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/envknob"
	"tailscale.com/ipn"

	"github.com/siterelay/siterelay/appliance/site"
	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/configstore"
	"github.com/siterelay/siterelay/provisioning/firmware"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/secrets"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/provisioning/testboot"
	"github.com/siterelay/siterelay/provisioning/web"

	"github.com/siterelay/siterelay/appliance/status"
	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/spool"
	"github.com/siterelay/siterelay/relay/trace"
)

// Tailnet says how the box joins the tailnet for remote management.
type Tailnet struct {
	// Site names the relay in capability grants (CapValue.Sites) and is
	// its node name on the tailnet.
	Site string
	// Admins are the site file's administrators (the fallback when the
	// tailnet policy grants no role).
	Admins []string
	// AuthKey joins the first time; "" reads the state directory's join
	// key (layout.Dir.TailnetAuthKey), and none there means "not managed".
	AuthKey string
	// ControlURL is the coordination server ("" is Tailscale's).
	ControlURL string
	// Tags are advertised at join.
	Tags []string
	// Port is the admin API's port on the tailnet (default 80).
	Port int
	// Store and Ephemeral are for tests (memory state, vanishing node).
	Store     ipn.StateStore
	Ephemeral bool
	// Node, when set, receives the node once started (tests dial with it).
	Node func(*node.Node)
	// Firmware, when set, is where firmware updates go (tests point it
	// at a fake gokrazy socket); on gokrazy the default is gokrazy's own
	// local socket, elsewhere there is none and updates are refused.
	Firmware *firmware.Updater
	// Cmdline, when set, is the kernel command line (tests); on gokrazy
	// /proc/cmdline is read, to see whether this boot is a test boot.
	Cmdline string
	// FirmwareKeys are the release keys firmware updates must be signed
	// with: the running image's site file's firmware_keys (read from the
	// image, not the state directory: an image carries its own trust).
	FirmwareKeys []string
	// SBOMFile is the running image's SBOM (default, on gokrazy,
	// firmware.SBOMFile).
	SBOMFile string
}

// imageFirmwareKeys reads the release keys from the running image's own
// site file (its bootstrap directory, on the read-only root). None, or a
// file that cannot be read, means the box takes no update, and says so.
func imageFirmwareKeys(bootstrapDir string, log *slog.Logger) []string {
	st, err := site.Load(filepath.Join(bootstrapDir, layout.SiteFile))
	if err != nil {
		log.Error("the image's site file cannot be read: firmware updates are refused", "err", err)
		return nil
	}
	if len(st.FirmwareKeys) == 0 {
		log.Warn("the image carries no firmware_keys: firmware updates are refused (docs/image.md)")
	}
	return st.FirmwareKeys
}

// admin is the adapter between the admin API and the running relay: the
// provisioning packages never import the relay, they ask through this.
type admin struct {
	o       Options
	run     *app
	dir     layout.Dir
	creds   *secrets.Store
	configs *configstore.Store
	audit   *audit.Log
	node    *node.Node
	site    string
	log     *slog.Logger
	ctx     context.Context // ends when the admin side stops
	// fw is the firmware updater (nil off gokrazy): its keys and records
	// are what /v1/firmware reports.
	fw *firmware.Updater
}

// startAdmin joins the tailnet in the background and serves the admin API
// there. It never blocks SMTP and never fails the relay: trouble is in the
// tailnet state of the status.
func startAdmin(ctx context.Context, o Options, run *app, creds *secrets.Store, log *slog.Logger) (*admin, func(), error) {
	t := o.Tailnet
	dir := layout.Dir(o.StateDir)
	a := &admin{o: o, run: run, dir: dir, creds: creds, site: t.Site, log: log}
	a.configs = configstore.New(dir, run.reload, 0, nil)
	al, err := audit.Open(dir.Audit(), 0)
	if err != nil {
		return nil, nil, err
	}
	if run.renewAudit != nil {
		run.renewAudit.log.Store(al)
	}
	a.audit = al
	al.SetObserver(run.auditFwd.entry) // the audit stream (forward.syslog)
	run.auditFailures.Store(ptr(func() uint64 { return al.Health().WriteFailures }))
	if r := run.Relay(); r != nil {
		r.SetAuditWriteFailures(*run.auditFailures.Load())
	}
	key := t.AuthKey
	if key == "" {
		if b, err := os.ReadFile(dir.TailnetAuthKey()); err == nil {
			key = strings.TrimSpace(string(b))
		}
	}
	var upd server.Updater
	var fw *firmware.Updater
	switch {
	case t.Firmware != nil:
		fw = t.Firmware
	case OnGokrazy():
		fw = &firmware.Updater{}
	}
	cmdline := t.Cmdline
	if cmdline == "" && OnGokrazy() {
		b, _ := os.ReadFile("/proc/cmdline")
		cmdline = string(b)
	}
	testBoot := testboot.Booted(cmdline)
	if fw != nil {
		u := *fw
		if u.Keys, err = firmware.ParsePublicKeys(t.FirmwareKeys); err != nil {
			log.Error("the image's firmware keys cannot be read: firmware updates are refused", "err", err)
			u.Keys = nil
		}
		u.Running = version()
		if u.StageDir == "" {
			u.StageDir = dir.Firmware()
		}
		a.fw = &u
		upd = updater{u: u, log: log, testBoot: testBoot}
	}
	// No log upload to Tailscale, ever: the box's logs stay on the box.
	envknob.SetNoLogsNoSupport()
	whoIs := func(ctx context.Context, addr string) (*apitype.WhoIsResponse, error) { return a.node.WhoIs(ctx, addr) }
	policy := authz.Policy{Site: t.Site, Admins: t.Admins}
	mux := http.NewServeMux()
	h := server.Guard(server.GuardOptions{
		Names: func(ctx context.Context) ([]string, error) { return a.node.Names(ctx) },
		WhoIs: whoIs, Policy: policy, Audit: al, Logger: log,
	}, mux)
	mux.Handle(api.Version+"/", server.Handler(server.Options{
		WhoIs:  whoIs,
		Policy: policy,
		Audit:  al, Box: a, Credentials: creds, Configs: a.configs, Logger: log,
		Updater: upd, Devices: a,
	}))
	// The admin page and /metrics (viewer), on the same Box and audit log.
	mux.Handle("/", web.Handler(web.Options{WhoIs: whoIs, Policy: policy, Audit: al, Box: a, Metrics: run.metrics(), Logger: log}))
	nctx, cancel := context.WithCancel(ctx)
	a.ctx = nctx
	a.node = node.Start(nctx, node.Options{Dir: dir.Tailnet(), Hostname: t.Site, AuthKey: key, ControlURL: t.ControlURL,
		Tags: t.Tags, Port: t.Port, Handler: h, Store: t.Store, Ephemeral: t.Ephemeral, Logger: log, Up: o.TailnetUp})
	if t.Node != nil {
		t.Node(a.node)
	}
	if s := a.node.State().State; s == node.NotManaged {
		log.Info("no tailnet join key: relaying on the LAN, not managed remotely")
	}
	if fw != nil && testBoot {
		go commitTestBoot(nctx, a.node, fw, log)
	}
	return a, func() { cancel(); <-a.node.Done(); al.Close() }, nil
}

// rssBytes is this process's resident memory, from /proc/self/status
// (0 where there is none).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kib)
			return kib << 10
		}
	}
	return 0
}

func notFound(err error) error {
	if errors.Is(err, spool.ErrNotFound) {
		return server.ErrNotFound
	}
	return err
}

// relay is the running relay, or the API's 503 while there is none
// (starting, or its state cannot be opened).
func (a *admin) relay() (*relay.Relay, error) {
	if r := a.run.Relay(); r != nil {
		return r, nil
	}
	return nil, &api.Error{Status: 503, Code: api.CodeUnavailable, Message: "the relay is not running: " + *a.run.problem.Load()}
}

// Status answers whether or not the relay runs: the management plane
// never depends on it. Its health is the LAN status page's verdict
// (status.Page.Health), so the API, relayctl and the page say the same.
func (a *admin) Status(ctx context.Context) (*api.Status, error) {
	s := &api.Status{
		Site: a.site, Version: version(), Now: time.Now().UTC(),
		Counts:        map[string]uint64{},
		ConfigVersion: a.configs.Current(),
		Tailnet:       a.node.State(),
		RSSBytes:      rssBytes(),
		Audit:         a.audit.Health(),
	}
	page := status.Page{Version: s.Version, Now: time.Now()}
	r := a.run.Relay()
	if r == nil {
		s.Hostname, _ = os.Hostname()
		s.Problem = *a.run.problem.Load()
		page.Problem = s.Problem
	} else {
		st := r.Status()
		page.Relay = &st
		s.Hostname, s.Started = r.Hostname(), st.Started
		s.MaxMessageBytes = st.MaxMessageBytes
		s.Upstream = api.Upstream{Name: st.Upstream.Name, Failing: st.Upstream.Failing(), LastDelivered: st.Upstream.LastDelivered}
		s.Queue = api.Queue{Messages: st.Queue.Messages, Bytes: st.Queue.Bytes, Oldest: st.Queue.Oldest}
		s.TLSCertificateExpires, s.NearestExpiry = st.TLSCertificateExpires, st.TLSCertificateExpires
		s.ClockSynchronised = st.ClockSynchronised
		for _, l := range st.Listeners {
			s.Listeners = append(s.Listeners, api.Listener{Name: l.Name, Address: l.Address, Mode: l.Mode, TLS: l.TLS, Auth: l.Auth, Loopback: l.Loopback, Problem: l.Problem})
		}
		if p := st.Upstream.LastProblem; p != nil {
			s.Upstream.LastProblem = &api.UpstreamProblem{Time: p.Time, Kind: string(p.Kind), Reply: p.Reply, Hint: p.Hint}
		}
		for k, v := range st.Counts {
			s.Counts[string(k)] = v
		}
		s.Refused = st.Refused
		for _, w := range st.Waiting {
			s.Waiting = append(s.Waiting, api.Waiting(w))
		}
		if c := st.Config; c != nil {
			s.Config = &api.ConfigSource{InForce: c.InForce, Broken: c.Broken, Problem: c.Problem}
		}
		s.Warnings = st.Warnings
		for _, rn := range st.Renewals {
			s.Renewals = append(s.Renewals, apiRenewal(rn))
		}
		if f := st.Forward; f != nil {
			s.Forward = &api.Forward{Address: f.Address, State: f.State, BufferedBytes: f.BufferedBytes,
				Dropped: f.Dropped, LastError: f.LastError, LastErrorAt: f.LastErrorAt}
		}
	}
	h := page.Health()
	s.Health, s.HealthNotes = h.State, h.Notes
	if s.Hostname == "" {
		s.Hostname, _ = os.Hostname()
	}
	var fs syscall.Statfs_t
	if syscall.Statfs(a.o.StateDir, &fs) == nil {
		s.Disk = api.Disk{FreeBytes: int64(fs.Bavail) * int64(fs.Bsize), TotalBytes: int64(fs.Blocks) * int64(fs.Bsize)}
	}
	if cl, err := a.creds.List(); err == nil {
		s.Credentials = cl
		for _, c := range cl {
			if !c.NotAfter.IsZero() && (s.NearestExpiry.IsZero() || c.NotAfter.Before(s.NearestExpiry)) {
				s.NearestExpiry = c.NotAfter
			}
		}
	}
	// Devices: who sent mail in the last day, from the trace.
	if r == nil {
		return s, nil
	}
	if ev, err := r.Trace().Query(ctx, trace.Filter{Kind: trace.Received, Since: time.Now().Add(-24 * time.Hour), Limit: 5000}); err == nil {
		byIP := map[string]*api.Device{}
		for _, e := range ev {
			if e.ClientIP == "" {
				continue
			}
			d := byIP[e.ClientIP]
			if d == nil {
				d = &api.Device{ClientIP: e.ClientIP}
				byIP[e.ClientIP] = d
			}
			d.Messages++
			if e.Time.After(d.LastSeen) {
				d.LastSeen, d.TLSVersion = e.Time, e.TLSVersion
			}
		}
		for _, d := range byIP {
			s.Devices = append(s.Devices, *d)
		}
		slices.SortFunc(s.Devices, func(x, y api.Device) int { return strings.Compare(x.ClientIP, y.ClientIP) })
	}
	return s, nil
}

func (a *admin) Queue(ctx context.Context, f api.QueueFilter) ([]api.QueueItem, error) {
	now := time.Now()
	var out []api.QueueItem
	r, err := a.relay()
	if err != nil {
		return nil, err
	}
	for _, m := range r.Spool().List() {
		env := m.Envelope
		if f.Sender != "" && !strings.EqualFold(f.Sender, env.From) {
			continue
		}
		if f.OlderThan > 0 && now.Sub(env.Received) < f.OlderThan {
			continue
		}
		it := api.QueueItem{ID: m.ID, From: env.From, Subject: env.Subject, Size: m.Size, Received: env.Received}
		match := f.Recipient == ""
		for _, rc := range env.To {
			it.To = append(it.To, rc.Addr)
			if rc.State == spool.Pending {
				it.Pending++
				if rc.Reply != "" {
					it.LastReply = rc.Reply
				}
			}
			if strings.EqualFold(f.Recipient, rc.Addr) {
				match = true
			}
		}
		if !match || (f.State == "pending" && it.Pending == 0) {
			continue
		}
		out = append(out, it)
		if f.Limit > 0 && len(out) >= f.Limit {
			break
		}
	}
	return out, nil
}

// maxBody bounds a message body in an API answer.
const maxBody = 8 << 20

func (a *admin) Message(ctx context.Context, id string, body bool) (*api.Message, error) {
	r, err := a.relay()
	if err != nil {
		return nil, err
	}
	info, ok := r.Spool().Get(id)
	if !ok {
		return nil, server.ErrNotFound
	}
	env := info.Envelope
	m := &api.Message{ID: id, From: env.From, Received: env.Received, Size: info.Size, ClientIP: env.ClientIP,
		Login: env.Login, MessageID: env.MessageID, Subject: env.Subject}
	for _, rc := range env.To {
		m.Recipients = append(m.Recipients, api.Recipient{Addr: rc.Addr, State: rc.State.String(), Reply: rc.Reply})
	}
	if ev, err := r.Trace().Query(ctx, trace.Filter{QueueID: id, Limit: 50}); err == nil {
		for _, e := range ev { // newest first
			if e.Kind != trace.Received && (e.Reply != "" || e.Hint != "") {
				m.LastReply, m.LastHint = e.Reply, e.Hint
				break
			}
		}
	}
	h, err := r.Headers(id)
	if err != nil {
		return nil, notFound(err)
	}
	m.Headers = string(h)
	if body {
		b, err := r.Content(id, maxBody)
		if err != nil {
			return nil, notFound(err)
		}
		m.Body = string(b)
	}
	return m, nil
}

func (a *admin) Retry(ctx context.Context, id string) error {
	r, err := a.relay()
	if err != nil {
		return err
	}
	return notFound(r.RetryNow(id))
}

func (a *admin) Bounce(ctx context.Context, id string) error {
	r, err := a.relay()
	if err != nil {
		return err
	}
	return notFound(r.BounceNow(ctx, id, server.Caller(ctx)))
}

func (a *admin) Delete(ctx context.Context, id string) error {
	r, err := a.relay()
	if err != nil {
		return err
	}
	return notFound(r.Remove(id, server.Caller(ctx)))
}

func (a *admin) Trace(ctx context.Context, q api.TraceQuery) ([]api.TraceEvent, error) {
	f := trace.Filter{QueueID: q.QueueID, MessageID: q.MessageID, Sender: q.Sender, Recipient: q.Recipient, Kind: trace.Kind(q.Kind), Since: q.Since, Limit: q.Limit,
		Device: q.Device, ClientIP: q.ClientIP, Subject: q.Subject, Until: q.Until}
	if q.Kind != "" && !slices.Contains(trace.SearchKinds, f.Kind) {
		return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "kind", Message: fmt.Sprintf("%q: want one of %v", q.Kind, trace.SearchKinds)}
	}
	r, err := a.relay()
	if err != nil {
		return nil, err
	}
	ev, err := r.Trace().Query(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]api.TraceEvent, len(ev))
	for i, e := range ev {
		out[i] = api.TraceEvent{Time: e.Time, Kind: string(e.Kind), QueueID: e.QueueID, MessageID: e.MessageID, ClientIP: e.ClientIP,
			From: e.From, To: e.To, Subject: e.Subject, Size: e.Size, Attempt: e.Attempt, Reply: e.Reply, Hint: e.Hint, Upstream: e.Upstream,
			Device: e.Device, Credential: e.Credential, Step: e.Step, KeyID: e.KeyID, Result: e.Result}
	}
	return out, nil
}

func (a *admin) Doctor(ctx context.Context, to string) ([]api.DoctorStep, error) {
	steps, err := Doctor(ctx, Options{StateDir: a.o.StateDir, ConfigFile: a.o.ConfigFile, Logger: a.log, RootCAs: a.o.RootCAs, HTTPClient: a.o.HTTPClient}, "", to)
	if err != nil {
		return nil, err
	}
	out := make([]api.DoctorStep, len(steps))
	for i, s := range steps {
		out[i] = api.DoctorStep{Name: s.Name, OK: s.OK, Detail: s.Detail}
	}
	return out, nil
}

func (a *admin) Firmware() api.Firmware {
	f := api.Firmware{Version: version(), GoVersion: runtime.Version(), Arch: runtime.GOARCH, TrustedKeys: []string{},
		Update: "relayctl -relay NAME update IMAGE (IMAGE.sig beside it; over the tailnet, admin only; docs/image.md)"}
	sbom := a.o.Tailnet.SBOMFile
	if sbom == "" && OnGokrazy() {
		sbom = firmware.SBOMFile
	}
	if sbom != "" {
		f.SBOMHash, _ = firmware.SBOMHash(sbom)
	}
	if a.fw == nil {
		f.Update = "not on gokrazy: this relay cannot update itself"
		return f
	}
	for _, k := range a.fw.Keys {
		f.TrustedKeys = append(f.TrustedKeys, k.ID)
	}
	if len(f.TrustedKeys) == 0 {
		f.Update = "refused: the image carries no firmware_keys (reflash with a site file that names the release key; docs/image.md)"
	}
	f.SignedBy = firmware.SignedBy(a.fw.StageDir, f.Version, f.SBOMHash)
	return f
}

// commitTestBoot makes a test-booted root permanent once it has proven
// itself: SMTP is listening (Run starts the admin side after the relay's
// listeners are bound) and the box is back on the tailnet, so it can be
// managed and updated again. A root that never gets there is not
// committed, and the next boot (a power cycle, the watchdog) is the old
// root again. After the commit the box reboots once: until gokrazy starts
// afresh it takes the running root for the inactive one (it read the old
// root's name off the kernel command line at boot), and an update written
// then would overwrite the root that runs.
func commitTestBoot(ctx context.Context, n *node.Node, fw *firmware.Updater, log *slog.Logger) {
	log.Warn("test boot of new firmware: it becomes permanent once relaying and back on the tailnet; until then the next boot is the old firmware", "version", version())
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for n.State().State != node.Up && n.State().State != node.NotManaged {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	if err := fw.Commit(ctx); err != nil {
		log.Error("test boot healthy, but committing it failed; the next boot is the old firmware", "err", err)
		return
	}
	log.Info("test boot healthy: this firmware is now the one that boots; rebooting once into it", "version", version())
	console("firmware %s committed after its test boot; rebooting once into it", version())
	if err := fw.Reboot(ctx); err != nil {
		log.Error("rebooting after the commit failed; updates are refused until the next boot", "err", err)
	}
}

// updater writes firmware through gokrazy's local socket; the appliance
// sets it only on gokrazy (elsewhere the API answers 501).
type updater struct {
	u   firmware.Updater
	log *slog.Logger
	// testBoot: this boot is a test boot, where gokrazy's inactive root
	// is the running one; an update would overwrite it, so none is taken.
	testBoot bool
}

func (u updater) Update(ctx context.Context, r io.Reader, n int64, o api.UpdateOptions) (*api.UpdateResult, error) {
	if u.testBoot {
		return nil, &api.Error{Status: 409, Code: api.CodeConflict,
			Message: "this boot is a test boot of new firmware: the box reboots into it once it is committed (relaying and on the tailnet); update after that reboot"}
	}
	u.log.Info("firmware update: checking the signature and the root", "bytes", n, "testboot", o.TestBoot, "allow_downgrade", o.AllowDowngrade, "from", version())
	res, err := u.u.Write(ctx, r, n, firmware.Options{Signature: o.Signature, TestBoot: o.TestBoot, AllowDowngrade: o.AllowDowngrade})
	if err != nil {
		u.log.Error("firmware update failed; the running root stays", "err", err)
		if errors.Is(err, firmware.ErrRefused) {
			return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Message: err.Error() + "; nothing was written, the running firmware stays"}
		}
		return nil, err
	}
	u.log.Info("firmware update written", "bytes", res.RootBytes, "mode", res.Mode, "version", res.Version, "key", res.KeyID, "downgrade", res.Downgrade, "verified", res.Verified, "took", res.Took)
	return &api.UpdateResult{RootBytes: res.RootBytes, Mode: res.Mode, Version: res.Version, SBOMHash: res.SBOMHash, KeyID: res.KeyID,
		Downgrade: res.Downgrade, VerifySeconds: res.Verified.Seconds(), Seconds: res.Took.Seconds()}, nil
}

func (u updater) Reboot(ctx context.Context) error {
	u.log.Info("rebooting into the new firmware")
	return u.u.Reboot(ctx)
}

func (a *admin) Reload(ctx context.Context) error { return a.run.reload(ctx) }

var _ server.Box = (*admin)(nil)

// CredentialUsers names the keys that use credential name in the
// configuration in force and in config.json (they differ while a kept
// version runs): `creds delete` refuses those unless forced (server.CredentialUsers).
func (a *admin) CredentialUsers(name string) []string {
	var keys []string
	add := func(c *config.Config) {
		for _, r := range c.Uses(name) {
			if !slices.Contains(keys, r.Key) {
				keys = append(keys, r.Key)
			}
		}
	}
	if r := a.run.Relay(); r != nil {
		add(r.Config())
	}
	if c, err := loadConfig(a.o); err == nil {
		add(c)
	}
	return keys
}

var _ server.CredentialUsers = (*admin)(nil)
