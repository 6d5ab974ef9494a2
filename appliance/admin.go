package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/envknob"
	"tailscale.com/ipn"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/configstore"
	"github.com/siterelay/siterelay/provisioning/firmware"
	"github.com/siterelay/siterelay/provisioning/node"
	"github.com/siterelay/siterelay/provisioning/secrets"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/provisioning/web"

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
	host    string
	log     *slog.Logger
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
	a.audit = al
	run.Relay().SetAuditWriteFailures(func() uint64 { return al.Health().WriteFailures })
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
	testBoot := firmware.TestBooted(cmdline)
	if fw != nil {
		upd = updater{u: *fw, log: log, testBoot: testBoot}
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
	mux.Handle("/", web.Handler(web.Options{WhoIs: whoIs, Policy: policy, Audit: al, Box: a, Metrics: run.Relay().Metrics(), Logger: log}))
	nctx, cancel := context.WithCancel(ctx)
	a.node = node.Start(nctx, node.Options{Dir: dir.Tailnet(), Hostname: t.Site, AuthKey: key, ControlURL: t.ControlURL,
		Tags: t.Tags, Port: t.Port, Handler: h, Store: t.Store, Ephemeral: t.Ephemeral, Logger: log})
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

func (a *admin) Status(ctx context.Context) (*api.Status, error) {
	r := a.run.Relay()
	st := r.Status()
	s := &api.Status{
		Site: a.site, Hostname: a.host, Version: version(), Now: time.Now().UTC(), Started: st.Started,
		MaxMessageBytes:       st.MaxMessageBytes,
		Upstream:              api.Upstream{Name: st.Upstream.Name, Failing: st.Upstream.Failing(), LastDelivered: st.Upstream.LastDelivered},
		Queue:                 api.Queue{Messages: st.Queue.Messages, Bytes: st.Queue.Bytes, Oldest: st.Queue.Oldest},
		Counts:                map[string]uint64{},
		ConfigVersion:         a.configs.Current(),
		Tailnet:               a.node.State(),
		TLSCertificateExpires: st.TLSCertificateExpires,
		NearestExpiry:         st.TLSCertificateExpires,
		ClockSynchronised:     st.ClockSynchronised,
		RSSBytes:              rssBytes(),
		Audit:                 a.audit.Health(),
	}
	if s.Hostname == "" {
		s.Hostname, _ = os.Hostname()
	}
	for _, l := range st.Listeners {
		s.Listeners = append(s.Listeners, api.Listener{Name: l.Name, Address: l.Address, Mode: l.Mode, TLS: l.TLS, Auth: l.Auth, Loopback: l.Loopback})
	}
	if p := st.Upstream.LastProblem; p != nil {
		s.Upstream.LastProblem = &api.UpstreamProblem{Time: p.Time, Kind: string(p.Kind), Reply: p.Reply, Hint: p.Hint}
	}
	for k, v := range st.Counts {
		s.Counts[string(k)] = v
	}
	s.Health = "ok"
	if s.Upstream.Failing {
		s.Health = "degraded"
		if !s.Queue.Oldest.IsZero() && time.Since(s.Queue.Oldest) > time.Hour {
			s.Health = "failing"
		}
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
	for _, m := range a.run.Relay().Spool().List() {
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
	r := a.run.Relay()
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
	return notFound(a.run.Relay().RetryNow(id))
}

func (a *admin) Bounce(ctx context.Context, id string) error {
	return notFound(a.run.Relay().BounceNow(ctx, id, server.Caller(ctx)))
}

func (a *admin) Delete(ctx context.Context, id string) error {
	return notFound(a.run.Relay().Remove(id, server.Caller(ctx)))
}

func (a *admin) Trace(ctx context.Context, q api.TraceQuery) ([]api.TraceEvent, error) {
	f := trace.Filter{QueueID: q.QueueID, MessageID: q.MessageID, Sender: q.Sender, Recipient: q.Recipient, Kind: trace.Kind(q.Kind), Since: q.Since, Limit: q.Limit,
		Device: q.Device}
	if q.Kind != "" && !slices.Contains(trace.Kinds, f.Kind) {
		return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "kind", Message: fmt.Sprintf("%q: want one of %v", q.Kind, trace.Kinds)}
	}
	ev, err := a.run.Relay().Trace().Query(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]api.TraceEvent, len(ev))
	for i, e := range ev {
		out[i] = api.TraceEvent{Time: e.Time, Kind: string(e.Kind), QueueID: e.QueueID, MessageID: e.MessageID, ClientIP: e.ClientIP,
			From: e.From, To: e.To, Subject: e.Subject, Size: e.Size, Attempt: e.Attempt, Reply: e.Reply, Hint: e.Hint, Upstream: e.Upstream,
			Device: e.Device}
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
	f := api.Firmware{Version: version(), GoVersion: runtime.Version(),
		Update: "relayctl -relay NAME update IMAGE (over the tailnet, admin only; docs/image.md)"}
	if !OnGokrazy() && a.o.Tailnet.Firmware == nil {
		f.Update = "not on gokrazy: this relay cannot update itself"
	}
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

func (u updater) Update(ctx context.Context, r io.Reader, n int64, testboot bool) (*api.UpdateResult, error) {
	if u.testBoot {
		return nil, &api.Error{Status: 409, Code: api.CodeConflict,
			Message: "this boot is a test boot of new firmware: the box reboots into it once it is committed (relaying and on the tailnet); update after that reboot"}
	}
	u.log.Info("firmware update: writing the inactive root partition", "bytes", n, "testboot", testboot, "from", version())
	res, err := u.u.Write(ctx, r, n, testboot)
	if err != nil {
		u.log.Error("firmware update failed; the running root stays", "err", err)
		if errors.Is(err, firmware.ErrNotRoot) {
			return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Message: err.Error() + "; the running firmware stays"}
		}
		return nil, err
	}
	u.log.Info("firmware update written", "bytes", res.RootBytes, "mode", res.Mode, "took", res.Took)
	return &api.UpdateResult{RootBytes: res.RootBytes, Mode: res.Mode, Seconds: res.Took.Seconds()}, nil
}

func (u updater) Reboot(ctx context.Context) error {
	u.log.Info("rebooting into the new firmware")
	return u.u.Reboot(ctx)
}

func (a *admin) Reload(ctx context.Context) error { return a.run.reload(ctx) }

var _ server.Box = (*admin)(nil)
