package web

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/authz"
)

// chartEvents bounds the trace events the chart reads.
const chartEvents = 100000

// frame is what every page shows: who you are and the token for forms.
type frame struct {
	Now     time.Time
	Who     authz.Decision
	Token   string
	Prefix  string
	Operate bool // operator or admin: buttons
	Admin   bool
}

func (s *site) frame(c *call) frame {
	return frame{Now: s.Clock(), Who: c.d, Token: s.Token(c.d.Identity), Prefix: Prefix,
		Operate: c.d.Role >= api.Operator, Admin: c.d.Role >= api.Admin}
}

type overviewPage struct {
	frame
	Status   *api.Status
	Queue    []api.QueueItem
	Audit    []api.AuditEntry
	Chart    template.HTML
	Series   []series
	Notice   string
	TraceErr string
}

// notices are the words for a finished operation (the redirect after a
// form names only the operation and the id).
var notices = map[string]string{
	"retry":  "Retry of message %s started: it goes out now if the upstream takes it.",
	"bounce": "Message %s bounced: its sender gets a delivery status notification.",
	"delete": "Message %s deleted from the queue.",
}

func (s *site) overview(w http.ResponseWriter, c *call) error {
	ctx := c.r.Context()
	st, err := s.Box.Status(ctx)
	if err != nil {
		return err
	}
	p := overviewPage{frame: s.frame(c), Status: st}
	if f, ok := notices[c.r.URL.Query().Get("done")]; ok {
		p.Notice = fmt.Sprintf(f, c.r.URL.Query().Get("id"))
	}
	if p.Operate {
		if p.Queue, err = s.Box.Queue(ctx, api.QueueFilter{Limit: 200}); err != nil {
			return err
		}
	}
	if p.Admin && s.Audit != nil {
		if p.Audit, err = s.Audit.Read(10); err != nil {
			return err
		}
	}
	ev, err := s.Box.Trace(ctx, api.TraceQuery{Since: p.Now.Add(-chartHours * time.Hour), Limit: chartEvents})
	if err != nil {
		p.TraceErr = err.Error()
	}
	p.Series = hourly(ev, p.Now)
	p.Chart = svg(p.Series, p.Now)
	return s.render(w, "overview.html", p)
}

type tracePage struct {
	frame
	Q      url.Values
	Kinds  []string
	Events []api.TraceEvent
	Limit  int
}

func (s *site) trace(w http.ResponseWriter, c *call) error {
	q := c.r.URL.Query()
	p := tracePage{frame: s.frame(c), Q: q, Kinds: []string{"received", "deferred", "delivered", "bounced", "expired", "failed", "renewal"}, Limit: 100}
	tq := api.TraceQuery{QueueID: strings.TrimSpace(q.Get("queue_id")), MessageID: strings.TrimSpace(q.Get("message_id")),
		Sender: strings.TrimSpace(q.Get("sender")), Recipient: strings.TrimSpace(q.Get("recipient")),
		Device: strings.TrimSpace(q.Get("device")), Kind: q.Get("kind")}
	since := strings.TrimSpace(q.Get("since"))
	if since == "" {
		since = "24h"
		q.Set("since", since)
	}
	if t, err := time.Parse(time.RFC3339, since); err == nil {
		tq.Since = t
	} else if d, err := time.ParseDuration(since); err == nil && d > 0 {
		tq.Since = p.Now.Add(-d)
	} else {
		return &pageError{status: 400, code: api.CodeBadRequest, msg: "Since: want a duration like 24h or an RFC 3339 time, not " + strconv.Quote(since) + "."}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 1000 {
			return &pageError{status: 400, code: api.CodeBadRequest, msg: "Limit: want a number from 1 to 1000."}
		}
		p.Limit = n
	}
	tq.Limit = p.Limit
	ev, err := s.Box.Trace(c.r.Context(), tq)
	if err != nil {
		return err
	}
	p.Events = ev
	return s.render(w, "trace.html", p)
}

func (s *site) queueOp(w http.ResponseWriter, c *call) error {
	id, op := c.r.PathValue("id"), c.r.PathValue("op")
	c.what = op + " message " + id + " (admin page)"
	ctx := c.r.Context()
	var err error
	switch op {
	case "retry":
		err = s.Box.Retry(ctx, id)
	case "bounce":
		err = s.Box.Bounce(ctx, id)
	case "delete":
		err = s.Box.Delete(ctx, id)
	default:
		return &pageError{status: 404, code: api.CodeNotFound, msg: "No operation " + strconv.Quote(op) + ": want retry, bounce or delete."}
	}
	if err != nil {
		if ae, ok := err.(*api.Error); ok {
			return ae
		}
		if isNotFound(err) {
			return &pageError{status: 404, code: api.CodeNotFound, msg: "No message " + id + " in the queue (already delivered, bounced or deleted?)."}
		}
		return err
	}
	http.Redirect(w, c.r, Prefix+"?done="+op+"&id="+url.QueryEscape(id)+"#queue", http.StatusSeeOther)
	return nil
}

type doctorPage struct {
	frame
	To    string
	Steps []api.DoctorStep
	OK    bool
}

func (s *site) doctor(w http.ResponseWriter, c *call) error {
	to := strings.TrimSpace(c.r.PostForm.Get("to"))
	c.what = "doctor (admin page)"
	if to != "" {
		c.what = "doctor with a test message to " + to + " (admin page)"
	}
	ctx, cancel := context.WithTimeout(c.r.Context(), 2*time.Minute)
	defer cancel()
	steps, err := s.Box.Doctor(ctx, to)
	if err != nil {
		return err
	}
	p := doctorPage{frame: s.frame(c), To: to, Steps: steps, OK: true}
	for _, st := range steps {
		p.OK = p.OK && st.OK
	}
	return s.render(w, "doctor.html", p)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in " + round(-d)
	case d < time.Second:
		return "just now"
	}
	return round(d) + " ago"
}

func round(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func bytesStr(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
