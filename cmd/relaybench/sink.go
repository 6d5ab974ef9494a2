package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// sink is Postfix's smtp-sink, which throws messages away and, with -c,
// prints "sess=N quit=N mesg=N" on stdout (flushed, CR-separated) each time
// a session ends or a message's final dot arrives. Counting those lines is
// how the harness knows exactly when the last message got through.
type sink struct {
	addr string
	cmd  *exec.Cmd

	mu       sync.Mutex
	count    int
	waiters  []sinkWaiter
	done     chan struct{} // closed when stdout ends
	released chan struct{} // closed after the process is reaped
	stderr   bytes.Buffer

	stopOnce sync.Once
	waitErr  error
}

type sinkWaiter struct {
	n  int
	ch chan time.Time
}

// startSink runs smtp-sink on a free loopback port and waits until it
// answers with its banner.
func startSink(ctx context.Context, bin string) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s := &sink{addr: addr, done: make(chan struct{}), released: make(chan struct{})}
	s.cmd = exec.Command(bin, "-c", addr, "256")
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
	s.cmd.Stderr = &s.stderr
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
	return s, nil
}

func (s *sink) read(r interface{ Read([]byte) (int, error) }) {
	defer close(s.done)
	sc := bufio.NewScanner(r)
	sc.Split(splitCRLF)
	for sc.Scan() {
		n, ok := parseSinkCounter(sc.Bytes())
		if !ok {
			continue
		}
		now := time.Now()
		s.mu.Lock()
		s.count = n
		kept := s.waiters[:0]
		for _, w := range s.waiters {
			if n >= w.n {
				w.ch <- now
			} else {
				kept = append(kept, w)
			}
		}
		s.waiters = kept
		s.mu.Unlock()
	}
}

// Count is the number of messages received so far.
func (s *sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// When returns a channel that gets the time the count reached n.
func (s *sink) When(n int) <-chan time.Time {
	ch := make(chan time.Time, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count >= n {
		ch <- time.Now()
		return ch
	}
	s.waiters = append(s.waiters, sinkWaiter{n, ch})
	return ch
}

// Addr, Root and LogBytes make the sink a target of its own: the
// harness's ceiling, measured with -targets direct.
func (s *sink) Addr() string    { return s.addr }
func (s *sink) Root() int       { return s.cmd.Process.Pid }
func (s *sink) LogBytes() int64 { return 0 }

// Done is closed when smtp-sink's output ends (it exited).
func (s *sink) Done() <-chan struct{} { return s.done }

func (s *sink) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd.Process != nil {
			s.cmd.Process.Kill()
			s.waitErr = s.cmd.Wait()
		}
		close(s.released)
	})
}

// exitStatus reaps an exited sink and says how it ended.
func (s *sink) exitStatus() string {
	s.Stop() // it has exited already: this only reaps it
	return fmt.Sprint(s.cmd.ProcessState)
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

// parseSinkCounter finds mesg=N in one counter line.
func parseSinkCounter(line []byte) (int, bool) {
	for f := range bytes.FieldsSeq(line) {
		if v, ok := bytes.CutPrefix(f, []byte("mesg=")); ok {
			n, err := strconv.Atoi(string(v))
			return n, err == nil
		}
	}
	return 0, false
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
