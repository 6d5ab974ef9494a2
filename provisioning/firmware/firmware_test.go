package firmware

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
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

// release is a key pair of the tests and the box that trusts it.
type release struct {
	priv ed25519.PrivateKey
	pub  PublicKey
}

func newRelease(t *testing.T, seed byte) release {
	t.Helper()
	priv, pub, err := GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return release{priv: k, pub: pub}
}

// sign signs root as build b.
func (r release) sign(t *testing.T, root []byte, b Build) []byte {
	t.Helper()
	sum := sha256.Sum256(root)
	sig, err := Sign(r.priv, b, int64(len(root)), sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

const running = "v1.2.0"

var thisBuild = Build{Version: "v1.3.0", Arch: "amd64", Target: "vm", SBOMHash: "5bom"}

// updater is an Updater of a box that runs v1.2.0 on amd64 and trusts
// the key of trusted.
func updater(t *testing.T, f *fakeGokrazy, trusted ...release) *Updater {
	u := start(t, f)
	for _, r := range trusted {
		u.Keys = append(u.Keys, r.pub)
	}
	u.Running, u.Arch, u.StageDir, u.Reserve = running, "amd64", filepath.Join(t.TempDir(), "firmware"), 1
	return u
}

func TestWrite(t *testing.T) {
	root := squashRoot(8192)
	rel, other := newRelease(t, 1), newRelease(t, 2)
	good := rel.sign(t, root, thisBuild)
	garbage := bytes.Repeat([]byte("garbage!"), 1024)
	lying := squashRoot(8192)
	binary.LittleEndian.PutUint64(lying[40:], 1<<20)
	flipped := bytes.Clone(root)
	flipped[5000] ^= 1
	// A signature made by another key, but naming the trusted key.
	var forged Signature
	json.Unmarshal(other.sign(t, root, thisBuild), &forged)
	forged.KeyID = rel.pub.ID
	forgedSig, _ := json.Marshal(forged)
	// The trusted key's signature over a manifest changed afterwards.
	var changed Signature
	json.Unmarshal(good, &changed)
	m, _ := base64.StdEncoding.DecodeString(changed.Manifest)
	changed.Manifest = base64.StdEncoding.EncodeToString(bytes.Replace(m, []byte(`"v1.3.0"`), []byte(`"v9.3.0"`), 1))
	changedSig, _ := json.Marshal(changed)
	with := func(f func(*Build)) Build { b := thisBuild; f(&b); return b }
	const verified = "GET /update/features"
	for _, tc := range []struct {
		name      string
		password  string
		o         Options
		send      []byte
		noKeys    bool
		corrupt   bool
		wantErr   string
		refused   bool // ErrRefused: the API's 400
		wantCalls string
	}{
		{name: "signed", o: Options{Signature: good}, send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "password", password: "pw-123", o: Options{Signature: good}, send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "testboot", o: Options{Signature: good, TestBoot: true}, send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/testboot"},
		{name: "same version", o: Options{Signature: rel.sign(t, root, with(func(b *Build) { b.Version = running }))}, send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "older, allowed", o: Options{AllowDowngrade: true, Signature: rel.sign(t, root, with(func(b *Build) { b.Version = "v1.1.9-40-gabcdef0" }))}, send: root, wantCalls: "GET /update/features,PUT /update/root,POST /update/switch"},
		{name: "short stream", o: Options{Signature: good}, send: root[:100], wantErr: "ended 8092 bytes early", wantCalls: verified},
		{name: "gokrazy wrote other bytes", o: Options{Signature: good}, send: root, corrupt: true, wantErr: "signed", wantCalls: "GET /update/features,PUT /update/root"},
		// Refused: nothing written.
		{name: "unsigned", send: root, wantErr: "the image is unsigned", refused: true, wantCalls: verified},
		{name: "unknown key", o: Options{Signature: other.sign(t, root, thisBuild)}, send: root, wantErr: "signed by key \"" + other.pub.ID + "\", which this box does not trust (it trusts " + rel.pub.ID + ")", refused: true, wantCalls: verified},
		{name: "forged signature", o: Options{Signature: forgedSig}, send: root, wantErr: "does not verify with key " + rel.pub.ID, refused: true, wantCalls: verified},
		{name: "manifest changed", o: Options{Signature: changedSig}, send: root, wantErr: "does not verify", refused: true, wantCalls: verified},
		{name: "not a signature", o: Options{Signature: []byte("hello")}, send: root, wantErr: "not one relayctl firmware sign writes", refused: true, wantCalls: verified},
		{name: "flipped byte", o: Options{Signature: good}, send: flipped, wantErr: "changed after it was signed", refused: true, wantCalls: verified},
		{name: "other architecture", o: Options{Signature: rel.sign(t, root, with(func(b *Build) { b.Arch = "arm64" }))}, send: root, wantErr: "the image is for \"arm64\", this box is amd64", refused: true, wantCalls: verified},
		{name: "older version", o: Options{Signature: rel.sign(t, root, with(func(b *Build) { b.Version = "v1.1.9" }))}, send: root, wantErr: "version v1.1.9 is older than the running v1.2.0", refused: true, wantCalls: verified},
		{name: "older commit", o: Options{Signature: rel.sign(t, root, with(func(b *Build) { b.Version = "v1.1.9-3-g0123abc" }))}, send: root, wantErr: "older than the running", refused: true, wantCalls: verified},
		{name: "size not signed", o: Options{Signature: rel.sign(t, root[:4096], thisBuild)}, send: root, wantErr: "says the root is 4096 bytes, but 8192", refused: true, wantCalls: verified},
		{name: "no trusted keys", noKeys: true, o: Options{Signature: good}, send: root, wantErr: "carries no firmware keys", refused: true, wantCalls: verified},
		{name: "signed garbage", o: Options{Signature: rel.sign(t, garbage, thisBuild)}, send: garbage, wantErr: "no squashfs superblock", refused: true, wantCalls: verified},
		{name: "superblock says more", o: Options{Signature: rel.sign(t, lying, thisBuild)}, send: lying, wantErr: "says 1048576 bytes", refused: true, wantCalls: verified},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeGokrazy{password: tc.password, corrupt: tc.corrupt}
			u := updater(t, f, rel)
			if tc.noKeys {
				u.Keys = nil
			}
			res, err := u.Write(context.Background(), bytes.NewReader(tc.send), int64(len(root)), tc.o)
			calls, stored := f.seen()
			if err != nil {
				t.Logf("refused: %v", err)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got err %v, want one containing %q", err, tc.wantErr)
				}
				if got := errors.Is(err, ErrRefused); got != tc.refused {
					t.Errorf("errors.Is(err, ErrRefused) = %v, want %v", got, tc.refused)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				if !bytes.Equal(stored, root) {
					t.Errorf("gokrazy got %d bytes, want the %d sent", len(stored), len(root))
				}
				if want := map[bool]string{false: "switch", true: "testboot"}[tc.o.TestBoot]; res.Mode != want {
					t.Errorf("got mode %q, want %q", res.Mode, want)
				}
				if res.KeyID != rel.pub.ID {
					t.Errorf("got key %q, want %q", res.KeyID, rel.pub.ID)
				}
			}
			if slices.Contains(calls, "POST /update/switch") && tc.wantErr != "" {
				t.Errorf("a failed write switched: %v", calls)
			}
			if got := strings.Join(calls, ","); tc.wantCalls != "" && got != tc.wantCalls {
				t.Errorf("got calls %s, want %s", got, tc.wantCalls)
			}
			if tc.refused && stored != nil {
				t.Errorf("a refused update wrote %d bytes to gokrazy", len(stored))
			}
			// Nothing staged is left behind, refused or not.
			if l, _ := filepath.Glob(filepath.Join(u.StageDir, "incoming-*")); len(l) > 0 {
				t.Errorf("staged files left: %v", l)
			}
		})
	}
}

func TestNoRoom(t *testing.T) {
	rel := newRelease(t, 1)
	root := squashRoot(8192)
	f := &fakeGokrazy{}
	u := updater(t, f, rel)
	u.Reserve = 1 << 62
	_, err := u.Write(context.Background(), bytes.NewReader(root), int64(len(root)), Options{Signature: rel.sign(t, root, thisBuild)})
	if err == nil || !strings.Contains(err.Error(), "for the spool") {
		t.Fatalf("got %v, want the lack of room named", err)
	}
	if calls, _ := f.seen(); len(calls) != 1 {
		t.Errorf("got calls %v, want only the features", calls)
	}
}

// The record of a signed update names the key that signed the running
// firmware, once it runs (its version and SBOM hash).
func TestSignedBy(t *testing.T) {
	rel := newRelease(t, 1)
	root := squashRoot(8192)
	u := updater(t, &fakeGokrazy{}, rel)
	if _, err := u.Write(context.Background(), bytes.NewReader(root), int64(len(root)), Options{Signature: rel.sign(t, root, thisBuild)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ version, sbom, want string }{
		{"v1.3.0", "5bom", rel.pub.ID},
		{"v1.2.0", "5bom", ""},
		{"v1.3.0", "other", ""},
		{"v1.3.0", "", ""},
	} {
		if got := SignedBy(u.StageDir, tc.version, tc.sbom); got != tc.want {
			t.Errorf("SignedBy(%s, %s) = %q, want %q", tc.version, tc.sbom, got, tc.want)
		}
	}
}

func TestKeys(t *testing.T) {
	priv, pub, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParsePublicKey(pub.String())
	if err != nil || back.ID != pub.ID || !back.Key.Equal(pub.Key) {
		t.Fatalf("ParsePublicKey(%s) = %+v, %v", pub, back, err)
	}
	if !strings.Contains(string(priv), "Key-Id: "+pub.ID) {
		t.Errorf("the private key file does not name its key id:\n%s", priv)
	}
	k, err := ParsePrivateKey(priv)
	if err != nil || !k.Public().(ed25519.PublicKey).Equal(pub.Key) {
		t.Fatalf("ParsePrivateKey: %v", err)
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:AAAA", "rsa:" + strings.TrimPrefix(pub.String(), KeyPrefix), strings.TrimPrefix(pub.String(), KeyPrefix)} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) took it", bad)
		}
	}
	if _, err := ParsePrivateKey([]byte(pub.String())); err == nil {
		t.Error("ParsePrivateKey took a public key")
	}
}

func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"v1.2.3", "v1.2.3", 0},
		{"v1.2.3", "1.2.3-dirty", 0},
		{"v1.2.3", "v1.2.4", -1},
		{"v1.10.0", "v1.9.9", 1},
		{"v1.2", "v1.2.0", 0},
		{"v1.2.3-1-gabc1234", "v1.2.3", 1},
		{"v1.2.3-12-gabc1234", "v1.2.3-9-gdef5678", 1},
		{"v1.2.3-12-gabc1234", "v1.2.4", -1},
	} {
		a, err1 := ParseVersion(tc.a)
		b, err2 := ParseVersion(tc.b)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s, %s: %v %v", tc.a, tc.b, err1, err2)
		}
		if got := a.Compare(b); got != tc.want {
			t.Errorf("%s vs %s = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	for _, bad := range []string{"", "abc1234", "vmtest-v1", "v1.2.3-rc1", "v1.2.3.4.5", "v1.2.3-4-gXYZ"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) took it", bad)
		}
	}
}

// A development build (its version cannot be ordered) takes a signed
// update only with AllowDowngrade.
func TestUnorderedRunning(t *testing.T) {
	rel := newRelease(t, 1)
	root := squashRoot(8192)
	sig := rel.sign(t, root, thisBuild)
	for _, allow := range []bool{false, true} {
		u := updater(t, &fakeGokrazy{}, rel)
		u.Running = "abc1234-dirty"
		_, err := u.Write(context.Background(), bytes.NewReader(root), int64(len(root)), Options{Signature: sig, AllowDowngrade: allow})
		if allow != (err == nil) {
			t.Errorf("allow %v: got %v", allow, err)
		}
	}
}

func TestWrongPassword(t *testing.T) {
	f := &fakeGokrazy{password: "right"}
	u := start(t, f)
	os.WriteFile(u.PasswordFile, []byte("wrong"), 0o600)
	_, err := u.Write(context.Background(), strings.NewReader("x"), 1, Options{})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("got %v, want gokrazy's 401 named", err)
	}
}

func TestNoSocket(t *testing.T) {
	u := &Updater{Socket: filepath.Join(t.TempDir(), "none.sock")}
	_, err := u.Write(context.Background(), strings.NewReader("x"), 1, Options{})
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

func TestSBOMHash(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, want, wantErr string }{
		{"gokrazy's", `{"sbom_hash": "5e0b12", "sbom": {"config_hash": {}}}`, "5e0b12", ""},
		{"no hash", `{"sbom": {}}`, "", "holds no sbom_hash"},
		{"not JSON", `hello`, "", "holds no sbom_hash"},
	} {
		p := filepath.Join(dir, tc.name+".json")
		os.WriteFile(p, []byte(tc.content), 0o644)
		got, err := SBOMHash(p)
		if got != tc.want || (tc.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %q, %v; want %q, %q", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
	if _, err := SBOMHash(filepath.Join(dir, "none")); err == nil {
		t.Error("a missing SBOM gave a hash")
	}
}
