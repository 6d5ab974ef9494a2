package status

import (
	"fmt"
	"html/template"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/siterelay/siterelay/relay"
)

// Sheet is the device setup sheet: what a technician types into a
// printer's or a SCADA system's mail settings, and what each family of
// device is known to trip over. It is built from the configuration in
// force (through the page's facts), so it is the same on the LAN page
// (/sheet) and in `relayctl sheet`, and it holds only what the status page
// may show: no secret, no message's people, no device's address.
type Sheet struct {
	Hostname string `json:"hostname"`
	// Names are what a device may type as the server, best first: the
	// mDNS name in use, then the host name.
	Names []string `json:"names"`
	// Addresses are the box's own addresses on the plant network, for
	// devices that cannot resolve names.
	Addresses []string `json:"addresses,omitempty"`
	// Listeners are the listeners a device on the plant network reaches
	// (loopback ones are left out).
	Listeners []SheetListener `json:"listeners"`
	// MaxMessageBytes is the largest message a device may send.
	MaxMessageBytes int64 `json:"max_message_bytes"`
	// Notes are per-family advice, each a heading and its lines.
	Notes []SheetNote `json:"notes"`
}

// SheetListener is one listener as a device's settings page asks for it.
type SheetListener struct {
	Name string `json:"name"`
	// Server is what to type as the SMTP server ("relay-plant-a.local", or
	// the listener's own address when it is bound to one).
	Server string `json:"server"`
	Port   string `json:"port"`
	// Security is the device's "SSL/TLS" setting: "none", "STARTTLS
	// (optional)" or "STARTTLS (required)".
	Security string `json:"security"`
	// TLSVersions are the versions accepted, e.g. "TLS 1.0 to 1.3"; ""
	// without TLS.
	TLSVersions string `json:"tls_versions,omitempty"`
	// Login is "off", "optional" or "required".
	Login string `json:"login"`
}

// SheetNote is advice for one family of devices.
type SheetNote struct {
	Family string   `json:"family"`
	Lines  []string `json:"lines"`
}

// NewSheet is the one function that makes the sheet, from the status
// page's facts (the configuration in force as the relay reports it).
func NewSheet(p Page) Sheet {
	s := Sheet{Hostname: p.Hostname, Addresses: slices.Clone(p.Addresses)}
	if p.MDNSName != "" {
		s.Names = append(s.Names, p.MDNSName)
	}
	if p.Hostname != "" && !slices.Contains(s.Names, p.Hostname) {
		s.Names = append(s.Names, p.Hostname)
	}
	if p.Relay == nil {
		return s
	}
	st := p.Relay
	s.MaxMessageBytes = st.MaxMessageBytes
	v := view{Page: p}
	oldTLS, plain, login := false, false, false
	for _, l := range st.Listeners {
		if l.Loopback {
			continue
		}
		sl := SheetListener{Name: l.Name, Server: l.Address, Security: "none", Login: "off"}
		if host, port, err := net.SplitHostPort(l.Address); err == nil {
			sl.Port = port
			sl.Server = host
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				sl.Server, _, _ = strings.Cut(v.DeviceAddress(l), " port ")
			}
		}
		switch l.TLS {
		case "starttls":
			sl.Security = "STARTTLS (optional)"
		case "required":
			sl.Security = "STARTTLS (required)"
		}
		if l.TLS != "none" && l.MinTLS != "" {
			sl.TLSVersions = "TLS " + l.MinTLS + " to 1.3"
			if l.MinTLS == "1.3" {
				sl.TLSVersions = "TLS 1.3 only"
			}
			oldTLS = oldTLS || l.MinTLS == "1.0" || l.MinTLS == "1.1"
		}
		if l.TLS != "required" {
			plain = true
		}
		switch l.Auth {
		case "offered":
			sl.Login, login = "optional", true
		case "required":
			sl.Login, login = "required", true
		}
		s.Listeners = append(s.Listeners, sl)
	}
	s.Notes = sheetNotes(st, oldTLS, plain, login)
	return s
}

// sheetNotes is the advice for the configuration in force. Each line is a
// fact of the relay or of the device family that holds everywhere; where
// a family's behaviour varies by model, the note says what to look for.
func sheetNotes(st *relay.Status, oldTLS, plain, login bool) []SheetNote {
	var notes []SheetNote
	all := []string{
		`Use plain "SMTP" on the port listed above, never "SMTPS"/"SSL on connect" (port 465): the relay offers TLS only by STARTTLS.`,
		`Turn "POP before SMTP" off: the relay has no POP3.`,
		fmt.Sprintf("Messages larger than %s are refused (552 5.3.4); a scan to e-mail grows by about a third when attached: lower the resolution or split the job.", byteSize(st.MaxMessageBytes)),
	}
	if !login {
		all = append(all, "No listener here takes a login: leave SMTP authentication off on the device (a login attempt where none is offered is refused).")
	}
	notes = append(notes, SheetNote{Family: "Every device", Lines: all})
	switch st.SenderRule {
	case "mailbox":
		notes = append(notes, SheetNote{Family: "Microsoft 365 sender (From)", Lines: []string{
			"Microsoft 365 accepts mail only from the mailbox the relay sends as, or an address that mailbox may send as (SendAs). Set the device's From (\"sender\", \"device e-mail address\") to the address your admin gives you; any other is refused (5.7.60).",
		}})
	case "rewritten":
		notes = append(notes, SheetNote{Family: "Microsoft 365 sender (From)", Lines: []string{
			"The relay puts the mailbox it sends as into From itself; the device's own From is kept as Reply-To. Any sender the site allows works.",
		}})
	}
	var xerox []string
	if login {
		xerox = append(xerox,
			`AUTH LOGIN: the relay asks "Username:" and "Password:" exactly as Xerox devices expect.`,
			"Some Xerox models accept only an e-mail address as the login name: give such a device a login named like an address (ask your admin).")
	}
	if oldTLS {
		xerox = append(xerox, "Older firmware speaks only TLS 1.0 or 1.1: this relay accepts it (listed above), and speaks TLS 1.2 or newer to the upstream itself.")
	}
	if len(xerox) > 0 {
		notes = append(notes, SheetNote{Family: "Xerox", Lines: xerox})
	}
	old := []string{"Canon, Ricoh, HP, Konica Minolta, Kyocera, Brother: set the server, the port and the security exactly as listed above; leave \"SSL\"/\"TLS\" off on a listener without STARTTLS."}
	switch {
	case oldTLS:
		old = append(old, "A device that fails only with STARTTLS on (handshake error, \"SSL error\") usually has old firmware: TLS 1.0/1.1 is accepted here, so update the firmware or use a listener without TLS on the plant network.")
	case plain:
		old = append(old, "This relay accepts TLS 1.2 or newer only: a device whose firmware speaks only TLS 1.0/1.1 must send without STARTTLS, or the admin sets the listener's min_tls to \"1.0\".")
	default:
		old = append(old, "Every listener requires TLS 1.2 or newer: a device whose firmware speaks only TLS 1.0/1.1 cannot send here until the admin adds a listener for it.")
	}
	notes = append(notes, SheetNote{Family: "Printers and scanners", Lines: old})
	notes = append(notes, SheetNote{Family: "SCADA, alarms, monitoring", Lines: []string{
		"Bursts are fine: every message accepted (250) is on the relay's disk, and the relay paces delivery to the upstream's limits.",
		"A device over its allowance gets 450 4.7.1, and the relay answers 4xx whenever it cannot keep a message safe: the device must retry temporary (4xx) replies. Check that it does, or that its alarms also go somewhere else.",
		"Give each system its own sender address, so the admin can tell them apart in the trace.",
	}})
	return notes
}

// Text is the sheet as plain text (relayctl sheet).
func (s Sheet) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Device setup sheet: %s\n\n", s.Hostname)
	if len(s.Names) > 0 {
		fmt.Fprintf(&b, "SMTP server:      %s\n", strings.Join(s.Names, " or "))
	}
	if len(s.Addresses) > 0 {
		fmt.Fprintf(&b, "Address:          %s (if the device cannot use a name)\n", strings.Join(s.Addresses, ", "))
	}
	if s.MaxMessageBytes > 0 {
		fmt.Fprintf(&b, "Largest message:  %s\n", byteSize(s.MaxMessageBytes))
	}
	b.WriteString("\n")
	if len(s.Listeners) == 0 {
		b.WriteString("No listener is reachable from the plant network.\n")
	} else {
		fmt.Fprintf(&b, "%-12s %-24s %-6s %-20s %-15s %s\n", "LISTENER", "SERVER", "PORT", "SECURITY", "TLS", "LOGIN")
		for _, l := range s.Listeners {
			tls := l.TLSVersions
			if tls == "" {
				tls = "-"
			}
			fmt.Fprintf(&b, "%-12s %-24s %-6s %-20s %-15s %s\n", l.Name, l.Server, l.Port, l.Security, tls, l.Login)
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintf(&b, "\n%s\n", n.Family)
		for _, l := range n.Lines {
			fmt.Fprintf(&b, "  - %s\n", l)
		}
	}
	return b.String()
}

var sheetTemplate = template.Must(template.New("sheet.html").Funcs(template.FuncMap{
	"bytes": byteSize,
	"join":  strings.Join,
}).ParseFS(files, "sheet.html"))

// serveSheet answers GET /sheet: the sheet as a printable page.
func serveSheet(w http.ResponseWriter, p Page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := sheetTemplate.Execute(w, NewSheet(p)); err != nil {
		fmt.Fprintf(w, "\n<p>sheet error: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}
