package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// target is one relay under test, started and pointed at the sink.
type target interface {
	// Addr is the SMTP address the load goes to.
	Addr() string
	// Root is the process whose tree is measured.
	Root() int
	// LogBytes is how much the target wrote to its own log files so far;
	// it is taken out of the disk figure so that both are measured without
	// logs (relayd's log goes through the harness, Postfix's to a file).
	LogBytes() int64
	Stop()
}

// relayd is the relay built from this tree.
type relayd struct {
	addr     string
	cmd      *exec.Cmd
	done     chan struct{} // closed when its stderr ends
	released chan struct{} // closed after it is reaped
	once     sync.Once
	// Under -fsync-delay cmd is strace; pid is relayd below it, and
	// syncLog the tracer's log.
	pid     int
	syncLog string
}

// buildRelayd compiles ./cmd/relayd from the module in modDir.
func buildRelayd(ctx context.Context, modDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/relayd")
	cmd.Dir = modDir
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build ./cmd/relayd: %w\n%s", err, b)
	}
	return nil
}

// relaydConfig is the benchmark's configuration: one SMTP listener for
// loopback clients (STARTTLS with the run's certificate when the devices
// use it), limits out of the way, the sink (or its TLS front) as upstream:
// a smarthost, or the Microsoft 365 connector kind with the front as its
// MX host (paced by recipients a day, so its state file is written as on a
// box).
func relaydConfig(sinkAddr string, concurrency int, c condition) ([]byte, error) {
	listener := map[string]any{
		"name": "smtp", "address": "127.0.0.1:0", "mode": "smtp", "starttls": c.ClientTLS != "",
		"allowed_networks": []string{"127.0.0.0/8"},
	}
	cfg := map[string]any{
		"hostname":  "relay.bench.localhost",
		"listeners": []any{listener},
		"limits": map[string]any{
			"messages_per_minute": 100_000_000, "burst": 100_000_000, "max_connections_per_client": 1000,
		},
	}
	if c.ClientTLS != "" {
		listener["min_tls"] = c.ClientTLS
		cfg["tls"] = map[string]any{"cert_file": c.PKI.CertFile, "key_file": c.PKI.KeyFile}
	}
	smtp := map[string]any{"address": sinkAddr, "tls": "none", "concurrency": concurrency}
	if c.UpstreamTLS {
		smtp["tls"], smtp["ca_file"] = "starttls", c.PKI.CAFile
	}
	cfg["upstream"] = map[string]any{"kind": "smtp", "smtp": smtp}
	if c.UpstreamKind == "m365-connector" {
		host, port, err := net.SplitHostPort(sinkAddr)
		if err != nil {
			return nil, err
		}
		p, _ := strconv.Atoi(port)
		cfg["upstream"] = map[string]any{"kind": "m365-connector", "m365": map[string]any{
			"domain": "bench.localhost", "mx_host": host, "smtp_port": p,
			"limits": map[string]any{"concurrency": concurrency, "recipients_per_day": 1_000_000_000},
		}}
	}
	return json.MarshalIndent(cfg, "", "  ")
}

func startRelayd(ctx context.Context, bin, dir, sinkAddr string, concurrency int, c condition) (*relayd, error) {
	cfg, err := relaydConfig(sinkAddr, concurrency, c)
	if err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "relayd.log"))
	if err != nil {
		return nil, err
	}
	r := &relayd{done: make(chan struct{}), released: make(chan struct{})}
	r.cmd = exec.Command(bin, "-config", cfgFile, "-state", state)
	if c.FsyncDelay > 0 {
		r.syncLog = filepath.Join(dir, "strace.log")
		if r.cmd, err = tracedCmd(r.syncLog, c.FsyncDelay, r.cmd.Args...); err != nil {
			logf.Close()
			return nil, err
		}
	}
	if c.UpstreamKind == "m365-connector" {
		// The Microsoft kinds verify against the system's roots, which
		// Go reads from SSL_CERT_FILE when it is set.
		r.cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+c.PKI.CAFile)
	}
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := startPinned(r.cmd, r.released); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting relayd: %w", err)
	}
	ready := make(chan string, 1)
	go func() {
		defer close(r.done)
		defer logf.Close()
		br := bufio.NewReader(stderr)
		for {
			line, err := br.ReadString('\n')
			logf.WriteString(line)
			// {"time":…,"level":"INFO","msg":"SMTP listening","address":"127.0.0.1:2525"}
			var rec struct{ Msg, Address string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "SMTP listening" {
				a := rec.Address
				select {
				case ready <- a:
				default:
				}
				io.Copy(logf, br) // the rest needs no parsing
				return
			}
			if err != nil {
				return
			}
		}
	}()
	fail := func(err error) (*relayd, error) {
		r.Stop()
		tail, _ := os.ReadFile(filepath.Join(dir, "relayd.log"))
		return nil, fmt.Errorf("%w; relayd's log:\n%s", err, lastLines(string(tail), 20))
	}
	select {
	case r.addr = <-ready:
	case <-r.done:
		return fail(errors.New("relayd exited before listening"))
	case <-time.After(30 * time.Second):
		return fail(errors.New("relayd did not report its SMTP listener within 30s"))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	if err := waitBanner(ctx, r.addr, 10*time.Second, r.done); err != nil {
		return fail(fmt.Errorf("relayd on %s: %w", r.addr, err))
	}
	if r.syncLog != "" {
		// relayd is the tracer's only child by now: it is listening.
		pids, err := descendants(r.cmd.Process.Pid)
		if err != nil || len(pids) != 2 {
			return fail(fmt.Errorf("relayd below strace: processes %v: %v", pids, err))
		}
		r.pid = pids[1]
	}
	return r, nil
}

func (r *relayd) Addr() string { return r.addr }
func (r *relayd) Root() int {
	if r.pid != 0 {
		return r.pid
	}
	return r.cmd.Process.Pid
}
func (r *relayd) SyncLog() string { return r.syncLog }

// LogBytes is the tracer's log (relayd's own log goes through the harness).
func (r *relayd) LogBytes() int64 { return fileSize(r.syncLog) }

// Stop asks relayd to shut down cleanly and kills it if it takes too long.
func (r *relayd) Stop() {
	r.once.Do(func() {
		defer close(r.released)
		if r.cmd.Process == nil {
			return
		}
		if r.pid != 0 {
			syscall.Kill(r.pid, syscall.SIGTERM) // strace blocks SIGTERM; it ends with relayd
		} else {
			r.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			r.cmd.Process.Kill() // relayd, or strace and so relayd (parent-death signal)
		}
		r.cmd.Wait()
	})
}

// postfix is a private Postfix instance: its own config and queue
// directories, one smtpd on a loopback port, the sink as relayhost, and
// otherwise Debian's defaults (so one fsync per queue file, as shipped).
type postfix struct {
	dir, conf, queue string
	addr             string
	master           int
	// Under -fsync-delay: strace running `postfix start` and then master
	// with every process it forks, its log, and its end.
	tracer  *exec.Cmd
	syncLog string
	traced  chan struct{} // closed when strace has exited
}

// postfixMissing says why Postfix cannot be measured here, or "".
func postfixMissing() string {
	if os.Geteuid() != 0 {
		return "not root (a private Postfix instance needs root to start)"
	}
	for _, b := range []string{"postfix", "postconf"} {
		if _, err := exec.LookPath(b); err != nil {
			return b + " is not installed (Debian package postfix)"
		}
	}
	if _, err := os.Stat("/etc/postfix/master.cf"); err != nil {
		return "no /etc/postfix/master.cf to start from"
	}
	return ""
}

func startPostfix(ctx context.Context, dir, sinkAddr string, c condition) (*postfix, error) {
	p := &postfix{dir: dir, conf: filepath.Join(dir, "etc"), queue: filepath.Join(dir, "queue")}
	for _, d := range []string{p.conf, p.queue, filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// master's lock file and postscreen's caches live here, as mail_owner.
	owner, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("postfix's mail_owner: %w", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		return nil, err
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.conf, "master.cf"), master, 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p.addr = "127.0.0.1:" + strconv.Itoa(port)
	sinkHost, sinkPort, err := net.SplitHostPort(sinkAddr)
	if err != nil {
		return nil, err
	}
	mainCF := strings.Join([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + p.queue,
		"data_directory = " + filepath.Join(dir, "data"),
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = postfix.bench.localhost",
		"mydomain = bench.localhost",
		"mydestination =",
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"relayhost = [" + sinkHost + "]:" + sinkPort, // brackets: no MX lookup
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		"biff = no",
		// No syslog daemon is assumed; postlogd writes this file (its bytes
		// are taken out of the disk figure, its CPU stays in).
		"maillog_file = " + filepath.Join(dir, "maillog"),
		"maillog_file_prefixes = " + dir,
	}, "\n") + "\n"
	if c.ClientTLS != "" {
		// The devices' STARTTLS: the run's certificate; TLS 1.2 and
		// later offered (the client picks the version).
		mainCF += strings.Join([]string{
			"smtpd_tls_security_level = may",
			"smtpd_tls_cert_file = " + c.PKI.CertFile,
			"smtpd_tls_key_file = " + c.PKI.KeyFile,
			"smtpd_tls_protocols = >=TLSv1.2",
			"smtpd_tls_session_cache_database = btree:" + filepath.Join(dir, "data", "smtpd_scache"),
		}, "\n") + "\n"
	}
	if c.UpstreamTLS {
		// TLS required to the upstream, the chain verified against the
		// run's CA (relayhost in brackets is an address: "encrypt" checks
		// no name, relayd checks the IP address's SAN as well).
		mainCF += strings.Join([]string{
			"smtp_tls_security_level = encrypt",
			"smtp_tls_CAfile = " + c.PKI.CAFile,
			"smtp_tls_protocols = >=TLSv1.2",
			"smtp_tls_session_cache_database = btree:" + filepath.Join(dir, "data", "smtp_scache"),
		}, "\n") + "\n"
	}
	if err := os.WriteFile(filepath.Join(p.conf, "main.cf"), []byte(mainCF), 0o644); err != nil {
		return nil, err
	}
	// One smtpd on our port instead of port 25, and no chroot (the queue
	// lives in a temporary directory without the files a chroot needs).
	for _, args := range [][]string{
		{"-M#", "smtp/inet"},
		{"-M", p.addr + "/inet = " + p.addr + " inet n - n - - smtpd"},
		{"-F", "*/*/chroot = n"},
	} {
		if err := p.run(ctx, "postconf", append([]string{"-c", p.conf}, args...)...); err != nil {
			return nil, err
		}
	}
	var dead <-chan struct{}
	if c.FsyncDelay > 0 {
		if err := p.startTraced(dir, c.FsyncDelay); err != nil {
			p.Stop()
			return nil, err
		}
		dead = p.traced
		// `postfix start` returns when master is up, but strace goes on
		// tracing master: wait for smtpd's banner instead.
		if err := waitBanner(ctx, p.addr, 20*time.Second, dead); err != nil {
			p.Stop()
			log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			out, _ := os.ReadFile(filepath.Join(dir, "postfix-start.log"))
			return nil, fmt.Errorf("postfix under strace on %s: %w\n%s; maillog:\n%s", p.addr, err, out, lastLines(string(log), 20))
		}
	} else if err := p.run(ctx, "postfix", "-c", p.conf, "start"); err != nil {
		p.Stop()
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(p.queue, "pid", "master.pid"))
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("postfix master pid: %w", err)
	}
	if p.master, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		p.Stop()
		return nil, fmt.Errorf("postfix master pid %q: %w", b, err)
	}
	if err := waitBanner(ctx, p.addr, 20*time.Second, dead); err != nil {
		p.Stop()
		log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		return nil, fmt.Errorf("postfix on %s: %w; maillog:\n%s", p.addr, err, lastLines(string(log), 20))
	}
	return p, nil
}

func (p *postfix) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, b)
	}
	return nil
}

// startTraced runs `postfix start` under strace. Its master daemonises
// with `master -w`, but by fork: it stays under the tracer, and so does
// every daemon master forks, so all of Postfix's fsyncs are delayed alike.
func (p *postfix) startTraced(dir string, d time.Duration) error {
	p.syncLog = filepath.Join(dir, "strace.log")
	cmd, err := tracedCmd(p.syncLog, d, "postfix", "-c", p.conf, "start")
	if err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(dir, "postfix-start.log"))
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("strace postfix start: %w", err)
	}
	p.tracer, p.traced = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(p.traced)
	}()
	return nil
}

func (p *postfix) SyncLog() string { return p.syncLog }

func (p *postfix) Addr() string { return p.addr }
func (p *postfix) Root() int    { return p.master }
func (p *postfix) LogBytes() int64 {
	return fileSize(filepath.Join(p.dir, "maillog")) + fileSize(p.syncLog)
}

// fileSize is the size of the file at path, 0 if there is none ("").
func fileSize(path string) int64 {
	if path == "" {
		return 0
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Stop runs `postfix stop` and, if master is still there after a while,
// kills what is left of the instance.
func (p *postfix) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p.run(ctx, "postfix", "-c", p.conf, "stop")
	if p.tracer != nil {
		// strace ends once master and its daemons have.
		defer func() {
			select {
			case <-p.traced:
			case <-time.After(10 * time.Second):
				p.tracer.Process.Kill()
				<-p.traced
			}
		}()
	}
	if p.master == 0 {
		return
	}
	for ctx.Err() == nil {
		if err := syscall.Kill(p.master, 0); err != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	pids, _ := descendants(p.master)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
