package certs

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Roots is base with the CA certificates of the PEM file path added, for
// every ca_file key (upstream.smtp, upstream.m365, forward.syslog): base
// is not changed. A nil base means only the file's certificates (a
// private smarthost's CA); give x509.SystemCertPool() to add to the
// system's (a TLS-inspecting proxy's CA, in front of Microsoft 365).
func Roots(path string, base *x509.CertPool) (*x509.CertPool, error) {
	pemData, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if base != nil {
		pool = base.Clone()
	}
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return pool, nil
}
