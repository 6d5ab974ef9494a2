package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"tailscale.com/client/tailscale/apitype"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
)

// DefaultReadTimeout bounds how long a request's body may take to arrive
// (the header is bounded by the http.Server's ReadHeaderTimeout). A
// handler that takes a larger body (a firmware image) extends it for
// callers with the role.
const DefaultReadTimeout = 30 * time.Second

// GuardOptions wire Guard.
type GuardOptions struct {
	// Names are the node's own names and addresses at the time of the
	// request: its MagicDNS name, short name and tailnet IPs (node.Names).
	Names func(ctx context.Context) ([]string, error)
	// WhoIs names the caller at a remote address (the node's LocalClient).
	WhoIs  func(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
	Policy authz.Policy
	Audit  *audit.Log
	// ReadTimeout is how long a request body may take (default
	// DefaultReadTimeout).
	ReadTimeout time.Duration
	Clock       func() time.Time
	Logger      *slog.Logger
}

// Guard stands before everything the tailnet listener serves (the API and
// the admin page):
//
//   - A request is answered only for the node's own names and addresses:
//     a Host, or an Origin when there is one, naming anything else is
//     421 Misdirected Request and audited (DNS rebinding: a page from
//     another site whose name now resolves to the relay's address).
//   - The caller's role is decided (WhoIs) before any of the body is read,
//     and the body has ReadTimeout to arrive; a caller with no role gets
//     its answer on a connection that is then closed.
//   - Every changing request (any method but GET, HEAD, OPTIONS) is
//     audited, allowed or refused, routed or not: what the handlers behind
//     do not audit themselves (an unknown path, a wrong method) Guard does.
func Guard(o GuardOptions, next http.Handler) http.Handler {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(o.Clock().Add(o.ReadTimeout))
		var d authz.Decision
		known := false
		if o.WhoIs != nil {
			if wi, err := o.WhoIs(r.Context(), r.RemoteAddr); err == nil && wi != nil {
				d, known = o.Policy.Decide(wi), true
			}
		}
		st := &guarded{d: d, known: known}
		ctx := context.WithValue(r.Context(), guardKey{}, st)
		r = r.WithContext(ctx)
		rec := &Recorder{ResponseWriter: w}
		if d.Role == api.None {
			// Nothing of a no-role caller's body is read, and its
			// connection does not stay to trickle another request.
			w.Header().Set("Connection", "close")
		}
		if problem := o.misdirected(ctx, r); problem != "" {
			rec.Header().Set("Connection", "close")
			writeErr(rec, &api.Error{Status: http.StatusMisdirectedRequest, Code: api.CodeMisdirected, Message: problem})
			o.audit(d, r, "misdirected "+r.Method+" "+r.URL.Path, rec)
			return
		}
		if !changing(r.Method) || r.ContentLength == 0 {
			// No body to wait for: the deadline would only end a long
			// answer (a log that follows) when it passes.
			rc.SetReadDeadline(time.Time{})
		} else {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		}
		next.ServeHTTP(rec, r)
		if changing(r.Method) && !st.audited {
			o.audit(d, r, r.Method+" "+r.URL.Path, rec)
		}
	})
}

// misdirected says why r is not for this node ("" when it is).
func (o GuardOptions) misdirected(ctx context.Context, r *http.Request) string {
	if o.Names == nil {
		return ""
	}
	names, err := o.Names(ctx)
	if err != nil || len(names) == 0 {
		return "the relay cannot tell its own tailnet names right now, so it answers no request (try again)"
	}
	if !OwnHost(r.Host, names) {
		return fmt.Sprintf("Host %.100q is not one of this relay's tailnet names or addresses (%s): a request for another name is refused (DNS rebinding); use relayctl, or the address relayctl web prints", r.Host, strings.Join(names, ", "))
	}
	// "null" is what a browser sends from a page with Referrer-Policy:
	// no-referrer (the admin page's own forms): it names no host, so it
	// is left to the page's Sec-Fetch-Site check and form token (and the
	// API's header, which such a page cannot send).
	if origin := r.Header.Get("Origin"); origin != "" && origin != "null" {
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !OwnHost(u.Host, names) {
			return fmt.Sprintf("Origin %.100q is not one of this relay's tailnet names or addresses: a page from another site cannot use the relay (DNS rebinding)", origin)
		}
	}
	return ""
}

// OwnHost says whether host (a Host header or an Origin's host, with or
// without a port) names one of names: a DNS name (compared without case
// and a trailing dot) or an IP address.
func OwnHost(host string, names []string) bool {
	if host == "" {
		return false
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		h = host[1 : len(host)-1]
	}
	if i := strings.IndexByte(h, '%'); i >= 0 {
		return false // a zone is never ours
	}
	ip, ipErr := netip.ParseAddr(h)
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	for _, n := range names {
		if ipErr == nil {
			if a, err := netip.ParseAddr(n); err == nil && a == ip {
				return true
			}
			continue
		}
		if h != "" && strings.TrimSuffix(strings.ToLower(n), ".") == h {
			return true
		}
	}
	return false
}

func (o GuardOptions) audit(d authz.Decision, r *http.Request, what string, rec *Recorder) {
	if o.Audit == nil {
		return
	}
	if err := Audit(o.Audit, o.Logger, o.Clock(), d, r, what, rec); err != nil {
		o.Logger.Error("writing the audit log failed", "err", err)
	}
}

type guardKey struct{}

// guarded is what Guard knows of a request, for the handlers behind it.
type guarded struct {
	d       authz.Decision
	known   bool // WhoIs named the caller
	audited bool // a handler wrote the call's audit entry
}

// decided is the caller's decision made by Guard, if r went through one.
func decided(r *http.Request) (*guarded, bool) {
	g, ok := r.Context().Value(guardKey{}).(*guarded)
	return g, ok
}

// Decide names the caller of r and its role: Guard's decision when r went
// through one, else WhoIs and policy. ok is false when the caller is not a
// known tailnet node.
func Decide(r *http.Request, whoIs func(context.Context, string) (*apitype.WhoIsResponse, error), p authz.Policy) (authz.Decision, bool) {
	if g, ok := decided(r); ok {
		return g.d, g.known
	}
	wi, err := whoIs(r.Context(), r.RemoteAddr)
	if err != nil || wi == nil {
		return authz.Decision{}, false
	}
	return p.Decide(wi), true
}

// MarkAudited tells Guard that the handler wrote r's audit entry itself.
func MarkAudited(r *http.Request) {
	if g, ok := decided(r); ok {
		g.audited = true
	}
}

// deadlineBody lifts the request's read deadline once the body is read
// whole: what the handler does next (a doctor's two minutes) is not a
// slow body.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// ExtendRead gives r's body until deadline to arrive (a firmware image of
// hundreds of megabytes); only for callers whose role is checked.
func ExtendRead(w http.ResponseWriter, deadline time.Time) error {
	return http.NewResponseController(w).SetReadDeadline(deadline)
}
