// Package certs gives the plant-side listeners a certificate: the one the
// admin configured, or a self-signed one made on first start and kept in
// the state directory, so that STARTTLS always works even on a box nobody
// has provisioned yet (devices that check certificates can be given the
// configured one later).
package certs

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// LoadOrCreate returns the pair in certFile/keyFile when both are given;
// otherwise the self-signed pair in dir (relay.crt, relay.key), creating it
// for hostname when absent.
func LoadOrCreate(dir, certFile, keyFile, hostname string, now time.Time) (tls.Certificate, error) {
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("loading tls.cert_file/tls.key_file: %w", err)
		}
		return c, nil
	}
	cf, kf := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	c, err := tls.LoadX509KeyPair(cf, kf)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("loading the self-signed certificate in %s (delete both files to make a new one): %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	certPEM, keyPEM, err := SelfSigned(hostname, now)
	if err != nil {
		return tls.Certificate{}, err
	}
	// Key first: a crash between the two leaves a key without a
	// certificate, which the next start replaces.
	if err := durable.WriteFile(kf, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := durable.WriteFile(cf, certPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// Getter returns the certificate for a handshake: the configured or stored
// pair at once, or, when the self-signed pair has yet to be made (a box's
// first start), one generated in the background. Generating an RSA key
// takes seconds on a small box (or under emulation) and needs the kernel's
// random pool, so the listeners do not wait for it: only a STARTTLS in
// those first seconds does.
func Getter(dir, certFile, keyFile, hostname string, now time.Time) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	if certFile != "" || stored(dir) {
		c, err := LoadOrCreate(dir, certFile, keyFile, hostname, now)
		if err != nil {
			return nil, err
		}
		return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &c, nil }, nil
	}
	var c tls.Certificate
	var err error
	ready := make(chan struct{})
	go func() {
		defer close(ready)
		c, err = LoadOrCreate(dir, "", "", hostname, now)
	}()
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		<-ready
		if err != nil {
			return nil, err
		}
		return &c, nil
	}, nil
}

func stored(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "relay.crt"))
	return err == nil
}

// SelfSigned makes an RSA-2048 certificate for hostname valid for ten
// years. RSA rather than ECDSA because the old printers that need TLS 1.0
// often support nothing else.
func SelfSigned(hostname string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"siterelay (self-signed)"}},
		DNSNames:     []string{hostname},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// NotAfter is when the listeners' certificate expires: the first
// certificate in certFile when given, else the self-signed one in dir. It
// reads the file, not the certificate a Getter holds, so a metric can ask
// at any time without waiting for a first start's key generation;
// os.ErrNotExist while that has not finished.
func NotAfter(dir, certFile string) (time.Time, error) {
	if certFile == "" {
		certFile = filepath.Join(dir, "relay.crt")
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return time.Time{}, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return time.Time{}, fmt.Errorf("%s: no PEM certificate", certFile)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return time.Time{}, fmt.Errorf("%s: %w", certFile, err)
			}
			return c.NotAfter, nil
		}
	}
}
