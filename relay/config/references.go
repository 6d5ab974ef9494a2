package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/siterelay/siterelay/relay/layout"
)

// Reference is one secret or file a configuration needs from the state
// directory, and the key that names it. References is the one list of
// them: the relay's waiting state, `creds delete`'s refusal and the
// checks of check-config and sitegen all read it, so they cannot disagree
// about what a configuration uses.
type Reference struct {
	// Key is the configuration key that names it, indexed as a reader
	// would write it: "upstream.m365.client_secret_secret",
	// "upstreams.backup.smtp.password_secret", "tls.cert_file".
	Key string `json:"key"`
	// Upstream is the upstream that cannot deliver without it: "upstream"
	// (the one upstream) or "upstreams.NAME"; "" for what is no
	// upstream's (the listeners' certificate, the alert webhook).
	Upstream string `json:"upstream,omitempty"`
	// Secret is the name in the secret store (secrets/NAME), for a
	// *_secret key; File is the path as configured (relative to the
	// state directory, or absolute), for a *_file key. One of them is set.
	Secret string `json:"secret,omitempty"`
	File   string `json:"file,omitempty"`
	// Kind is what it holds, the credential kinds of the admin API
	// ("client-secret", "password", "certificate") for what `relayctl creds
	// put` provides, and "ca-certificate", "tls-certificate", "tls-key",
	// "webhook-url" for the rest.
	Kind string `json:"kind"`
}

// Reference kinds (Reference.Kind).
const (
	RefClientSecret   = "client-secret"
	RefPassword       = "password"
	RefCertificate    = "certificate"
	RefCACertificate  = "ca-certificate"
	RefTLSCertificate = "tls-certificate"
	RefTLSKey         = "tls-key"
	RefWebhookURL     = "webhook-url"
)

// Name is what the reference is called in the state directory: the
// secret's name, or the file's path as configured.
func (r Reference) Name() string {
	if r.Secret != "" {
		return r.Secret
	}
	return r.File
}

// Credential is the name of the credential (`relayctl creds put NAME`)
// that provides the reference, or "" when none can: a secret is its own
// credential; a file is one when it is a provisioned certificate's
// public part (certs/NAME.pem, what `creds put NAME -kind certificate`
// writes).
func (r Reference) Credential() string {
	if r.Secret != "" {
		return r.Secret
	}
	dir, base := filepath.Split(filepath.ToSlash(r.File))
	if name, ok := strings.CutSuffix(base, ".pem"); ok && strings.TrimSuffix(dir, "/") == "certs" && name != "" {
		return name
	}
	return ""
}

// Fix is the command that provides the reference, for relay (the name
// relayctl knows the box by; "NAME" when unknown), or, for a file no
// credential provides, what to do instead.
func (r Reference) Fix(relay string) string {
	if relay == "" {
		relay = "NAME"
	}
	cred := r.Credential()
	if cred == "" {
		return "put the file " + r.File + " in the relay's state directory (it cannot be sent over the tailnet), or change " + r.Key
	}
	put := "relayctl -relay " + relay + " creds put " + cred
	switch r.Kind {
	case RefClientSecret, RefPassword:
		return put + " -kind " + r.Kind + " -from FILE"
	case RefCertificate:
		return put + " -kind certificate -cert CERT.pem -key KEY.pem"
	}
	return put + " -kind password -from FILE" // a webhook URL, a smarthost password: one line
}

// References lists every secret and file c names, sorted by key: those of
// the upstream or upstreams (with routes, every named upstream), the
// listeners' certificate and key, and the alert webhook's URL.
func (c *Config) References() []Reference {
	var out []Reference
	if len(c.Routes) == 0 && len(c.Upstreams) == 0 {
		out = append(out, c.Upstream.References("upstream")...)
	} else {
		for name, u := range c.Upstreams {
			out = append(out, u.References("upstreams."+name)...)
		}
	}
	if c.TLS.CertFile != "" {
		out = append(out, Reference{Key: "tls.cert_file", File: c.TLS.CertFile, Kind: RefTLSCertificate})
	}
	if c.TLS.KeyFile != "" {
		out = append(out, Reference{Key: "tls.key_file", File: c.TLS.KeyFile, Kind: RefTLSKey})
	}
	if w := c.Alerts.Webhook; w != nil && w.URLSecret != "" {
		out = append(out, Reference{Key: "alerts.webhook.url_secret", Secret: w.URLSecret, Kind: RefWebhookURL})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// References lists the secrets and files u needs to deliver; key is where
// u is configured ("upstream", "upstreams.NAME").
func (u Upstream) References(key string) []Reference {
	var out []Reference
	add := func(sub, secret, file, kind string) {
		if secret != "" || file != "" {
			out = append(out, Reference{Key: key + "." + sub, Upstream: key, Secret: secret, File: file, Kind: kind})
		}
	}
	switch u.Kind.Family() {
	case FamilySMTP:
		add("smtp.ca_file", "", u.SMTP.CAFile, RefCACertificate)
		if u.SMTP.Auth != "" {
			add("smtp.password_secret", u.SMTP.PasswordSecret, "", RefPassword)
		}
	case FamilyM365:
		m := u.M365
		add("m365.client_secret_secret", m.ClientSecretSecret, "", RefClientSecret)
		add("m365.certificate_file", "", m.CertificateFile, RefCertificate)
		add("m365.certificate_key_secret", m.CertificateKeySecret, "", RefCertificate)
		add("m365.password_secret", m.PasswordSecret, "", RefPassword)
		add("m365.connector_certificate_file", "", m.ConnectorCertificateFile, RefCertificate)
		add("m365.connector_key_secret", m.ConnectorKeySecret, "", RefCertificate)
	}
	return out
}

// Uses returns the references of c that a credential provides (the
// secret of that name, or its certificate file certs/NAME.pem): what a
// `creds delete NAME` would leave without.
func (c *Config) Uses(credential string) []Reference {
	var out []Reference
	for _, r := range c.References() {
		if r.Credential() == credential {
			out = append(out, r)
		}
	}
	return out
}

// Unmet is a reference the state directory does not satisfy.
type Unmet struct {
	Reference
	// Reason is ReasonMissing, ReasonUnreadable (cannot be read, or a
	// secret others could read) or ReasonMalformed (read, but not what the
	// key needs).
	Reason string `json:"reason"`
	// Detail says what is wrong in words; it never holds the value.
	Detail string `json:"detail"`
}

// Unmet reasons.
const (
	ReasonMissing    = "missing"
	ReasonUnreadable = "unreadable"
	ReasonMalformed  = "malformed"
)

// Check judges every reference of c against the state directory dir, as
// the relay will read them: each named secret present, readable by its
// owner only and well-formed, each file present and parseable. It returns
// what is not so, in key order; nil when the configuration has all it
// needs.
func (c *Config) Check(dir string) []Unmet {
	var out []Unmet
	for _, r := range c.References() {
		if u := CheckReference(dir, r); u != nil {
			out = append(out, *u)
		}
	}
	return out
}

// CheckReference judges one reference against the state directory dir;
// nil when it is there and well-formed.
func CheckReference(dir string, r Reference) *Unmet {
	d := layout.Dir(dir)
	fail := func(reason, format string, a ...any) *Unmet {
		return &Unmet{Reference: r, Reason: reason, Detail: fmt.Sprintf(format, a...)}
	}
	var path string
	if r.Secret != "" {
		if err := validSecretName(r.Secret); err != nil {
			return fail(ReasonMalformed, "%v", err)
		}
		path = d.Secret(r.Secret)
	} else {
		path = d.Resolve(r.File)
	}
	what := "file " + r.File
	if r.Secret != "" {
		what = "secret " + r.Secret
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(ReasonMissing, "%s is not there yet", what)
	case err != nil:
		return fail(ReasonUnreadable, "%s: %v", what, unwrapPath(err))
	case st.IsDir():
		return fail(ReasonMalformed, "%s is a directory", what)
	case r.Secret != "" && st.Mode().Perm()&0o077 != 0:
		return fail(ReasonUnreadable, "%s is readable by others (mode %v): put it again, or chmod 600 it", what, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fail(ReasonUnreadable, "%s: %v", what, unwrapPath(err))
	}
	if p := Malformed(r, b); p != "" {
		return fail(ReasonMalformed, "%s: %s", what, p)
	}
	return nil
}

// Malformed says what is wrong with b as r's content; "" when nothing.
// The words never quote b.
func Malformed(r Reference, b []byte) string {
	text := strings.TrimRight(string(b), "\r\n")
	switch {
	case r.Secret != "" && r.Kind == RefCertificate, r.Kind == RefTLSKey:
		blk, _ := pem.Decode(b)
		if blk == nil || !strings.Contains(blk.Type, "PRIVATE KEY") {
			return "no PEM private key in it"
		}
	case r.Kind == RefCertificate, r.Kind == RefCACertificate, r.Kind == RefTLSCertificate:
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "CERTIFICATE" {
			return "no PEM certificate in it"
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "the certificate does not parse"
		}
	case text == "":
		return "empty"
	case strings.ContainsAny(text, "\r\n\x00"):
		return "holds more than one line"
	}
	return ""
}

// validSecretName is the secret store's rule for names (the relay reads
// nothing else): letters, digits, dashes; no path, no dot file.
func validSecretName(name string) error {
	if name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("secret name %q: use letters, digits, dashes", name)
	}
	return nil
}

// unwrapPath drops the path from a *fs.PathError: the words name the
// secret or file already.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// StateChecker is check-config's judgement of the secrets and files a
// configuration names, against the state directory the box would start
// with: each one missing, unreadable or malformed is a Problem under the key
// that names it, with the command that provides it. relay is the name
// relayctl knows the box by ("" for NAME).
func StateChecker(stateDir, relay string) Checker {
	return func(c *Config) []Problem {
		var ps []Problem
		for _, u := range c.Check(stateDir) {
			ps = append(ps, Problem{Key: u.Key, Msg: fmt.Sprintf("%s is %s (%s); the box would hold that mail until it is there: %s", describe(u.Reference), u.Reason, u.Detail, u.Fix(relay))})
		}
		return ps
	}
}

// ProvisionNotes is what `relayd check-config` (without -state) and
// `sitegen -check` say of the secrets and files a configuration names:
// each must be provisioned before mail can flow, with the command that does
// it. relay is the name relayctl knows the box by ("" for NAME).
func ProvisionNotes(c *Config, relay string) []string {
	var notes []string
	for _, r := range c.References() {
		notes = append(notes, fmt.Sprintf("%s: %s must be provisioned before mail can flow: %s", r.Key, describe(r), r.Fix(relay)))
	}
	return notes
}

func describe(r Reference) string {
	if r.Secret != "" {
		return "secret " + r.Secret
	}
	return "file " + r.File
}
