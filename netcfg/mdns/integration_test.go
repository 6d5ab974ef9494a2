//go:build integration

package mdns

// The real-peer test: the responder runs in network namespace R; Debian's
// avahi-daemon runs in C (joined to R's "plant0" by a veth pair) and in X
// (joined to R's "other0", an interface the responder must not use). The
// responder runs in a re-executed copy of this test binary (the helper
// process pattern) so it can live inside R.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "SITERELAY_MDNS_HELPER"

// TestHelperResponder is not a test: it is the responder process that
// TestAvahiInNamespaces starts inside namespace R.
func TestHelperResponder(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process only")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	var r *Responder
	opts := Options{
		Hostname:   os.Getenv("MDNS_HOST"),
		Site:       "Plant 3",
		Interfaces: strings.Split(os.Getenv("MDNS_IFACES"), ","),
		Services: []Service{
			{Instance: "siterelay Plant 3", Type: "_smtp._tcp", Port: 25, TXT: []string{"tls=starttls", "auth=none"}},
			{Instance: "siterelay Plant 3", Type: "_submission._tcp", Port: 587, TXT: []string{"tls=required", "auth=required"}},
		},
		onEvent: func(ev string) {
			fmt.Printf("EVENT %s name=%s sent=%d ms=%d\n", ev, r.Name(), r.PacketsSent(), time.Since(start).Milliseconds())
		},
	}
	r, err := New(opts)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if err := r.Run(ctx); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Printf("EXIT sent=%d\n", r.PacketsSent())
	os.Exit(0)
}

type lab struct {
	t   *testing.T
	tag string // unique per run: srmdns-<pid>
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *lab) ns(s string) string { return l.tag + "-" + s }

// removeStale deletes namespaces left by earlier runs whose process is gone
// (a run killed by a timeout cannot clean up after itself).
func removeStale(t *testing.T) {
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

func newLab(t *testing.T) *lab {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (make check runs it as root)")
	}
	for _, tool := range []string{"ip", "avahi-daemon", "avahi-browse", "avahi-resolve", "dbus-daemon", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (.ci/apt-packages lists it): %v", tool, err)
		}
	}
	removeStale(t)
	l := &lab{t: t, tag: fmt.Sprintf("srmdns-%d", os.Getpid())}
	for _, n := range []string{"r", "c", "x"} {
		name := l.ns(n)
		run(t, "ip", "netns", "add", name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		run(t, "ip", "-n", name, "link", "set", "lo", "up")
	}
	links := []struct{ a, an, b, bn, aAddr, bAddr, aAddr6, bAddr6 string }{
		{"r", "plant0", "c", "dev0", "192.0.2.1/24", "192.0.2.2/24", "2001:db8:1::1/64", "2001:db8:1::2/64"},
		{"r", "other0", "x", "dev0", "198.51.100.1/24", "198.51.100.2/24", "2001:db8:2::1/64", "2001:db8:2::2/64"},
	}
	for _, k := range links {
		run(t, "ip", "link", "add", k.an, "netns", l.ns(k.a), "type", "veth", "peer", "name", k.bn, "netns", l.ns(k.b))
		run(t, "ip", "-n", l.ns(k.a), "addr", "add", k.aAddr, "dev", k.an)
		run(t, "ip", "-n", l.ns(k.b), "addr", "add", k.bAddr, "dev", k.bn)
		run(t, "ip", "-n", l.ns(k.a), "addr", "add", k.aAddr6, "dev", k.an, "nodad")
		run(t, "ip", "-n", l.ns(k.b), "addr", "add", k.bAddr6, "dev", k.bn, "nodad")
		run(t, "ip", "-n", l.ns(k.a), "link", "set", k.an, "up")
		run(t, "ip", "-n", l.ns(k.b), "link", "set", k.bn, "up")
	}
	return l
}

// proc is a long-running process inside a namespace; it dies with the test binary.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	log   *strings.Builder
}

func (l *lab) start(t *testing.T, ns string, env []string, name string, args ...string) *proc {
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
	p := &proc{cmd: cmd, lines: make(chan string, 1000), log: &strings.Builder{}}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		t.Errorf("%v did not stop on SIGTERM; killed", p.cmd.Args)
	}
}

// waitLine returns the first line matching re.
func (p *proc) waitLine(t *testing.T, re string, within time.Duration) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(within)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("%v ended before printing %q; output:\n%s", p.cmd.Args, re, p.log)
			}
			p.log.WriteString(line + "\n")
			if rx.MatchString(line) {
				return line
			}
		case <-deadline:
			t.Fatalf("%v printed no %q within %v; output:\n%s", p.cmd.Args, re, within, p.log)
		}
	}
}

// avahi is a private avahi-daemon with its own D-Bus in one namespace.
type avahi struct {
	ns, bus string
	daemon  *proc
	dbus    *proc
}

func (l *lab) startAvahi(t *testing.T, ns, hostName string) *avahi {
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
	a := &avahi{ns: ns, bus: "unix:path=" + sock}
	a.dbus = l.start(t, ns, nil, "dbus-daemon", "--config-file="+dbusConf, "--nofork", "--nopidfile", "--nosyslog")
	waitFor(t, "D-Bus socket "+sock, func() bool { _, err := os.Stat(sock); return err == nil })
	a.daemon = l.start(t, ns, []string{"DBUS_SYSTEM_BUS_ADDRESS=" + a.bus}, "unshare", "-m", "sh", "-c",
		"mount -t tmpfs tmpfs /run && exec avahi-daemon -f "+avahiConf+" --no-drop-root --no-chroot --no-rlimits --no-proc-title --debug")
	a.daemon.waitLine(t, "Server startup complete", 20*time.Second)
	return a
}

func (a *avahi) stop(t *testing.T) {
	a.daemon.stop(t)
	a.dbus.stop(t)
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

// tool runs an avahi client against a's daemon. avahi-browse -t and
// avahi-resolve exit 0 even when they find nothing, so callers read the output.
func (a *avahi) tool(t *testing.T, name string, args ...string) string {
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

// resolve4 returns the address avahi-resolve finds for name, or "".
func (a *avahi) resolve(t *testing.T, family, name string) string {
	out := a.tool(t, "avahi-resolve", family, "-n", name)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.EqualFold(f[0], name) {
			return f[1]
		}
	}
	return ""
}

// browse returns the resolved ("=") lines of avahi-browse -rtp for typ.
func (a *avahi) browse(t *testing.T, typ string) []string {
	var out []string
	for _, line := range strings.Split(a.tool(t, "avahi-browse", "-rtp", typ), "\n") {
		if strings.HasPrefix(line, "=;") {
			out = append(out, line)
		}
	}
	return out
}

// poll repeats f until it returns true, at most n times (each call waits inside avahi).
func poll(n int, f func() bool) bool {
	for range n {
		if f() {
			return true
		}
	}
	return false
}

func (l *lab) startRelay(t *testing.T, host string) *proc {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return l.start(t, l.ns("r"), []string{helperEnv + "=1", "MDNS_HOST=" + host, "MDNS_IFACES=plant0"},
		exe, "-test.run=^TestHelperResponder$", "-test.count=1")
}

func field(line, key string) int {
	m := regexp.MustCompile(key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestAvahiInNamespaces(t *testing.T) {
	l := newLab(t)
	const host = "siterelay"
	name := host + ".local"
	peerC := l.startAvahi(t, l.ns("c"), "peerc")
	peerX := l.startAvahi(t, l.ns("x"), "peerx")

	// Start to first successful avahi-resolve, with avahi already running.
	t0 := time.Now()
	relay := l.startRelay(t, host)
	var addr string
	if !poll(20, func() bool { addr = peerC.resolve(t, "-4", name); return addr != "" }) {
		t.Fatalf("avahi-resolve -4 -n %s found nothing; relay output:\n%s", name, relay.log)
	}
	took := time.Since(t0)
	claimed := relay.waitLine(t, "^EVENT claimed", 10*time.Second)
	announced := relay.waitLine(t, "^EVENT announced", 10*time.Second)
	t.Logf("FIGURE start to avahi-resolve success: %v (includes process start); claimed after %d ms, %d packets; announced after %d ms, %d packets",
		took.Round(time.Millisecond), field(claimed, "ms"), field(claimed, "sent"), field(announced, "ms"), field(announced, "sent"))
	if got, want := addr, "192.0.2.1"; got != want {
		t.Errorf("avahi-resolve -4 %s = %q, want %q", name, got, want)
	}

	// Cold cache: a fresh avahi-daemon that heard no announcement must get
	// answers to its own questions.
	peerC.stop(t)
	peerC = l.startAvahi(t, l.ns("c"), "peerc")
	t1 := time.Now()
	if got, want := peerC.resolve(t, "-4", name), "192.0.2.1"; got != want {
		t.Errorf("cold cache: avahi-resolve -4 -n %s = %q, want %q", name, got, want)
	}
	t.Logf("FIGURE cold-cache avahi-resolve -4: %v", time.Since(t1).Round(time.Millisecond))
	if got, want := peerC.resolve(t, "-6", name), "2001:db8:1::1"; got != want && !strings.HasPrefix(got, "fe80::") {
		t.Errorf("cold cache: avahi-resolve -6 -n %s = %q, want %q or the link-local address", name, got, want)
	}

	var smtp, sub []string
	poll(5, func() bool { smtp = peerC.browse(t, "_smtp._tcp"); return len(smtp) >= 2 })
	poll(5, func() bool { sub = peerC.browse(t, "_submission._tcp"); return len(sub) >= 1 })
	t.Logf("avahi-browse -rtp (cold cache) in C:\n%s\n%s", strings.Join(smtp, "\n"), strings.Join(sub, "\n"))
	checkBrowse(t, "_smtp._tcp", smtp, "25", `"tls=starttls"`, `"auth=none"`)
	checkBrowse(t, "_submission._tcp", sub, "587", `"tls=required"`, `"auth=required"`)
	for _, line := range append(smtp, sub...) {
		if strings.Contains(line, "198.51.100.") || strings.Contains(line, "2001:db8:2:") {
			t.Errorf("the plant side saw an address of the other interface: %s", line)
		}
	}

	// The third namespace, on the relay's other interface, sees nothing.
	if got := peerX.resolve(t, "-4", name); got != "" {
		t.Errorf("namespace on other0 resolved %s to %s", name, got)
	}
	if got := peerX.browse(t, "_smtp._tcp"); len(got) != 0 {
		t.Errorf("namespace on other0 browsed %q", got)
	}

	// Stopping the relay removes its entries.
	relay.stop(t)
	exit := relay.waitLine(t, "^EXIT", 5*time.Second)
	t.Logf("FIGURE packets sent over the whole run: %d", field(exit, "sent"))
	if !poll(10, func() bool { return len(peerC.browse(t, "_smtp._tcp")) == 0 }) {
		t.Errorf("after stop avahi-browse still lists %q", peerC.browse(t, "_smtp._tcp"))
	}
	if got := peerC.resolve(t, "-4", name); got != "" {
		t.Errorf("after stop avahi-resolve still finds %s at %s", name, got)
	}

	// A second advertiser already holding the name forces a rename.
	peerC.stop(t)
	peerC = l.startAvahi(t, l.ns("c"), host)
	if got := peerC.resolve(t, "-4", name); got != "192.0.2.2" {
		t.Fatalf("avahi in C does not hold %s (resolved to %q)", name, got)
	}
	relay = l.startRelay(t, host)
	ev := relay.waitLine(t, "^EVENT claimed", 20*time.Second)
	if !strings.Contains(ev, "name="+host+"-2 ") {
		t.Errorf("after a conflict the relay claimed %q, want name=%s-2", ev, host)
	}
	if got, want := peerC.resolve(t, "-4", host+"-2.local"), "192.0.2.1"; got != want {
		t.Errorf("avahi-resolve %s-2.local = %q, want %q", host, got, want)
	}
	if got, want := peerC.resolve(t, "-4", name), "192.0.2.2"; got != want {
		t.Errorf("the first holder lost %s: resolves to %q, want %q", name, got, want)
	}
	relay.stop(t)
}

// checkBrowse wants at least one resolved line for typ, each on the relay's
// plant address or host, with the port and TXT strings given.
func checkBrowse(t *testing.T, typ string, lines []string, port string, txt ...string) {
	t.Helper()
	if len(lines) == 0 {
		t.Errorf("avahi-browse -rtp %s resolved nothing", typ)
		return
	}
	for _, line := range lines {
		// =;iface;proto;name;type;domain;host;address;port;txt
		f := strings.SplitN(line, ";", 10)
		if len(f) < 10 {
			t.Errorf("odd avahi-browse line %q", line)
			continue
		}
		if f[6] != "siterelay.local" || f[8] != port || f[3] != `siterelay\032Plant\0323` {
			t.Errorf("avahi-browse %s: host %q port %q instance %q, want siterelay.local, %s, siterelay\\032Plant\\0323", typ, f[6], f[8], f[3], port)
		}
		if f[7] != "192.0.2.1" && f[7] != "2001:db8:1::1" && !strings.HasPrefix(f[7], "fe80::") {
			t.Errorf("avahi-browse %s: address %q is not the relay's plant address", typ, f[7])
		}
		for _, want := range append(txt, `"site=Plant 3"`) {
			if !strings.Contains(f[9], want) {
				t.Errorf("avahi-browse %s: TXT %s lacks %s", typ, f[9], want)
			}
		}
	}
}
