//go:build integration

package smarthost

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// freePort finds a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitBanner waits until addr answers with a 220 greeting.
func waitBanner(t testing.TB, addr string, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "220") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never greeted: %v\n%s", addr, err, logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func needRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (make integration)")
	}
	for _, p := range []string{"postfix", "smtp-sink"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not installed (.ci/apt-packages has postfix): %v", p, err)
		}
	}
}

// startPostfix runs a private Postfix instance (own config, queue and log
// under /var/tmp, since maillog_file must start with /var) with smtpd on a
// loopback port offering STARTTLS with a TestCA certificate, relaying
// everything to relayhost. It returns smtpd's address.
func startPostfix(t *testing.T, ca *upstreamtest.TestCA, relayhost string) string {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "smarthost-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	conf, queue, data := filepath.Join(base, "conf"), filepath.Join(base, "queue"), filepath.Join(base, "data")
	for _, d := range []string{conf, queue, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(base, 0o755)
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	if err := os.Chown(data, uid, -1); err != nil {
		t.Fatal(err)
	}
	cert := ca.ServerCert(t, "localhost")
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	os.WriteFile(filepath.Join(conf, "cert.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(conf, "key.pem"), keyPEM, 0o600)

	port := freePort(t)
	logFile := filepath.Join(base, "maillog")
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
maillog_file = %[3]s
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [%[4]s
smtpd_tls_cert_file = %[5]s/cert.pem
smtpd_tls_key_file = %[5]s/key.pem
smtpd_tls_security_level = may
smtp_tls_security_level = none
smtpd_relay_restrictions = check_recipient_access inline:{ {refused@example.com=REJECT no such user here} }, permit_mynetworks, reject
smtputf8_enable = yes
message_size_limit = 10240000
`, queue, data, logFile, strings.Replace(relayhost, ":", "]:", 1), conf)
	masterCF := fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, port)
	os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCF), 0o644)
	os.WriteFile(filepath.Join(conf, "master.cf"), []byte(masterCF), 0o644)
	logs := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	t.Cleanup(func() {
		exec.Command("postfix", "-c", conf, "stop").Run()
		if t.Failed() {
			t.Logf("postfix log:\n%s", logs())
		}
		os.RemoveAll(base)
	})
	if out, err := exec.Command("postfix", "-c", conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, logs())
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitBanner(t, addr, logs)
	return addr
}

// TestPostfixPeer sends through smarthost into Debian's Postfix (STARTTLS,
// PIPELINING, a refused recipient), which relays to a FakeServer where the
// messages come out.
func TestPostfixPeer(t *testing.T) {
	needRoot(t)
	ca := upstreamtest.NewTestCA(t)
	sink := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	addr := startPostfix(t, ca, sink.Addr)

	u, err := New(Options{Addr: addr, RootCAs: ca.Pool, ServerName: "localhost", LocalName: "smarthost.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	steps, err := u.Probe(context.Background())
	if err != nil {
		t.Fatalf("probe: %v %+v", err, steps)
	}
	for _, s := range steps {
		t.Logf("probe %s: %s", s.Name, s.Detail)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	smuggle := "Subject: one\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nafter\n.\nQUIT\r\n"
	msgs := []*upstream.Message{
		message("p1", "dev@plant.example", []string{"a@example.com", "refused@example.com", "b@example.com"}, "Subject: partial\r\n\r\nhello\r\n"),
		message("p2", "dev@plant.example", []string{"c@example.com"}, smuggle),
		message("p3", "dev@plant.example", []string{"d@example.com"}, body4k),
	}
	for _, m := range msgs {
		res, err := u.Deliver(ctx, m)
		if err != nil {
			t.Fatalf("%s: %v", m.QueueID, err)
		}
		for _, r := range res {
			if wantRefused := r.Rcpt == "refused@example.com"; (r.Err != nil) != wantRefused {
				t.Errorf("%s %s: %v", m.QueueID, r.Rcpt, r.Err)
			} else if wantRefused && (!upstream.IsPermanent(r.Err) || !strings.Contains(r.Err.Error(), "no such user here")) {
				t.Errorf("refusal: %v", r.Err)
			}
		}
	}
	got := sink.WaitMessages(t, 3)
	byRcpt := map[string]upstreamtest.Received{}
	for _, m := range got {
		byRcpt[strings.Join(m.To, ",")] = m
	}
	if _, ok := byRcpt["a@example.com,b@example.com"]; !ok {
		t.Errorf("partial message: got envelopes %v", keys(byRcpt))
	}
	s, ok := byRcpt["c@example.com"]
	if !ok || !strings.Contains(string(s.Data), "MAIL FROM:<evil@example.com>") || !strings.Contains(string(s.Data), "\r\nQUIT\r\n") {
		t.Errorf("smuggling body did not arrive whole: %q", s.Data)
	}
	for _, m := range got {
		if strings.Contains(strings.Join(m.To, ","), "victim") {
			t.Errorf("smuggled message delivered: %+v", m)
		}
	}
	if len(got) != 3 {
		t.Errorf("got %d messages, want 3", len(got))
	}
	if d, ok := byRcpt["d@example.com"]; !ok || !strings.Contains(string(d.Data), body4k[len(body4k)-200:]) {
		t.Errorf("4 KiB message missing or cut")
	}
}

func keys[V any](m map[string]V) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}

// startSink runs Postfix's smtp-sink (PIPELINING, 8BITMIME, SMTPUTF8).
func startSink(t testing.TB) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command("smtp-sink", "-u", "nobody", addr, "256")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitBanner(t, addr, func() string { return "" })
	return addr
}

func TestSmtpSinkPeer(t *testing.T) {
	needRoot(t)
	u, err := New(Options{Addr: startSink(t), TLS: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 50 {
		mustDeliver(t, u, message(fmt.Sprint(i), "a@example.com", []string{"b@example.com", "c@example.com"}, body4k))
	}
}

// BenchmarkDeliverSink: 4 KiB messages through smarthost into smtp-sink.
func BenchmarkDeliverSink(b *testing.B) {
	needRoot(b)
	u, err := New(Options{Addr: startSink(b), TLS: "none", Concurrency: 4, MessagesPerConnection: 1000})
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	benchDeliver(b, u)
}
