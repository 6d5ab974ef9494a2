//go:build integration

package forward

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/trace"
)

// rsyslog is a real rsyslogd in the foreground: imtcp on a loopback port
// (port 0 the first time, the same port after a restart), every message
// written to a file as one JSON object of its RFC 5424 fields.
type rsyslog struct {
	t    *testing.T
	dir  string
	port int
	tls  bool
	pool *x509.CertPool // the CA of its certificate, with tls
	cmd  *exec.Cmd
	done chan struct{}
}

func startRsyslog(t *testing.T, withTLS bool) *rsyslog {
	if _, err := exec.LookPath("rsyslogd"); err != nil {
		t.Skip("rsyslogd not installed (Debian's rsyslog, rsyslog-gnutls: .ci/apt-packages)")
	}
	r := &rsyslog{t: t, dir: t.TempDir(), tls: withTLS}
	if withTLS {
		r.pool = testCA(t, r.dir)
	}
	r.start()
	t.Cleanup(r.stop)
	return r
}

// dump writes the fields RFC 5424 defines, each JSON-escaped by rsyslog.
const dump = `{\"facility\":\"%syslogfacility%\",\"severity\":\"%syslogseverity%\",\"time\":\"%timereported:::date-rfc3339%\",` +
	`\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",\"procid\":\"%procid:::json%\",\"msgid\":\"%msgid:::json%\",` +
	`\"sd\":\"%structured-data:::json%\",\"msg\":\"%msg:::json%\"}\n`

func (r *rsyslog) start() {
	work := filepath.Join(r.dir, "work")
	os.MkdirAll(work, 0o700)
	portFile := filepath.Join(r.dir, "port")
	os.Remove(portFile)
	var tlsConf, driver string
	if r.tls {
		tlsConf = fmt.Sprintf(`global(DefaultNetstreamDriverCAFile=%q DefaultNetstreamDriverCertFile=%q DefaultNetstreamDriverKeyFile=%q)`,
			filepath.Join(r.dir, "ca.pem"), filepath.Join(r.dir, "cert.pem"), filepath.Join(r.dir, "key.pem"))
		driver = `StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"`
	}
	conf := fmt.Sprintf(`global(workDirectory=%q maxMessageSize="64k")
%s
module(load="imtcp" %s)
input(type="imtcp" address="127.0.0.1" port="%d" listenPortFileName=%q)
template(name="dump" type="string" string="%s")
action(type="omfile" file=%q template="dump")
`, work, tlsConf, driver, r.port, portFile, dump, filepath.Join(r.dir, "out.json"))
	confFile := filepath.Join(r.dir, "rsyslog.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		r.t.Fatal(err)
	}
	var out bytes.Buffer
	r.cmd = exec.Command("rsyslogd", "-n", "-f", confFile, "-i", filepath.Join(r.dir, "pid"))
	r.cmd.Stdout, r.cmd.Stderr = &out, &out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.done = make(chan struct{})
	go func() {
		r.cmd.Wait()
		close(r.done)
	}()
	relaytest.Eventually(r.t, "rsyslogd listening", func() bool {
		select {
		case <-r.done:
			r.t.Fatalf("rsyslogd ended: %s", out.String())
		default:
		}
		if r.port != 0 {
			// A restart on the known port: rsyslog writes the port file
			// only for port 0, so see whether it accepts.
			c, err := net.Dial("tcp", r.addr())
			if err != nil {
				return false
			}
			c.Close()
			return true
		}
		b, err := os.ReadFile(portFile)
		if err != nil {
			return false
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || p == 0 {
			return false
		}
		r.port = p
		return true
	})
}

func (r *rsyslog) stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	<-r.done
	r.cmd = nil
}

func (r *rsyslog) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

type record struct {
	Facility, Severity, Time, Host, App, ProcID, MsgID, SD, Msg string
}

func (r *rsyslog) records() []record {
	b, _ := os.ReadFile(filepath.Join(r.dir, "out.json"))
	// rsyslog may be writing the last line as we read: only whole lines.
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	var recs []record
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		var rec record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			r.t.Fatalf("rsyslog wrote %q: %v", line, err)
		}
		if rec.App == "rsyslogd" {
			continue // its own start and stop messages
		}
		recs = append(recs, rec)
	}
	return recs
}

// sdParams parses one SD-ELEMENT as rsyslog hands it on.
func sdParams(t *testing.T, sd string) (string, map[string]string) {
	t.Helper()
	if !strings.HasPrefix(sd, "[") || !strings.HasSuffix(sd, "]") {
		t.Fatalf("structured data %q", sd)
	}
	s := sd[1 : len(sd)-1]
	id, s, _ := strings.Cut(s, " ")
	params := map[string]string{}
	for s != "" {
		name, rest, ok := strings.Cut(s, `="`)
		if !ok {
			t.Fatalf("structured data %q: bad param at %q", sd, s)
		}
		var v []byte
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
			}
			v = append(v, rest[i])
		}
		params[name] = string(v)
		s = strings.TrimPrefix(rest[min(i+1, len(rest)):], " ")
	}
	return id, params
}

// testCA makes a CA and a certificate for 127.0.0.1 and "collector.test"
// in dir (ca.pem, cert.pem, key.pem) and returns the CA's pool.
func testCA(t *testing.T, dir string) *x509.CertPool {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "collector.test"},
		DNSNames: []string{"collector.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("cert.pem", "CERTIFICATE", der)
	write("key.pem", "EC PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

func TestRsyslogReceivesEveryStream(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) {
			rs := &rsyslog{t: t, tls: withTLS}
			if _, err := exec.LookPath("rsyslogd"); err != nil {
				t.Skip("rsyslogd not installed")
			}
			rs.dir = t.TempDir()
			tgt := &Target{Facility: 16, AppName: "siterelay", Hostname: "plant-7", Streams: Streams, MaxBytes: 1 << 20}
			if withTLS {
				tgt.TLS = &tls.Config{RootCAs: testCA(t, rs.dir), ServerName: "collector.test", MinVersion: tls.VersionTLS12}
			}
			rs.start()
			t.Cleanup(rs.stop)
			tgt.Address = rs.addr()
			h := run(t, t.TempDir(), tgt)

			h.f.SendTrace(trace.Event{Time: t0, Kind: trace.Delivered, QueueID: "q0001", Device: "printer-hall-2", Upstream: "m365 (submission)",
				From: "scan@plant.example", To: []string{"a@example.com"}, Subject: "not sent", Attempt: 1, Reply: `250 2.0.0 OK "queued"]`})
			// An audit entry as the appliance hands it on (appliance/auditforward.go).
			h.f.SendAudit(Audit{Time: t0, Actor: "ana@example.com", Node: "laptop.tail-test.ts.net", Role: "admin",
				Action: "put credential m365-secret (client-secret)", Method: "PUT", Path: "/v1/credentials/m365-secret",
				Outcome: "ok", Status: 200, Seq: 41})
			// A log line through the relay's slog tee (the logs stream).
			slog.New(NewHandler(slog.DiscardHandler, h.f)).Warn("upstream slow", "queue_id", "q0001", "ms", 900)
			relaytest.Eventually(t, "three records in rsyslog's file", func() bool { return len(rs.records()) >= 3 })

			recs := rs.records()
			type fields struct{ Facility, Severity, Host, App, MsgID, Msg string }
			wants := []fields{
				{"16", "6", "plant-7", "siterelay", "trace", "delivered q0001"},
				{"16", "5", "plant-7", "siterelay", "audit", "ana@example.com put credential m365-secret (client-secret): ok"},
				{"16", "4", "plant-7", "siterelay", "logs", "upstream slow"},
			}
			for i, want := range wants {
				got := fields{recs[i].Facility, recs[i].Severity, recs[i].Host, recs[i].App, recs[i].MsgID, strings.TrimSpace(recs[i].Msg)}
				if got != want {
					t.Errorf("record %d: got %+v, want %+v", i, got, want)
				}
				if ts, err := time.Parse(time.RFC3339Nano, recs[i].Time); err != nil || (i < 2 && !ts.Equal(t0)) {
					t.Errorf("record %d: time %q, want %v", i, recs[i].Time, t0)
				}
			}
			// Each record's structured data, as rsyslog parsed it.
			wantSD := []map[string]string{
				{"result": "delivered", "queue_id": "q0001", "device": "printer-hall-2", "upstream": "m365 (submission)",
					"from": "scan@plant.example", "to": "a@example.com", "attempt": "1", "reply": `250 2.0.0 OK "queued"]`},
				{"actor": "ana@example.com", "node": "laptop.tail-test.ts.net", "role": "admin", "action": "put credential m365-secret (client-secret)",
					"outcome": "ok", "status": "200", "method": "PUT", "path": "/v1/credentials/m365-secret", "seq": "41"},
				{"level": "WARN", "queue_id": "q0001", "ms": "900"},
			}
			for i, want := range wantSD {
				id, p := sdParams(t, recs[i].SD)
				if id != SDID || fmt.Sprint(p) != fmt.Sprint(want) {
					t.Errorf("record %d structured data: got %s %v\nwant %s %v", i, id, p, SDID, want)
				}
			}
			if strings.Contains(recs[0].SD+recs[0].Msg, "not sent") {
				t.Errorf("the subject went out: %+v", recs[0])
			}
		})
	}
}

// TestRsyslogRestartLosesNothing stops rsyslog while events of all three
// streams keep coming, and starts it again on the same port: every event
// arrives once, in order per stream, and nothing is dropped.
//
// The outage is 30 s of the events' own clock (each batch is stamped 10 s
// after the one before), not of the wall clock: the sender's retry waits
// on the test's timer, which fires once rsyslog listens again, so the test
// neither sleeps nor depends on how fast this machine is.
func TestRsyslogRestartLosesNothing(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) { testRsyslogRestart(t, withTLS) })
	}
}

func testRsyslogRestart(t *testing.T, withTLS bool) {
	rs := startRsyslog(t, withTLS)
	tgt := &Target{Address: rs.addr(), Facility: 16, AppName: "siterelay", Hostname: "h", Streams: Streams, MaxBytes: 16 << 20}
	if withTLS {
		tgt.TLS = &tls.Config{RootCAs: rs.pool, ServerName: "collector.test", MinVersion: tls.VersionTLS12}
	}
	h := run(t, t.TempDir(), tgt)
	logs := slog.New(NewHandler(slog.DiscardHandler, h.f))
	const per = 200 // events of each stream in each of four batches
	sent := 0
	batch := func(at time.Time) {
		for range per {
			h.f.Send(StreamTrace, TraceEntry(trace.Event{Time: at, Kind: trace.Received, QueueID: fmt.Sprintf("q%04d", sent)}))
			h.f.SendAudit(Audit{Time: at, Actor: "ana@example.com", Action: "retry message", Outcome: "ok", Status: 200, Seq: uint64(sent + 1)})
			logs.Info("delivery", "n", sent)
			sent++
		}
	}
	batch(t0)
	relaytest.Eventually(t, "the first batch in rsyslog", func() bool { return len(rs.records()) == 3*per })
	rs.stop() // down from t0+10s to t0+40s
	batch(t0.Add(10 * time.Second))
	<-h.waiting // refused: the sender waits to retry
	batch(t0.Add(20 * time.Second))
	batch(t0.Add(30 * time.Second))
	if s := h.f.Stats(); s.Connected || s.BufferedBytes == 0 || s.LastError == "" {
		t.Errorf("while rsyslog is down: %+v, want buffering, not connected, the refusal named", s)
	}
	rs.start()
	h.retry <- t0.Add(40 * time.Second)
	relaytest.Eventually(t, "every event in rsyslog", func() bool { return len(rs.records()) >= 3*sent })

	got := map[string][]string{}
	for _, rec := range rs.records() {
		_, p := sdParams(t, rec.SD)
		switch rec.MsgID {
		case StreamTrace:
			got[rec.MsgID] = append(got[rec.MsgID], p["queue_id"])
		case StreamAudit:
			got[rec.MsgID] = append(got[rec.MsgID], p["seq"])
		case StreamLogs:
			got[rec.MsgID] = append(got[rec.MsgID], p["n"])
		default:
			t.Errorf("a record of stream %q: %+v", rec.MsgID, rec)
		}
	}
	want := map[string][]string{}
	for i := range sent {
		want[StreamTrace] = append(want[StreamTrace], fmt.Sprintf("q%04d", i))
		want[StreamAudit] = append(want[StreamAudit], strconv.Itoa(i+1))
		want[StreamLogs] = append(want[StreamLogs], strconv.Itoa(i))
	}
	for _, st := range Streams {
		if g, w := strings.Join(got[st], " "), strings.Join(want[st], " "); g != w {
			t.Errorf("stream %s: got %d events, want %d in order once each", st, len(got[st]), len(want[st]))
		}
	}
	s := h.f.Stats()
	for _, st := range Streams {
		if s.Dropped[st] != 0 {
			t.Errorf("dropped %v, want none", s.Dropped)
		}
	}
	relaytest.Eventually(t, "the buffer emptied", func() bool { s := h.f.Stats(); return s.Connected && s.BufferedBytes == 0 })
}
