package configstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/layout"
)

const v1 = `{"hostname":"relay.plant-a","listeners":[{"name":"smtp","address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture","capture":{"directory":"outbox"}}}`
const v2 = `{"hostname":"relay.plant-a","listeners":[{"name":"smtp","address":"127.0.0.1:2525","mode":"smtp","allowed_networks":["127.0.0.0/8"]}],"upstream":{"kind":"capture","capture":{"directory":"outbox2"}}}`

func newStore(t *testing.T, apply func(context.Context) error) (*Store, layout.Dir) {
	dir := layout.Dir(t.TempDir())
	if err := os.WriteFile(dir.Config(), []byte(v1), 0o644); err != nil {
		t.Fatal(err)
	}
	return New(dir, apply, 3, func() time.Time { return time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC) }), dir
}

func TestPutRollback(t *testing.T) {
	applied := 0
	s, dir := newStore(t, func(context.Context) error { applied++; return nil })
	ctx := context.Background()
	d, err := s.Get()
	if err != nil || d.Version != 1 {
		t.Fatalf("get = %+v, %v; want version 1 (the first boot's)", d, err)
	}
	dry, err := s.Put(ctx, []byte(v2), "alice", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Changes) != 1 || dry.Changes[0].Key != "upstream.capture.directory" || string(dry.Changes[0].New) != `"outbox2"` {
		t.Errorf("dry run changes = %+v", dry.Changes)
	}
	if b, _ := os.ReadFile(dir.Config()); string(b) != v1 || applied != 0 {
		t.Fatal("a dry run changed config.json or applied")
	}
	res, err := s.Put(ctx, []byte(v2), "alice", false)
	if err != nil || res.Version != 2 || applied != 1 {
		t.Fatalf("put = %+v, %v (applied %d)", res, err, applied)
	}
	if b, _ := os.ReadFile(dir.Config()); !strings.Contains(string(b), "outbox2") {
		t.Errorf("config.json = %s", b)
	}
	res, err = s.Rollback(ctx, 1, "alice")
	if err != nil || res.Version != 3 {
		t.Fatalf("rollback = %+v, %v", res, err)
	}
	if b, _ := os.ReadFile(dir.Config()); strings.Contains(string(b), "outbox2") {
		t.Errorf("after rollback config.json = %s", b)
	}
	// Only the last 3 are kept.
	for range 3 {
		if _, err := s.Put(ctx, []byte(v2), "bob", false); err != nil {
			t.Fatal(err)
		}
	}
	vs, _ := s.Versions()
	if len(vs) != 3 || vs[0].Version != 6 || !vs[0].Current || vs[2].Version != 4 {
		t.Errorf("versions = %+v", vs)
	}
	if _, err := os.Stat(dir.ConfigVersion(1)); err == nil {
		t.Error("version 1 still on disk")
	}
	var ae *api.Error
	if _, err := s.Rollback(ctx, 1, "alice"); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("rollback to a dropped version: %v", err)
	}
}

func TestPutInvalidListsEveryError(t *testing.T) {
	applied := 0
	s, dir := newStore(t, func(context.Context) error { applied++; return nil })
	bad := `{"listeners":[{"name":"smtp","address":"nowhere","mode":"lmtp"}],"upstream":{"kind":"carrier-pigeon"}}`
	_, err := s.Put(context.Background(), []byte(bad), "alice", false)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInvalidConfig || len(ae.Problems) < 3 {
		t.Fatalf("err = %v, want invalid_config with every key error", err)
	}
	for _, p := range ae.Problems {
		if p.Key == "" || p.Problem == "" {
			t.Errorf("problem %+v without key or words", p)
		}
	}
	if b, _ := os.ReadFile(dir.Config()); string(b) != v1 || applied != 0 {
		t.Error("an invalid configuration changed something")
	}
	if _, err := s.Put(context.Background(), []byte(`{"upstrem":{}}`), "alice", false); !errors.As(err, &ae) || ae.Problems[0].Key != "upstrem" {
		t.Errorf("unknown key: %v", err)
	}
}

func TestApplyFailureUndoes(t *testing.T) {
	calls := 0
	s, dir := newStore(t, func(context.Context) error {
		calls++
		if calls == 1 {
			return errors.New("listener address in use")
		}
		return nil
	})
	_, err := s.Put(context.Background(), []byte(v2), "alice", false)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Fatalf("err = %v, want conflict", err)
	}
	if b, _ := os.ReadFile(dir.Config()); string(b) != v1 {
		t.Errorf("config.json = %s, want the version that ran", b)
	}
	if calls != 2 {
		t.Errorf("applied %d times, want 2 (the new, then the old again)", calls)
	}
	if d, _ := s.Get(); d.Version != 1 {
		t.Errorf("version in force %d, want 1", d.Version)
	}
}

// Edit reads the version in force, and its result is validated, stored
// and applied as a put; an edit that fails or makes a bad document
// changes nothing.
func TestEdit(t *testing.T) {
	applied := 0
	s, dir := newStore(t, func(context.Context) error { applied++; return nil })
	ctx := context.Background()
	edit := func(doc []byte) ([]byte, error) {
		if string(doc) != v1 {
			t.Errorf("edit got %s, want the version in force", doc)
		}
		return []byte(v2), nil
	}
	dry, err := s.Edit(ctx, edit, "alice", true)
	if err != nil || !dry.DryRun || len(dry.Changes) != 1 || applied != 0 {
		t.Fatalf("dry edit = %+v, %v (applied %d)", dry, err, applied)
	}
	for _, tc := range []struct {
		name string
		edit func([]byte) ([]byte, error)
		code string
	}{
		{"edit fails", func([]byte) ([]byte, error) { return nil, &api.Error{Status: 400, Code: api.CodeBadRequest} }, api.CodeBadRequest},
		{"bad document", func([]byte) ([]byte, error) { return []byte(`{"upstream":{"kind":"pigeon"}}`), nil }, api.CodeInvalidConfig},
	} {
		_, err := s.Edit(ctx, tc.edit, "alice", false)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != tc.code {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.code)
		}
		if b, _ := os.ReadFile(dir.Config()); string(b) != v1 || applied != 0 {
			t.Errorf("%s changed config.json or applied", tc.name)
		}
	}
	res, err := s.Edit(ctx, edit, "alice", false)
	if err != nil || res.Version != 2 || applied != 1 {
		t.Fatalf("edit = %+v, %v (applied %d)", res, err, applied)
	}
	if b, _ := os.ReadFile(dir.Config()); !strings.Contains(string(b), "outbox2") {
		t.Errorf("config.json = %s", b)
	}
}

// Two puts based on one version, at once: exactly one is made, the other
// is 409 stale_version naming both versions; an edit (devices adopt)
// based on a version gone is refused the same way.
func TestConcurrentPutsOneStale(t *testing.T) {
	for round := range 20 {
		s, _ := newStore(t, func(context.Context) error { return nil })
		ctx := api.WithIfMatch(context.Background(), 1)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, doc := range []string{v2, strings.Replace(v2, "outbox2", "outbox3", 1)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.Put(ctx, []byte(doc), fmt.Sprint("admin", i), false)
			}()
		}
		wg.Wait()
		var stale, ok int
		for _, err := range errs {
			var ae *api.Error
			switch {
			case err == nil:
				ok++
			case errors.As(err, &ae) && ae.Status == 409 && ae.Code == api.CodeStale &&
				strings.Contains(ae.Message, "based on configuration version 1") && strings.Contains(ae.Message, "version 2 is in force"):
				stale++
			default:
				t.Errorf("round %d: %v", round, err)
			}
		}
		if ok != 1 || stale != 1 {
			t.Fatalf("round %d: %d made, %d stale (%v), want one each", round, ok, stale, errs)
		}
		if s.Current() != 2 {
			t.Fatalf("round %d: version %d in force, want 2", round, s.Current())
		}
		_, err := s.Edit(api.WithIfMatch(context.Background(), 1), func(b []byte) ([]byte, error) { return b, nil }, "admin", false)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeStale {
			t.Fatalf("edit based on version 1 with 2 in force: %v, want stale", err)
		}
		if _, err := s.Put(api.WithIfMatch(context.Background(), 2), []byte(v1), "admin", false); err != nil {
			t.Fatalf("put based on the version in force: %v", err)
		}
	}
}
