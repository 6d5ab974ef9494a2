// Package status serves the box's status page: the one place a technician
// on the plant floor looks to see whether the relay is well, what to type
// into a printer's mail settings, and why mail is waiting.
//
// Anyone on the plant network can open it, so it shows no message's people
// (addresses, subjects) and no secret: administrators search the message
// trace over the tailnet. The same facts are served as JSON for scripts
// and monitoring that prefer it to the Prometheus scrape.
package status

import (
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/siterelay/siterelay/relay"
	"github.com/siterelay/siterelay/relay/trace"
)

// Page is what the status page shows.
type Page struct {
	// Hostname is the box's host name.
	Hostname string `json:"hostname"`
	// MDNSName is the name devices find the box by, e.g. "relay-2.local"
	// after a conflict; "" when discovery is off.
	MDNSName string `json:"mdns_name,omitempty"`
	// Addresses are the box's own addresses on the plant network (never a
	// device's), for the device setup sheet.
	Addresses []string  `json:"addresses,omitempty"`
	Version   string    `json:"version,omitempty"`
	Now       time.Time `json:"now"`
	// Problem, when set, is why the box accepts no mail at all (its
	// storage is unusable); Relay is nil then.
	Problem string        `json:"problem,omitempty"`
	Relay   *relay.Status `json:"relay,omitempty"`
	// Tailnet is the remote-management state: "up", "joining", "not
	// managed", or "join failed: REASON" (a wrong or expired join key
	// says so here; the key itself never); "" when there is no tailnet.
	Tailnet string `json:"tailnet,omitempty"`
}

// Health is the page's verdict, first thing on screen.
type Health struct {
	// State is "ok", "warning" (mail waits or is old, a secret or file
	// is missing, a kept configuration runs, a listener is not bound, the
	// clock is not synchronised; a clock nobody can judge is no warning) or "down" (no mail accepted). These are
	// the box's one health vocabulary: the admin API's Status.Health and
	// relayctl status say the same words, judged here.
	State string `json:"state"`
	// Notes say why, in words a technician can act on.
	Notes []string `json:"notes,omitempty"`
}

// StaleAfter is how long the oldest queued message may wait before the
// page warns: Microsoft 365 normally takes seconds, retries minutes.
const StaleAfter = time.Hour

// Health judges the page's facts.
func (p Page) Health() Health {
	if p.Problem != "" || p.Relay == nil {
		why := p.Problem
		if why == "" {
			why = "the relay is not running"
		}
		return Health{State: "down", Notes: []string{"Not accepting mail: " + why}}
	}
	h := Health{State: "ok"}
	up := p.Relay.Upstream
	if up.Failing() {
		n := "Mail is waiting: the upstream's last answer was " + quote(up.LastProblem.Reply) + "."
		if up.LastProblem.Hint != "" {
			n += " " + up.LastProblem.Hint
		}
		h.Notes = append(h.Notes, n)
	}
	for _, r := range p.Relay.Routes {
		if r.FailedOver {
			h.Notes = append(h.Notes, fmt.Sprintf("Route %s sends by %s: its first upstream %s answered %s.", r.Name, r.Upstream, r.Upstreams[0], quote(r.Reason)))
		}
	}
	for _, w := range p.Relay.Warnings {
		h.Notes = append(h.Notes, "The configuration needs an admin: "+w+".")
	}
	if c := p.Relay.Config; c != nil {
		in := "a kept version, " + c.InForce
		if c.InForce == "" {
			in = "no configuration: no SMTP listener"
		}
		h.Notes = append(h.Notes, fmt.Sprintf("The configuration %s does not build (%s); running %s.", c.Broken, c.Problem, in))
	}
	for _, w := range p.Relay.Waiting {
		what := "secret " + w.Secret
		if w.Secret == "" {
			what = "file " + w.File
		}
		held := "mail for " + w.Upstream + " is held"
		if w.Upstream == "" {
			held = "alerts are off"
		}
		h.Notes = append(h.Notes, fmt.Sprintf("Waiting for %s (%s, %s): %s until it is provided: %s", what, w.Key, w.Reason, held, w.Fix))
	}
	for _, l := range p.Relay.Listeners {
		if l.Problem != "" {
			h.Notes = append(h.Notes, "Listener "+l.Name+": "+l.Problem+".")
		}
	}

	if c := p.Relay.ClockSynchronised; c != nil && !*c {
		h.Notes = append(h.Notes, "The clock is not synchronised (NTP): Microsoft's tokens, certificates and retry times depend on it; check the site's ntp servers are reachable from the box.")
	}
	if o := p.Relay.Queue.Oldest; !o.IsZero() && p.Now.Sub(o) > StaleAfter {
		h.Notes = append(h.Notes, fmt.Sprintf("The oldest queued message has waited %s.", duration(p.Now.Sub(o))))
	}
	if len(h.Notes) > 0 {
		h.State = "warning"
	}
	return h
}

func quote(s string) string {
	if s == "" {
		return "(none)"
	}
	return "“" + s + "”"
}

// Handler serves the page at / (HTML) and /status.json; page is called for
// every request and must be cheap. A box that accepts no mail answers 503,
// so a monitor polling the page sees it without parsing.
func Handler(page func() Page) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, page(), "text/html; charset=utf-8", func(v view) {
			if err := pageTemplate.Execute(w, v); err != nil {
				// The header is out; all that is left is to end the page.
				fmt.Fprintf(w, "\n<p>status page error: %s</p>", template.HTMLEscapeString(err.Error()))
			}
		})
	})
	mux.HandleFunc("GET /sheet", func(w http.ResponseWriter, r *http.Request) {
		serveSheet(w, page())
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		respond(w, page(), "application/json", func(v view) {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(struct { // an error here is a client gone away
				Page
				Health Health `json:"health"`
			}{v.Page, v.Health})
		})
	})
	return mux
}

// respond writes the headers every answer shares, then the body.
func respond(w http.ResponseWriter, p Page, contentType string, body func(view)) {
	h := p.Health()
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	if h.State == "down" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	body(view{Page: p, Health: h})
}

// view is what the template sees.
type view struct {
	Page
	Health Health
}

// Kinds are the trace event kinds in the order the page lists them.
func (v view) Kinds() []trace.Kind { return trace.Kinds }

// DeviceAddress is what to type into a device's "SMTP server" field for l:
// the mDNS name when the listener takes every address, else its address.
func (v view) DeviceAddress(l relay.ListenerStatus) string {
	host, port, err := net.SplitHostPort(l.Address)
	if err != nil {
		return l.Address
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = v.Hostname
		if v.MDNSName != "" {
			host = v.MDNSName
		}
	}
	return host + " port " + port
}

//go:embed status.html sheet.html
var files embed.FS

var pageTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"ago":      func(now, t time.Time) string { return duration(now.Sub(t)) + " ago" },
	"duration": duration,
	"bytes":    byteSize,
	"seconds":  func(n int64) string { return duration(time.Duration(n) * time.Second) },
}).ParseFS(files, "status.html"))

// duration is d for people: "45 s", "12 min", "3 h 5 min", "2 days 4 h".
func duration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + " s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + " min"
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h %d min", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%d days %d h", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// byteSize is n for people, in binary units as the configuration's limits are.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
