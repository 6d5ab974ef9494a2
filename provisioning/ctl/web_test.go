package ctl

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// webRelay is a stand-in for the relay's admin page: it records what the
// forwarder sent.
type webRelay struct {
	mu   sync.Mutex
	seen []*http.Request
	srv  *httptest.Server
}

func (wr *webRelay) count() int {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return len(wr.seen)
}

func (wr *webRelay) last() *http.Request {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return wr.seen[len(wr.seen)-1]
}

// startForwarder runs a forwarder on a loopback port to wr.
func startForwarder(t *testing.T, wr *webRelay) (*forwarder, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relay := &Relay{Name: "relay-plant-a.tail-test.ts.net", Addr: netip.MustParseAddr("100.64.0.9"), NodeID: "n1", Tags: []string{DefaultTag}}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != "100.64.0.9:80" {
			t.Errorf("forwarder dialled %s, not the relay", addr)
		}
		return (&net.Dialer{}).DialContext(ctx, "tcp", wr.srv.Listener.Addr().String())
	}
	f := newForwarder(ln.Addr().String(), relay, dial)
	hs := httptest.NewUnstartedServer(f.handler())
	hs.Listener.Close()
	hs.Listener = ln
	hs.Start()
	t.Cleanup(hs.Close)
	return f, "http://" + ln.Addr().String()
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// TestWebSession: the login link works once and sets a fresh random
// session cookie (not the token) named for the port; the session works
// only on its own forwarder; the relay is asked by its own name and never
// sees the cookie.
func TestWebSession(t *testing.T) {
	wr := &webRelay{}
	wr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wr.mu.Lock()
		wr.seen = append(wr.seen, r)
		wr.mu.Unlock()
		io.WriteString(w, "admin page")
	}))
	t.Cleanup(wr.srv.Close)
	a, baseA := startForwarder(t, wr)
	b, baseB := startForwarder(t, wr)
	cl := &http.Client{CheckRedirect: noRedirect}
	get := func(u string, cookies ...*http.Cookie) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		for _, c := range cookies {
			req.AddCookie(c)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	login := baseA + WebLoginPath + "?token=" + a.login
	if got := get(baseA + WebLoginPath + "?token=" + b.login); got.StatusCode != 403 {
		t.Errorf("b's token on a: %d, want 403", got.StatusCode)
	}
	resp := get(login)
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("login: %d, cookies %v", resp.StatusCode, cookies)
	}
	_, portA, _ := net.SplitHostPort(strings.TrimPrefix(baseA, "http://"))
	c := cookies[0]
	tok, _ := url.Parse(login)
	if c.Name != "relayctl_web_"+portA || c.Value == tok.Query().Get("token") || len(c.Value) != 64 || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie %+v: want relayctl_web_%s, 32 random bytes that are not the token, HttpOnly, SameSite=Strict", c, portA)
	}
	// The link works once.
	if got := get(login); got.StatusCode != 403 || len(got.Cookies()) != 0 {
		t.Errorf("the login link a second time: %d %v, want 403 and no cookie", got.StatusCode, got.Cookies())
	}
	// The token itself is no session.
	if got := get(baseA+"/admin/", &http.Cookie{Name: c.Name, Value: tok.Query().Get("token")}); got.StatusCode != 403 {
		t.Errorf("the token as the cookie: %d, want 403", got.StatusCode)
	}
	// The session works on a, and reaches the relay by its name, without the cookie.
	req, _ := http.NewRequest("POST", baseA+"/admin/doctor", nil)
	req.AddCookie(c)
	req.Header.Set("Origin", baseA)
	if resp, err := cl.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a with its session: %v %v", resp, err)
	}
	r := wr.last()
	if r.Host != "relay-plant-a.tail-test.ts.net" || r.Header.Get("Origin") != "http://relay-plant-a.tail-test.ts.net" || r.Header.Get("Cookie") != "" {
		t.Errorf("the relay got Host %q Origin %q Cookie %q", r.Host, r.Header.Get("Origin"), r.Header.Get("Cookie"))
	}
	// A foreign Origin goes on as it came, for the relay to refuse.
	req, _ = http.NewRequest("POST", baseA+"/admin/doctor", nil)
	req.AddCookie(c)
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := cl.Do(req); err == nil {
		resp.Body.Close()
	}
	if got := wr.last().Header.Get("Origin"); got != "http://evil.example" {
		t.Errorf("a foreign Origin reached the relay as %q", got)
	}
	// Not on another port: neither by its name there nor by b's.
	_, portB, _ := net.SplitHostPort(strings.TrimPrefix(baseB, "http://"))
	for _, name := range []string{c.Name, "relayctl_web_" + portB} {
		if got := get(baseB+"/admin/", &http.Cookie{Name: name, Value: c.Value}); got.StatusCode != 403 {
			t.Errorf("a's session on b as %s: %d, want 403", name, got.StatusCode)
		}
	}
	n := wr.count()
	if got := get(baseB + "/admin/"); got.StatusCode != 403 || wr.count() != n {
		t.Errorf("b without a session: %d", got.StatusCode)
	}
}
