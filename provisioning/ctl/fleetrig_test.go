package ctl_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"tailscale.com/ipn/store/mem"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/configstore"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/firmware"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/relay/layout"
)

// The fleet rig: n relays on a test tailnet, each a real tsnet node
// serving the real admin API (provisioning/server: WhoIs, roles, audit,
// If-Match) over the real configuration store (provisioning/configstore:
// versions, validation, diff) and the real firmware updater
// (provisioning/firmware: signature, staging, hashes) talking to a fake
// gokrazy on a unix socket of its own. Only the relay itself is a light
// fake (rigBox): its health, queue and version are what the test says,
// and a configuration can make it fail or go dark.

// adminTag is the laptop's tag; every relay's site file names it as
// administrator.
const adminTag = "tag:fleet-admin"

type rigBox struct {
	mu      sync.Mutex
	site    string
	version string
	pending string // the version an armed update boots into
	started time.Time
	health  string
	notes   []string
	queue   int
	doc     []byte
	// bad says a configuration makes the relay unhealthy; darkOn that it
	// makes it stop answering; fallBack that a test boot falls back.
	bad      func(doc []byte) bool
	darkOn   func(doc []byte) bool
	dark     bool
	fallBack bool
	reloads  int
	updates  int
}

func (b *rigBox) Status(context.Context) (*api.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, notes := b.health, b.notes
	if b.bad != nil && b.bad(b.doc) {
		h, notes = "down", []string{"the upstream refuses every login"}
	}
	return &api.Status{Site: b.site, Hostname: b.site, Version: b.version, Now: time.Now(), Started: b.started, Health: h, HealthNotes: notes,
		Queue: api.Queue{Messages: b.queue}, Counts: map[string]uint64{"delivered": 7}}, nil
}
func (b *rigBox) Sheet(context.Context) (*api.Sheet, error) { return &api.Sheet{}, nil }
func (b *rigBox) Queue(context.Context, api.QueueFilter) ([]api.QueueItem, error) {
	return nil, nil
}
func (b *rigBox) Message(context.Context, string, bool) (*api.Message, error) {
	return nil, server.ErrNotFound
}
func (b *rigBox) Retry(context.Context, string) error  { return nil }
func (b *rigBox) Bounce(context.Context, string) error { return nil }
func (b *rigBox) Delete(context.Context, string) error { return nil }
func (b *rigBox) Trace(context.Context, api.TraceQuery) ([]api.TraceEvent, error) {
	return nil, nil
}
func (b *rigBox) Doctor(context.Context, string) ([]api.DoctorStep, error) { return nil, nil }
func (b *rigBox) Firmware() api.Firmware {
	b.mu.Lock()
	defer b.mu.Unlock()
	return api.Firmware{Version: b.version}
}
func (b *rigBox) Logs(context.Context, api.LogQuery, func([]byte) error) error { return nil }
func (b *rigBox) Reload(context.Context) error                                 { return nil }

// reload is the configuration store's apply: the box takes config.json.
func (b *rigBox) reload(dir layout.Dir) func(context.Context) error {
	return func(context.Context) error {
		doc, err := os.ReadFile(dir.Config())
		if err != nil {
			return err
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.doc, b.reloads = doc, b.reloads+1
		if b.darkOn != nil && b.darkOn(doc) {
			b.dark = true
		}
		return nil
	}
}

func (b *rigBox) set(f func(b *rigBox)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

func (b *rigBox) get() (version string, doc []byte, reloads, updates int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.version, b.doc, b.reloads, b.updates
}

// rigUpdater is what the appliance's updater does, over the real
// firmware.Updater: write through gokrazy's socket, then reboot, which
// here boots the written version at once (or the old one, fallBack).
type rigUpdater struct {
	u *firmware.Updater
	b *rigBox
}

func (u rigUpdater) Update(ctx context.Context, r io.Reader, n int64, o api.UpdateOptions) (*api.UpdateResult, error) {
	res, err := u.u.Write(ctx, r, n, firmware.Options{Signature: o.Signature, TestBoot: o.TestBoot, AllowDowngrade: o.AllowDowngrade})
	if err != nil {
		if errors.Is(err, firmware.ErrRefused) {
			return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Message: err.Error()}
		}
		return nil, err
	}
	u.b.set(func(b *rigBox) { b.pending, b.updates = res.Version, b.updates+1 })
	return &api.UpdateResult{RootBytes: res.RootBytes, Mode: res.Mode, Version: res.Version, KeyID: res.KeyID}, nil
}

func (u rigUpdater) Reboot(ctx context.Context) error {
	if err := u.u.Reboot(ctx); err != nil {
		return err
	}
	u.b.set(func(b *rigBox) {
		b.started = time.Now()
		if !b.fallBack && b.pending != "" {
			b.version = b.pending
			u.u.Running = b.pending
		}
		b.pending = ""
	})
	return nil
}

// fakeGokrazy answers gokrazy's update handlers on a unix socket.
type fakeGokrazy struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeGokrazy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	switch r.Method + " " + r.URL.Path {
	case "GET /update/features":
		io.WriteString(w, "partuuid,updatehash,")
	case "PUT /update/root":
		h := sha256.New()
		io.Copy(h, r.Body)
		io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
	case "POST /update/switch", "POST /update/testboot", "POST /reboot":
	default:
		http.Error(w, "no", http.StatusNotFound)
	}
}

type rigRelay struct {
	name string
	srv  *tsnet.Server
	box  *rigBox
	dir  layout.Dir
	gok  *fakeGokrazy
}

type fleetRig struct {
	tn     *provtest.Tailnet
	laptop *tsnet.Server
	relays []*rigRelay
	key    release
}

// release is a firmware release key pair the relays trust.
type release struct {
	priv []byte
	pub  firmware.PublicKey
}

// rigConfig is a valid relay configuration for site, its capture
// directory named out.
func rigConfig(site, out string) string {
	return fmt.Sprintf(`{"hostname":"relay.%s","listeners":[{"name":"smtp","address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture","capture":{"directory":%q}}}`, site, out)
}

func newFleetRig(t testing.TB, n int) *fleetRig {
	t.Helper()
	start := time.Now()
	priv, pub, err := firmware.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	rig := &fleetRig{tn: provtest.New(t), key: release{priv: priv, pub: pub}}
	rig.laptop = rig.join(t, "laptop", adminTag)
	for i := 1; i <= n; i++ {
		rig.relays = append(rig.relays, rig.startRelay(t, fmt.Sprintf("plant-%02d", i)))
	}
	rig.waitFleet(t)
	t.Logf("%d relays up on the test tailnet in %v", n, time.Since(start).Round(time.Millisecond))
	return rig
}

func (rig *fleetRig) startRelay(t testing.TB, site string) *rigRelay {
	t.Helper()
	dir := layout.Dir(t.TempDir())
	if err := os.WriteFile(dir.Config(), []byte(rigConfig(site, "outbox")), 0o600); err != nil {
		t.Fatal(err)
	}
	box := &rigBox{site: site, version: "v1.0.0", started: time.Now(), health: "ok", doc: []byte(rigConfig(site, "outbox"))}
	al, err := audit.Open(filepath.Join(string(dir), "audit"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	// gokrazy's socket: a short path (unix sockets have 108 bytes).
	sockDir, err := os.MkdirTemp("", "gok")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gok := &fakeGokrazy{}
	gs := &http.Server{Handler: gok}
	go gs.Serve(l)
	t.Cleanup(func() { gs.Close() })
	fw := &firmware.Updater{Socket: sock, PasswordFile: filepath.Join(string(dir), "none"), Keys: []firmware.PublicKey{rig.key.pub},
		Running: "v1.0.0", Arch: runtime.GOARCH, StageDir: filepath.Join(string(dir), "firmware"), Reserve: 1}
	srv := rig.join(t, site, ctl.DefaultTag)
	lc, err := srv.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	h := server.Handler(server.Options{
		WhoIs: lc.WhoIs, Policy: authz.Policy{Site: site, Admins: []string{adminTag}}, Audit: al, Box: box,
		Configs: configstore.New(dir, box.reload(dir), 0, nil), Updater: rigUpdater{u: fw, b: box},
	})
	ln, err := srv.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	// A dark box answers nothing more: its connections are dropped.
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		box.mu.Lock()
		dark := box.dark
		box.mu.Unlock()
		if dark {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		h.ServeHTTP(w, r)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return &rigRelay{name: site, srv: srv, box: box, dir: dir, gok: gok}
}

// join is provtest.Join with a bounded close: with dozens of nodes, a
// node's netstack has been seen to block forever in Close (its outbound
// queue full of the resets of its connections); the test then goes on
// without it rather than hang.
func (rig *fleetRig) join(t testing.TB, name string, tags ...string) *tsnet.Server {
	t.Helper()
	s := &tsnet.Server{
		Dir: filepath.Join(t.TempDir(), name), ControlURL: rig.tn.URL, Hostname: name,
		Store: new(mem.Store), Ephemeral: true, Logf: logger.Discard, UserLogf: logger.Discard,
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Logf("closing node %s: still blocked after 20 s; left behind", name)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Up(ctx); err != nil {
		t.Fatalf("joining %s: %v", name, err)
	}
	provtest.WaitDERP(t, s)
	rig.tn.Tag(t, s, tags...)
	return s
}

// waitFleet waits until the laptop sees every relay tagged and every relay
// sees the laptop's tag.
func (rig *fleetRig) waitFleet(t testing.TB) {
	t.Helper()
	for _, r := range rig.relays {
		provtest.WaitPeer(t, r.srv, provtest.IP(t, rig.laptop), func(tags []string, _ tailcfg.PeerCapMap) bool { return slices.Contains(tags, adminTag) })
	}
	lc, _ := rig.laptop.LocalClient()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := lc.Status(context.Background())
		n := 0
		if err == nil {
			for _, p := range st.Peer {
				if p.Tags != nil && slices.Contains(p.Tags.AsSlice(), ctl.DefaultTag) {
					n++
				}
			}
		}
		if n == len(rig.relays) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the laptop sees %d of %d relays", n, len(rig.relays))
		}
		time.Sleep(20 * time.Millisecond) // polling the node's peer list
	}
}

// image writes a sitegen-like image (MBR, a squashfs root at sector 8)
// whose root is signed as version, and returns its file name.
func (rig *fleetRig) image(t testing.TB, dir, version string) string {
	t.Helper()
	const used = 8192
	img := make([]byte, 8*512+16384)
	img[510], img[511] = 0x55, 0xAA
	e := img[446+16:]
	binary.LittleEndian.PutUint32(e[8:], 8)
	binary.LittleEndian.PutUint32(e[12:], 32)
	root := img[8*512 : 8*512+used]
	for i := range root {
		root[i] = byte(i * 7)
	}
	copy(root, "hsqs")
	binary.LittleEndian.PutUint64(root[40:], used)
	k, err := firmware.ParsePrivateKey(rig.key.priv)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(root)
	sig, err := firmware.Sign(k, firmware.Build{Version: version, Arch: runtime.GOARCH, Target: "vm", SBOMHash: "5b0m"}, used, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "siterelay-"+version+".img")
	if err := os.WriteFile(f, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f+firmware.SignatureSuffix, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (rig *fleetRig) relay(name string) *rigRelay {
	for _, r := range rig.relays {
		if r.name == name {
			return r
		}
	}
	return nil
}
