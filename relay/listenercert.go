package relay

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"

	"github.com/siterelay/siterelay/relay/certs"
	"github.com/siterelay/siterelay/relay/config"
)

// listenerCertKey says when a reload must load the listeners' certificate
// again: another file, key or host name, or another certificate in the
// same file (`creds put NAME -kind tls-certificate` replaces certs/NAME.pem
// and reloads, and the devices must get the new one).
func (r *Relay) listenerCertKey(cfg *config.Config, hostname string) string {
	k := cfg.TLS.CertFile + "\x00" + cfg.TLS.KeyFile + "\x00" + cfg.TLS.KeySecret + "\x00" + hostname
	if cfg.TLS.CertFile != "" {
		if b, err := os.ReadFile(r.dir.Resolve(cfg.TLS.CertFile)); err == nil {
			sum := sha256.Sum256(b)
			k += "\x00" + string(sum[:])
		}
	}
	return k
}

// listenerCert is the listeners' STARTTLS certificate: tls.cert_file with
// its key from the secret store (tls.key_secret) or from tls.key_file, or
// the self-signed one certs makes.
func (r *Relay) listenerCert(cfg *config.Config, hostname string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	t := cfg.TLS
	if t.KeySecret == "" {
		return certs.Getter(r.dir.TLS(), r.dir.Resolve(t.CertFile), r.dir.Resolve(t.KeyFile), hostname, r.d.Clock())
	}
	if r.d.Secret == nil {
		return nil, errors.New("tls.key_secret: no secret store")
	}
	certPEM, err := os.ReadFile(r.dir.Resolve(t.CertFile))
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file: %w", err)
	}
	key, err := r.d.Secret(t.KeySecret)
	if err != nil {
		return nil, fmt.Errorf("tls.key_secret: reading secret %q: %w", t.KeySecret, err)
	}
	pair, err := tls.X509KeyPair(certPEM, key)
	if err != nil {
		// tls's words describe the mismatch, never the key.
		return nil, fmt.Errorf("tls.cert_file and tls.key_secret %q do not form a pair: %w", t.KeySecret, err)
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }, nil
}
