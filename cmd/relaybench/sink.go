package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// mailSink is the server both relays deliver to, and `direct` loads: it
// throws messages away and counts them, and the count is how the harness
// knows exactly when the last message got through. There are two: the
// builtin (relaybench itself as a child process, serveSink; the default)
// and Postfix's smtp-sink (-sink PATH), behind the harness's STARTTLS
// front when TLS is wanted. Either is a process of its own, whose CPU the
// table shows as the sink's.
type mailSink interface {
	// Addr, Root, LogBytes and Stop make the sink a target of its own:
	// the harness's ceiling, measured with -targets direct. Addr is where
	// to deliver (the front, for smtp-sink with TLS); Root the process
	// whose CPU is the sink's.
	target
	// Count is the number of messages received so far.
	Count() int
	// When returns a channel that gets the time the count reached n.
	When(n int) <-chan time.Time
	// Done is closed when the sink's process has exited (its output ended).
	Done() <-chan struct{}
	// Failure reaps an exited sink and says how it ended, with its stderr.
	Failure() string
}

// startSink starts the run's sink: the builtin when bin is "", else
// smtp-sink at bin. With certs, the sink offers STARTTLS with the run's
// certificate and refuses mail without it.
func startSink(ctx context.Context, bin string, certs *pki) (mailSink, error) {
	if bin == "" {
		return startBuiltinSink(ctx, certs)
	}
	sk, err := startSMTPSink(ctx, bin, certs)
	for try := 1; err != nil && try < 3 && ctx.Err() == nil; try++ {
		sk, err = startSMTPSink(ctx, bin, certs) // the free port may have been taken meanwhile
	}
	return sk, err
}

// sinkProc is a sink's process and its counter lines on stdout:
// "sess=N quit=N mesg=N" (CR- or LF-separated), written each time a
// session ends or a message's final dot arrives; the builtin adds the
// moment the message was counted (mono=NS).
type sinkProc struct {
	addr string
	cmd  *exec.Cmd

	mu       sync.Mutex
	count    int
	waiters  []sinkWaiter
	done     chan struct{} // closed when stdout ends
	released chan struct{} // closed after the process is reaped
	stderr   bytes.Buffer

	stopOnce sync.Once
}

type sinkWaiter struct {
	n  int
	ch chan time.Time
}

func newSinkProc(cmd *exec.Cmd) *sinkProc {
	p := &sinkProc{cmd: cmd, done: make(chan struct{}), released: make(chan struct{})}
	cmd.Stderr = &p.stderr
	return p
}

// read follows the counter lines until stdout ends.
func (p *sinkProc) read(r io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Split(splitCRLF)
	for sc.Scan() {
		n, mono, ok := parseSinkCounter(sc.Bytes())
		if !ok {
			continue
		}
		now := time.Now()
		if mono != 0 {
			// The builtin's moment of counting, on this process's clock.
			now = now.Add(-time.Duration(monoNow() - mono))
		}
		p.mu.Lock()
		p.count = n
		kept := p.waiters[:0]
		for _, w := range p.waiters {
			if n >= w.n {
				w.ch <- now
			} else {
				kept = append(kept, w)
			}
		}
		p.waiters = kept
		p.mu.Unlock()
	}
}

func (p *sinkProc) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

func (p *sinkProc) When(n int) <-chan time.Time {
	ch := make(chan time.Time, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.count >= n {
		ch <- time.Now()
		return ch
	}
	p.waiters = append(p.waiters, sinkWaiter{n, ch})
	return ch
}

func (p *sinkProc) Addr() string          { return p.addr }
func (p *sinkProc) Root() int             { return p.cmd.Process.Pid }
func (p *sinkProc) LogBytes() int64       { return 0 }
func (p *sinkProc) Done() <-chan struct{} { return p.done }

func (p *sinkProc) Stop() {
	p.stopOnce.Do(func() {
		if p.cmd.Process != nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
		close(p.released)
	})
}

func (p *sinkProc) Failure() string {
	p.Stop() // it has exited already: this only reaps it
	return fmt.Sprintf("%v %s", p.cmd.ProcessState, p.stderr.String())
}

// smtpSink is Postfix's smtp-sink, started with -c so that it prints the
// counter lines (flushed). It cannot speak TLS: with certificates a
// tlsFront answers STARTTLS before it, and Addr is the front's.
type smtpSink struct {
	*sinkProc
	front *tlsFront
}

// startSMTPSink runs smtp-sink on a free loopback port and waits until it
// answers with its banner.
func startSMTPSink(ctx context.Context, bin string, certs *pki) (*smtpSink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s := &smtpSink{sinkProc: newSinkProc(exec.Command(bin, "-c", addr, "256"))}
	s.addr = addr
	if os.Geteuid() == 0 {
		// As root, smtp-sink insists on -u and then changes user itself,
		// which clears the parent-death signal; starting it as nobody
		// keeps that signal armed.
		cred, err := nobody()
		if err != nil {
			return nil, err
		}
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := startPinned(s.cmd, s.released); err != nil {
		return nil, fmt.Errorf("starting smtp-sink: %w", err)
	}
	go s.read(out)
	if err := waitBanner(ctx, addr, 10*time.Second, s.done); err != nil {
		s.Stop()
		return nil, fmt.Errorf("smtp-sink on %s: %w (stderr: %q)", addr, err, s.stderr.String())
	}
	if certs != nil {
		if s.front, err = startTLSFront(addr, certs); err != nil {
			s.Stop()
			return nil, fmt.Errorf("the sink's TLS front: %w", err)
		}
	}
	return s, nil
}

func (s *smtpSink) Addr() string {
	if s.front != nil {
		return s.front.Addr()
	}
	return s.addr
}

func (s *smtpSink) Stop() {
	if s.front != nil {
		s.front.Stop()
	}
	s.sinkProc.Stop()
}

func nobody() (*syscall.Credential, error) {
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("user to run smtp-sink as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user nobody: uid %q gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// parseSinkCounter finds mesg=N in one counter line, and mono=NS where
// the builtin gives it (0 when not).
func parseSinkCounter(line []byte) (n int, mono int64, ok bool) {
	for f := range bytes.FieldsSeq(line) {
		if v, found := bytes.CutPrefix(f, []byte("mesg=")); found {
			var err error
			n, err = strconv.Atoi(string(v))
			if err != nil {
				return 0, 0, false
			}
			ok = true
		} else if v, found := bytes.CutPrefix(f, []byte("mono=")); found {
			mono, _ = strconv.ParseInt(string(v), 10, 64)
		}
	}
	return n, mono, ok
}

// splitCRLF splits at CR or LF.
func splitCRLF(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// freePort asks the kernel for a free loopback port. The port is closed
// again before the server binds it; a collision shows as a failed start.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitBanner polls addr until a server there sends its 220 banner (a
// successful connect alone may only reach the listen backlog). dead, when
// closed, means the server exited and waiting is pointless.
func waitBanner(ctx context.Context, addr string, limit time.Duration, dead <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			code, text, err := readReply(bufio.NewReader(c))
			c.Write([]byte("QUIT\r\n"))
			c.Close()
			if err == nil && code == 220 {
				return nil
			}
			if err == nil {
				return fmt.Errorf("banner %d %s", code, text)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no SMTP banner within %v: %v", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-dead:
			return fmt.Errorf("the server exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
