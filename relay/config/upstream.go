package config

import (
	"fmt"
	"strings"

	"github.com/siterelay/siterelay/relay/layout"
)

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
	switch u.Kind.Family() {
	case FamilyCapture:
		if strings.Contains(u.Capture.Directory, "..") {
			bad(k+".capture.directory", "must stay inside the state directory")
		}
	case FamilySMTP:
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
	case FamilyM365:
		errs = append(errs, u.M365.validate(k+".m365", u.Kind)...)
	default:
		if u.Kind == "" {
			bad(k+".kind", "missing: want one of %s", kindList())
		} else {
			bad(k+".kind", "%q: want one of %s", u.Kind, kindList())
		}
	}
	return errs
}
