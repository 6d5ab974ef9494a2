//go:build integration

package appliance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/provisioning/provtest"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// rsyslogRecord is one message as a real rsyslogd parsed it (RFC 5424).
type rsyslogRecord struct {
	Severity, Host, App, MsgID, SD, Msg string
}

// startRsyslogd runs Debian's rsyslogd in the foreground with imtcp on a
// loopback port of its choosing, writing each message's RFC 5424 fields as
// a JSON line; it returns the address and a reader of what it wrote.
func startRsyslogd(t *testing.T) (string, func() []rsyslogRecord) {
	t.Helper()
	if _, err := exec.LookPath("rsyslogd"); err != nil {
		t.Skip("rsyslogd not installed (Debian's rsyslog: .ci/apt-packages)")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "work"), 0o700)
	portFile, out := filepath.Join(dir, "port"), filepath.Join(dir, "out.json")
	const dump = `{\"severity\":\"%syslogseverity%\",\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",` +
		`\"msgid\":\"%msgid:::json%\",\"sd\":\"%structured-data:::json%\",\"msg\":\"%msg:::json%\"}\n`
	conf := fmt.Sprintf(`global(workDirectory=%q maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName=%q)
template(name="dump" type="string" string="%s")
action(type="omfile" file=%q template="dump")
`, filepath.Join(dir, "work"), portFile, dump, out)
	confFile := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &relaytest.Buffer{}
	cmd := exec.Command("rsyslogd", "-n", "-f", confFile, "-i", filepath.Join(dir, "pid"))
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); <-done })
	var port int
	relaytest.Eventually(t, "rsyslogd listening", func() bool {
		select {
		case <-done:
			t.Fatalf("rsyslogd ended: %s", logs.String())
		default:
		}
		b, _ := os.ReadFile(portFile)
		port, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return port != 0
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), func() []rsyslogRecord {
		b, _ := os.ReadFile(out)
		b = b[:bytes.LastIndexByte(b, '\n')+1] // whole lines only
		var recs []rsyslogRecord
		for _, line := range strings.Split(string(b), "\n") {
			var r rsyslogRecord
			if line == "" || json.Unmarshal([]byte(line), &r) != nil || r.App == "rsyslogd" {
				continue
			}
			recs = append(recs, r)
		}
		return recs
	}
}

// TestRsyslogFromABox: a box on a test tailnet with forward.syslog sends
// its trace (a device's message received and delivered), its audit log (a
// credential put through relayctl) and its log lines to a real rsyslogd,
// which parses each as RFC 5424 with the structured data; neither the
// subject nor the credential's value goes out.
func TestRsyslogFromABox(t *testing.T) {
	addr, records := startRsyslogd(t)
	tn := provtest.New(t)
	cfg := strings.TrimSuffix(fmt.Sprintf(captureConfig, "plant-r", "outbox"), "}") +
		fmt.Sprintf(`,"forward":{"syslog":{"address":%q}}}`, addr)
	b := startBox(t, tn, "plant-r", cfg)
	grantAll(t, tn, api.Admin)
	rc := newRelayctl(t, tn)
	const secret = "s3cr3t-VALUE-not-for-the-SIEM"
	rc.ok(secret+"\n", "-relay", "plant-r", "creds", "put", "smarthost", "-kind", "password", "-from", "-")
	if err := b.send(t, "quarterly figures"); err != nil {
		t.Fatal(err)
	}

	has := func(recs []rsyslogRecord, msgid string, want ...string) bool {
		for _, r := range recs {
			ok := r.MsgID == msgid && r.Host == "relay-plant-r" && r.App == "siterelay" && strings.HasPrefix(r.SD, "[siterelay@32473 ")
			for _, w := range want {
				ok = ok && strings.Contains(r.SD, w)
			}
			if ok {
				return true
			}
		}
		return false
	}
	var recs []rsyslogRecord
	relaytest.Eventually(t, "trace, audit and log messages in rsyslog", func() bool {
		recs = records()
		return has(recs, "trace", `result="received"`, `from="mfp@plant.example"`) &&
			has(recs, "trace", `result="delivered"`, `upstream="capture`) &&
			has(recs, "audit", `action="put credential smarthost (password)"`, `outcome="ok"`, `role="admin"`, `actor="`) &&
			has(recs, "logs", `level="INFO"`)
	})
	all, _ := json.Marshal(recs)
	for _, never := range []string{secret, "quarterly figures"} {
		if strings.Contains(string(all), never) {
			t.Errorf("%q went to the collector", never)
		}
	}
	t.Logf("%d records; streams seen: trace, audit, logs", len(recs))
}
