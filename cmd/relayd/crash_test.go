//go:build integration

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/relaytest"
	"github.com/siterelay/siterelay/relay/upstream/upstreamtest"
)

// daemon is a relayd process under test.
type daemon struct {
	cmd        *exec.Cmd
	smtp, http string
	stderr     *os.File
	exited     chan struct{}
}

func buildRelayd(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "relayd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func startRelayd(t *testing.T, bin, cfg, state string) *daemon {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(state, "relayd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfg, "-state", state, "-http", "127.0.0.1:0")
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(logf, pw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, stderr: logf, exited: make(chan struct{})}
	go func() { cmd.Wait(); pw.Close(); close(d.exited) }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			// {"msg":"SMTP listening","address":ADDR}, then
			// {"msg":"status page listening","url":"http://ADDR/"}
			var rec struct{ Msg, Address, URL string }
			json.Unmarshal(sc.Bytes(), &rec)
			if rec.Msg == "SMTP listening" {
				d.smtp = rec.Address
			}
			if a, ok := strings.CutPrefix(rec.URL, "http://"); ok && rec.Msg == "status page listening" {
				d.http, _, _ = strings.Cut(a, "/")
				close(ready)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case <-ready:
	case <-d.exited:
		t.Fatalf("relayd exited at start; log in %s", logf.Name())
	case <-time.After(min(2*time.Minute, time.Until(relaytest.Deadline(t)))):
		t.Fatalf("relayd did not say it was ready within 2 minutes; log in %s", logf.Name())
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-d.exited; logf.Close() })
	return d
}

var queueRE = regexp.MustCompile(`(?m)^siterelay_queue_messages (\S+)$`)

func (d *daemon) queued(t *testing.T) int {
	resp, err := http.Get("http://" + d.http + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := queueRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no siterelay_queue_messages in the scrape")
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return int(v)
}

func writeConfig(t *testing.T, path, upstream string) {
	doc := fmt.Sprintf(`{
  "hostname": "relay.test",
  "listeners": [{"name": "smtp", "address": "127.0.0.1:0", "mode": "smtp", "starttls": false, "allowed_networks": ["127.0.0.0/8"]}],
  "limits": {"messages_per_minute": 1000000, "burst": 100000},
  "delivery": {"first_retry": "1m", "max_retry": "1h"},
  "upstream": {"kind": "smtp", "smtp": {"address": %q, "tls": "none", "concurrency": 4}}
}`, upstream)
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCrashLosesNothing: a burst with the upstream down, SIGKILL in the
// middle, a restart with the upstream up. Every message that got a 250 must
// arrive; none twice (the upstream was down, so nothing was in flight to it).
func TestCrashLosesNothing(t *testing.T) {
	bin := buildRelayd(t)
	state := relaytest.StateDir(t)
	cfg := filepath.Join(state, "config.json")

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	down := l.Addr().String()
	l.Close() // nothing listens there: the upstream is down
	writeConfig(t, cfg, down)
	d := startRelayd(t, bin, cfg, state)

	const senders, killAfter, maxPerSender = 4, 200, 2000
	var mu sync.Mutex
	acked := map[string]bool{}
	attempted := 0
	var wg sync.WaitGroup
	killed := make(chan struct{})
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(d.smtp)
			if err != nil {
				return
			}
			defer c.Close()
			for i := 0; i < maxPerSender; i++ {
				subj := fmt.Sprintf("crash-%d-%d", s, i)
				mu.Lock()
				attempted++
				mu.Unlock()
				err := c.SendMail("plc@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: "+subj+"\r\n\r\nalarm\r\n"))
				if err != nil {
					return // the relay died under us: not acknowledged
				}
				mu.Lock()
				acked[subj] = true
				n := len(acked)
				mu.Unlock()
				if n == killAfter {
					d.cmd.Process.Signal(syscall.SIGKILL)
					close(killed)
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("the burst ended before the kill (acked %d)", len(acked))
	}
	<-d.exited

	fake := upstreamtest.NewFakeServer(t, upstreamtest.FakeOptions{TLS: "none"})
	writeConfig(t, cfg, fake.Addr)
	d2 := startRelayd(t, bin, cfg, state)
	relaytest.Eventually(t, "queue drained after restart", func() bool { return d2.queued(t) == 0 })

	seen := map[string]int{}
	for _, m := range fake.Messages() {
		subj := regexp.MustCompile(`(?m)^Subject: (\S+)\r$`).FindSubmatch(m.Data)
		if subj == nil {
			t.Fatalf("message without subject: %q", m.Data)
		}
		seen[string(subj[1])]++
	}
	var lost, dup, unacked int
	for s := range acked {
		if seen[s] == 0 {
			lost++
			t.Errorf("acknowledged message %s never arrived", s)
		}
	}
	for s, n := range seen {
		if n > 1 {
			dup++
			t.Errorf("%s arrived %d times", s, n)
		}
		if !acked[s] {
			unacked++ // committed, but the kill came before the 250 reached the client
		}
	}
	t.Logf("attempted %d, acknowledged %d, arrived %d (of which %d were in flight at the kill: spooled, 250 not received), lost %d, duplicated %d",
		attempted, len(acked), len(seen), unacked, lost, dup)
}
