package relay

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/policy"
	"github.com/siterelay/siterelay/relay/relaytest"
)

// TestDialogues replays every device dialogue in testdata/dialogues (the
// format is in its README.md) against a relay on loopback and checks the
// replies, by code, and what reached the capture upstream.
func TestDialogues(t *testing.T) {
	files, _ := filepath.Glob("../testdata/dialogues/*.txt")
	if len(files) < 9 {
		t.Fatalf("found %d dialogues, want at least 9", len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { replay(t, f) })
	}
}

func replay(t *testing.T, file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	dir := relaytest.StateDir(t)
	cfg := config.Default()
	cfg.Listeners[0].StartTLS = new(true)
	var script []string
	for _, l := range lines {
		k, v := cutLine(l)
		switch k {
		case "relay":
			relayOption(t, cfg, v)
		case "", "#":
		default:
			if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
				script = append(script, l)
			}
		}
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	_, addr := run(t, cfg, dir)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(relaytest.Deadline(t))
	tp := textproto.NewReader(bufio.NewReader(conn))
	var w net.Conn = conn
	outbox := filepath.Join(dir, "outbox")
	for n, l := range script {
		k, v := cutLine(l)
		where := fmt.Sprintf("%s:%d %q", filepath.Base(file), n+1, l)
		switch k {
		case "C":
			fmt.Fprintf(w, "%s\r\n", v)
		case "C-LF":
			fmt.Fprintf(w, "%s\n", v)
		case "C-RAW":
			s, err := strconv.Unquote(v)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			w.Write([]byte(s))
		case "C-LONG":
			n, _ := strconv.Atoi(v)
			fmt.Fprintf(w, "%s\r\n", strings.Repeat("x", n))
		case "C-PIPE":
			var sb strings.Builder
			for _, p := range strings.Split(v, " | ") {
				sb.WriteString(p + "\r\n")
			}
			w.Write([]byte(sb.String()))
		case "S":
			want, _ := strconv.Atoi(strings.Fields(v)[0])
			code, msg, err := tp.ReadResponse(0)
			if err != nil && code == 0 {
				t.Fatalf("%s: reading the reply: %v", where, err)
			}
			if code != want {
				t.Fatalf("%s: got %d %s, want %d", where, code, msg, want)
			}
			if _, words, ok := strings.Cut(v, " "); ok && !strings.Contains(msg, words) {
				t.Errorf("%s: reply %q lacks %q", where, msg, words)
			}
		case "TLS":
			max := config.TLSVersions[v]
			tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: max, MaxVersion: max,
				CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("%s: handshake: %v", where, err)
			}
			if got := tc.ConnectionState().Version; got != max {
				t.Fatalf("%s: negotiated %s", where, tls.VersionName(got))
			}
			w = tc
			tp = textproto.NewReader(bufio.NewReader(tc))
		case "CLOSE":
			conn.Close()
		case "upstream":
			want, _ := strconv.Atoi(v)
			var got []string
			if want > 0 {
				relaytest.Eventually(t, fmt.Sprintf("%d messages at the upstream", want), func() bool {
					got, _ = filepath.Glob(filepath.Join(outbox, "*.eml"))
					return len(got) >= want
				})
			}
			got, _ = filepath.Glob(filepath.Join(outbox, "*.eml"))
			if len(got) != want {
				t.Fatalf("%s: %d messages at the upstream, want %d", where, len(got), want)
			}
		case "delivered-has", "delivered-lacks":
			s, err := strconv.Unquote(v)
			if err != nil {
				s = v
			}
			got, _ := filepath.Glob(filepath.Join(outbox, "*.eml"))
			var all strings.Builder
			for _, f := range got {
				b, _ := os.ReadFile(f)
				all.Write(b)
			}
			if has := strings.Contains(all.String(), s); has != (k == "delivered-has") {
				t.Errorf("%s: delivered mail:\n%s", where, all.String())
			}
		default:
			t.Fatalf("%s: unknown line", where)
		}
	}
}

// cutLine splits "K: value" (or "K:" with an empty value).
func cutLine(l string) (k, v string) {
	k, v, _ = strings.Cut(l, ":")
	return k, strings.TrimPrefix(v, " ")
}

// relayOption applies one "relay:" line of a dialogue.
func relayOption(t *testing.T, cfg *config.Config, opt string) {
	k, v, _ := strings.Cut(opt, "=")
	l := &cfg.Listeners[0]
	switch k {
	case "auth":
		h, err := policy.HashPassword("s3cret")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Accounts = append(cfg.Accounts, config.Account{Username: "printer", PasswordHash: h})
		l.Auth, l.AllowPlaintextAuth = new(true), true
	case "min_tls":
		l.MinTLS = v
	case "device":
		// device=NAME,fix[,fix...]: a device for loopback with fixes.
		parts := strings.Split(v, ",")
		d := config.Device{Name: parts[0], Addresses: []string{"127.0.0.1"}}
		for _, f := range parts[1:] {
			fk, fv, _ := strings.Cut(f, ":")
			switch fk {
			case "add_from":
				d.Fixes.AddFrom = fv
			case "rewrite_from":
				d.Fixes.RewriteFrom = fv
			case "clean_display_name":
				d.Fixes.CleanDisplayName = true
			case "subject_prefix":
				d.Fixes.SubjectPrefix = fv
			default:
				t.Fatalf("unknown fix %q", f)
			}
		}
		cfg.Devices = append(cfg.Devices, d)
	default:
		t.Fatalf("unknown relay option %q", opt)
	}
}

var _ = time.Second
