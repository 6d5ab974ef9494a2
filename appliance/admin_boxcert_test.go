package appliance

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/layout"
	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/m365test"
)

// TestBoxMadeCertificate: a box flashed with no secret makes its own key
// pair (relayctl creds new-certificate), the admin uploads the public
// certificate to the app registration (the fake Entra plays the portal),
// the configuration points at it, and mail goes out by XOAUTH2 with a
// client assertion signed by a key that never left the box. Then the key
// is searched for everywhere but its own file: answers, logs, trace,
// audit, metrics, every other state file.
func TestBoxMadeCertificate(t *testing.T) {
	tt := m365test.NewTenant(t, "unused-secret")
	tt.Entra.Clock = time.Now // the box signs its assertion with the real clock
	tn := provtest.New(t)
	b := startBox(t, tn, "plant-c", fmt.Sprintf(captureConfig, "plant-c", "outbox"), func(o *Options) {
		o.RootCAs, o.HTTPClient = tt.CA.Pool, tt.Graph.Client()
	})
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	rc.node = tn.Join(t, "laptop")
	cmd := func(args ...string) []string { return append([]string{"-relay", "plant-c"}, args...) }
	relaytest.Eventually(t, "admin role for the laptop", func() bool {
		_, out, _ := rc.run("", cmd("-json", "whoami")...)
		var w api.WhoAmI
		return json.Unmarshal([]byte(out), &w) == nil && w.Role == api.Admin
	})

	cerFile := filepath.Join(t.TempDir(), "entra-cert.cer")
	out := rc.ok("", cmd("creds", "new-certificate", "entra-cert", "-days", "200", "-subject", "CN=siterelay plant-c", "-out", cerFile)...)
	for _, want := range []string{"made on the box", "RSA 3072", "thumbprint (SHA-1)", "BEGIN CERTIFICATE", "Upload certificate", "--append", "certificate_key_secret"} {
		if !strings.Contains(out, want) {
			t.Errorf("relayctl creds new-certificate says no %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("the answer holds a private key:\n%s", out)
	}
	pemBytes, err := os.ReadFile(cerFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatalf("-out wrote no PEM certificate: %q", pemBytes)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if days := cert.NotAfter.Sub(time.Now()).Hours() / 24; days < 199 || days > 201 || cert.Subject.CommonName != "siterelay plant-c" {
		t.Errorf("certificate: %q until %v, want CN siterelay plant-c for 200 days", cert.Subject.CommonName, cert.NotAfter)
	}
	// A second new-certificate under the same name would replace a key in
	// use: refused.
	if code, _, _ := rc.run("", cmd("creds", "new-certificate", "entra-cert")...); code == 0 {
		t.Error("new-certificate over an existing credential succeeded")
	}
	var creds []api.Credential
	if err := json.Unmarshal([]byte(rc.ok("", cmd("-json", "creds", "list")...)), &creds); err != nil || len(creds) != 1 ||
		creds[0].Origin != api.OriginBox || !creds[0].NotAfter.Equal(cert.NotAfter) {
		t.Fatalf("creds list = %+v, %v: want one made on the box, expiring with the certificate", creds, err)
	}
	if out := rc.ok("", cmd("creds", "list")...); !strings.Contains(out, "made on the box") || !strings.Contains(out, cert.NotAfter.Format(time.DateOnly)) {
		t.Errorf("relayctl creds list:\n%s", out)
	}
	keyFile := layout.Dir(b.dir).Secret("entra-cert")
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", st, err)
	}

	// The admin uploads the certificate (the portal, here the fake).
	tt.Entra.AddApp(m365test.App{ClientID: m365test.TenantApp, Cert: cert})
	cfg := fmt.Sprintf(`{"hostname":"relay-plant-c","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"m365-oauth","m365":{"tenant":%q,"token_url":%q,"client_id":%q,"certificate_file":%q,"certificate_key_secret":"entra-cert","mailbox":%q,"from_mailbox":true,"smtp_host":"127.0.0.1","smtp_port":%d}},
	  "delivery":{"first_retry":"1h","max_retry":"1h"}}`, m365test.TenantDomain, tt.Entra.URL, m365test.TenantApp, creds[0].CertificateFile, m365test.TenantMailbox, tt.SMTPPort())
	cfgFile := filepath.Join(t.TempDir(), "m365.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rc.ok("", cmd("config", "put", cfgFile)...)
	if err := b.send(t, "scan signed on the box"); err != nil {
		t.Fatalf("send: %v", err)
	}
	relaytest.Eventually(t, "the message at the tenant", func() bool { return len(tt.Exchange.Received()) == 1 })
	rc.ok("", cmd("-json", "trace")...)
	rc.ok("", cmd("-json", "audit")...)

	// The key, in any form, nowhere but its own file.
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	kblk, _ := pem.Decode(keyPEM)
	if kblk == nil || kblk.Type != "PRIVATE KEY" {
		t.Fatalf("the secret store holds no PKCS #8 key")
	}
	b64 := base64.StdEncoding.EncodeToString(kblk.Bytes)
	needles := map[string]string{"DER": string(kblk.Bytes), "base64": b64[len(b64)/2 : len(b64)/2+48], "PEM line": strings.Split(string(keyPEM), "\n")[5]}
	resp, err := http.Get("http://" + b.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	b.stop()
	places := map[string]string{"logs": b.logs.String(), "metrics": string(metrics), "relayctl answers": rc.answers.String()}
	filepath.Walk(b.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && path != keyFile {
			data, _ := os.ReadFile(path)
			places[path] = string(data)
		}
		return nil
	})
	if len(places) < 8 || !strings.Contains(places["relayctl answers"], "new certificate entra-cert") {
		t.Errorf("searched %d places; the audit answer does not name the new certificate", len(places))
	}
	for where, text := range places {
		for form, needle := range needles {
			if strings.Contains(text, needle) {
				t.Errorf("the private key (%s) appears in %s", form, where)
			}
		}
	}
}
