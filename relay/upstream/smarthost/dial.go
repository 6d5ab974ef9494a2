// Connecting: dial, greet, secure and log in, each stage recorded for Probe
// (relayd doctor).

package smarthost

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/upstream"
)

// dial connects, greets, secures and logs in. With steps non-nil it
// records each stage for Probe.
func (u *Upstream) dial(ctx context.Context, steps *[]upstream.Step) (*conn, error) {
	o := &u.o
	step := func(name string, ok bool, detail string) {
		if steps != nil {
			*steps = append(*steps, upstream.Step{Name: name, OK: ok, Detail: detail})
		}
	}
	var token string
	if strings.EqualFold(o.Auth.Mechanism, "xoauth2") {
		// The token first: while the token endpoint fails, no session
		// is opened (Exchange allows a mailbox three at once).
		t, err := o.Auth.TokenSource.Token(ctx)
		if err != nil {
			e := tokenErr(o.Auth.Username, err)
			step("token", false, e.Error())
			return nil, e
		}
		token = t
	}
	dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	nc, err := o.Dialer(dctx, "tcp", o.Addr)
	cancel()
	if err != nil {
		e := netErr(ctx, "connecting to "+o.Addr, err)
		step("connect", false, e.Error())
		return nil, e
	}
	step("connect", true, fmt.Sprintf("connected to %s (%s)", o.Addr, nc.RemoteAddr()))
	u.open.Add(1)
	nc = &countedConn{Conn: nc, open: &u.open}
	c := &conn{u: u, nc: nc, gen: u.dials.Add(1)}
	c.br = bufio.NewReaderSize(nc, 4096)
	c.bw = bufio.NewWriterSize(nc, 16<<10)
	stop := c.watch(ctx)
	defer stop()
	fail := func(name string, err error) (*conn, error) {
		step(name, false, err.Error())
		if ue := (*upstream.Error)(nil); errors.As(err, &ue) && ue.Reply != nil && ctx.Err() == nil {
			// The server answered: the dialogue is in step, so end it
			// with QUIT (a session dropped without it may count against
			// the mailbox's limit until the server notices).
			c.quit()
		} else {
			c.nc.Close()
		}
		if ctx.Err() != nil {
			var ue *upstream.Error
			if !errors.As(err, &ue) || ue.Reply == nil {
				err = netErr(ctx, "connecting to "+o.Addr, err)
			}
		}
		return nil, err
	}
	if o.TLS == TLSImplicit {
		if err := c.handshake(ctx); err != nil {
			return fail("tls", err)
		}
		step("tls", true, tlsDetail(c.tls, o.Clock()))
	}
	c.deadline(o.CommandTimeout)
	r, err := c.readReply(true)
	if err != nil {
		return fail("banner", netErr(ctx, "reading the greeting of "+o.Addr, err))
	}
	if r.code != 220 {
		return fail("banner", replyErr("upstream refused the connection", r, true))
	}
	step("banner", true, strings.Join(r.lines, " "))
	if err := c.hello(ctx); err != nil {
		return fail("ehlo", err)
	}
	if o.TLS == TLSStartTLS {
		if !c.has("STARTTLS") {
			return fail("starttls", &upstream.Error{Err: fmt.Errorf(
				"%s does not offer STARTTLS; refusing to send in the clear (TLS mode \"none\" allows it)", o.Addr)})
		}
		if err := c.startTLS(ctx); err != nil {
			return fail("tls", err)
		}
		step("tls", true, tlsDetail(c.tls, o.Clock()))
		if err := c.hello(ctx); err != nil {
			return fail("ehlo", err)
		}
	}
	step("ehlo", true, extDetail(c.ext))
	if o.Auth.Mechanism != AuthNone {
		if err := c.auth(ctx, token); err != nil {
			return fail("auth", err)
		}
		step("auth", true, fmt.Sprintf("logged in as %s with %s", o.Auth.Username, strings.ToUpper(o.Auth.Mechanism)))
	}
	u.log.Debug("connected", "tls", c.tls != nil, "pipelining", c.pipe)
	return c, nil
}

func tlsDetail(st *tls.ConnectionState, now time.Time) string {
	s := fmt.Sprintf("%s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	if len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		s += fmt.Sprintf("; certificate %q issued by %q, expires %s", leaf.Subject.String(),
			leaf.Issuer.String(), leaf.NotAfter.UTC().Format(time.RFC3339))
		if left := leaf.NotAfter.Sub(now); left < 14*24*time.Hour {
			s += fmt.Sprintf(" (in %s)", left.Round(time.Hour))
		}
	}
	return s
}

func extDetail(ext map[string]string) string {
	var parts []string
	for _, k := range []string{"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "STARTTLS", "AUTH", "CHUNKING", "DSN"} {
		if v, ok := ext[k]; ok {
			if v != "" {
				k += " " + v
			}
			parts = append(parts, k)
		}
	}
	return strings.Join(parts, ", ")
}

// Probe checks the path without sending mail: connect, TLS, EHLO, AUTH.
func (u *Upstream) Probe(ctx context.Context) ([]upstream.Step, error) {
	var steps []upstream.Step
	c, err := u.dial(ctx, &steps)
	if err != nil {
		return steps, err
	}
	c.quit()
	return steps, nil
}
