// Package capture is the upstream of `relayd -dev` and of tests: instead of
// sending, it writes each message as one .eml file, with Return-Path and
// Delivered-To lines on top as a local delivery agent would, so that a
// newcomer sees exactly what would have gone to Microsoft 365.
package capture

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/siterelay/siterelay/relay/upstream"
)

// Upstream writes to a directory.
type Upstream struct {
	dir string
}

// New creates dir if needed.
func New(dir string) (*Upstream, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating capture directory: %w", err)
	}
	return &Upstream{dir: dir}, nil
}

// Limits: the capture takes anything, a few at a time.
func (u *Upstream) Limits() upstream.Limits { return upstream.Limits{Concurrency: 4} }

func (u *Upstream) Close() error { return nil }

// Deliver writes msg to <queue id>.eml (with a suffix when a message is
// delivered in several parts) through a temporary file and a rename, so a
// reader never sees half a message.
func (u *Upstream) Deliver(ctx context.Context, msg *upstream.Message) ([]upstream.RcptResult, error) {
	f, err := os.CreateTemp(u.dir, ".tmp-*")
	if err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("capture: %w", err)}
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriterSize(f, 32<<10)
	fmt.Fprintf(w, "Return-Path: <%s>\r\n", msg.From)
	for _, to := range msg.To {
		fmt.Fprintf(w, "Delivered-To: %s\r\n", to)
	}
	_, err = io.Copy(w, msg.Reader())
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("capture: writing %s: %w", msg.QueueID, err)}
	}
	name := filepath.Join(u.dir, msg.QueueID+".eml")
	for i := 2; ; i++ {
		if _, err := os.Lstat(name); os.IsNotExist(err) {
			break
		}
		name = filepath.Join(u.dir, fmt.Sprintf("%s-%d.eml", msg.QueueID, i))
	}
	if err := os.Rename(f.Name(), name); err != nil {
		return nil, &upstream.Error{Err: fmt.Errorf("capture: %w", err)}
	}
	res := make([]upstream.RcptResult, len(msg.To))
	for i, to := range msg.To {
		res[i] = upstream.RcptResult{Rcpt: to}
	}
	return res, nil
}
