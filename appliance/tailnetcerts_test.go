package appliance

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// TestCACertificateOverTheTailnet: a box behind a TLS-inspecting proxy
// (here: a tenant whose certificates a CA of the test's signs, and a box
// with the system's roots only) names the proxy's CA in
// upstream.m365.ca_file before it is there. It waits, naming the file and
// the creds put that sends it; `relayctl creds put NAME -kind
// ca-certificate -cert FILE` writes certs/NAME.pem, and with the client
// secret the held mail reaches the tenant without a restart. The CA is
// listed by creds list, and its delete is refused while in use.
func TestCACertificateOverTheTailnet(t *testing.T) {
	const clientSecret = "Qv8~Entra.client-SECRET-behind-proxy-7c"
	tt := m365test.NewTenantWith(t, m365test.TenantOptions{Secret: clientSecret, Names: []string{"localhost"}})
	tn := provtest.New(t)
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-p","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":%q,"token_url":%q,"client_id":%q,"client_secret_secret":"m365-client-secret","mailbox":%q,"from_mailbox":true,"smtp_host":"127.0.0.1","smtp_port":%d,"ca_file":"certs/proxy-ca.pem"}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, m365test.TenantDomain, tt.Entra.URL, m365test.TenantApp, m365test.TenantMailbox, tt.SMTPPort())
	b := startBox(t, tn, "plant-p", cfg) // no injected roots: the system's and the file
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-p"}, args...) }
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	waiting := func() map[string]api.Waiting {
		t.Helper()
		var st api.Status
		if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "status")...)), &st); err != nil {
			t.Fatal(err)
		}
		m := map[string]api.Waiting{}
		for _, w := range st.Waiting {
			m[w.Key] = w
		}
		return m
	}
	const caFix = "relayctl -relay plant-p creds put proxy-ca -kind ca-certificate -cert CA.pem"
	w := waiting()
	if ca := w["upstream.m365.ca_file"]; len(w) != 2 || ca.File != "certs/proxy-ca.pem" || ca.Reason != "missing" || ca.Fix != caFix {
		t.Errorf("status waiting %+v, want the CA file (fix %q) and the client secret", w, caFix)
	}
	if out := rc.ok("", cmd("status")...); !strings.Contains(out, "certs/proxy-ca.pem") || !strings.Contains(out, caFix) {
		t.Errorf("relayctl status does not name the CA file and its fix:\n%s", out)
	}
	if err := b.send(t, "alarm behind the proxy"); err != nil {
		t.Fatalf("device got %v, want 250 while waiting", err)
	}

	caFile := filepath.Join(t.TempDir(), "proxy-ca.pem")
	if err := os.WriteFile(caFile, tt.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	// Flags a CA does not take are a usage error, nothing sent.
	if code, _, _ := rc.run("", cmd("creds", "put", "proxy-ca", "-kind", "ca-certificate")...); code == 0 {
		t.Error("creds put -kind ca-certificate without -cert succeeded")
	}
	out := rc.ok("", cmd("creds", "put", "proxy-ca", "-kind", "ca-certificate", "-cert", caFile)...)
	if !strings.Contains(out, "certificate_file") || !strings.Contains(out, "certs/proxy-ca.pem") {
		t.Errorf("creds put of the CA says:\n%s", out)
	}
	if got, err := os.ReadFile(layout.Dir(b.dir).Certificate("proxy-ca")); err != nil || string(got) != string(tt.CAPEM()) {
		t.Fatalf("certs/proxy-ca.pem = %q, %v", got, err)
	}
	if w := waiting(); len(w) != 1 || w["upstream.m365.client_secret_secret"].Secret != "m365-client-secret" {
		t.Errorf("after the CA: waiting %+v, want the client secret only", w)
	}
	rc.ok(clientSecret+"\n", cmd("creds", "put", "m365-client-secret", "-kind", "client-secret", "-from", "-")...)
	relaytest.Eventually(t, "the held message at the tenant", func() bool { return len(tt.Exchange.Received()) == 1 })
	if w := waiting(); len(w) != 0 {
		t.Errorf("still waiting: %+v", w)
	}

	var l []api.Credential
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "list")...)), &l); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range l {
		found = found || (c.Name == "proxy-ca" && c.Kind == api.KindCACertificate && c.CertificateFile == "certs/proxy-ca.pem" && !c.NotAfter.IsZero())
	}
	if !found {
		t.Errorf("creds list %+v, want proxy-ca (ca-certificate, certs/proxy-ca.pem, its expiry)", l)
	}
	if code, out, errs := rc.run("", cmd("creds", "delete", "proxy-ca")...); code == 0 || !strings.Contains(out+errs, "upstream.m365.ca_file") {
		t.Errorf("creds delete of the CA in use: exit %d\n%s%s", code, out, errs)
	}
}

// TestTLSCertificateOverTheTailnet: the listeners' certificate, one the
// plant's devices trust, is installed over the tailnet: `relayctl creds
// put NAME -kind tls-certificate -cert -key` stores it, a configuration
// naming tls.cert_file "certs/NAME.pem" and tls.key_secret NAME puts it in
// force, and a device's STARTTLS gets it.
func TestTLSCertificateOverTheTailnet(t *testing.T) {
	tn := provtest.New(t)
	out := t.TempDir()
	b := startBox(t, tn, "plant-l", fmt.Sprintf(captureConfig, "plant-l", out))
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-l"}, args...) }
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})
	ca := upstreamtest.NewTestCA(t)
	lan := ca.ServerCert(t, "relay-plant-l.plant.test")
	der, err := x509.MarshalPKCS8PrivateKey(lan.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, cfgFile := filepath.Join(t.TempDir(), "lan.pem"), filepath.Join(t.TempDir(), "lan.key"), filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: lan.Certificate[0]}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	put := rc.ok("", cmd("creds", "put", "lan", "-kind", "tls-certificate", "-cert", certFile, "-key", keyFile)...)
	if !strings.Contains(put, "tls-certificate") || !strings.Contains(put, "certs/lan.pem") {
		t.Errorf("creds put -kind tls-certificate says:\n%s", put)
	}
	cfg := strings.Replace(fmt.Sprintf(captureConfig, "plant-l", out), `"starttls":false`, `"starttls":true`, 1)
	cfg = strings.TrimSuffix(cfg, "}") + `,"tls":{"cert_file":"certs/lan.pem","key_secret":"lan"}}`
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rc.ok("", cmd("config", "put", cfgFile)...)
	c, err := smtp.DialStartTLS(b.smtp, &tls.Config{RootCAs: ca.Pool, ServerName: "relay-plant-l.plant.test"})
	if err != nil {
		t.Fatalf("STARTTLS against the installed certificate: %v", err)
	}
	defer c.Close()
	if err := c.Noop(); err != nil {
		t.Fatalf("STARTTLS against the installed certificate: %v", err)
	}
	if st, _ := c.TLSConnectionState(); len(st.PeerCertificates) == 0 || !st.PeerCertificates[0].Equal(lan.Leaf) {
		t.Errorf("the device was not given the installed certificate")
	}
	// In use: its delete is refused, naming both keys.
	if code, o, e := rc.run("", cmd("creds", "delete", "lan")...); code == 0 || !strings.Contains(o+e, "tls.key_secret") || !strings.Contains(o+e, "tls.cert_file") {
		t.Errorf("creds delete of the listener certificate in use: exit %d\n%s%s", code, o, e)
	}
}
