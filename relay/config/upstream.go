package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/layout"
)

// Kind is an upstream kind, as upstream.kind spells it. The questions the
// relay asks of a kind (is it Microsoft's, does it deliver to the tenant's
// MX host, does it log in with Entra tokens) are its methods, so that each
// has one answer.
type Kind string

// The upstream kinds.
const (
	KindCapture       Kind = "capture"        // write each message as an .eml file (development, tests)
	KindSMTP          Kind = "smtp"           // a generic smarthost
	KindM365OAuth     Kind = "m365-oauth"     // Microsoft 365 client submission with XOAUTH2
	KindM365Password  Kind = "m365-password"  // Microsoft 365 client submission with a password (legacy)
	KindM365Connector Kind = "m365-connector" // Microsoft 365 connector relay to the tenant's MX host
	KindM365Direct    Kind = "m365-direct"    // Microsoft 365 direct send to the tenant's MX host
	KindGraph         Kind = "graph"          // Microsoft Graph sendMail
	KindHVE           Kind = "hve"            // Microsoft 365 High Volume Email: internal recipients only
)

// Kinds lists every upstream kind, in the order the docs give them.
var Kinds = []Kind{KindCapture, KindSMTP, KindM365OAuth, KindM365Password, KindM365Connector, KindM365Direct, KindGraph, KindHVE}

// Known reports whether k is one of Kinds.
func (k Kind) Known() bool { return slices.Contains(Kinds, k) }

// Microsoft reports whether k delivers to Microsoft 365 (and is configured
// under upstream.m365).
func (k Kind) Microsoft() bool {
	switch k {
	case KindM365OAuth, KindM365Password, KindM365Connector, KindM365Direct, KindGraph, KindHVE:
		return true
	}
	return false
}

// Submission reports whether k is client submission (smtp.office365.com,
// port 587) with a mailbox login.
func (k Kind) Submission() bool { return k == KindM365OAuth || k == KindM365Password }

// MX reports whether k delivers to the tenant's MX host on port 25
// (connector relay and direct send): the kinds that need the tenant's MX
// and SPF records to name the site.
func (k Kind) MX() bool { return k == KindM365Connector || k == KindM365Direct }

// OAuth reports whether k always gets Entra access tokens (client
// credentials). HVE logs in with tokens or, legacy, with the HVE account's
// password: M365.UsesTokens answers for one configuration.
func (k Kind) OAuth() bool { return k == KindM365OAuth || k == KindGraph }

// Mailbox reports whether k sends as one mailbox (upstream.m365.mailbox;
// for HVE the HVE account).
func (k Kind) Mailbox() bool { return k.Submission() || k == KindGraph || k == KindHVE }

// Internal reports whether k reaches only the tenant's own recipients
// (upstream.m365.accepted_domains): direct send and HVE.
func (k Kind) Internal() bool { return k == KindM365Direct || k == KindHVE }

// RenewBefore is how long before its expiry an access token is replaced:
// HVE refuses tokens that expire within 10 minutes (501 5.5.127 "Token
// will expire soon"), so it renews 20 minutes ahead (the token source
// keeps handing out a token while it cannot renew it only until half of
// this is left: 10 minutes); the others 5.
func (k Kind) RenewBefore() time.Duration {
	if k == KindHVE {
		return 20 * time.Minute
	}
	return 5 * time.Minute
}

func kindList() string {
	s := make([]string, len(Kinds))
	for i, k := range Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// Upstream is where the relay delivers; Kind selects which of the parts
// below applies.
type Upstream struct {
	Kind    Kind            `json:"kind"`
	Capture CaptureUpstream `json:"capture,omitzero"`
	SMTP    SMTPUpstream    `json:"smtp,omitzero"`
	M365    M365            `json:"m365,omitzero"`
}

// CaptureUpstream writes messages to a directory instead of sending them.
type CaptureUpstream struct {
	// Directory, relative to the state directory. Default "outbox".
	Directory string `json:"directory,omitempty"`
}

// SMTPUpstream is a generic smarthost.
type SMTPUpstream struct {
	// Address is host:port, e.g. "mail.example.com:587".
	Address string `json:"address"`
	// TLS is "starttls" (default, required), "implicit" (port 465 style) or
	// "none" (plain text: only for a smarthost on a trusted segment).
	TLS string `json:"tls,omitempty"`
	// MinTLS default "1.2".
	MinTLS string `json:"min_tls,omitempty"`
	// CAFile verifies a private smarthost's certificate (PEM); empty means
	// the system roots.
	CAFile string `json:"ca_file,omitempty"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `json:"server_name,omitempty"`
	// Auth is "", "plain" or "login".
	Auth     string `json:"auth,omitempty"`
	Username string `json:"username,omitempty"`
	// PasswordSecret names the secret in the state directory's secret
	// store that holds the password; the password itself never appears in
	// this file.
	PasswordSecret string `json:"password_secret,omitempty"`
	// Concurrency is the most connections open at once. Default 4.
	Concurrency int `json:"concurrency,omitempty"`
	// MaxRecipients per transaction. Default 100.
	MaxRecipients int `json:"max_recipients,omitempty"`
	// MessagesPerMinute paces delivery; 0 means no pacing.
	MessagesPerMinute int `json:"messages_per_minute,omitempty"`
	// MaxMessageBytes is the smarthost's limit; 0 means unknown.
	MaxMessageBytes int64 `json:"max_message_bytes,omitempty"`
}

func (u *Upstream) setDefaults() {
	setDefault(&u.Capture.Directory, layout.OutboxDir)
	s := &u.SMTP
	setDefault(&s.TLS, "starttls")
	setDefault(&s.MinTLS, "1.2")
	setDefault(&s.Concurrency, 4)
	setDefault(&s.MaxRecipients, 100)
	u.M365.setDefaults(u.Kind)
}

func (u *Upstream) validate(k string) Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}
	switch {
	case u.Kind == KindCapture:
		if strings.Contains(u.Capture.Directory, "..") {
			bad(k+".capture.directory", "must stay inside the state directory")
		}
	case u.Kind == KindSMTP:
		s := u.SMTP
		sk := k + ".smtp"
		if _, _, err := splitHostPort(s.Address); err != nil || s.Address == "" {
			bad(sk+".address", "want host:port of the smarthost, e.g. \"mail.example.com:587\"")
		}
		switch s.TLS {
		case "starttls", "implicit", "none":
		default:
			bad(sk+".tls", "%q: want \"starttls\", \"implicit\" or \"none\"", s.TLS)
		}
		if _, ok := TLSVersions[s.MinTLS]; !ok {
			bad(sk+".min_tls", "%q: want \"1.0\", \"1.1\", \"1.2\" or \"1.3\"", s.MinTLS)
		}
		switch s.Auth {
		case "":
		case "plain", "login":
			if s.Username == "" {
				bad(sk+".username", "auth %q needs a username", s.Auth)
			}
			if s.PasswordSecret == "" {
				bad(sk+".password_secret", "auth %q needs the name of the secret holding the password", s.Auth)
			}
			if s.TLS == "none" {
				bad(sk+".auth", "refusing to send a password without TLS (tls is \"none\")")
			}
		default:
			bad(sk+".auth", "%q: want \"\", \"plain\" or \"login\"", s.Auth)
		}
		if s.Concurrency < 1 || s.Concurrency > 100 {
			bad(sk+".concurrency", "%d: want 1 to 100", s.Concurrency)
		}
		if s.MaxRecipients < 1 {
			bad(sk+".max_recipients", "at least 1")
		}
		if s.MessagesPerMinute < 0 || s.MaxMessageBytes < 0 {
			bad(sk, "limits cannot be negative")
		}
	case u.Kind.Microsoft():
		errs = append(errs, u.M365.validate(k+".m365", u.Kind)...)
	case u.Kind == "":
		bad(k+".kind", "missing: want one of %s", kindList())
	default:
		bad(k+".kind", "%q: want one of %s", u.Kind, kindList())
	}
	return errs
}
