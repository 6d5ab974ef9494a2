// Package mdnslab builds the network namespaces the mDNS integration tests
// run real peers in (netcfg/mdns, appliance): namespace R holds the
// responder, joined by a veth pair from its "plant0" (192.0.2.1/24,
// 2001:db8:1::1/64) to C's "dev0" (.2, ::2), and from its "other0"
// (198.51.100.1/24, 2001:db8:2::1/64) to X's "dev0", an interface the
// responder must not use. It starts processes inside them: Debian's
// avahi-daemon with a private D-Bus, python3-zeroconf, and the test binary
// itself (the helper process pattern). Only integration tests import it;
// it needs root.
package mdnslab

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Lab is one run's namespaces.
type Lab struct {
	t   *testing.T
	tag string // unique per run: srmdns-<pid>
}

// Run runs a command and fails the test if it fails.
func Run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NS is the full name of namespace "r", "c" or "x".
func (l *Lab) NS(s string) string { return l.tag + "-" + s }

// removeStale deletes namespaces left by earlier runs whose process is gone
// (a run killed by a timeout cannot clean up after itself).
func removeStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	re := regexp.MustCompile(`^srmdns-(\d+)-\w+`)
	for _, line := range strings.Split(string(out), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", m[0]).Run()
	}
}

// New creates the namespaces and links; the test's cleanup removes them.
// It skips the test when not root and fails it when a tool is missing.
func New(t *testing.T) *Lab {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (make check runs it as root)")
	}
	for _, tool := range []string{"ip", "avahi-daemon", "avahi-browse", "avahi-resolve", "dbus-daemon", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (.ci/apt-packages lists it): %v", tool, err)
		}
	}
	removeStale()
	l := &Lab{t: t, tag: fmt.Sprintf("srmdns-%d", os.Getpid())}
	for _, n := range []string{"r", "c", "x"} {
		name := l.NS(n)
		Run(t, "ip", "netns", "add", name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		Run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	}
	links := []struct{ a, an, b, bn, aAddr, bAddr, aAddr6, bAddr6 string }{
		{"r", "plant0", "c", "dev0", "192.0.2.1/24", "192.0.2.2/24", "2001:db8:1::1/64", "2001:db8:1::2/64"},
		{"r", "other0", "x", "dev0", "198.51.100.1/24", "198.51.100.2/24", "2001:db8:2::1/64", "2001:db8:2::2/64"},
	}
	for _, k := range links {
		Run(t, "ip", "link", "add", k.an, "netns", l.NS(k.a), "type", "veth", "peer", "name", k.bn, "netns", l.NS(k.b))
		Run(t, "ip", "-n", l.NS(k.a), "addr", "add", k.aAddr, "dev", k.an)
		Run(t, "ip", "-n", l.NS(k.b), "addr", "add", k.bAddr, "dev", k.bn)
		Run(t, "ip", "-n", l.NS(k.a), "addr", "add", k.aAddr6, "dev", k.an, "nodad")
		Run(t, "ip", "-n", l.NS(k.b), "addr", "add", k.bAddr6, "dev", k.bn, "nodad")
		Run(t, "ip", "-n", l.NS(k.a), "link", "set", k.an, "up")
		Run(t, "ip", "-n", l.NS(k.b), "link", "set", k.bn, "up")
	}
	return l
}

// Proc is a long-running process inside a namespace; it dies with the test binary.
type Proc struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}    // closed once everything printed is read and the process reaped
	Log    *strings.Builder // the lines read so far
}

// Start starts name in namespace ns with env added to this process's.
func (l *Lab) Start(t *testing.T, ns string, env []string, name string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s in %s: %v", name, ns, err)
	}
	p := &Proc{cmd: cmd, lines: make(chan string, 1000), exited: make(chan struct{}), Log: &strings.Builder{}}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		// Wait only after the last line is read: Wait closes the pipe,
		// and a line still in it (the helper's EXIT) would be lost.
		_ = p.cmd.Wait()
		close(p.lines)
		close(p.exited)
	}()
	t.Cleanup(func() { p.Stop(t) })
	return p
}

// StartSelf starts this test binary in ns running only the test named
// helper (a TestHelper… function that does its work when env says so).
func (l *Lab) StartSelf(t *testing.T, ns, helper string, env ...string) *Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return l.Start(t, ns, env, exe, "-test.run=^"+helper+"$", "-test.count=1")
}

// Stop ends the process with SIGTERM (SIGKILL after 10 s, which fails the test).
func (p *Proc) Stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("%v did not stop on SIGTERM; killed", p.cmd.Args)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second): // a child of its own still holds its output
			t.Errorf("%v: output still open 10 s after SIGKILL", p.cmd.Args)
		}
	}
}

// Output stops the process if it runs and returns everything it printed.
func (p *Proc) Output(t *testing.T) string {
	p.Stop(t)
	for line := range p.lines {
		p.Log.WriteString(line + "\n")
	}
	return p.Log.String()
}

// WaitLine returns the first line matching re.
func (p *Proc) WaitLine(t *testing.T, re string, within time.Duration) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(within)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("%v ended before printing %q; output:\n%s", p.cmd.Args, re, p.Log)
			}
			p.Log.WriteString(line + "\n")
			if rx.MatchString(line) {
				return line
			}
		case <-deadline:
			t.Fatalf("%v printed no %q within %v; output:\n%s", p.cmd.Args, re, within, p.Log)
		}
	}
}

// Field is the number after key= in line, or -1.
func Field(line, key string) int {
	m := regexp.MustCompile(key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Avahi is a private avahi-daemon with its own D-Bus in one namespace.
type Avahi struct {
	l       *Lab
	ns, bus string
	daemon  *Proc
	dbus    *Proc
}

// StartAvahi starts avahi-daemon in ns as host hostName, on dev0 only.
func (l *Lab) StartAvahi(t *testing.T, ns, hostName string) *Avahi {
	t.Helper()
	dir, err := os.MkdirTemp("", "srmdns")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "bus")
	dbusConf := filepath.Join(dir, "dbus.conf")
	writeFile(t, dbusConf, `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=`+sock+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`)
	avahiConf := filepath.Join(dir, "avahi.conf")
	writeFile(t, avahiConf, `[server]
host-name=`+hostName+`
domain-name=local
use-ipv4=yes
use-ipv6=yes
allow-interfaces=dev0
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
[reflector]
enable-reflector=no
`)
	a := &Avahi{l: l, ns: ns, bus: "unix:path=" + sock}
	a.dbus = l.Start(t, ns, nil, "dbus-daemon", "--config-file="+dbusConf, "--nofork", "--nopidfile", "--nosyslog")
	waitFor(t, "D-Bus socket "+sock, func() bool { _, err := os.Stat(sock); return err == nil })
	a.daemon = l.Start(t, ns, []string{"DBUS_SYSTEM_BUS_ADDRESS=" + a.bus}, "unshare", "-m", "sh", "-c",
		"mount -t tmpfs tmpfs /run && exec avahi-daemon -f "+avahiConf+" --no-drop-root --no-chroot --no-rlimits --no-proc-title --debug")
	a.daemon.WaitLine(t, "Server startup complete", 20*time.Second)
	return a
}

// Stop stops avahi-daemon and its D-Bus.
func (a *Avahi) Stop(t *testing.T) {
	a.daemon.Stop(t)
	a.dbus.Stop(t)
}

// Publish has a's daemon advertise a service instance (avahi-publish -s)
// until the test ends; it returns once avahi has probed and holds the name.
func (a *Avahi) Publish(t *testing.T, instance, typ string, port int, txt ...string) *Proc {
	t.Helper()
	args := append([]string{"-s", instance, typ, strconv.Itoa(port)}, txt...)
	p := a.l.Start(t, a.ns, []string{"DBUS_SYSTEM_BUS_ADDRESS=" + a.bus}, "avahi-publish", args...)
	p.WaitLine(t, "^Established under name", 20*time.Second)
	return p
}

// Output stops the daemon and its D-Bus and returns everything the daemon
// logged (it runs with --debug: probes, conflicts, renames).
func (a *Avahi) Output(t *testing.T) string {
	out := a.daemon.Output(t)
	a.dbus.Stop(t)
	return out
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling a file; nothing to wait on
	}
}

// Tool runs an avahi client against a's daemon. avahi-browse -t and
// avahi-resolve exit 0 even when they find nothing, so callers read the output.
func (a *Avahi) Tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", a.ns, name}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+a.bus)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// Resolve returns the address avahi-resolve finds for name ("-4" or "-6"), or "".
func (a *Avahi) Resolve(t *testing.T, family, name string) string {
	out := a.Tool(t, "avahi-resolve", family, "-n", name)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.EqualFold(f[0], name) {
			return f[1]
		}
	}
	return ""
}

// Browse returns the resolved ("=") lines of avahi-browse -rtp for typ.
func (a *Avahi) Browse(t *testing.T, typ string) []string {
	var out []string
	for _, line := range strings.Split(a.Tool(t, "avahi-browse", "-rtp", typ), "\n") {
		if strings.HasPrefix(line, "=;") {
			out = append(out, line)
		}
	}
	return out
}

// Poll repeats f until it returns true, at most n times (each call waits inside its client).
func Poll(n int, f func() bool) bool {
	for range n {
		if f() {
			return true
		}
	}
	return false
}

//go:embed client.py
var clientPy string

// python is Debian's interpreter, whose python3-zeroconf the tests use
// (a python3 earlier in PATH, from pyenv say, would not have it).
func python() string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return "python3"
}

// ZeroconfService is one service python3-zeroconf found and resolved.
type ZeroconfService struct {
	Name       string            `json:"name"`
	Server     string            `json:"server"`
	Port       int               `json:"port"`
	Addresses  []string          `json:"addresses"`
	Properties map[string]string `json:"properties"`
}

// ZeroconfBrowse browses for typ ("_smtp._tcp.local.") from namespace ns
// with python3-zeroconf (the library Home Assistant uses), for at most
// within, and resolves what it finds. It fails the test if python3-zeroconf
// is missing or its client fails.
func (l *Lab) ZeroconfBrowse(t *testing.T, ns, typ string, within time.Duration) []ZeroconfService {
	t.Helper()
	return l.ZeroconfBrowseN(t, ns, typ, 1, within)
}

// ZeroconfBrowseN is ZeroconfBrowse that waits for n instances (or within).
func (l *Lab) ZeroconfBrowseN(t *testing.T, ns, typ string, n int, within time.Duration) []ZeroconfService {
	t.Helper()
	out := l.Client(t, ns, "browse", typ, strconv.FormatFloat(within.Seconds(), 'f', 1, 64), strconv.Itoa(n))
	var svcs []ZeroconfService
	if err := json.Unmarshal([]byte(out), &svcs); err != nil {
		t.Fatalf("python3-zeroconf browse %s printed %q: %v", typ, out, err)
	}
	return svcs
}

// Client runs client.py in ns with args and returns its last output line
// (its result; earlier lines are warnings). "query NAME SRC DST" sends a
// one-shot legacy query (see client.py).
func (l *Lab) Client(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := l.ClientErr(ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ClientErr is Client for use off the test's goroutine: it returns the
// failure instead of failing the test.
func (l *Lab) ClientErr(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, python(), "-c", clientPy}, args...)...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("python3-zeroconf client %v in %s: %v\n%s", args, ns, err, b)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1], nil
}

// Dig runs dig in ns with args and returns its output; it fails only if
// dig cannot run (no answer is dig's output, for the caller to read).
func (l *Lab) Dig(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "dig"}, args...)...).CombinedOutput()
	if err != nil && ctx.Err() != nil {
		return string(b), fmt.Errorf("dig %v in %s: %v\n%s", args, ns, err, b)
	}
	return string(b), nil
}
