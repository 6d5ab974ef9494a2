package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeGokrazy answers like gokrazy's update handlers on a unix socket:
// PUT answers the SHA-256 of what it stored; a password, when set, is
// asked for as gokrazy does (Basic, user gokrazy).
type fakeGokrazy struct {
	mu       sync.Mutex
	password string
	root     []byte
	calls    []string
	corrupt  bool // answer a wrong hash
}

func (f *fakeGokrazy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	if f.password != "" {
		if u, p, ok := r.BasicAuth(); !ok || u != "gokrazy" || p != f.password {
			http.Error(w, "invalid username/password", http.StatusUnauthorized)
			return
		}
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /update/features":
		io.WriteString(w, "partuuid,updatehash,")
	case "PUT /update/root":
		b, _ := io.ReadAll(r.Body)
		f.root = b
		if f.corrupt {
			b = append(b, 'x')
		}
		h := sha256.Sum256(b)
		io.WriteString(w, hex.EncodeToString(h[:]))
	case "POST /update/switch", "POST /update/testboot", "POST /reboot":
	default:
		http.Error(w, "no", http.StatusNotFound)
	}
}

// seen answers what the fake has been asked and stored so far. It takes
// the lock because a client that gives up mid-PUT returns before the
// handler has finished reading.
func (f *fakeGokrazy) seen() (calls []string, root []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls), f.root
}

func start(t *testing.T, f *fakeGokrazy) *Updater {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "gokrazy-http.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	u := &Updater{Socket: sock, PasswordFile: filepath.Join(dir, "gokr-pw.txt")}
	if f.password != "" {
		if err := os.WriteFile(u.PasswordFile, []byte(f.password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// squashRoot is n bytes that start like a squashfs root file system.
func squashRoot(n int) []byte {
	b := bytes.Repeat([]byte("squashfs"), n/8)
	copy(b, "hsqs")
	binary.LittleEndian.PutUint64(b[40:], uint64(n))
	return b
}

func TestWrite(t *testing.T) {
	root := squashRoot(8192)
	garbage := bytes.Repeat([]byte("garbage!"), 1024)
	lying := squashRoot(8192)
	binary.LittleEndian.PutUint64(lying[40:], 1<<20)
	for _, tc := range []struct {
		name      string
		password  string
		testboot  bool
		send      []byte
		corrupt   bool
		wantErr   string
		wantCalls string
	}{
		{name: "no password", send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "password", password: "pw-123", send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "testboot", send: root, testboot: true, wantCalls: "GET /update/features,PUT /update/root,POST /update/testboot"},
		{name: "short stream", send: root[:100], wantErr: "writing the inactive root partition"}, // the client may give up before gokrazy sees the PUT: no switch either way
		{name: "hash mismatch", send: root, corrupt: true, wantErr: "but ", wantCalls: "GET /update/features,PUT /update/root"},
		// Not a root: refused before anything is written.
		{name: "garbage", send: garbage, wantErr: "no squashfs superblock", wantCalls: "GET /update/features"},
		{name: "superblock says more", send: lying, wantErr: "says 1048576 bytes", wantCalls: "GET /update/features"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeGokrazy{password: tc.password, corrupt: tc.corrupt}
			u := start(t, f)
			res, err := u.Write(context.Background(), bytes.NewReader(tc.send), int64(len(root)), tc.testboot)
			calls, stored := f.seen()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got err %v, want one containing %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				if !bytes.Equal(stored, root) {
					t.Errorf("gokrazy got %d bytes, want the %d sent", len(stored), len(root))
				}
				if want := map[bool]string{false: "switch", true: "testboot"}[tc.testboot]; res.Mode != want {
					t.Errorf("got mode %q, want %q", res.Mode, want)
				}
			}
			if slices.Contains(calls, "POST /update/switch") && tc.wantErr != "" {
				t.Errorf("a failed write switched: %v", calls)
			}
			if got := strings.Join(calls, ","); tc.wantCalls != "" && got != tc.wantCalls {
				t.Errorf("got calls %s, want %s", got, tc.wantCalls)
			}
		})
	}
}

func TestWrongPassword(t *testing.T) {
	f := &fakeGokrazy{password: "right"}
	u := start(t, f)
	os.WriteFile(u.PasswordFile, []byte("wrong"), 0o600)
	_, err := u.Write(context.Background(), strings.NewReader("x"), 1, false)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("got %v, want gokrazy's 401 named", err)
	}
}

func TestNoSocket(t *testing.T) {
	u := &Updater{Socket: filepath.Join(t.TempDir(), "none.sock")}
	_, err := u.Write(context.Background(), strings.NewReader("x"), 1, false)
	if err == nil || !strings.Contains(err.Error(), "local socket") {
		t.Fatalf("got %v, want the missing socket named", err)
	}
}

// image builds a small disk image: MBR with partition 2 at sector 8 and
// a squashfs superblock saying bytes_used.
func image(used uint64, sig bool, magic string) []byte {
	img := make([]byte, 8*512+16384)
	if sig {
		img[510], img[511] = 0x55, 0xAA
	}
	e := img[446+16:]
	binary.LittleEndian.PutUint32(e[8:], 8)
	binary.LittleEndian.PutUint32(e[12:], 32) // 16 KiB
	copy(img[8*512:], magic)
	binary.LittleEndian.PutUint64(img[8*512+40:], used)
	return img
}

// gptImage is the same with a protective MBR and a GPT whose second entry
// starts at sector 40.
func gptImage(used uint64) []byte {
	img := make([]byte, 40*512+16384)
	img[510], img[511] = 0x55, 0xAA
	img[446+16+4] = 0xEE // a hybrid MBR, like gokrazy's: entry 1 the boot partition, entry 2 the GPT
	h := img[512:]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint64(h[72:], 2) // entries at LBA 2
	binary.LittleEndian.PutUint32(h[80:], 128)
	binary.LittleEndian.PutUint32(h[84:], 128)
	e := img[2*512+128:]
	binary.LittleEndian.PutUint64(e[32:], 40)
	binary.LittleEndian.PutUint64(e[40:], 40+32-1)
	copy(img[40*512:], "hsqs")
	binary.LittleEndian.PutUint64(img[40*512+40:], used)
	return img
}

func TestRoot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		img     []byte
		wantOff int64
		wantN   int64
		wantErr string
	}{
		{name: "rounded to 4 KiB", img: image(5000, true, "hsqs"), wantN: 8192},
		{name: "GPT", img: gptImage(5000), wantOff: 40 * 512, wantN: 8192},
		{name: "no MBR", img: image(5000, false, "hsqs"), wantErr: "no MBR signature"},
		{name: "not squashfs", img: image(5000, true, "ext4"), wantErr: "not a squashfs"},
		{name: "larger than partition", img: image(1<<20, true, "hsqs"), wantErr: "more than its"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			off, n, err := Root(bytes.NewReader(tc.img))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantOff := tc.wantOff
			if wantOff == 0 {
				wantOff = 8 * 512
			}
			if off != wantOff || n != tc.wantN {
				t.Errorf("got offset %d, %d bytes; want %d, %d", off, n, wantOff, tc.wantN)
			}
		})
	}
}

func TestTestBooted(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    bool
	}{
		{"console=ttyS0,115200 root=PARTUUID=60c24cc1-f3f9-427a-8199-2e18c40c0003 rootwait \n", false},
		{"console=ttyS0,115200 root=PARTUUID=60c24cc1-f3f9-427a-8199-2e18c40c0002 rootwait  gokrazy.try_boot_inactive=1\n", true},
		{"gokrazy.switch_on_boot=1", false},
		{"x.gokrazy.try_boot_inactive=1", false},
	} {
		if got := TestBooted(tc.cmdline); got != tc.want {
			t.Errorf("TestBooted(%q) = %v, want %v", tc.cmdline, got, tc.want)
		}
	}
}

func TestCommit(t *testing.T) {
	f := &fakeGokrazy{}
	u := start(t, f)
	if err := u.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls, _ := f.seen(); !slices.Equal(calls, []string{"POST /update/switch"}) {
		t.Errorf("got calls %v, want the switch", calls)
	}
}
