// Package secrets is the write side of the relay's secret store: the admin
// API puts client secrets, passwords and certificates here, checked before
// anything is written, each value in its own 0600 file written durably. A
// value is never read back out of this package: List gives name, kind,
// fingerprint, expiry and last use only. The relay reads the values with
// the appliance's read side (secretStore).
package secrets

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/layout"
)

// Store is the secret store of a state directory.
type Store struct {
	dir   layout.Dir
	clock func() time.Time

	keyMu sync.Mutex
	key   []byte // the fingerprint key, once read or made

	mu   sync.Mutex
	used map[string]time.Time // last use seen by this process
	kept map[string]time.Time // last use written to the credential's description
}

// New opens the store of dir; clock nil means time.Now.
func New(dir layout.Dir, clock func() time.Time) *Store {
	if clock == nil {
		clock = time.Now
	}
	return &Store{dir: dir, clock: clock, used: map[string]time.Time{}, kept: map[string]time.Time{}}
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidName says whether name may name a secret: lower-case letters,
// digits, dash and underscore, so it is also a safe file name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "name",
			Message: fmt.Sprintf("credential name %q: use 1 to 63 lower-case letters, digits, dashes or underscores", name)}
	}
	if name == layout.TailnetKeyFile {
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "name", Message: "the tailnet join key is not managed through the API"}
	}
	return nil
}

func invalid(field, msg string) error {
	return &api.Error{Status: 400, Code: api.CodeInvalidCred, Field: field, Message: msg}
}

// meta is kept in layout.Dir.SecretMeta.
type meta struct {
	Kind            string    `json:"kind"`
	Fingerprint     string    `json:"fingerprint"`
	Updated         time.Time `json:"updated"`
	NotAfter        time.Time `json:"not_after,omitzero"`
	CertificateFile string    `json:"certificate_file,omitempty"`
	LastUsed        time.Time `json:"last_used,omitzero"`
	Origin          string    `json:"origin,omitempty"`
	// KeyID is the key credential's id at the app registration, when the
	// box knows it (it chose it, or addKey answered it): renewal removes
	// the old key by it.
	KeyID string `json:"key_id,omitempty"`
}

// keepUsedEvery is how stale the last use on disk may get: List shows it
// to the day, and a busy relay must not write a file per message.
const keepUsedEvery = time.Hour

// Put checks p and stores it under name. Nothing is written unless every
// check passed.
func (s *Store) Put(name string, p api.CredentialPut) (*api.Credential, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	now := s.clock()
	m := meta{Kind: p.Kind, Updated: now.UTC(), Origin: api.OriginAdmin}
	var value, certPEM []byte
	switch p.Kind {
	case api.KindClientSecret, api.KindPassword:
		if p.CertificatePEM != "" || p.KeyPEM != "" || p.PFX != nil || p.PFXPassword != "" {
			return nil, invalid("kind", p.Kind+" takes only secret")
		}
		if !p.Expires.IsZero() {
			if !p.Expires.After(now) {
				return nil, invalid("expires", fmt.Sprintf("%s is past: a "+p.Kind+" that has expired does not work", p.Expires.UTC().Format(time.DateOnly)))
			}
			m.NotAfter = p.Expires.UTC()
		}
		v := strings.TrimRight(p.Secret, "\r\n")
		switch {
		case v == "":
			return nil, invalid("secret", "empty: give the "+p.Kind+" (from a file or stdin with relayctl)")
		case len(v) > 4096:
			return nil, invalid("secret", "longer than 4096 bytes")
		case strings.ContainsAny(v, "\r\n\x00"):
			return nil, invalid("secret", "holds a line break or NUL: give one line")
		}
		value = []byte(v)
		fp, err := s.secretFingerprint(value)
		if err != nil {
			return nil, err
		}
		m.Fingerprint = fp
	case api.KindCertificate, api.KindTLSCertificate:
		if p.Secret != "" {
			return nil, invalid("secret", "a certificate takes certificate_pem and key_pem, or pfx and pfx_password")
		}
		if !p.Expires.IsZero() {
			return nil, invalid("expires", "a certificate's expiry is read from the certificate")
		}
		var err error
		certPEM, value, err = certificate(p, now)
		if err != nil {
			return nil, err
		}
		leaf, _ := pem.Decode(certPEM)
		c, _ := x509.ParseCertificate(leaf.Bytes)
		sum := sha256.Sum256(c.Raw)
		m.Fingerprint = "sha256:" + hex.EncodeToString(sum[:])
		m.NotAfter = c.NotAfter.UTC()
		m.CertificateFile = filepath.ToSlash(filepath.Join("certs", name+".pem"))
	case api.KindCACertificate:
		var err error
		if certPEM, m.NotAfter, err = caCertificates(p, now); err != nil {
			return nil, err
		}
		first, _ := pem.Decode(certPEM)
		sum := sha256.Sum256(first.Bytes)
		m.Fingerprint = "sha256:" + hex.EncodeToString(sum[:])
		m.CertificateFile = filepath.ToSlash(filepath.Join("certs", name+".pem"))
		// Nothing in it is secret: the store's own file of the
		// credential (what List, Delete and Used go by) holds the same
		// public PEM.
		value = certPEM
	case "":
		return nil, invalid("kind", "missing: "+kinds)
	default:
		return nil, invalid("kind", fmt.Sprintf("%q: want %s", p.Kind, kinds))
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return s.write(name, certPEM, value, m, mb)
}

// write stores a credential's files, for Put and the box-made
// certificates alike: the public part first (certPEM, when not nil), then
// the secret, then what describes them, each 0600, so a crash in between
// leaves a complete pair or the old one in use. A new value has not been
// used yet; the lock keeps Used from writing the old description back.
func (s *Store) write(name string, certPEM, value []byte, m meta, mb []byte) (*api.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.used, name)
	delete(s.kept, name)
	if certPEM != nil {
		if err := durable.WriteFile(s.dir.Certificate(name), certPEM, 0o600); err != nil {
			return nil, fmt.Errorf("storing credential %s: %w", name, err)
		}
	}
	if err := durable.WriteFile(s.dir.Secret(name), value, 0o600); err != nil {
		return nil, fmt.Errorf("storing credential %s: %w", name, err)
	}
	if err := durable.WriteFile(s.dir.SecretMeta(name), mb, 0o600); err != nil {
		return nil, fmt.Errorf("storing credential %s: %w", name, err)
	}
	return s.describeLocked(name, m), nil
}

// kinds are the credential kinds Put takes, for its refusals.
const kinds = "client-secret, password, certificate, ca-certificate or tls-certificate"

// caCertificates checks a CA certificate put (certificates only, each
// parseable and not expired) and returns them as PEM and the earliest
// expiry among them.
func caCertificates(p api.CredentialPut, now time.Time) ([]byte, time.Time, error) {
	switch {
	case p.Secret != "" || p.KeyPEM != "" || p.PFX != nil || p.PFXPassword != "":
		return nil, time.Time{}, invalid("kind", "a ca-certificate takes only certificate_pem: CA certificates are public, with no key")
	case !p.Expires.IsZero():
		return nil, time.Time{}, invalid("expires", "a certificate's expiry is read from the certificate")
	case p.CertificatePEM == "":
		return nil, time.Time{}, invalid("certificate_pem", "missing: give the CA certificates (PEM)")
	}
	cas, err := parseCerts([]byte(p.CertificatePEM))
	if err != nil {
		return nil, time.Time{}, invalid("certificate_pem", err.Error())
	}
	var out []byte
	var notAfter time.Time
	for _, c := range cas {
		if now.After(c.NotAfter) {
			return nil, time.Time{}, invalid("certificate_pem", fmt.Sprintf("%q expired on %s", c.Subject.CommonName, c.NotAfter.UTC().Format(time.DateOnly)))
		}
		if notAfter.IsZero() || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter.UTC()
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out, notAfter, nil
}

// certificate checks a certificate and its key and returns the chain and
// the key, both PEM (the key as PKCS #8).
func certificate(p api.CredentialPut, now time.Time) (certPEM, keyPEM []byte, err error) {
	var chain []*x509.Certificate
	var key any
	switch {
	case p.PFX != nil:
		if p.CertificatePEM != "" || p.KeyPEM != "" {
			return nil, nil, invalid("pfx", "give a PFX or PEM files, not both")
		}
		k, leaf, cas, err := pkcs12.DecodeChain(p.PFX, p.PFXPassword)
		if err != nil {
			if errors.Is(err, pkcs12.ErrIncorrectPassword) {
				return nil, nil, invalid("pfx_password", "wrong password for the PFX")
			}
			return nil, nil, invalid("pfx", "not a PFX (PKCS #12) file this relay can read: "+err.Error())
		}
		chain, key = append([]*x509.Certificate{leaf}, cas...), k
	case p.CertificatePEM != "" || p.KeyPEM != "":
		if p.CertificatePEM == "" {
			return nil, nil, invalid("certificate_pem", "missing: the certificate goes with its key")
		}
		if p.KeyPEM == "" {
			return nil, nil, invalid("key_pem", "missing: the key goes with its certificate")
		}
		pair, err := tls.X509KeyPair([]byte(p.CertificatePEM), []byte(p.KeyPEM))
		if err != nil {
			field := "key_pem"
			if _, cerr := parseCerts([]byte(p.CertificatePEM)); cerr != nil {
				return nil, nil, invalid("certificate_pem", cerr.Error())
			}
			msg := "does not parse as a PEM private key"
			if blk, _ := pem.Decode([]byte(p.KeyPEM)); blk != nil && strings.Contains(err.Error(), "does not match") {
				msg = "does not match the certificate's public key"
			}
			return nil, nil, invalid(field, msg)
		}
		chain, err = parseCerts([]byte(p.CertificatePEM))
		if err != nil {
			return nil, nil, invalid("certificate_pem", err.Error())
		}
		key = pair.PrivateKey
	default:
		return nil, nil, invalid("certificate_pem", "missing: give certificate_pem and key_pem, or pfx and pfx_password")
	}
	leaf := chain[0]
	if pub, ok := key.(interface{ Public() crypto.PublicKey }); !ok || !samePublic(pub.Public(), leaf.PublicKey) {
		return nil, nil, invalid("key_pem", "does not match the certificate's public key")
	}
	if now.After(leaf.NotAfter) {
		return nil, nil, invalid("certificate_pem", fmt.Sprintf("expired on %s", leaf.NotAfter.UTC().Format(time.DateOnly)))
	}
	if now.Before(leaf.NotBefore) {
		return nil, nil, invalid("certificate_pem", fmt.Sprintf("not valid before %s (is the clock right?)", leaf.NotBefore.UTC().Format(time.RFC3339)))
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, invalid("key_pem", "key type not supported: "+err.Error())
	}
	for _, c := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func samePublic(a, b any) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate does not parse: %v", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}

// Delete removes a credential.
func (s *Store) Delete(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.used, name)
	delete(s.kept, name)
	err := os.Remove(s.dir.Secret(name))
	if errors.Is(err, fs.ErrNotExist) {
		return &api.Error{Status: 404, Code: api.CodeNotFound, Field: "name", Message: "no credential " + name}
	}
	if err != nil {
		return fmt.Errorf("deleting credential %s: %w", name, err)
	}
	os.Remove(s.dir.SecretMeta(name))
	os.Remove(s.dir.Certificate(name))
	durable.SyncDir(s.dir.Secrets())
	return nil
}

// List describes every credential, by name.
func (s *Store) List() ([]api.Credential, error) {
	ents, err := os.ReadDir(s.dir.Secrets())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing credentials: %w", err)
	}
	var out []api.Credential
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || ValidName(name) != nil {
			continue
		}
		var m meta
		if b, err := os.ReadFile(s.dir.SecretMeta(name)); err == nil {
			json.Unmarshal(b, &m)
		} else {
			m.Kind = "unknown" // put by hand, not through the API
			if st, err := e.Info(); err == nil {
				m.Updated = st.ModTime().UTC()
			}
		}
		out = append(out, *s.describe(name, m))
	}
	slices.SortFunc(out, func(a, b api.Credential) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Expiry is what the store knows of secret name's life: its kind and, when
// known (a certificate's, or a client secret's or password's given with
// creds put -expires), its expiry; zero when unknown (relay.Deps.SecretExpiry:
// the metric, status and doctor warn before it).
func (s *Store) Expiry(name string) (kind string, notAfter time.Time) {
	b, err := os.ReadFile(s.dir.SecretMeta(name))
	if err != nil {
		return "", time.Time{}
	}
	var m meta
	if json.Unmarshal(b, &m) != nil {
		return "", time.Time{}
	}
	return m.Kind, m.NotAfter
}

func (s *Store) describe(name string, m meta) *api.Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.describeLocked(name, m)
}

// FingerprintPrefix starts the fingerprint of a password or client
// secret: the first 8 bytes of HMAC-SHA256 of the value under the box's
// key (layout.Dir.FingerprintKey). A certificate's is "sha256:" and its
// whole thumbprint, which is public anyway.
const FingerprintPrefix = "hmac-sha256:"

// secretFingerprint is value's fingerprint under the box's key, made on
// first use.
func (s *Store) secretFingerprint(value []byte) (string, error) {
	key, err := s.fingerprintKey()
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("siterelay credential fingerprint\x00"))
	m.Write(value)
	return FingerprintPrefix + hex.EncodeToString(m.Sum(nil)[:8]), nil
}

func (s *Store) fingerprintKey() ([]byte, error) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.key != nil {
		return s.key, nil
	}
	path := s.dir.FingerprintKey()
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == 32:
		s.key = b
		return b, nil
	case err == nil:
		return nil, fmt.Errorf("the fingerprint key %s is %d bytes, not 32: remove it and a new one is made", path, len(b))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading the fingerprint key: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := durable.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("making the fingerprint key: %w", err)
	}
	s.key = b
	return b, nil
}

// fingerprint is what is shown of m: a password's or client secret's
// written before fingerprints were keyed (a bare SHA-256 of the value,
// which a viewer could test guesses against) is made again from the
// stored value, or left out.
func (s *Store) fingerprint(name string, m meta) string {
	if m.Kind != api.KindPassword && m.Kind != api.KindClientSecret {
		return m.Fingerprint
	}
	if strings.HasPrefix(m.Fingerprint, FingerprintPrefix) {
		return m.Fingerprint
	}
	v, err := os.ReadFile(s.dir.Secret(name))
	if err != nil {
		return ""
	}
	fp, err := s.secretFingerprint(v)
	if err != nil {
		return ""
	}
	return fp
}

func (s *Store) describeLocked(name string, m meta) *api.Credential {
	m.Fingerprint = s.fingerprint(name, m)
	used := s.used[name]
	if m.LastUsed.After(used) {
		used = m.LastUsed
	}
	return &api.Credential{Name: name, Kind: m.Kind, Fingerprint: m.Fingerprint, Updated: m.Updated,
		NotAfter: m.NotAfter, CertificateFile: m.CertificateFile, LastUsed: used, Origin: m.Origin}
}

// Used records that name did its job (a message went out through an
// upstream that holds it). The time is written into the credential's
// description at most once every keepUsedEvery, so it survives a restart;
// a credential put by hand, without a description, is remembered in
// memory only.
func (s *Store) Used(name string) {
	now := s.clock().UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used[name] = now
	if now.Sub(s.kept[name]) < keepUsedEvery {
		return
	}
	b, err := os.ReadFile(s.dir.SecretMeta(name))
	if err != nil {
		return
	}
	var m meta
	if json.Unmarshal(b, &m) != nil {
		return
	}
	m.LastUsed = now
	if b, err = json.Marshal(m); err == nil && durable.WriteFile(s.dir.SecretMeta(name), b, 0o600) == nil {
		s.kept[name] = now
	}
}
