package config

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/strictjson"
)

// Problem is one finding of a check (relayd check-config, sitegen -check):
// the key with its full indexed path (`listeners[0].starttls`; "(document)"
// for the whole) and what is wrong with it, in words that say what to do.
type Problem struct {
	Key string `json:"key"`
	Msg string `json:"problem"`
}

func (p Problem) String() string { return p.Key + ": " + p.Msg }

// Checker adds findings that need more than the document: the secrets and
// files of a state directory, for instance. It runs only on a document that
// could be read.
type Checker func(c *Config) []Problem

// Check judges a configuration document as the box would start it and
// lists every problem at once: unknown keys, wrong types and bad values
// together, then each checker's findings. The Config is nil when any
// problem was found in the document itself (it would not start);
// checkers see the best reading of it even then (values that could not be
// decoded are left at their defaults).
func Check(doc []byte, checkers ...Checker) (*Config, []Problem) {
	var c Config
	derr := strictjson.Decode(doc, &c)
	if strictjson.Unreadable(derr) {
		return nil, Problems(derr)
	}
	var decoding Errors
	errors.As(derr, &decoding)
	c.SetDefaults()
	probs := Problems(strictjson.Merge(decoding, c.Validate()))
	for _, ch := range checkers {
		probs = append(probs, ch(&c)...)
	}
	if len(probs) > 0 {
		return nil, probs
	}
	return &c, nil
}

// Problems turns an error of Parse, Load or strictjson into findings; an
// error that names no key is one finding about the document.
func Problems(err error) []Problem {
	if err == nil {
		return nil
	}
	var errs Errors
	if !errors.As(err, &errs) {
		return []Problem{{Key: "(document)", Msg: err.Error()}}
	}
	out := make([]Problem, 0, len(errs))
	for _, e := range errs {
		var ke *KeyError
		if errors.As(e, &ke) {
			out = append(out, Problem{Key: ke.Key, Msg: ke.Problem})
		} else {
			out = append(out, Problem{Key: "(document)", Msg: e.Error()})
		}
	}
	return out
}

// SecretRef is one secret the configuration names: the key that names it
// and the name (a file in STATE/secrets/).
type SecretRef struct {
	Key, Name string
}

// SecretRefs lists every secret the configuration names, by key.
func (c *Config) SecretRefs() []SecretRef {
	var out []SecretRef
	add := func(key, name string) {
		if name != "" {
			out = append(out, SecretRef{Key: key, Name: name})
		}
	}
	ups := func(k string, u Upstream) {
		add(k+".smtp.password_secret", u.SMTP.PasswordSecret)
		m := u.M365
		add(k+".m365.client_secret_secret", m.ClientSecretSecret)
		add(k+".m365.certificate_key_secret", m.CertificateKeySecret)
		add(k+".m365.password_secret", m.PasswordSecret)
		add(k+".m365.connector_key_secret", m.ConnectorKeySecret)
	}
	ups("upstream", c.Upstream)
	names := make([]string, 0, len(c.Upstreams))
	for n := range c.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ups("upstreams."+n, c.Upstreams[n])
	}
	if w := c.Alerts.Webhook; w != nil {
		add("alerts.webhook.url_secret", w.URLSecret)
	}
	return out
}

// reservedSecrets are secret store names the box keeps for itself; the
// configuration cannot read them (an upstream that names the tailnet's
// join key would send it to a mail server).
var reservedSecrets = map[string]string{
	layout.TailnetKeyFile: "the tailnet join key",
}

var secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidSecretName says whether name can name a secret: letters, digits,
// '.', '-' and '_', not starting with a dot, at most 128 characters (a
// file in the secret store, never a path out of it).
func ValidSecretName(name string) bool { return secretNameRE.MatchString(name) }

// bcryptRE is a whole bcrypt hash: $2a$10$ and 53 characters of salt and
// hash (a cut-off one would match no password, ever).
var bcryptRE = regexp.MustCompile(`^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$`)

// validEHLOName: a host name a device and an upstream read in the banner,
// the EHLO and the Received header: ASCII labels of letters, digits and
// hyphens (not at either end), dots between them.
func validEHLOName(h string) bool {
	if h == "" || len(h) > 253 || strings.HasSuffix(h, ".") {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			b := l[i]
			if !(b == '-' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z') {
				return false
			}
		}
	}
	return true
}

// validateNames checks what the box reads by name: the host name, the
// secrets, the password hashes and the upstreams' ports.
func (c *Config) validateNames() Errors {
	var errs Errors
	if c.Hostname != "" && !validEHLOName(c.Hostname) {
		errs.Bad("hostname", "%q is not a host name (letters, digits, hyphens and dots, no spaces), e.g. \"relay-plant-a.example.com\": devices and upstreams see it in the banner and EHLO", c.Hostname)
	}
	for _, r := range c.SecretRefs() {
		switch {
		case reservedSecrets[r.Name] != "":
			errs.Bad(r.Key, "%q is %s, kept by the box for itself: give the secret a name of its own (relayctl creds put NAME)", r.Name, reservedSecrets[r.Name])
		case !ValidSecretName(r.Name):
			errs.Bad(r.Key, "%q is not a secret name: letters, digits, '.', '-' and '_', not starting with a dot, no '/' (it names a file in STATE/secrets/)", r.Name)
		}
	}
	for i, a := range c.Accounts {
		if strings.HasPrefix(a.PasswordHash, "$2") && !bcryptRE.MatchString(a.PasswordHash) {
			errs.Bad(fmt.Sprintf("accounts[%d].password_hash", i), "not a whole bcrypt hash (60 characters, e.g. $2a$10$ and 53 more; this one has %d): cut off when copied? Make one with `relayd hash-password`", len(a.PasswordHash))
		}
	}
	ports := func(k string, u Upstream) {
		if u.Kind.Family() == FamilySMTP {
			if _, p, err := splitHostPort(u.SMTP.Address); err == nil && p == 0 {
				errs.Bad(k+".smtp.address", "%q: port 0 is no smarthost's port (587 for submission, 465 for implicit TLS, 25)", u.SMTP.Address)
			}
		}
	}
	ports("upstream", c.Upstream)
	for n, u := range c.Upstreams {
		ports("upstreams."+n, u)
	}
	return errs
}

// WriteProblems writes what relayd check-config and sitegen -check print:
// "FILE: N errors:" and one indented "key: problem" line each.
func WriteProblems(w io.Writer, file string, probs []Problem) {
	if len(probs) == 1 {
		fmt.Fprintf(w, "%s: 1 error:\n", file)
	} else {
		fmt.Fprintf(w, "%s: %d errors:\n", file, len(probs))
	}
	for _, p := range probs {
		fmt.Fprintf(w, "  %s\n", p)
	}
}
