package inbound

// MAIL and RCPT: the envelope, checked against the policy as it arrives.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// cutPrefixFold is strings.CutPrefix ignoring ASCII case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// parsePath splits "<addr> PARAM=V ..." (the angle brackets optional, a
// source route dropped) into the address and its parameters.
func parsePath(s string) (addr string, params []string, err error) {
	s = strings.TrimLeft(s, " ")
	if strings.HasPrefix(s, "<") {
		end := -1
		quoted := false
		for i := 1; i < len(s); i++ {
			switch c := s[i]; {
			case c == '\\' && quoted:
				i++
			case c == '"':
				quoted = !quoted
			case c == '>' && !quoted:
				end = i
			}
			if end >= 0 {
				break
			}
		}
		if end < 0 {
			return "", nil, errors.New("no closing >")
		}
		addr, s = s[1:end], s[end+1:]
		if s != "" && s[0] != ' ' {
			return "", nil, errors.New("text after >")
		}
	} else {
		addr, s, _ = strings.Cut(s, " ")
		if strings.ContainsAny(addr, "<>") {
			return "", nil, errors.New("unbalanced angle brackets")
		}
	}
	if strings.HasPrefix(addr, "@") {
		// A source route (@a,@b:user@c) is obsolete; only the mailbox counts.
		i := strings.IndexByte(addr, ':')
		if i < 0 {
			return "", nil, errors.New("malformed source route")
		}
		addr = addr[i+1:]
	}
	if strings.ContainsAny(addr, " \t\r\n") {
		return "", nil, errors.New("white space in the address")
	}
	return addr, strings.Fields(s), nil
}

func (ss *session) mail(arg string) error {
	o := ss.o
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "syntax: MAIL FROM:<address>"}
	}
	from, params, err := parsePath(rest)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "syntax: MAIL FROM:<address> (" + err.Error() + ")"}
	}
	var size int64
	utf8, body := false, ""
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToUpper(k) {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "SIZE wants a number of bytes"}
			}
			size = n
		case "BODY":
			switch strings.ToUpper(v) {
			case "7BIT", "8BITMIME":
				body = strings.ToUpper(v)
			default:
				return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "BODY must be 7BIT or 8BITMIME"}
			}
		case "SMTPUTF8":
			utf8 = true
		case "AUTH":
			// RFC 4954's AUTH= names who submitted; the relay has its own login.
		default:
			return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("MAIL parameter %q is not supported", truncate(k, 20))}
		}
	}
	if o.RequireTLS && ss.tlsState == nil {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires STARTTLS first; turn on TLS in the device's mail settings"})
	}
	if o.RequireAuth && ss.login == "" {
		return ss.refuse("not_allowed", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "this port requires login; set the device's SMTP user name and password"})
	}
	dev, err := o.Policy.Device(ss.ip, ss.acct, ss.helo)
	ss.observe(dev, from, "", false) // also when refused: adopt learns of it
	if err != nil {
		return ss.refuse("not_allowed", err)
	}
	if dev != nil && ss.dev != dev {
		ss.log = ss.log.With("device", dev.Name)
	}
	ss.dev = dev
	if max := ss.maxBytes(); size > 0 && max > 0 && size > max {
		return ss.refuse("too_big", ss.tooBig(max))
	}
	if err := o.Policy.Sender(ss.ip, ss.acct, dev, from); err != nil {
		reason := "bad_sender"
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 {
			reason = "rate_limited"
		}
		return ss.refuse(reason, err)
	}
	ss.inTx, ss.from, ss.utf8, ss.body = true, from, utf8, body
	ss.rcpts = ss.rcpts[:0]
	ss.replyText(250, smtp.EnhancedCode{2, 1, 0}, "sender <"+truncate(from, 256)+"> OK")
	return nil
}

func (ss *session) rcpt(arg string) error {
	o := ss.o
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "syntax: RCPT TO:<address>"}
	}
	to, params, err := parsePath(rest)
	if err != nil || to == "" {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "syntax: RCPT TO:<address>"}
	}
	if len(params) > 0 {
		k, _, _ := strings.Cut(params[0], "=")
		return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("RCPT parameter %q is not supported", truncate(k, 20))}
	}
	if o.MaxRecipients > 0 && len(ss.rcpts) >= o.MaxRecipients {
		return ss.refuse("too_many_rcpts", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: fmt.Sprintf("too many recipients (limits.max_recipients is %d); the device should send the rest in another message", o.MaxRecipients)})
	}
	relay := ss.netRelay || ss.login != ""
	if err := o.Policy.Recipient(ss.ip, ss.dev, to, relay); err != nil {
		reason := "bad_recipient"
		if !relay {
			reason = "not_allowed"
		}
		return ss.refuse(reason, err)
	}
	if o.CheckRecipient != nil {
		if err := o.CheckRecipient(to); err != nil {
			return ss.refuse("bad_recipient", err)
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	ss.replyText(250, smtp.EnhancedCode{2, 1, 5}, "recipient <"+truncate(to, 256)+"> OK")
	return nil
}
