//go:build integration

package status

import (
	"bytes"
	"context"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chromium runs Debian's headless Chromium on url with args. Every host
// name but loopback fails to resolve, so the browser cannot reach beyond
// this machine.
func chromium(t *testing.T, url string, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("chromium-headless-shell")
	if err != nil {
		t.Skip("chromium-headless-shell not installed (make check installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(append(base, args...), url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// TestInABrowser loads the page in a real browser: the DOM it builds must
// carry the facts, and a screenshot is kept for people to look at
// ($SITERELAY_ARTIFACTS, or the temporary directory).
func TestInABrowser(t *testing.T) {
	srv := httptest.NewServer(Handler(samplePage))
	defer srv.Close()

	dom := string(chromium(t, srv.URL+"/", "--dump-dom"))
	for _, want := range []string{
		`<section class="health warning" id="health">`,
		"relay-plant-a-2.local port 25",
		"451 4.7.500 Server busy",
		"throttling &lt;this&gt; relay",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("browser DOM lacks %q", want)
		}
	}

	dir := os.Getenv("SITERELAY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "siterelay-status.png")
	chromium(t, srv.URL+"/", "--screenshot="+shot, "--window-size=1000,1300", "--hide-scrollbars")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() != 1000 || b.Dy() != 1300 {
		t.Errorf("screenshot is %v, want 1000x1300", b)
	}
	// A page that failed to render is one colour; ours has text and a
	// coloured verdict bar.
	colours := map[[3]uint32]bool{}
	for y := 0; y < img.Bounds().Dy() && len(colours) < 16; y += 7 {
		for x := 0; x < img.Bounds().Dx(); x += 7 {
			r, g, b, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, b >> 8}] = true
		}
	}
	if len(colours) < 16 {
		t.Errorf("screenshot has %d colours: blank page?", len(colours))
	}
	t.Logf("screenshot kept: %s", shot)
}
