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
	"time"
)

// webCookie holds the forwarder's token in the admin's browser.
const webCookie = "relayctl_web"

// WebLoginPath is the forwarder's own path: the printed URL carries the
// token there once, the forwarder turns it into a cookie and sends the
// browser on to the admin page.
const WebLoginPath = "/relayctl-login"

// web forwards a loopback port to the relay's admin page through
// relayctl's tailnet node, so a browser on this machine can reach a relay
// only the tailnet can. The relay sees relayctl's identity: whoever holds
// the port acts as you, so the port is loopback only and every request
// needs the random token of the URL printed (then a SameSite=Strict
// cookie), and a Host that is the forwarder's own (no DNS rebinding).
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
	host, err := e.resolve(rctx, e.relay)
	cancel()
	if err != nil {
		return e.fail(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return e.fail(fmt.Errorf("listening on %s: %w", *listen, err))
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	f := &forwarder{token: hex.EncodeToString(tok), self: ln.Addr().String(), relay: host, dial: e.tn.dial}
	srv := &http.Server{Handler: f.handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(e.Stdout, "http://%s%s?token=%s\n", f.self, WebLoginPath, f.token)
	fmt.Fprintf(e.Stderr, "relayctl: forwarding %s to the admin page of %s (%s) as your tailnet identity; open the address above in a browser on this machine; Ctrl-C ends\n", f.self, e.relay, host)
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
	token string
	self  string // host:port the browser uses
	relay string // the relay's tailnet address
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (f *forwarder) handler() http.Handler {
	target := &url.URL{Scheme: "http", Host: f.relay}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The relay answers only for its own names (DNS rebinding):
			// the request goes to its tailnet address, and an Origin that
			// is this forwarder's own (checked against Host before) is
			// the relay's too. Any other Origin goes as it is, and the
			// relay refuses it. Our cookie stays here.
			pr.Out.Host = f.relay
			if o := pr.In.Header.Get("Origin"); o == "http://"+pr.In.Host {
				pr.Out.Header.Set("Origin", "http://"+f.relay)
			}
			pr.Out.Header.Del("Cookie")
		},
		Transport: &http.Transport{DialContext: f.dial, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			refuse(w, http.StatusBadGateway, "The relay did not answer over the tailnet: "+err.Error())
		},
	}
	_, port, _ := net.SplitHostPort(f.self)
	hosts := map[string]bool{f.self: true, "localhost:" + port: true}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts[r.Host] {
			refuse(w, http.StatusMisdirectedRequest, "This forwarder answers only as "+f.self+", not "+r.Host+".")
			return
		}
		if r.URL.Path == WebLoginPath {
			if subtle.ConstantTimeCompare([]byte(r.URL.Query().Get("token")), []byte(f.token)) != 1 {
				refuse(w, http.StatusForbidden, "Wrong or missing token: open the address relayctl web printed.")
				return
			}
			http.SetCookie(w, &http.Cookie{Name: webCookie, Value: f.token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			http.Redirect(w, r, "/admin/", http.StatusSeeOther)
			return
		}
		c, err := r.Cookie(webCookie)
		if err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(f.token)) != 1 {
			refuse(w, http.StatusForbidden, "Open the address relayctl web printed (it carries this session's token).")
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
