// Package web is the relay's admin page on the tailnet: server-rendered
// HTML that works without JavaScript, for an administrator's browser
// (reached through relayctl web). It authorises every request like the
// admin API (provisioning/server): Tailscale WhoIs names the caller and
// provisioning/authz gives the role. It does its work through the same
// server.Box the API uses, so the page and relayctl never disagree, and it
// writes every changing call (allowed or refused) to the same audit log.
//
// Forms cannot send the API's custom header, so changing requests are
// guarded twice instead: net/http's CrossOriginProtection refuses what the
// browser marks cross-site (Sec-Fetch-Site, or an Origin that is not the
// Host), and every form carries a token that is an HMAC of the caller's
// tailnet identity under a key made when the relay starts; a page from
// another site can neither read the token nor make the browser mark its
// request same-origin.
package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"tailscale.com/client/tailscale/apitype"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
	"github.com/siterelay/siterelay/provisioning/server"
	"github.com/siterelay/siterelay/relay/safetext"
)

// Prefix is where the admin page lives on the tailnet listener. The LAN
// listener refuses it (appliance).
const Prefix = "/admin/"

// TokenField is the form field carrying the CSRF token.
const TokenField = "csrf"

// Options wire the page.
type Options struct {
	// WhoIs names the caller at a remote address (the node's LocalClient).
	WhoIs  func(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
	Policy authz.Policy
	Audit  *audit.Log
	Box    server.Box
	// Metrics, when set, is served at /metrics to viewers: the same
	// registry the LAN listener serves.
	Metrics http.Handler
	// Key signs the CSRF tokens; nil makes a random one (tokens of pages
	// rendered before a restart are refused: reload the page).
	Key    []byte
	Clock  func() time.Time
	Logger *slog.Logger
}

type site struct {
	Options
	cop *http.CrossOriginProtection
	mux *http.ServeMux
}

// Handler serves the admin page (Prefix), / (a redirect to it) and
// /metrics. Mount it only on the tailnet listener.
func Handler(o Options) http.Handler {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Key == nil {
		o.Key = make([]byte, 32)
		rand.Read(o.Key)
	}
	s := &site{Options: o, cop: http.NewCrossOriginProtection(), mux: http.NewServeMux()}
	v, op := api.Viewer, api.Operator
	s.route("GET "+Prefix+"{$}", v, s.overview)
	s.route("GET "+Prefix+"trace", v, s.trace)
	s.route("POST "+Prefix+"queue/{id}/{op}", op, s.queueOp)
	s.route("POST "+Prefix+"doctor", op, s.doctor)
	s.route("GET "+Prefix+"logs", op, s.logs)
	if o.Metrics != nil {
		s.route("GET /metrics", v, func(w http.ResponseWriter, c *call) error {
			o.Metrics.ServeHTTP(w, c.r)
			return nil
		})
	}
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
	})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.problem(w, http.StatusNotFound, "No page "+r.URL.Path+" here: the admin page is at "+Prefix+".")
	})
	return s.mux
}

// call is one request in flight.
type call struct {
	r    *http.Request
	d    authz.Decision
	what string
}

// pageError is a refusal or failure shown as a page.
type pageError struct {
	status int
	code   string // for the audit log, the API's error codes
	msg    string
}

func (e *pageError) Error() string { return e.msg }

type handler func(w http.ResponseWriter, c *call) error

// Token is the CSRF token of the forms shown to id.
func (s *site) Token(id authz.Identity) string {
	m := hmac.New(sha256.New, s.Key)
	m.Write([]byte("siterelay admin page\x00" + id.String()))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

func (s *site) route(pattern string, need api.Role, h handler) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		c := &call{r: r, what: describe(r)}
		rec := &server.Recorder{ResponseWriter: w}
		err := s.serve(rec, c, need, h)
		if err != nil {
			var pe *pageError
			if !errors.As(err, &pe) {
				pe = &pageError{status: 500, code: api.CodeInternal, msg: err.Error()}
				var ae *api.Error
				switch {
				case errors.As(err, &ae):
					pe = &pageError{status: ae.Status, code: ae.Code, msg: ae.Message}
				case errors.Is(err, server.ErrNotFound):
					pe = &pageError{status: 404, code: api.CodeNotFound, msg: err.Error()}
				default:
					s.Logger.Error("admin page call failed", "what", c.what, "err", err)
				}
			}
			rec.Code = pe.code
			s.problem(rec, pe.status, pe.msg)
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions && s.Audit != nil {
			server.MarkAudited(r)
			server.Audit(s.Audit, s.Logger, s.Clock(), c.d, r, c.what, rec)
		}
	})
}

func (s *site) serve(w http.ResponseWriter, c *call, need api.Role, h handler) error {
	r := c.r
	d, known := server.Decide(r, s.WhoIs, s.Policy)
	if !known {
		return &pageError{status: http.StatusUnauthorized, code: api.CodeUnauthorized,
			msg: "Your browser's connection does not come from a known tailnet node: open the page through relayctl web (docs/provisioning.md)."}
	}
	c.d = d
	c.r = r.WithContext(server.WithCaller(r.Context(), c.d.Identity.String()))
	r = c.r
	// The role first: nothing of a caller's body is read before it is
	// known the caller may do this at all.
	if c.d.Role < need {
		msg := fmt.Sprintf("%s has role %s; this needs %s (grant %s in the tailnet policy, see docs/provisioning.md).", c.d.Identity, c.d.Role, need, authz.Capability)
		if c.d.Problem != "" {
			msg += " " + c.d.Problem
		}
		return &pageError{status: http.StatusForbidden, code: api.CodeForbidden, msg: msg}
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := s.cop.Check(r); err != nil {
			return &pageError{status: http.StatusForbidden, code: api.CodeCSRF,
				msg: "Refused: the browser says this form was sent from another site (" + err.Error() + ")."}
		}
		if err := r.ParseForm(); err != nil {
			return &pageError{status: http.StatusBadRequest, code: api.CodeBadRequest, msg: "Reading the form: " + err.Error()}
		}
		if !hmac.Equal([]byte(r.PostForm.Get(TokenField)), []byte(s.Token(c.d.Identity))) {
			return &pageError{status: http.StatusForbidden, code: api.CodeCSRF,
				msg: "Refused: the form's token is missing or stale (the relay restarted, or the form came from elsewhere). Reload the page and try again."}
		}
		if s.Audit != nil {
			if err := server.Begin(s.Audit, s.Clock(), c.d, r, c.what); err != nil {
				return err
			}
		}
	}
	return h(w, c)
}

// headers are on every page: no script, no framing (the buttons cannot be
// clicked through another site's frame), forms only to this page.
func headers(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
}

func (s *site) problem(w http.ResponseWriter, status int, msg string) {
	headers(w)
	w.WriteHeader(status)
	if err := pages.ExecuteTemplate(w, "problem.html", struct {
		Status int
		Text   string
		Msg    string
		Prefix string
	}{status, http.StatusText(status), msg, Prefix}); err != nil {
		s.Logger.Error("rendering the admin page failed", "err", err)
	}
}

func (s *site) render(w http.ResponseWriter, name string, data any) error {
	var b strings.Builder
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		return fmt.Errorf("rendering %s: %w", name, err)
	}
	headers(w)
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte(b.String()))
	return err
}

//go:embed *.html
var files embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"ago":   ago,
	"deref": func(b *bool) bool { return b != nil && *b },
	"when":  when,
	"bytes": bytesStr,
	"join":  strings.Join,
	"path":  url.PathEscape,
	"esc":   safetext.Escape,
}).ParseFS(files, "*.html"))

// describe names a call for the audit log before it is authorised, so a
// refused one says what was tried; the handler adds what only it knows.
func describe(r *http.Request) string {
	switch {
	case r.PathValue("op") != "":
		return r.PathValue("op") + " message " + r.PathValue("id") + " (admin page)"
	case r.URL.Path == Prefix+"doctor":
		return "doctor (admin page)"
	}
	return r.Method + " " + r.URL.Path + " (admin page)"
}

func isNotFound(err error) bool { return errors.Is(err, server.ErrNotFound) }

// LANRefusal answers the admin page's paths on a plant-LAN listener: the
// page exists only on the tailnet, where callers have an identity.
func LANRefusal() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers(w)
		w.WriteHeader(http.StatusForbidden)
		pages.ExecuteTemplate(w, "problem.html", struct {
			Status int
			Text   string
			Msg    string
			Prefix string
		}{http.StatusForbidden, http.StatusText(http.StatusForbidden),
			"The admin page answers only on the tailnet: run relayctl -relay NAME web and open the address it prints (docs/provisioning.md). This page on the plant network is the status page.", "/"})
	})
}
