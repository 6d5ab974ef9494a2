package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/ctl"
	"github.com/siterelay/siterelay/provisioning/provtest"
)

// fakeRelay is a node on the test tailnet that answers the admin API's
// paths relayctl uses here, and counts every byte it is sent.
type fakeRelay struct {
	srv    *tsnet.Server
	id     tailcfg.StableNodeID
	conns  atomic.Int64
	bytes  atomic.Int64
	mu     sync.Mutex
	put    []string // secrets it was given
	answer map[string]any
}

func startFake(t *testing.T, tn *provtest.Tailnet, name string, tags ...string) *fakeRelay {
	t.Helper()
	f := &fakeRelay{srv: tn.Join(t, name, tags...), answer: map[string]any{}}
	lc, err := f.srv.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.id = st.Self.ID
	ln, err := f.srv.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/credentials/{name}", func(w http.ResponseWriter, r *http.Request) {
		var p api.CredentialPut
		json.NewDecoder(r.Body).Decode(&p)
		f.mu.Lock()
		f.put = append(f.put, p.Secret)
		f.mu.Unlock()
		json.NewEncoder(w).Encode(api.Credential{Name: r.PathValue("name"), Kind: p.Kind, Fingerprint: "sha256:00", Updated: time.Now()})
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		a, ok := f.answer[r.URL.Path]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if _, ok := a.(api.ErrorBody); ok {
			w.WriteHeader(http.StatusForbidden)
		}
		json.NewEncoder(w).Encode(a)
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(&countingListener{Listener: ln, f: f})
	t.Cleanup(func() { hs.Close() })
	return f
}

func (f *fakeRelay) secrets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.put)
}

func (f *fakeRelay) set(path string, v any) {
	f.mu.Lock()
	f.answer[path] = v
	f.mu.Unlock()
}

type countingListener struct {
	net.Listener
	f *fakeRelay
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.f.conns.Add(1)
		c = &countingConn{Conn: c, f: l.f}
	}
	return c, err
}

type countingConn struct {
	net.Conn
	f *fakeRelay
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.f.bytes.Add(int64(n))
	return n, err
}

// relayctl runs the command line on node with a configuration directory
// of its own (no operator's file is read).
func relayctl(t *testing.T, node *tsnet.Server, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	code := ctl.Main(context.Background(), append([]string{"-timeout", "20s"}, args...),
		ctl.IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Node: node})
	t.Logf("relayctl %s: exit %d in %v\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), out.String(), errb.String())
	return code, out.String(), errb.String()
}

func waitSeen(t *testing.T, observer *tsnet.Server, f *fakeRelay, tagged bool) {
	t.Helper()
	provtest.WaitPeer(t, observer, provtest.IP(t, f.srv), func(tags []string, _ tailcfg.PeerCapMap) bool {
		return slices.Contains(tags, ctl.DefaultTag) == tagged
	})
	// Status (the peer list) and WhoIs come from the same netmap, but ask
	// the list too: resolve starts there.
	lc, _ := observer.LocalClient()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := lc.Status(context.Background())
		if err == nil {
			for _, p := range st.Peer {
				if p.ID == f.id && (p.Tags != nil && slices.Contains(p.Tags.AsSlice(), ctl.DefaultTag)) == tagged {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond) // polling the node's peer list
	}
	t.Fatalf("%s never appeared in the peer list", f.id)
}

// TestRelayIdentity: relayctl sends a secret only to the node control tags
// as a relay. A node without the tag that calls itself like the relay
// gets nothing, before and after the real relay is there, and is named;
// two relays with one name are refused; another tag (flag or the
// configuration file) finds no relay among them.
func TestRelayIdentity(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	tn := provtest.New(t)
	laptop := tn.Join(t, "laptop")
	impostor := startFake(t, tn, "relay-plant-a")
	waitSeen(t, laptop, impostor, false)
	const secret = "Pl4nt-smarthost-PASSWORD-trust"
	put := []string{"creds", "put", "smarthost", "-kind", "password", "-from", "-"}
	ip := provtest.IP(t, impostor.srv).String()

	// Only the impostor is there: refused by every name, nothing sent.
	for _, name := range []string{"relay-plant-a", "relay-plant-a.tail-test.ts.net", "RELAY-PLANT-A", ip} {
		code, out, errs := relayctl(t, laptop, secret+"\n", append([]string{"-relay", name}, put...)...)
		if code != ctl.ExitIdentity || out != "" {
			t.Errorf("-relay %s to the impostor alone: exit %d, stdout %q; want %d and nothing", name, code, out, ctl.ExitIdentity)
		}
		for _, want := range []string{"not a verified relay", "relay-plant-a.tail-test.ts.net", string(impostor.id), ctl.DefaultTag, "nothing sent"} {
			if !strings.Contains(errs, want) {
				t.Errorf("-relay %s: the refusal does not say %q: %s", name, want, errs)
			}
		}
	}
	if n, c := impostor.bytes.Load(), impostor.conns.Load(); n != 0 || c != 0 {
		t.Fatalf("the impostor received %d bytes over %d connections", n, c)
	}

	// The real relay joins with the same name: it gets the secret, the
	// impostor still nothing, and relayctl names both.
	relay := startFake(t, tn, "relay-plant-a", ctl.DefaultTag)
	waitSeen(t, laptop, relay, true)
	for range 4 { // the peer list is a map: whichever order it comes in
		code, out, errs := relayctl(t, laptop, secret+"\n", append([]string{"-relay", "relay-plant-a", "-json"}, put...)...)
		var cr api.Credential
		if code != ctl.ExitOK || json.Unmarshal([]byte(out), &cr) != nil || cr.Name != "smarthost" {
			t.Fatalf("creds put to the relay: exit %d %q", code, out)
		}
		verified := "relay relay-plant-a.tail-test.ts.net (" + ctl.DefaultTag + ", node id " + string(relay.id) + ") at " + provtest.IP(t, relay.srv).String() + ", verified by the tailnet"
		if !strings.Contains(errs, verified) {
			t.Errorf("stderr lacks %q:\n%s", verified, errs)
		}
		if !strings.Contains(errs, "warning") || !strings.Contains(errs, string(impostor.id)) {
			t.Errorf("the impostor with the relay's name is not named: %s", errs)
		}
	}
	if got := relay.secrets(); len(got) != 4 || got[0] != secret {
		t.Errorf("the relay got %q, want the secret 4 times", got)
	}
	if n, c := impostor.bytes.Load(), impostor.conns.Load(); n != 0 || c != 0 {
		t.Fatalf("the impostor received %d bytes over %d connections", n, c)
	}

	// Another tag: neither node is a relay of that fleet.
	code, _, errs := relayctl(t, laptop, secret+"\n", append([]string{"-relay", "relay-plant-a", "-relay-tag", "tag:other"}, put...)...)
	if code != ctl.ExitIdentity || !strings.Contains(errs, string(relay.id)) || !strings.Contains(errs, string(impostor.id)) || !strings.Contains(errs, "tag:other") {
		t.Errorf("-relay-tag tag:other: exit %d %s", code, errs)
	}
	// The same from relayctl's configuration file, and the flag wins over it.
	cfg := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "relayctl", "config.json")
	os.MkdirAll(filepath.Dir(cfg), 0o700)
	os.WriteFile(cfg, []byte(`{"relay_tag": "tag:other"}`), 0o600)
	if code, _, errs := relayctl(t, laptop, secret+"\n", append([]string{"-relay", "relay-plant-a"}, put...)...); code != ctl.ExitIdentity || !strings.Contains(errs, "tag:other") {
		t.Errorf("relay_tag tag:other in %s: exit %d %s", cfg, code, errs)
	}
	if code, _, _ := relayctl(t, laptop, secret+"\n", append([]string{"-relay", "relay-plant-a", "-relay-tag", ctl.DefaultTag}, put...)...); code != ctl.ExitOK {
		t.Errorf("-relay-tag over the file's relay_tag: exit %d", code)
	}
	os.WriteFile(cfg, []byte(`{"relay-tag": "tag:other"}`), 0o600)
	if code, _, errs := relayctl(t, laptop, "", "-relay", "relay-plant-a", "whoami"); code != ctl.ExitUsage || !strings.Contains(errs, "relay-tag") {
		t.Errorf("a misspelt key in the file: exit %d %s", code, errs)
	}
	os.Remove(cfg)
	if code, _, errs := relayctl(t, laptop, "", "-relay", "relay-plant-a", "-relay-tag", "siterelay", "whoami"); code != ctl.ExitUsage || !strings.Contains(errs, "not a tailnet tag") {
		t.Errorf("-relay-tag without tag:: exit %d %s", code, errs)
	}
	if n := impostor.bytes.Load(); n != 0 {
		t.Fatalf("the impostor received %d bytes", n)
	}

	// Two relays with one name: refused, both named, neither sent a byte.
	b1 := startFake(t, tn, "relay-plant-b", ctl.DefaultTag)
	b2 := startFake(t, tn, "relay-plant-b", ctl.DefaultTag)
	waitSeen(t, laptop, b1, true)
	waitSeen(t, laptop, b2, true)
	code, _, errs = relayctl(t, laptop, secret+"\n", append([]string{"-relay", "relay-plant-b"}, put...)...)
	if code != ctl.ExitIdentity || !strings.Contains(errs, "names 2 relays") || !strings.Contains(errs, string(b1.id)) || !strings.Contains(errs, string(b2.id)) {
		t.Errorf("two relays named relay-plant-b: exit %d %s", code, errs)
	}
	// By address, each is itself.
	if code, _, _ := relayctl(t, laptop, secret+"\n", append([]string{"-relay", provtest.IP(t, b2.srv).String()}, put...)...); code != ctl.ExitOK || len(b2.secrets()) != 1 {
		t.Errorf("relay-plant-b by its address: exit %d, it got %d secrets", code, len(b2.secrets()))
	}
	if n := b1.bytes.Load(); n != 0 || impostor.bytes.Load() != 0 {
		t.Errorf("a node that was not asked for received bytes: %d, impostor %d", n, impostor.bytes.Load())
	}

	// The fleet is the tagged relays only.
	code, out, _ := relayctl(t, laptop, "", "-json", "fleet")
	var rows []ctl.FleetRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 3 {
		t.Errorf("fleet: exit %d, %d rows %v: %s", code, len(rows), err, out)
	}
	for _, r := range rows {
		if r.Address == ip {
			t.Errorf("the fleet lists the impostor: %+v", r)
		}
	}
	if n := impostor.bytes.Load(); n != 0 {
		t.Fatalf("the impostor received %d bytes", n)
	}
}
