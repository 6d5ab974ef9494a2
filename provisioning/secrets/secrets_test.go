package secrets

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
)

var now = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

type keyCert struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newCert(t *testing.T, notAfter time.Time) keyCert {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay app"},
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return keyCert{k, c}
}

func (kc keyCert) certPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kc.cert.Raw}))
}

func (kc keyCert) keyPEM() string {
	der, _ := x509.MarshalECPrivateKey(kc.key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
}

func (kc keyCert) pfx(t *testing.T, pw string) []byte {
	b, err := pkcs12.Modern.Encode(kc.key, kc.cert, nil, pw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPut(t *testing.T) {
	good := newCert(t, now.Add(365*24*time.Hour))
	other := newCert(t, now.Add(365*24*time.Hour))
	expired := newCert(t, now.Add(-time.Minute))
	for _, tc := range []struct {
		name  string
		cname string
		p     api.CredentialPut
		field string // "" means accepted
	}{
		{"client secret", "m365-secret", api.CredentialPut{Kind: api.KindClientSecret, Secret: "s3cr3t-value\n"}, ""},
		{"password", "mailbox", api.CredentialPut{Kind: api.KindPassword, Secret: "pw"}, ""},
		{"PEM pair", "app-cert", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: good.certPEM(), KeyPEM: good.keyPEM()}, ""},
		{"PFX", "app-pfx", api.CredentialPut{Kind: api.KindCertificate, PFX: good.pfx(t, "pfx-pass"), PFXPassword: "pfx-pass"}, ""},
		{"TLS certificate", "lan", api.CredentialPut{Kind: api.KindTLSCertificate, CertificatePEM: good.certPEM(), KeyPEM: good.keyPEM()}, ""},
		{"TLS key does not match", "a", api.CredentialPut{Kind: api.KindTLSCertificate, CertificatePEM: good.certPEM(), KeyPEM: other.keyPEM()}, "key_pem"},
		{"TLS without key", "a", api.CredentialPut{Kind: api.KindTLSCertificate, CertificatePEM: good.certPEM()}, "key_pem"},
		{"bad name", "../etc", api.CredentialPut{Kind: api.KindPassword, Secret: "x"}, "name"},
		{"join key name", "tailnet-authkey", api.CredentialPut{Kind: api.KindPassword, Secret: "x"}, "name"},
		{"no kind", "a", api.CredentialPut{Secret: "x"}, "kind"},
		{"odd kind", "a", api.CredentialPut{Kind: "token", Secret: "x"}, "kind"},
		{"empty secret", "a", api.CredentialPut{Kind: api.KindClientSecret, Secret: "\n"}, "secret"},
		{"two lines", "a", api.CredentialPut{Kind: api.KindClientSecret, Secret: "a\nb"}, "secret"},
		{"secret with cert fields", "a", api.CredentialPut{Kind: api.KindClientSecret, Secret: "a", KeyPEM: "k"}, "kind"},
		{"PEM does not parse", "a", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", KeyPEM: good.keyPEM()}, "certificate_pem"},
		{"key does not parse", "a", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: good.certPEM(), KeyPEM: "not a key"}, "key_pem"},
		{"key does not match", "a", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: good.certPEM(), KeyPEM: other.keyPEM()}, "key_pem"},
		{"expired", "a", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: expired.certPEM(), KeyPEM: expired.keyPEM()}, "certificate_pem"},
		{"key without cert", "a", api.CredentialPut{Kind: api.KindCertificate, KeyPEM: good.keyPEM()}, "certificate_pem"},
		{"PFX wrong password", "a", api.CredentialPut{Kind: api.KindCertificate, PFX: good.pfx(t, "right"), PFXPassword: "not-this-one"}, "pfx_password"},
		{"PFX garbage", "a", api.CredentialPut{Kind: api.KindCertificate, PFX: []byte("garbage"), PFXPassword: "x"}, "pfx"},
		{"PFX expired", "a", api.CredentialPut{Kind: api.KindCertificate, PFX: expired.pfx(t, "p"), PFXPassword: "p"}, "certificate_pem"},
		{"CA with a key", "a", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: good.certPEM(), KeyPEM: good.keyPEM()}, "kind"},
		{"CA with a secret", "a", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: good.certPEM(), Secret: "x"}, "kind"},
		{"CA missing", "a", api.CredentialPut{Kind: api.KindCACertificate}, "certificate_pem"},
		{"CA not PEM", "a", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: "not a certificate"}, "certificate_pem"},
		{"CA expired", "a", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: good.certPEM() + expired.certPEM()}, "certificate_pem"},
		{"CA with expires", "a", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: good.certPEM(), Expires: now.Add(time.Hour)}, "expires"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := layout.Dir(t.TempDir())
			s := New(dir, func() time.Time { return now })
			cr, err := s.Put(tc.cname, tc.p)
			if tc.field != "" {
				var ae *api.Error
				if !errors.As(err, &ae) || ae.Field != tc.field || ae.Status != 400 {
					t.Fatalf("err = %v, want a 400 naming %s", err, tc.field)
				}
				for _, v := range []string{tc.p.Secret, tc.p.PFXPassword, tc.p.KeyPEM} {
					if v != "" && len(v) > 2 && strings.Contains(ae.Message, strings.TrimSpace(v)) {
						t.Errorf("error %q repeats a secret", ae.Message)
					}
				}
				if ents, _ := os.ReadDir(dir.Secrets()); len(ents) != 0 {
					t.Errorf("refused input wrote %d files", len(ents))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(dir.Secret(tc.cname))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			b, _ := json.Marshal(cr)
			for _, v := range []string{strings.TrimSpace(tc.p.Secret), tc.p.PFXPassword} {
				if v != "" && strings.Contains(string(b), v) {
					t.Errorf("description %s holds the secret", b)
				}
			}
			if tc.p.Kind == api.KindCertificate || tc.p.Kind == api.KindTLSCertificate {
				if cr.Kind != tc.p.Kind || !cr.NotAfter.Equal(good.cert.NotAfter.UTC()) || cr.CertificateFile != "certs/"+tc.cname+".pem" {
					t.Errorf("described as %+v", cr)
				}
				if _, err := os.Stat(dir.Certificate(tc.cname)); err != nil {
					t.Error(err)
				}
				key, _ := os.ReadFile(dir.Secret(tc.cname))
				if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----") {
					t.Errorf("key stored as %.30q, want PKCS #8 PEM", key)
				}
			} else if got, _ := os.ReadFile(dir.Secret(tc.cname)); string(got) != strings.TrimRight(tc.p.Secret, "\n") {
				t.Errorf("stored %q", got)
			}
		})
	}
}

func TestListUsedDelete(t *testing.T) {
	dir := layout.Dir(t.TempDir())
	s := New(dir, func() time.Time { return now })
	if _, err := s.Put("b", api.CredentialPut{Kind: api.KindPassword, Secret: "pw-value"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put("a", api.CredentialPut{Kind: api.KindClientSecret, Secret: "cs-value"}); err != nil {
		t.Fatal(err)
	}
	s.Used("a")
	l, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].Name != "a" || l[1].Name != "b" || !l[0].LastUsed.Equal(now) || !l[1].LastUsed.IsZero() {
		t.Fatalf("list = %+v", l)
	}
	if l[0].Fingerprint == l[1].Fingerprint || !strings.HasPrefix(l[0].Fingerprint, FingerprintPrefix) {
		t.Errorf("fingerprints %q %q", l[0].Fingerprint, l[1].Fingerprint)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	var ae *api.Error
	if err := s.Delete("a"); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("second delete: %v, want 404", err)
	}
	if l, _ := s.List(); len(l) != 1 {
		t.Errorf("after delete: %+v", l)
	}
}

// TestLastUseSurvivesRestart: the last use is written into the
// credential's description (at most hourly), read back by a new Store
// (a restart), and a new value starts without one.
func TestLastUseSurvivesRestart(t *testing.T) {
	dir := layout.Dir(t.TempDir())
	clock := now
	tick := func() time.Time { return clock }
	s := New(dir, tick)
	if _, err := s.Put("cs", api.CredentialPut{Kind: api.KindClientSecret, Secret: "cs-value"}); err != nil {
		t.Fatal(err)
	}
	lastUse := func(s *Store) time.Time {
		t.Helper()
		l, err := s.List()
		if err != nil || len(l) != 1 {
			t.Fatalf("list = %+v, %v", l, err)
		}
		return l[0].LastUsed
	}
	for _, tc := range []struct {
		name          string
		at            time.Duration // after now
		use           bool
		putAgain      bool
		wantLive      time.Duration // -1: none
		wantRestarted time.Duration
	}{
		{name: "never used", wantLive: -1, wantRestarted: -1},
		{name: "first use is written", use: true, wantLive: 0, wantRestarted: 0},
		{name: "a use 10 minutes later is in memory only", at: 10 * time.Minute, use: true, wantLive: 10 * time.Minute, wantRestarted: 0},
		{name: "a use over an hour after the written one is written", at: 61 * time.Minute, use: true, wantLive: 61 * time.Minute, wantRestarted: 61 * time.Minute},
		{name: "a new value has not been used", at: 70 * time.Minute, putAgain: true, wantLive: -1, wantRestarted: -1},
		{name: "and its first use is written", at: 71 * time.Minute, use: true, wantLive: 71 * time.Minute, wantRestarted: 71 * time.Minute},
	} {
		clock = now.Add(tc.at)
		if tc.putAgain {
			if _, err := s.Put("cs", api.CredentialPut{Kind: api.KindClientSecret, Secret: "cs-value-2"}); err != nil {
				t.Fatal(err)
			}
		}
		if tc.use {
			s.Used("cs")
		}
		want := func(d time.Duration) time.Time {
			if d < 0 {
				return time.Time{}
			}
			return now.Add(d).UTC()
		}
		if got := lastUse(s); !got.Equal(want(tc.wantLive)) {
			t.Errorf("%s: got last use %v, want %v", tc.name, got, want(tc.wantLive))
		}
		if got := lastUse(New(dir, tick)); !got.Equal(want(tc.wantRestarted)) {
			t.Errorf("%s, after a restart: got last use %v, want %v", tc.name, got, want(tc.wantRestarted))
		}
	}
	// A hand-put secret (no description) is remembered in memory only.
	if err := os.WriteFile(dir.Secret("byhand"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Used("byhand")
	if _, err := os.Stat(dir.SecretMeta("byhand")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a description was written for a hand-put secret: %v", err)
	}
}

func TestNewCertificate(t *testing.T) {
	dir := layout.Dir(t.TempDir())
	s := New(dir, func() time.Time { return now })
	res, err := s.NewCertificate("entra", api.NewCertificate{Days: 90, Subject: "CN=relay plant7"})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(res.CertificatePEM))
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := c.PublicKey.(interface{ Size() int })
	if !ok || k.Size()*8 != BoxKeyBits || c.Subject.CommonName != "relay plant7" || !c.NotAfter.Equal(now.AddDate(0, 0, 90)) {
		t.Errorf("certificate %q, key %v bits, until %v", c.Subject.CommonName, k, c.NotAfter)
	}
	s1, s256 := Thumbprints(c)
	if res.ThumbprintSHA1 != s1 || res.ThumbprintSHA256 != s256 || len(s1) != 40 || len(s256) != 64 || !res.NotAfter.Equal(c.NotAfter) {
		t.Errorf("answer %+v", res)
	}
	if res.Credential.Origin != api.OriginBox || res.Credential.CertificateFile != "certs/entra.pem" || len(res.NextSteps) < 3 {
		t.Errorf("answer %+v", res)
	}
	b, _ := json.Marshal(res)
	if strings.Contains(string(b), "PRIVATE") {
		t.Error("the answer holds the private key")
	}
	st, err := os.Stat(dir.Secret("entra"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", st, err)
	}
	if st, err := os.Stat(dir.Certificate("entra")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("certificate file %v %v, want mode 0600 as every state file", st, err)
	}
	key, _ := os.ReadFile(dir.Secret("entra"))
	if kb, _ := pem.Decode(key); kb == nil || kb.Type != "PRIVATE KEY" {
		t.Error("the key file is not PKCS #8 PEM")
	}
	l, _ := s.List()
	if len(l) != 1 || l[0].Origin != api.OriginBox || !l[0].NotAfter.Equal(c.NotAfter) {
		t.Errorf("list %+v", l)
	}
	tests := []struct {
		name, cred string
		r          api.NewCertificate
		code       string
	}{
		{"in use", "entra", api.NewCertificate{}, api.CodeConflict},
		{"too long", "other", api.NewCertificate{Days: MaxCertDays + 1}, api.CodeBadRequest},
		{"negative", "other", api.NewCertificate{Days: -1}, api.CodeBadRequest},
		{"bad subject", "other", api.NewCertificate{Subject: "CN=a,O=b"}, api.CodeBadRequest},
		{"bad name", "Other", api.NewCertificate{}, api.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.NewCertificate(tt.cred, tt.r)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != tt.code {
				t.Errorf("got %v, want %s", err, tt.code)
			}
		})
	}
}

func TestSecretExpiry(t *testing.T) {
	s := New(layout.Dir(t.TempDir()), func() time.Time { return now })
	exp := now.AddDate(0, 6, 0)
	cr, err := s.Put("app", api.CredentialPut{Kind: api.KindClientSecret, Secret: "v", Expires: exp})
	if err != nil || !cr.NotAfter.Equal(exp) || cr.Origin != api.OriginAdmin {
		t.Fatalf("put: %+v, %v", cr, err)
	}
	l, _ := s.List()
	if len(l) != 1 || !l[0].NotAfter.Equal(exp) {
		t.Errorf("list %+v", l)
	}
	if kind, until := s.Expiry("app"); kind != api.KindClientSecret || !until.Equal(exp) {
		t.Errorf("Expiry = %q %v, want client-secret %v (what the relay warns from)", kind, until, exp)
	}
	if kind, until := s.Expiry("none"); kind != "" || !until.IsZero() {
		t.Errorf("Expiry of nothing = %q %v", kind, until)
	}
	if _, err := s.Put("app", api.CredentialPut{Kind: api.KindPassword, Secret: "v", Expires: now.Add(-time.Hour)}); err == nil {
		t.Error("an expiry in the past was taken")
	}
	kc := newCert(t, now.Add(time.Hour))
	if _, err := s.Put("cert", api.CredentialPut{Kind: api.KindCertificate, CertificatePEM: kc.certPEM(), KeyPEM: kc.keyPEM(), Expires: exp}); err == nil {
		t.Error("an expiry given for a certificate was taken")
	}
}

// What viewers see of a password (the status carries List) is nothing
// they can test a guess against without the box's key: no bare SHA-256 of
// the value, and another box gives the same value another fingerprint.
// A description written before fingerprints were keyed is shown keyed too.
func TestFingerprintsNotGuessable(t *testing.T) {
	const pw = "Winter2026!"
	sum := sha256.Sum256([]byte(pw))
	bare := hex.EncodeToString(sum[:])
	list := func(dir layout.Dir) (string, string) {
		s := New(dir, func() time.Time { return now })
		l, err := s.List()
		if err != nil || len(l) != 1 {
			t.Fatalf("list = %+v, %v", l, err)
		}
		b, _ := json.Marshal(l)
		return l[0].Fingerprint, string(b)
	}
	var fps []string
	for range 2 {
		dir := layout.Dir(t.TempDir())
		if _, err := New(dir, nil).Put("m365-password", api.CredentialPut{Kind: api.KindPassword, Secret: pw}); err != nil {
			t.Fatal(err)
		}
		fp, all := list(dir)
		for n := 8; n <= len(bare); n += 2 {
			// 4 bytes and more of the bare hash anywhere is a leak (fewer
			// hex digits can occur by chance).
			if strings.Contains(all, bare[:n]) {
				t.Fatalf("the list holds %d hex digits of sha256(password): %s", n, all)
			}
		}
		if !strings.HasPrefix(fp, FingerprintPrefix) {
			t.Errorf("fingerprint %q, want %s...", fp, FingerprintPrefix)
		}
		if again, _ := list(dir); again != fp {
			t.Errorf("fingerprint changed on reopening: %q then %q", fp, again)
		}
		st, err := os.Stat(dir.FingerprintKey())
		if err != nil || st.Mode().Perm() != 0o600 || st.Size() != 32 {
			t.Errorf("fingerprint key: %v %v", st, err)
		}
		// An old, bare description is shown keyed.
		os.WriteFile(dir.SecretMeta("m365-password"), []byte(`{"kind":"password","fingerprint":"sha256:`+bare[:16]+`"}`), 0o600)
		if got, all := list(dir); got != fp || strings.Contains(all, bare[:16]) {
			t.Errorf("old description shown as %q (%s), want %q", got, all, fp)
		}
		fps = append(fps, fp)
	}
	if fps[0] == fps[1] {
		t.Errorf("two boxes give the same password the same fingerprint %q", fps[0])
	}
}

// TestPutCACertificate: a CA certificate put goes through the one writer
// to certs/NAME.pem (0600 like every state file), which a ca_file key
// names; it is listed with its fingerprint and earliest expiry, and a
// delete takes the file away.
func TestPutCACertificate(t *testing.T) {
	dir := layout.Dir(t.TempDir())
	s := New(dir, func() time.Time { return now })
	a, b := newCert(t, now.Add(365*24*time.Hour)), newCert(t, now.Add(30*24*time.Hour))
	cr, err := s.Put("proxy-ca", api.CredentialPut{Kind: api.KindCACertificate, CertificatePEM: "comment line\n" + a.certPEM() + b.certPEM()})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(a.cert.Raw)
	want := api.Credential{Name: "proxy-ca", Kind: api.KindCACertificate, Fingerprint: "sha256:" + hex.EncodeToString(sum[:]), Updated: now,
		NotAfter: b.cert.NotAfter.UTC(), CertificateFile: "certs/proxy-ca.pem", Origin: api.OriginAdmin}
	if *cr != want {
		t.Errorf("Put = %+v\nwant %+v", *cr, want)
	}
	got, err := os.ReadFile(dir.Certificate("proxy-ca"))
	if err != nil || string(got) != a.certPEM()+b.certPEM() {
		t.Fatalf("certs/proxy-ca.pem = %q, %v; want both certificates, nothing else", got, err)
	}
	if st, _ := os.Stat(dir.Certificate("proxy-ca")); st.Mode().Perm() != 0o600 {
		t.Errorf("certs/proxy-ca.pem mode %v, want 0600", st.Mode().Perm())
	}
	if ref := (config.Reference{Key: "upstream.m365.ca_file", File: "certs/proxy-ca.pem", Kind: config.RefCACertificate}); config.CheckReference(string(dir), ref) != nil {
		t.Errorf("the relay's check refuses what Put wrote: %+v", config.CheckReference(string(dir), ref))
	}
	l, err := s.List()
	if err != nil || len(l) != 1 || l[0] != want {
		t.Errorf("List = %+v, %v; want [%+v]", l, err, want)
	}
	if err := s.Delete("proxy-ca"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir.Certificate("proxy-ca")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Delete certs/proxy-ca.pem: %v, want gone", err)
	}
}
