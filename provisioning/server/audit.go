package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/audit"
	"github.com/siterelay/siterelay/provisioning/authz"
)

// Recorder remembers the status and error code of an answer for the
// audit log; the admin page (provisioning/web) records its answers with it
// too.
type Recorder struct {
	http.ResponseWriter
	Status int
	Code   string // the error code answered, "" for none
}

func (r *Recorder) WriteHeader(code int) {
	if r.Status == 0 {
		r.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = 200
	}
	return r.ResponseWriter.Write(b)
}

// Flush sends what is written (the update's answer before the reboot).
func (r *Recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (read
// deadlines, flushing) through the recorder.
func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Audit appends the audit entry of a changing call, allowed or refused:
// who (d) asked what through r, the result ("ok" or the error code) and
// the status answered. The API and the admin page write the same entries.
// The error is for the caller to log: the call has been answered already.
func Audit(l *audit.Log, logger *slog.Logger, now time.Time, d authz.Decision, r *http.Request, what string, rec *Recorder) error {
	result := "ok"
	switch {
	case rec.Code != "":
		result = rec.Code
	case rec.Status >= 400:
		result = fmt.Sprintf("status_%d", rec.Status)
	}
	err := l.Append(entry(now, d, r, what, result, rec.Status))
	if err != nil {
		logger.Error("writing the audit log failed", "err", err)
	}
	return err
}

// Begin writes the entry saying an allowed change is about to be made.
// When it cannot be written the change must not be made: the error is the
// 503 to answer (naming the audit log).
func Begin(l *audit.Log, now time.Time, d authz.Decision, r *http.Request, what string) error {
	if err := l.Append(entry(now, d, r, what, api.AuditResultStarted, 0)); err != nil {
		return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeAuditUnavailable,
			Message: "the audit log cannot be written (" + err.Error() + "), so no change is made; relayctl status shows the audit log's problem"}
	}
	return nil
}

func entry(now time.Time, d authz.Decision, r *http.Request, what, result string, status int) api.AuditEntry {
	e := api.AuditEntry{Time: now.UTC(), Login: d.Login, Node: d.Node, Role: d.Role,
		Method: r.Method, Path: r.URL.Path, What: what, Result: result, Status: status}
	if e.Node == "" {
		// The address without its port: a caller's refusals are
		// summarised together whatever connection they came on.
		host := r.RemoteAddr
		if ap, err := netip.ParseAddrPort(host); err == nil {
			host = ap.Addr().String()
		}
		e.Node = "unknown (" + host + ")"
	}
	return e
}

func (s *server) audit(w http.ResponseWriter, c *call) error {
	n := 100
	if v := c.r.URL.Query().Get("limit"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return badParam("limit", "want a number of entries")
		}
	}
	var after uint64
	if v := c.r.URL.Query().Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return badParam("after", "want the seq of an entry")
		}
	}
	// Summaries of no-role refusals whose minute has passed are written
	// first, so a flood that stopped shows.
	s.Audit.Flush(s.Clock())
	var l []api.AuditEntry
	var err error
	if after > 0 {
		l, err = s.Audit.ReadAfter(after, n)
	} else {
		l, err = s.Audit.Read(n)
	}
	if err != nil {
		return err
	}
	if l == nil {
		l = []api.AuditEntry{}
	}
	return ok(w, l)
}
