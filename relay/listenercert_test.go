package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// TestListenerCertificateFromSecret: tls.cert_file with tls.key_secret
// (what `creds put NAME -kind tls-certificate` provides over the tailnet)
// is the certificate devices get on STARTTLS; a new one put under the
// same name is served after the reload that follows, without a restart.
func TestListenerCertificateFromSecret(t *testing.T) {
	ca := upstreamtest.NewTestCA(t)
	dir := relaytest.StateDir(t)
	store := &secretMap{m: map[string]string{}}
	provision := func() *x509.Certificate {
		c := ca.ServerCert(t, "relay-plant-a.plant.test")
		der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		p := layout.Dir(dir).Certificate("lan")
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
			t.Fatal(err)
		}
		store.put("lan", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
		return c.Leaf
	}
	first := provision()
	cfg := config.Default()
	cfg.Listeners[0].Address = "127.0.0.1:0"
	cfg.Listeners[0].StartTLS = new(true)
	cfg.TLS = config.TLS{CertFile: "certs/lan.pem", KeySecret: "lan"}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	r, err := New(cfg, dir, Deps{Secret: store.get})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	served := func() *x509.Certificate {
		t.Helper()
		c, err := smtp.DialStartTLS(r.Addrs()[0].String(), &tls.Config{RootCAs: ca.Pool, ServerName: "relay-plant-a.plant.test"})
		if err != nil {
			t.Fatalf("STARTTLS with the provisioned certificate: %v", err)
		}
		defer c.Close()
		if err := c.Noop(); err != nil { // the handshake happens on the first command
			t.Fatalf("STARTTLS with the provisioned certificate: %v", err)
		}
		st, _ := c.TLSConnectionState()
		return st.PeerCertificates[0]
	}
	if got := served(); !got.Equal(first) {
		t.Fatalf("served serial %v, want the provisioned %v", got.SerialNumber, first.SerialNumber)
	}
	second := provision()
	if err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := served(); !got.Equal(second) {
		t.Errorf("after a new certificate and a reload: served serial %v, want the new %v", got.SerialNumber, second.SerialNumber)
	}
}

// TestListenerTLSKeys: tls.cert_file needs exactly one of key_file and
// key_secret.
func TestListenerTLSKeys(t *testing.T) {
	for _, tc := range []struct {
		tls  config.TLS
		want string // the key of the error; "" for none
	}{
		{config.TLS{CertFile: "certs/lan.pem", KeySecret: "lan"}, ""},
		{config.TLS{CertFile: "lan.crt", KeyFile: "lan.key"}, ""},
		{config.TLS{CertFile: "certs/lan.pem", KeyFile: "lan.key", KeySecret: "lan"}, "tls.key_secret"},
		{config.TLS{CertFile: "certs/lan.pem"}, "tls"},
		{config.TLS{KeySecret: "lan"}, "tls"},
	} {
		cfg := config.Default()
		cfg.TLS = tc.tls
		var got string
		if errs := cfg.Validate(); len(errs) > 0 {
			got = errs[0].(*config.KeyError).Key
		}
		if got != tc.want {
			t.Errorf("%+v: error at %q, want %q", tc.tls, got, tc.want)
		}
	}
}
