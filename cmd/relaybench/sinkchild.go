package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// serveSinkArg, as the harness's first argument, makes it the builtin sink
// (serveSink) instead of the harness.
const serveSinkArg = "-serve-sink"

// builtinSink is the harness's own sink (goSink) in a child process: this
// binary run with serveSinkArg. A process of its own so that its CPU is
// measured as smtp-sink's is, apart from the load generator's.
type builtinSink struct {
	*sinkProc
}

// startBuiltinSink starts the child and waits for its listening address,
// which it prints once it listens (connections then wait in the backlog).
func startBuiltinSink(ctx context.Context, certs *pki) (*builtinSink, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("the harness's own binary: %w", err)
	}
	args := []string{serveSinkArg}
	if certs != nil {
		args = append(args, "-tls-cert", certs.CertFile, "-tls-key", certs.KeyFile)
	}
	s := &builtinSink{sinkProc: newSinkProc(exec.Command(self, args...))}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := startPinned(s.cmd, s.released); err != nil {
		return nil, fmt.Errorf("starting the sink: %w", err)
	}
	br := bufio.NewReader(out)
	ready := make(chan string, 1)
	go func() {
		line, err := br.ReadString('\n')
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "listening "); ok && err == nil {
			ready <- a
			s.read(br)
			return
		}
		close(s.done)
	}()
	select {
	case s.addr = <-ready:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("the sink exited before listening: %s", s.Failure())
	case <-time.After(10 * time.Second):
		s.Stop()
		return nil, fmt.Errorf("the sink did not listen within 10s: %s", s.stderr.String())
	case <-ctx.Done():
		s.Stop()
		return nil, ctx.Err()
	}
}

// serveSink is the child's whole life: listen on a loopback port, print
// "listening ADDR", then serve and print counter lines until killed (its
// parent-death signal ends it with the harness).
func serveSink(args []string) {
	fs := flag.NewFlagSet("relaybench "+serveSinkArg, flag.ExitOnError)
	cert := fs.String("tls-cert", "", "certificate (PEM) for STARTTLS; with it, STARTTLS is required before MAIL")
	key := fs.String("tls-key", "", "the certificate's key (PEM)")
	fs.Parse(args)
	if err := runSink(*cert, *key); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench %s: %v\n", serveSinkArg, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runSink(certFile, keyFile string) error {
	var cfg *tls.Config
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("the STARTTLS certificate: %w", err)
		}
		// What the harness's front offers smtp-sink's clients.
		cfg = &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	if _, err := fmt.Printf("listening %s\n", l.Addr()); err != nil {
		return err
	}
	if err := newGoSink(l, cfg, os.Stdout).serve(); err != nil {
		return err
	}
	return errors.New("stopped")
}
