package appliance

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestRunServesStatusPage starts the whole appliance on loopback (no box,
// no discovery), sends a message and reads it back from the status page,
// its JSON and the metrics.
func TestRunServesStatusPage(t *testing.T) {
	dir := relaytest.StateDir(t)
	cfg := `{"hostname":"relay-test","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
	  "upstream":{"kind":"capture"}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	type addrs struct {
		smtp []net.Addr
		http net.Addr
	}
	ready := make(chan addrs, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: dir, HTTPAddr: "127.0.0.1:0", ClockSynchronised: clockSynchronised,
			Ready: func(s []net.Addr, h net.Addr) { ready <- addrs{s, h} }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("Run ended before it was ready: %v", err)
	case <-time.After(time.Until(relaytest.Deadline(t))):
		t.Fatal("Run never got ready")
	}

	c, err := smtp.Dial(a.smtp[0].String())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("mfp@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	base := "http://" + a.http.String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var st struct {
		Hostname string `json:"hostname"`
		Relay    struct {
			Counts map[string]int `json:"counts"`
		} `json:"relay"`
		Health struct {
			State string `json:"state"`
		} `json:"health"`
	}
	relaytest.Eventually(t, "the delivery on the status page", func() bool {
		_, body := get("/status.json")
		return json.Unmarshal([]byte(body), &st) == nil && st.Relay.Counts["delivered"] == 1
	})
	if st.Hostname != "relay-test" || st.Health.State != "ok" || st.Relay.Counts["received"] != 1 {
		t.Errorf("status.json: %+v", st)
	}
	code, page := get("/")
	if code != http.StatusOK || !strings.Contains(page, a.smtp[0].(*net.TCPAddr).IP.String()+" port ") || !strings.Contains(page, "Relaying mail normally") {
		t.Errorf("status page: %d\n%s", code, page)
	}
	port := strconv.Itoa(a.smtp[0].(*net.TCPAddr).Port)
	if code, sheet := get("/sheet"); code != http.StatusOK || !strings.Contains(sheet, "Device setup sheet: relay-test") || strings.Contains(sheet, "<td>"+port+"</td>") {
		// The test's listener is on loopback: the sheet leaves it out.
		t.Errorf("sheet: %d\n%s", code, sheet)
	}
	if code, metrics := get("/metrics"); code != http.StatusOK || !strings.Contains(metrics, "siterelay_") {
		t.Errorf("metrics: %d", code)
	}
}

// TestReloadAppliesNewConfigAndRefusesBrokenOne: a reload request re-reads
// config.json; a broken one is refused with its key named in the log and
// the running configuration keeps relaying.
func TestReloadAppliesNewConfigAndRefusesBrokenOne(t *testing.T) {
	dir := relaytest.StateDir(t)
	write := func(doc string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf := func(outbox string) string {
		return `{"hostname":"relay-test","listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","starttls":false,"allowed_networks":["127.0.0.0/8"]}],
		  "upstream":{"kind":"capture","capture":{"directory":"` + outbox + `"}}}`
	}
	write(conf("first"))
	var logs relaytest.Buffer
	ready := make(chan net.Addr, 1)
	reload := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: dir, Reload: reload, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			Ready: func(s []net.Addr, _ net.Addr) { ready <- s[0] }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var addr string
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-done:
		t.Fatalf("Run ended before it was ready: %v", err)
	}
	send := func(subject string) {
		t.Helper()
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SendMail("mfp@plant.example", []string{"ops@example.com"}, strings.NewReader("Subject: "+subject+"\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	landed := func(outbox string) int {
		files, _ := filepath.Glob(filepath.Join(dir, outbox, "*.eml"))
		return len(files)
	}

	write(conf("second"))
	reload <- struct{}{}
	relaytest.Eventually(t, "the reload took the new outbox", func() bool { return strings.Contains(logs.String(), "configuration reloaded") })
	send("after reload")
	relaytest.Eventually(t, "mail in the new outbox", func() bool { return landed("second") == 1 })

	write(`{"listeners":[{"name":"local","address":"127.0.0.1:0","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture"},"limits":{"max_recipeints":5}}`)
	reload <- struct{}{}
	relaytest.Eventually(t, "the broken config refused", func() bool { return strings.Contains(logs.String(), "reload refused") })
	if !strings.Contains(logs.String(), "max_recipeints") {
		t.Errorf("the refusal does not name the bad key:\n%s", logs.String())
	}
	send("after a refused reload")
	relaytest.Eventually(t, "mail still in the running config's outbox", func() bool { return landed("second") == 2 })
}
