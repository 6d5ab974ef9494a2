package ctl

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/safetext"
)

// webCookie is the start of the forwarder's session cookie's name; the
// port follows (relayctl_web_8080), so two forwarders on one machine (one
// a relay) never overwrite each other's cookie: browsers do not keep
// cookies apart by port.
const webCookie = "relayctl_web_"

// WebLoginPath is the forwarder's own path: the printed URL carries a
// one-time login token there, the forwarder answers it once with a fresh
// random session cookie and sends the browser on to the admin page.
const WebLoginPath = "/relayctl-login"

// web forwards a loopback port to the relay's admin page through
// relayctl's tailnet node, so a browser on this machine can reach a relay
// only the tailnet can. The relay sees relayctl's identity: whoever holds
// the port acts as you, so the port is loopback only, the printed URL's
// token logs in once, every request after needs the session cookie that
// login set (random, HttpOnly, SameSite=Strict, known only to this
// forwarder of this relay on this port), and a Host that is the
// forwarder's own (no DNS rebinding).
func (e *env) web(ctx context.Context, args []string) int {
	fs := sub("web", e)
	listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on (port 0: a random free port)")
	pos, err := parse(fs, args)
	if err == nil && len(pos) > 0 {
		err = usageErr("web takes no arguments, got %q", pos)
	}
	if err == nil {
		err = loopbackOnly(*listen)
	}
	if err != nil {
		return e.fail(err)
	}
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	relay, err := e.resolve(rctx, e.relay)
	cancel()
	if err != nil {
		return e.fail(err)
	}
	e.identity(relay)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return e.fail(fmt.Errorf("listening on %s: %w", *listen, err))
	}
	f := newForwarder(ln.Addr().String(), relay, e.dialRelay(relay))
	srv := &http.Server{Handler: f.handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(e.Stdout, "http://%s%s?token=%s\n", f.self, WebLoginPath, f.login)
	row(e.Stderr, "relayctl: forwarding %s to the admin page of %s as your tailnet identity; open the address above once, in a browser on this machine; Ctrl-C ends\n", f.self, relay.String())
	<-ctx.Done()
	srv.Close()
	return ExitOK
}

// loopbackOnly refuses a listen address other hosts could reach.
func loopbackOnly(addr string) error {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErr("-listen %q: want HOST:PORT, e.g. 127.0.0.1:8080", addr)
	}
	if h == "localhost" {
		return nil
	}
	if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
		return usageErr("-listen %q: only a loopback address (127.0.0.1, [::1]); the forwarder acts with your tailnet identity", addr)
	}
	return nil
}

type forwarder struct {
	self   string // host:port the browser uses
	relay  *Relay
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	cookie string // the session cookie's name, with self's port

	mu      sync.Mutex
	login   string // the one-time login token; "" once used
	session string // the session cookie's value; "" until the login
}

func newForwarder(self string, relay *Relay, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *forwarder {
	_, port, _ := net.SplitHostPort(self)
	return &forwarder{self: self, relay: relay, dial: dial, cookie: webCookie + port, login: randomHex()}
}

func randomHex() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// logIn spends the one-time token: the first right one gets a fresh
// session, anything after gets nothing.
func (f *forwarder) logIn(token string) (session string, used bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.login == "" {
		return "", true
	}
	if subtle.ConstantTimeCompare([]byte(token), []byte(f.login)) != 1 {
		return "", false
	}
	f.login, f.session = "", randomHex()
	return f.session, false
}

func (f *forwarder) validSession(v string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.session != "" && subtle.ConstantTimeCompare([]byte(v), []byte(f.session)) == 1
}

func (f *forwarder) handler() http.Handler {
	target := &url.URL{Scheme: "http", Host: f.relay.Addr.String()}
	if f.relay.Addr.Is6() {
		target.Host = "[" + target.Host + "]"
	}
	relayHost := f.relay.Name
	if relayHost == "" {
		relayHost = target.Host
	}
	_, port, _ := net.SplitHostPort(f.self)
	hosts := map[string]bool{f.self: true, "localhost:" + port: true}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The relay answers only for its own names: ask by its
			// MagicDNS name. The browser's Origin is the forwarder's
			// (checked below to be ours), so it becomes the relay's
			// alike; a foreign Origin goes as it came, for the relay to
			// refuse. Our cookie stays here.
			pr.Out.Host = relayHost
			if o := pr.In.Header.Get("Origin"); o != "" {
				if u, err := url.Parse(o); err == nil && u.Scheme == "http" && hosts[u.Host] {
					pr.Out.Header.Set("Origin", "http://"+relayHost)
				}
			}
			pr.Out.Header.Del("Referer")
			pr.Out.Header.Del("Cookie")
		},
		Transport: &http.Transport{DialContext: f.dial, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			refuse(w, http.StatusBadGateway, "The relay did not answer over the tailnet: "+safetext.Escape(err.Error()))
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts[r.Host] {
			refuse(w, http.StatusMisdirectedRequest, "This forwarder answers only as "+f.self+", not "+safetext.Escape(r.Host)+".")
			return
		}
		if r.URL.Path == WebLoginPath {
			session, used := f.logIn(r.URL.Query().Get("token"))
			switch {
			case used:
				refuse(w, http.StatusForbidden, "This login link was used already: it works once. Run relayctl web again for a new one.")
				return
			case session == "":
				refuse(w, http.StatusForbidden, "Wrong or missing token: open the address relayctl web printed.")
				return
			}
			http.SetCookie(w, &http.Cookie{Name: f.cookie, Value: session, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			w.Header().Set("Cache-Control", "no-store")
			http.Redirect(w, r, "/admin/", http.StatusSeeOther)
			return
		}
		c, err := r.Cookie(f.cookie)
		if err != nil || !f.validSession(c.Value) {
			refuse(w, http.StatusForbidden, "Open the address relayctl web printed (it logs this browser in once).")
			return
		}
		proxy.ServeHTTP(w, r)
	})
}

func refuse(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><meta name=viewport content=\"width=device-width\"><title>relayctl web</title><h1>%d %s</h1><p id=\"problem\">%s</p>\n",
		status, http.StatusText(status), html.EscapeString(msg))
}
