package secrets

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
)

// BoxKeyBits is the size of the RSA keys made on the box. Entra signs and
// checks client assertions only with RSA (alg PS256 or RS256; no ECDSA for
// app certificates), and takes keys of 2048 bits or more; 3072 bits is
// NIST's 128-bit level, good past 2030, and a Raspberry Pi makes one in
// about a second.
const BoxKeyBits = 3072

// Bounds of a box-made certificate's life. Tenants may cap it lower
// (app management policies): Entra then refuses the upload or addKey.
const (
	DefaultCertDays = 365
	MaxCertDays     = 1095
)

// NewCertificate makes an RSA key pair and a self-signed certificate on
// the box for an Entra app registration. The key goes into the secret
// store (0600) and never comes out; the answer holds only the public
// certificate, its thumbprints, its expiry and the next steps. A name in
// use is refused: replacing a key the relay uses would stop mail until the
// new certificate is uploaded (delete the credential first, or renew it).
func (s *Store) NewCertificate(name string, r api.NewCertificate) (*api.NewCertificateResult, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	days := r.Days
	if days == 0 {
		days = DefaultCertDays
	}
	if days < 1 || days > MaxCertDays {
		return nil, &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "days", Message: fmt.Sprintf("%d days: give 1 to %d", days, MaxCertDays)}
	}
	subject, err := parseSubject(r.Subject, name)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.dir.Secret(name)); err == nil {
		return nil, &api.Error{Status: 409, Code: api.CodeConflict, Field: "name",
			Message: "credential " + name + " exists: pick another name, or delete it first (mail that uses it stops until the new certificate is uploaded)"}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("credential %s: %w", name, err)
	}
	now := s.clock()
	certPEM, keyPEM, cert, err := makeCertificate(subject, now, days)
	if err != nil {
		return nil, err
	}
	keyID, err := newKeyID()
	if err != nil {
		return nil, err
	}
	cr, err := s.store(name, certPEM, keyPEM, cert, now, api.OriginBox, keyID)
	if err != nil {
		return nil, err
	}
	return Describe(cr, cert, certPEM, keyID), nil
}

// newKeyID is a random (version 4) GUID: the key id the box asks the app
// registration to give its certificate, so that renewal can remove it.
func newKeyID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// Current is the certificate and key in force under name and the key id
// the app registration knows it by ("" when unknown): what renewal
// (relay/upstream/m365.Renewer) starts from. It is the relay's read side,
// never an API answer.
func (s *Store) Current(name string) (*x509.Certificate, crypto.Signer, string, error) {
	if err := ValidName(name); err != nil {
		return nil, nil, "", err
	}
	cb, err := os.ReadFile(s.dir.Certificate(name))
	if err != nil {
		return nil, nil, "", fmt.Errorf("credential %s: %w", name, err)
	}
	chain, err := parseCerts(cb)
	if err != nil {
		return nil, nil, "", fmt.Errorf("credential %s: %w", name, err)
	}
	kb, err := os.ReadFile(s.dir.Secret(name))
	if err != nil {
		return nil, nil, "", fmt.Errorf("credential %s: %w", name, err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, nil, "", fmt.Errorf("credential %s: the key is not PKCS #8 PEM", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, "", fmt.Errorf("credential %s: the key does not parse", name)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, "", fmt.Errorf("credential %s: unsupported key type", name)
	}
	var m meta
	if b, err := os.ReadFile(s.dir.SecretMeta(name)); err == nil {
		json.Unmarshal(b, &m)
	}
	return chain[0], signer, m.KeyID, nil
}

// Replace puts a renewed certificate and key in force under name, with
// the key id addKey gave it; origin stays "made on the box".
func (s *Store) Replace(name string, certPEM, keyPEM []byte, keyID string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	chain, err := parseCerts(certPEM)
	if err != nil {
		return err
	}
	_, err = s.store(name, certPEM, keyPEM, chain[0], s.clock(), api.OriginBox, keyID)
	return err
}

// Describe is the answer for a certificate made on the box: only its
// public half and what to do with it.
func Describe(cr *api.Credential, cert *x509.Certificate, certPEM []byte, keyID string) *api.NewCertificateResult {
	s1, s256 := Thumbprints(cert)
	res := &api.NewCertificateResult{Credential: *cr, CertificatePEM: string(certPEM), ThumbprintSHA1: s1, ThumbprintSHA256: s256,
		NotAfter: cert.NotAfter.UTC(), KeyAlgorithm: fmt.Sprintf("RSA %d", BoxKeyBits), KeyID: keyID}
	res.NextSteps = []string{
		"Save the certificate above as " + cr.Name + ".cer (relayctl: -out FILE).",
		"Upload it to the app registration: Microsoft Entra admin center > Identity > Applications > App registrations > (the relay's app) > Certificates & secrets > Certificates > Upload certificate. Entra lists it with thumbprint " + s1 + ".",
		"Or with Azure CLI, adding it beside the app's other certificates: az ad app credential reset --id <application (client) id> --cert @" + cr.Name + ".cer --append",
		"Or with Microsoft Graph PowerShell, giving the key id the box will renew by (appends to the list it reads; another box's upload in between would be lost): $a = Get-MgApplication -Filter \"appId eq '<client id>'\"; Update-MgApplication -ApplicationId $a.Id -KeyCredentials ($a.KeyCredentials + @{KeyId='" + keyID + "'; Type='AsymmetricX509Cert'; Usage='Verify'; Key=[IO.File]::ReadAllBytes('" + cr.Name + ".cer')})",
		"Then point the upstream at it: upstream.m365.certificate_file \"" + cr.CertificateFile + "\" and upstream.m365.certificate_key_secret \"" + cr.Name + "\" (relayctl config), and upstream.m365.application_object_id: the app registration's Object ID (its Overview page; not the Application (client) ID), so that the box renews the certificate itself before it expires on " + cert.NotAfter.UTC().Format(time.DateOnly) + ". If it was uploaded in the portal or with az, the box cannot remove this first certificate from the app after renewing it: remove it there then (key id unknown to the box).",
	}
	return res
}

// Thumbprints are SHA-1 and SHA-256 of the certificate's DER, upper-case
// hex as the Entra portal shows them.
func Thumbprints(c *x509.Certificate) (sha1Hex, sha256Hex string) {
	a, b := sha1.Sum(c.Raw), sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(a[:])), strings.ToUpper(hex.EncodeToString(b[:]))
}

// parseSubject takes "CN=…" (or plain words, taken as the common name).
func parseSubject(s, name string) (pkix.Name, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return pkix.Name{CommonName: "siterelay " + name}, nil
	}
	if cn, ok := strings.CutPrefix(s, "CN="); ok {
		s = cn
	}
	if len(s) > 64 || strings.ContainsAny(s, ",=+\"\\<>;\r\n\x00") {
		return pkix.Name{}, &api.Error{Status: 400, Code: api.CodeBadRequest, Field: "subject", Message: "give CN=NAME with at most 64 characters and no , = + \" \\ < > ;"}
	}
	return pkix.Name{CommonName: s}, nil
}

// makeCertificate makes the key pair and a self-signed client certificate
// valid from 5 minutes ago (clocks differ) for days.
func makeCertificate(subject pkix.Name, now time.Time, days int) (certPEM, keyPEM []byte, cert *x509.Certificate, err error) {
	key, err := rsa.GenerateKey(rand.Reader, BoxKeyBits)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("making a key pair: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("making a serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      subject,
		NotBefore:    now.Add(-5 * time.Minute).UTC(),
		NotAfter:     now.AddDate(0, 0, days).UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("making the certificate: %w", err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), cert, nil
}

// store writes a certificate and its key as Put does, with origin.
func (s *Store) store(name string, certPEM, keyPEM []byte, cert *x509.Certificate, now time.Time, origin, keyID string) (*api.Credential, error) {
	sum := sha256.Sum256(cert.Raw)
	m := meta{Kind: api.KindCertificate, Updated: now.UTC(), Fingerprint: "sha256:" + hex.EncodeToString(sum[:]),
		NotAfter: cert.NotAfter.UTC(), CertificateFile: filepath.ToSlash(filepath.Join("certs", name+".pem")), Origin: origin, KeyID: keyID}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return s.write(name, certPEM, keyPEM, m, mb)
}
