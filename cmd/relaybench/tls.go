package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki is the run's own certificate authority and one certificate for
// 127.0.0.1 and localhost, given to both relays' listeners and to the TLS
// front of the sink, so that every side verifies a real chain.
type pki struct {
	CAFile, CertFile, KeyFile string
	Pool                      *x509.CertPool
	Cert                      tls.Certificate
}

// makePKI writes ca.pem, cert.pem and key.pem into dir.
func makePKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relaybench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	p := &pki{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for _, f := range []struct {
		path string
		b    []byte
		mode os.FileMode
	}{{p.CAFile, caPEM, 0o644}, {p.CertFile, certPEM, 0o644}, {p.KeyFile, keyPEM, 0o600}} {
		if err := os.WriteFile(f.path, f.b, f.mode); err != nil {
			return nil, err
		}
	}
	p.Pool = x509.NewCertPool()
	p.Pool.AddCert(ca)
	if p.Cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, err
	}
	return p, nil
}

// tlsVersions are the -client-tls values.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// tlsFront puts STARTTLS in front of smtp-sink, which cannot speak TLS:
// it answers the greeting, EHLO and STARTTLS itself, completes the
// handshake, then connects to the sink, swallows the sink's greeting and
// copies both ways, so that the client's second EHLO and everything after
// it reach the sink over the TLS session. Both relays deliver through it
// (the upstream's TLS for both), and its CPU is the harness's.
type tlsFront struct {
	l     net.Listener
	sink  string
	cfg   *tls.Config
	conns connSet
}

func startTLSFront(sinkAddr string, p *pki) (*tlsFront, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &tlsFront{l: l, sink: sinkAddr, cfg: &tls.Config{Certificates: []tls.Certificate{p.Cert}, MinVersion: tls.VersionTLS12}}
	f.conns.wg.Add(1)
	go func() {
		defer f.conns.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil || !f.conns.serve(c, f.serve) {
				return
			}
		}
	}()
	return f, nil
}

func (f *tlsFront) Addr() string { return f.l.Addr().String() }

// Stop closes the listener and every connection and waits for them.
func (f *tlsFront) Stop() { f.conns.close(f.l) }

// serve runs one connection's clear-text part, then the proxy.
func (f *tlsFront) serve(c net.Conn) {
	r := bufio.NewReader(c)
	reply := func(s string) bool { _, err := io.WriteString(c, s); return err == nil }
	if !reply("220 tls-front.bench.localhost ESMTP\r\n") {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.TrimSpace(line))
		if i := strings.IndexByte(verb, ' '); i >= 0 {
			verb = verb[:i]
		}
		switch verb {
		case "EHLO":
			if !reply("250-tls-front.bench.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n") {
				return
			}
		case "HELO", "NOOP", "RSET":
			if !reply("250 ok\r\n") {
				return
			}
		case "QUIT":
			reply("221 bye\r\n")
			return
		case "STARTTLS":
			if r.Buffered() > 0 {
				reply("501 5.5.0 no pipelining into STARTTLS\r\n")
				return
			}
			if !reply("220 go ahead\r\n") {
				return
			}
			tc := tls.Server(c, f.cfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			f.proxy(tc)
			return
		default:
			if !reply("530 5.7.0 issue STARTTLS first\r\n") {
				return
			}
		}
	}
}

// proxy connects to the sink, drops its greeting and copies both ways.
func (f *tlsFront) proxy(tc *tls.Conn) {
	up, err := net.Dial("tcp", f.sink)
	if err != nil {
		return
	}
	defer up.Close()
	ur := bufio.NewReader(up)
	if code, _, err := readReply(ur); err != nil || code != 220 {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, tc)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		close(done)
	}()
	io.Copy(tc, ur)
	tc.Close()
	<-done
}

// starttls upgrades the sender's connection after EHLO and says EHLO
// again, as a device that uses STARTTLS does.
func (s *sender) starttls() error {
	s.w.WriteString("STARTTLS\r\n")
	if err := s.flushExpect(220, "STARTTLS"); err != nil {
		return err
	}
	if s.r.Buffered() > 0 {
		return errors.New("STARTTLS: data after the 220")
	}
	v := tlsVersions[s.o.ClientTLS]
	tc := tls.Client(s.conn, &tls.Config{RootCAs: s.o.RootCAs, ServerName: "127.0.0.1", MinVersion: v, MaxVersion: v,
		ClientSessionCache: s.o.SessionCache})
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS %s handshake: %w", s.o.ClientTLS, err)
	}
	s.mu.Lock()
	s.conn = tc
	s.mu.Unlock()
	s.r.Reset(tc)
	s.w.Reset(tc)
	s.w.WriteString("EHLO bench.localhost\r\n")
	return s.flushExpect(250, "EHLO after STARTTLS")
}
