// Package configstore keeps the relay's configuration as numbered versions
// and applies a new one: validate (every key error listed), store it as a
// new version, make it config.json (the version in force), and ask the
// relay to reload. A version the relay cannot apply is undone, so
// config.json is always a configuration that ran.
package configstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/siterelay/siterelay/provisioning/api"
	"github.com/siterelay/siterelay/relay/config"
	"github.com/siterelay/siterelay/relay/durable"
	"github.com/siterelay/siterelay/relay/layout"
)

// DefaultKeep is how many versions are kept.
const DefaultKeep = 10

// Store is the configuration of one state directory.
type Store struct {
	dir   layout.Dir
	apply func(ctx context.Context) error
	keep  int
	clock func() time.Time

	mu sync.Mutex
}

// New makes a store; apply is the relay's reload (it reads config.json).
func New(dir layout.Dir, apply func(ctx context.Context) error, keep int, clock func() time.Time) *Store {
	if keep <= 0 {
		keep = DefaultKeep
	}
	if clock == nil {
		clock = time.Now
	}
	return &Store{dir: dir, apply: apply, keep: keep, clock: clock}
}

type index struct {
	Current  int                 `json:"current"`
	Versions []api.ConfigVersion `json:"versions"`
}

// load reads the index, starting one from config.json when there is none
// (the configuration the first boot copied becomes version 1).
func (s *Store) load() (*index, error) {
	b, err := os.ReadFile(s.dir.ConfigIndex())
	if err == nil {
		var ix index
		if err := json.Unmarshal(b, &ix); err != nil {
			return nil, fmt.Errorf("configuration index %s: %w", s.dir.ConfigIndex(), err)
		}
		return &ix, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	cur, err := os.ReadFile(s.dir.Config())
	if errors.Is(err, fs.ErrNotExist) {
		return &index{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	ix := &index{Current: 1, Versions: []api.ConfigVersion{{Version: 1, Time: s.clock().UTC(), By: "first boot"}}}
	if err := durable.WriteFile(s.dir.ConfigVersion(1), cur, 0o600); err != nil {
		return nil, err
	}
	return ix, s.save(ix)
}

func (s *Store) save(ix *index) error {
	b, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(s.dir.ConfigIndex(), b, 0o600)
}

// Get returns the configuration in force.
func (s *Store) Get() (*api.ConfigDoc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.load()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.dir.Config())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &api.Error{Status: 404, Code: api.CodeNotFound, Message: "no configuration yet: put one"}
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return &api.ConfigDoc{Version: ix.Current, Config: json.RawMessage(b)}, nil
}

// Current is the version in force (0 before the first).
func (s *Store) Current() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.load()
	if err != nil {
		return 0
	}
	return ix.Current
}

// Versions lists the kept versions, newest first.
func (s *Store) Versions() ([]api.ConfigVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.load()
	if err != nil {
		return nil, err
	}
	out := slices.Clone(ix.Versions)
	for i := range out {
		out[i].Current = out[i].Version == ix.Current
	}
	slices.Reverse(out)
	if out == nil {
		out = []api.ConfigVersion{}
	}
	return out, nil
}

// Validate checks doc and returns the API error listing every key error.
func Validate(doc []byte) error {
	_, err := config.Parse(doc)
	if err == nil {
		return nil
	}
	e := &api.Error{Status: 400, Code: api.CodeInvalidConfig, Message: "the configuration has errors; nothing was changed"}
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, x := range errs {
			var ke *config.KeyError
			if errors.As(x, &ke) {
				key := ke.Key
				if key == "" {
					key = `""` // a key spelt as the empty string
				}
				e.Problems = append(e.Problems, api.Problem{Key: key, Problem: ke.Problem})
			} else {
				e.Problems = append(e.Problems, api.Problem{Key: "(document)", Problem: x.Error()})
			}
		}
	} else {
		e.Problems = []api.Problem{{Key: "(document)", Problem: err.Error()}}
	}
	e.Message = fmt.Sprintf("the configuration has %d error(s); nothing was changed", len(e.Problems))
	return e
}

// Put validates doc, and unless dryRun stores it as a new version and
// applies it.
func (s *Store) Put(ctx context.Context, doc []byte, by string, dryRun bool) (*api.ConfigResult, error) {
	if err := Validate(doc); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.put(ctx, doc, by, dryRun)
}

func (s *Store) put(ctx context.Context, doc []byte, by string, dryRun bool) (*api.ConfigResult, error) {
	ix, err := s.load()
	if err != nil {
		return nil, err
	}
	// A change based on a version no longer in force would silently undo
	// what came between (If-Match, api.WithIfMatch): checked under the
	// lock, so of two puts based on one version exactly one is made.
	if base, ok := api.IfMatch(ctx); ok && base != ix.Current {
		return nil, api.StaleVersion(base, ix.Current)
	}
	old, err := os.ReadFile(s.dir.Config())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	changes, err := Diff(old, doc)
	if err != nil {
		return nil, err
	}
	next := 1
	if n := len(ix.Versions); n > 0 {
		next = ix.Versions[n-1].Version + 1
	}
	if dryRun {
		return &api.ConfigResult{Version: ix.Current, DryRun: true, Changes: changes}, nil
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, doc, "", "  ") == nil {
		pretty.WriteByte('\n')
		doc = pretty.Bytes()
	}
	if err := durable.WriteFile(s.dir.ConfigVersion(next), doc, 0o600); err != nil {
		return nil, err
	}
	if err := durable.WriteFile(s.dir.Config(), doc, 0o600); err != nil {
		return nil, err
	}
	prev := ix.Current
	ix.Current = next
	ix.Versions = append(ix.Versions, api.ConfigVersion{Version: next, Time: s.clock().UTC(), By: by})
	if err := s.apply(ctx); err != nil {
		// Undo: config.json goes back to the version that ran.
		ix.Versions = ix.Versions[:len(ix.Versions)-1]
		ix.Current = prev
		os.Remove(s.dir.ConfigVersion(next))
		if old != nil {
			if werr := durable.WriteFile(s.dir.Config(), old, 0o600); werr != nil {
				return nil, errors.Join(err, werr)
			}
			if rerr := s.apply(ctx); rerr != nil {
				err = errors.Join(err, fmt.Errorf("re-applying version %d: %w", prev, rerr))
			}
		}
		return nil, &api.Error{Status: 409, Code: api.CodeConflict,
			Message: fmt.Sprintf("the relay could not apply the configuration (version %d stays in force): %v", prev, err)}
	}
	for len(ix.Versions) > s.keep {
		if v := ix.Versions[0].Version; v != ix.Current {
			os.Remove(s.dir.ConfigVersion(v))
		}
		ix.Versions = ix.Versions[1:]
	}
	if err := s.save(ix); err != nil {
		return nil, err
	}
	return &api.ConfigResult{Version: next, Changes: changes}, nil
}

// Edit makes a new version of the configuration in force with edit (which
// gets the document and returns the new one) and puts it as Put does,
// under the store's lock, so that no other put comes between the read and
// the write (adopting devices edits two keys of it).
func (s *Store) Edit(ctx context.Context, edit func(doc []byte) ([]byte, error), by string, dryRun bool) (*api.ConfigResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, err := os.ReadFile(s.dir.Config())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &api.Error{Status: 404, Code: api.CodeNotFound, Message: "no configuration yet: put one"}
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	doc, err := edit(old)
	if err != nil {
		return nil, err
	}
	if err := Validate(doc); err != nil {
		return nil, err
	}
	return s.put(ctx, doc, by, dryRun)
}

// Rollback applies an earlier version again, as a new version.
func (s *Store) Rollback(ctx context.Context, version int, by string) (*api.ConfigResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.load()
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(ix.Versions, func(v api.ConfigVersion) bool { return v.Version == version }) {
		return nil, &api.Error{Status: 404, Code: api.CodeNotFound, Field: "version",
			Message: "no kept version " + strconv.Itoa(version) + " (GET " + api.PathConfigVers + " lists them)"}
	}
	doc, err := os.ReadFile(s.dir.ConfigVersion(version))
	if err != nil {
		return nil, fmt.Errorf("reading version %d: %w", version, err)
	}
	if err := Validate(doc); err != nil {
		return nil, err
	}
	return s.put(ctx, doc, by+" (rollback to "+strconv.Itoa(version)+")", false)
}

// Diff lists the keys whose values differ between two documents, as
// dotted paths (listeners[0].address), sorted.
func Diff(old, new []byte) ([]api.ConfigChange, error) {
	a, b := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	if len(old) > 0 {
		var v any
		if err := json.Unmarshal(old, &v); err != nil {
			return nil, fmt.Errorf("configuration in force does not parse: %w", err)
		}
		flatten("", v, a)
	}
	var v any
	if err := json.Unmarshal(new, &v); err != nil {
		return nil, err
	}
	flatten("", v, b)
	out := []api.ConfigChange{}
	for k, ov := range a {
		nv, ok := b[k]
		if !ok {
			out = append(out, api.ConfigChange{Key: k, Old: ov})
		} else if !bytes.Equal(ov, nv) {
			out = append(out, api.ConfigChange{Key: k, Old: ov, New: nv})
		}
	}
	for k, nv := range b {
		if _, ok := a[k]; !ok {
			out = append(out, api.ConfigChange{Key: k, New: nv})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func flatten(prefix string, v any, out map[string]json.RawMessage) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flatten(p, e, out)
		}
	case []any:
		for i, e := range x {
			flatten(fmt.Sprintf("%s[%d]", prefix, i), e, out)
		}
	default:
		b, _ := json.Marshal(x)
		out[prefix] = b
	}
}
