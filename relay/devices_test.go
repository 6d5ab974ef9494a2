//go:build integration

package relay

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// The devices on a plant network are not Go programs: these tests send
// with the tools DESIGN.md names as real peers and check what the capture
// upstream delivered.
func TestRealDevices(t *testing.T) {
	py := `import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port))
s.ehlo("scada01")
s.sendmail("scada@plant.example", ["ops@example.com"], "Subject: smtplib alarm\r\n\r\nboiler 2 pressure high\r\n")
s.quit()
`
	for _, tc := range []struct {
		name  string
		tool  string
		args  func(addr string, dir string) []string
		stdin string
		want  string
	}{
		{"swaks", "swaks", func(a, _ string) []string {
			return []string{"--server", a, "--from", "mfp3@plant.example", "--to", "ops@example.com", "--header", "Subject: swaks scan", "--body", "scan attached", "--helo", "mfp3"}
		}, "", "Subject: swaks scan"},
		{"swaks over STARTTLS with TLS 1.2", "swaks", func(a, _ string) []string {
			return []string{"--server", a, "--tls", "--from", "mfp3@plant.example", "--to", "ops@example.com", "--header", "Subject: swaks tls", "--helo", "mfp3"}
		}, "", "with ESMTPS"},
		{"python smtplib", "python3", func(a, dir string) []string {
			f := filepath.Join(dir, "send.py")
			os.WriteFile(f, []byte(py), 0o644)
			return []string{f, a}
		}, "", "Subject: smtplib alarm"},
		{"curl", "curl", func(a, _ string) []string {
			return []string{"-sS", "smtp://" + a, "--mail-from", "line7@plant.example", "--mail-rcpt", "ops@example.com", "-T", "-"}
		}, "Subject: curl report\r\n\r\nshift report\r\n", "Subject: curl report"},
		{"msmtp", "msmtp", func(a, _ string) []string {
			host, port, _ := strings.Cut(a, ":")
			return []string{"--host", host, "--port", port, "--auth=off", "--tls=off", "--from", "hmi@plant.example", "ops@example.com"}
		}, "Subject: msmtp note\r\n\r\nhello\r\n", "Subject: msmtp note"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Fatalf("%s is not installed (make check installs it through .ci/install)", tc.tool)
			}
			dir := relaytest.StateDir(t)
			_, addr := run(t, config.Default(), dir)
			cmd := exec.Command(tc.tool, tc.args(addr, t.TempDir())...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", tc.tool, err, out)
			}
			var files []string
			relaytest.Eventually(t, "delivery to the outbox", func() bool {
				files, _ = filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
				return len(files) == 1
			})
			b, _ := os.ReadFile(files[0])
			if !strings.Contains(string(b), tc.want) {
				t.Errorf("delivered message lacks %q:\n%s", tc.want, b)
			}
			if strings.Contains(strings.ReplaceAll(string(b), "\r\n", ""), "\n") {
				t.Errorf("bare LF in the delivered message")
			}
		})
	}
}

// A scanner uploading a large scan slowly but steadily is not cut off:
// limits.read_timeout bounds each read, not the whole DATA phase. curl
// paces the upload (--limit-rate) over about three times read_timeout.
func TestSlowSteadyUploadWithCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed (make check installs it through .ci/install)")
	}
	cfg := config.Default()
	cfg.Limits.ReadTimeout = config.Duration(time.Second)
	dir := relaytest.StateDir(t)
	_, addr := run(t, cfg, dir)
	body := "Subject: slow scan\r\n\r\n" + strings.Repeat(strings.Repeat("A", 76)+"\r\n", 4000) // 312 KB
	cmd := exec.Command("curl", "-sS", "--limit-rate", "100k", "smtp://"+addr, "--mail-from", "mfp@plant.example", "--mail-rcpt", "ops@example.com", "-T", "-")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	var files []string
	relaytest.Eventually(t, "delivery to the outbox", func() bool {
		files, _ = filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
		return len(files) == 1
	})
	b, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(b), body[strings.Index(body, "\r\n\r\n"):]) {
		t.Errorf("delivered message does not end in the whole body (%d bytes delivered)", len(b))
	}
}
