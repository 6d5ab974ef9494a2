package testboot

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// gokrazyFake answers on a unix socket as gokrazy's local web interface
// does, recording each request.
type gokrazyFake struct {
	mu       sync.Mutex
	password string
	status   int
	hang     chan struct{} // closed at the end of the test: a request blocks until then
	entered  chan struct{} // with hang: closed when the request has arrived
	calls    []string
}

func (f *gokrazyFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.String())
	f.mu.Unlock()
	if f.hang != nil {
		close(f.entered)
		<-f.hang
		return
	}
	if f.password != "" {
		if u, p, ok := r.BasicAuth(); !ok || u != "gokrazy" || p != f.password {
			http.Error(w, "invalid username/password", http.StatusUnauthorized)
			return
		}
	}
	if f.status != 0 {
		http.Error(w, "not now", f.status)
		return
	}
	w.Write([]byte("Rebooting...\n"))
}

func TestGokrazyReboot(t *testing.T) {
	for _, tc := range []struct {
		name      string
		password  string // gokrazy's; "" for a NoPassword build
		status    int    // gokrazy's answer other than 200
		pwFile    string // written to the password file; "" for none
		noSocket  bool
		hang      bool
		wantErr   string // "" for success
		wantCalls []string
	}{
		{name: "no password (NoPassword build)", wantCalls: []string{"POST " + RebootPath}},
		{name: "password", password: "s3cret", pwFile: "s3cret\n", wantCalls: []string{"POST " + RebootPath}},
		{name: "wrong password", password: "s3cret", pwFile: "wrong\n", wantErr: "401 Unauthorized: invalid username/password", wantCalls: []string{"POST " + RebootPath}},
		{name: "refused", status: http.StatusServiceUnavailable, wantErr: "503 Service Unavailable: not now", wantCalls: []string{"POST " + RebootPath}},
		{name: "no socket", noSocket: true, wantErr: "gokrazy POST /reboot: dial unix"},
		{name: "no answer in time", hang: true, wantErr: "no answer", wantCalls: []string{"POST " + RebootPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "gokrazy-http.sock")
			f := &gokrazyFake{password: tc.password, status: tc.status}
			if tc.hang {
				f.hang, f.entered = make(chan struct{}), make(chan struct{})
			}
			if !tc.noSocket {
				l, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				srv := &http.Server{Handler: f}
				go srv.Serve(l)
				t.Cleanup(func() {
					if f.hang != nil {
						close(f.hang)
					}
					srv.Close()
				})
			}
			pw := filepath.Join(dir, "gokr-pw.txt")
			if tc.pwFile != "" {
				if err := os.WriteFile(pw, []byte(tc.pwFile), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.hang {
				// The guard bounds its request: the bound passes while
				// gokrazy holds it.
				go func() { <-f.entered; cancel() }()
			}
			err := Gokrazy{Socket: sock, PasswordFile: pw}.Reboot(ctx)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Reboot: %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Reboot: got %v, want an error containing %q", err, tc.wantErr)
			}
			f.mu.Lock()
			calls := strings.Join(f.calls, "; ")
			f.mu.Unlock()
			if want := strings.Join(tc.wantCalls, "; "); calls != want {
				t.Errorf("gokrazy was asked %q, want %q", calls, want)
			}
		})
	}
}

func TestPasswordDefaultsToNone(t *testing.T) {
	got, err := Password(filepath.Join(t.TempDir(), "absent"))
	if got != "" || err != nil {
		t.Errorf("Password of a missing file: %q, %v; want none", got, err)
	}
}
