//go:build integration

package appliance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/relaytest"
)

// cdp drives Debian's chromium-headless-shell over --remote-debugging-pipe
// (the DevTools protocol as NUL-terminated JSON on file descriptors 3 and
// 4): a few commands are all this test needs, so no CDP module and no
// debugging port that another process on the machine could connect to.
type cdp struct {
	t       *testing.T
	w       *os.File
	mu      sync.Mutex
	next    int
	pending map[int]chan cdpMsg
	events  chan cdpMsg
	session string
}

type cdpMsg struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    any             `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
	RawParams json.RawMessage `json:"-"`
}

func startChromium(t *testing.T) *cdp {
	t.Helper()
	bin, err := exec.LookPath("chromium-headless-shell")
	if err != nil {
		t.Skip("chromium-headless-shell not installed (make check installs it)")
	}
	toChrome, ourW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ourR, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--remote-debugging-pipe",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--user-data-dir="+t.TempDir(), "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fd 3: it reads; fd 4: it writes
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	fromChrome.Close()
	c := &cdp{t: t, w: ourW, pending: map[int]chan cdpMsg{}, events: make(chan cdpMsg, 256)}
	go func() {
		br := bufio.NewReader(ourR)
		for {
			b, err := br.ReadBytes(0)
			if err != nil {
				return
			}
			var m struct {
				cdpMsg
				Params json.RawMessage `json:"params"`
			}
			if json.Unmarshal(b[:len(b)-1], &m) != nil {
				continue
			}
			m.cdpMsg.RawParams = m.Params
			if m.ID != 0 {
				c.mu.Lock()
				ch := c.pending[m.ID]
				delete(c.pending, m.ID)
				c.mu.Unlock()
				if ch != nil {
					ch <- m.cdpMsg
				}
				continue
			}
			select {
			case c.events <- m.cdpMsg:
			default: // nobody waits for it
			}
		}
	}()
	t.Cleanup(func() {
		ourW.Close()
		cancel()
		cmd.Wait()
		ourR.Close()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
	var target struct{ TargetID string }
	c.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var att struct{ SessionID string }
	c.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	c.session = att.SessionID
	c.call(c.session, "Page.enable", nil, nil)
	return c
}

// call sends one command and decodes its result into out.
func (c *cdp) call(session, method string, params any, out any) {
	c.t.Helper()
	c.mu.Lock()
	c.next++
	id := c.next
	ch := make(chan cdpMsg, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	b, _ := json.Marshal(cdpMsg{ID: id, Method: method, Params: params, SessionID: session})
	if _, err := c.w.Write(append(b, 0)); err != nil {
		c.t.Fatalf("CDP %s: %v", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			c.t.Fatalf("CDP %s: %s", method, m.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(m.Result, out); err != nil {
				c.t.Fatalf("CDP %s result %s: %v", method, m.Result, err)
			}
		}
	case <-time.After(time.Until(relaytest.Deadline(c.t))):
		c.t.Fatalf("CDP %s: no answer", method)
	}
}

// loads runs act (a navigation or a click) and waits until the page it
// leads to has loaded.
func (c *cdp) loads(act func()) {
	c.t.Helper()
	for len(c.events) > 0 {
		<-c.events
	}
	act()
	for {
		select {
		case m := <-c.events:
			if m.Method == "Page.loadEventFired" && m.SessionID == c.session {
				return
			}
		case <-time.After(time.Until(relaytest.Deadline(c.t))):
			c.t.Fatal("the page never loaded")
		}
	}
}

func (c *cdp) navigate(url string) {
	c.t.Helper()
	c.loads(func() { c.call(c.session, "Page.navigate", map[string]any{"url": url}, nil) })
}

// eval evaluates a JavaScript expression in the page (the test reads the
// page with it; the page itself runs no script) and returns its value.
func (c *cdp) eval(expr string, out any) {
	c.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails any `json:"exceptionDetails"`
	}
	c.call(c.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		c.t.Fatalf("evaluating %s: %v", expr, r.ExceptionDetails)
	}
	if err := json.Unmarshal(r.Result.Value, out); err != nil {
		c.t.Fatalf("evaluating %s: %s: %v", expr, r.Result.Value, err)
	}
}

func (c *cdp) text() string {
	var s string
	c.eval("document.body.innerText", &s)
	return s
}

// click presses and releases the mouse on the middle of the element
// selector names, as a person would.
func (c *cdp) click(selector string) {
	c.t.Helper()
	c.eval(fmt.Sprintf("document.querySelector(%q).scrollIntoView({block: 'center'})", selector), new(any))
	var box struct{ X, Y float64 }
	c.eval(fmt.Sprintf("(() => { const r = document.querySelector(%q).getBoundingClientRect(); return {x: r.x + r.width/2, y: r.y + r.height/2}; })()", selector), &box)
	for _, typ := range []string{"mousePressed", "mouseReleased"} {
		c.call(c.session, "Input.dispatchMouseEvent", map[string]any{"type": typ, "x": box.X, "y": box.Y, "button": "left", "clickCount": 1}, nil)
	}
}

// screenshot keeps the whole page at the given width in
// $SITERELAY_ARTIFACTS (or the temporary directory).
func (c *cdp) screenshot(name string, width int, mobile bool) string {
	c.t.Helper()
	c.call(c.session, "Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": mobile}, nil)
	var h float64
	c.eval("document.documentElement.scrollHeight", &h)
	c.call(c.session, "Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": int(h), "deviceScaleFactor": 1, "mobile": mobile}, nil)
	var shot struct{ Data string }
	c.call(c.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	b, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		c.t.Fatalf("screenshot %s: %v", name, err)
	}
	if got := img.Bounds().Dx(); got != width {
		c.t.Errorf("screenshot %s is %d wide, want %d", name, got, width)
	}
	colours := map[[3]uint32]bool{}
	for y := 0; y < img.Bounds().Dy() && len(colours) < 16; y += 5 {
		for x := 0; x < img.Bounds().Dx(); x += 5 {
			r, g, b, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, b >> 8}] = true
		}
	}
	if len(colours) < 16 {
		c.t.Errorf("screenshot %s has %d colours: blank page?", name, len(colours))
	}
	dir := os.Getenv("SITERELAY_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("screenshot kept: %s", path)
	return path
}

// TestAdminPageInABrowser: headless Chromium opens the admin page of a
// relay with a failing upstream through relayctl web (the only way a
// browser reaches the tailnet here), clicks Retry on the deferred message,
// and the page then says the message went out and the audit log has the
// retry. Screenshots are kept.
func TestAdminPageInABrowser(t *testing.T) {
	f := startWeb(t)
	c := startChromium(t)

	c.navigate(f.login) // the token becomes a cookie, then /admin/
	var where string
	c.eval("location.pathname", &where)
	if where != "/admin/" {
		t.Fatalf("after the login URL the browser is at %q", where)
	}
	page := c.text()
	for _, want := range []string{"Warning: an admin should look.", "451 4.7.500 Server busy", f.deferred, "to retry from the page", "Retry", "Run doctor"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page as the browser shows it lacks %q:\n%s", want, page)
		}
	}
	var lines int
	c.eval("document.querySelectorAll('#chart polyline').length", &lines)
	if lines != 4 {
		t.Errorf("the chart has %d lines, want 4", lines)
	}
	c.screenshot("siterelay-admin.png", 1000, false)
	c.screenshot("siterelay-admin-phone.png", 390, true)

	// Click Retry: a plain form POST from the browser, through the forwarder.
	c.loads(func() { c.click(`form[action$="/` + f.deferred + `/retry"] button`) })
	c.eval("location.pathname + location.search", &where)
	if want := "/admin/?done=retry&id=" + f.deferred; where != want {
		t.Errorf("after the click the browser is at %q, want %q", where, want)
	}
	if page := c.text(); !strings.Contains(page, "Retry of message "+f.deferred+" started") {
		t.Errorf("no notice after the click:\n%s", page)
	}
	f.fake.WaitMessages(t, 2)

	// The message went out: the trace page says delivered; the audit log has the retry.
	relaytest.Eventually(t, "delivered in the trace page", func() bool {
		c.navigate(f.base + "/admin/trace?queue_id=" + f.deferred)
		return strings.Contains(c.text(), "delivered")
	})
	page = c.text()
	for _, want := range []string{"delivered", "deferred", "received", "Server busy"} {
		if !strings.Contains(page, want) {
			t.Errorf("trace page lacks %q:\n%s", want, page)
		}
	}
	c.screenshot("siterelay-admin-trace.png", 1000, false)
	c.navigate(f.base + "/admin/")
	page = c.text()
	if !strings.Contains(page, "Nothing queued.") {
		t.Errorf("the queue is not empty after the retry:\n%s", page)
	}
	var audit string
	c.eval("document.querySelector('#audit').innerText", &audit)
	if !strings.Contains(audit, "retry message "+f.deferred+" (admin page)\tok") {
		t.Errorf("the audit table lacks the retry:\n%s", audit)
	}
	c.screenshot("siterelay-admin-after-retry.png", 1000, false)
}
