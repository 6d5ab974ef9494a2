package upstreamtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestCA issues certificates for fake servers and for clients (connector
// tests present a client certificate). Certificates are valid for a day
// around the real time, because TLS checks them against the real clock.
type TestCA struct {
	Cert *x509.Certificate
	// Pool holds only this CA: give it to clients as RootCAs, or to servers
	// as ClientCAs.
	Pool *x509.CertPool
	key  *ecdsa.PrivateKey
}

var serial atomic.Int64

// NewTestCA makes a fresh CA.
func NewTestCA(t testing.TB) *TestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: "upstreamtest CA", Organization: []string{"siterelay tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &TestCA{Cert: cert, Pool: pool, key: key}
}

// PEM is the CA certificate in PEM form.
func (ca *TestCA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteFile writes the CA certificate as PEM into a test temporary
// directory and returns its path (for CAFile options).
func (ca *TestCA) WriteFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ServerCert issues a server certificate for names; IP literals go into
// the IP SANs, and 127.0.0.1 is always included.
func (ca *TestCA) ServerCert(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	if len(names) == 0 {
		names = []string{"localhost"}
	}
	return ca.Issue(t, names[0], names, x509.ExtKeyUsageServerAuth, 24*time.Hour)
}

// ClientCert issues a client certificate whose CN and DNS SAN are name, as
// a certificate-based connector expects.
func (ca *TestCA) ClientCert(t testing.TB, name string) tls.Certificate {
	t.Helper()
	return ca.Issue(t, name, []string{name}, x509.ExtKeyUsageClientAuth, 24*time.Hour)
}

// RSA issues an RSA client certificate for name (Entra app credentials
// must be RSA) and returns it with its certificate and key in PEM.
func (ca *TestCA) RSA(t testing.TB, name string) (certPEM, keyPEM []byte, cert tls.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cert = ca.issue(t, name, []string{name}, x509.ExtKeyUsageClientAuth, 24*time.Hour, key, &key.PublicKey)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), cert
}

// Issue is the general form: common name, SANs, usage and lifetime from now
// (a short lifetime tests expiry warnings).
func (ca *TestCA) Issue(t testing.TB, cn string, names []string, usage x509.ExtKeyUsage, life time.Duration) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ca.issue(t, cn, names, usage, life, key, &key.PublicKey)
}

func (ca *TestCA) issue(t testing.TB, cn string, names []string, usage x509.ExtKeyUsage, life time.Duration, key crypto.Signer, pub any) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(life),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
