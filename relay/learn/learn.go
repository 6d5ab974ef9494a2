// Package learn records every client that sends through the relay — its
// address, HELO names, envelope and header senders, TLS, the AUTH
// mechanisms it tried, counts, first and last seen — so that an admin can
// turn what the plant really does into device entries with one command
// (`relayd devices adopt`) and then lock the relay to them
// (devices_only).
//
// The store is bounded (MaxClients, the least recently seen go first; each
// list in an entry is bounded too), so a scan of the network cannot grow
// it, and it is written durably at most once a SaveEvery and at Close, not
// on every message: it is a survey, and a crash loses at most a minute of
// it, never mail.
package learn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siterelay/siterelay/relay/durable"
)

// Defaults for the Options left zero.
const (
	DefaultMaxClients = 1000
	DefaultSaveEvery  = time.Minute
	// maxList bounds each list of one client (HELO names, senders...).
	maxList = 10
)

// Sighting is one thing a session did: a MAIL command (Message false) or
// an accepted message (Message true).
type Sighting struct {
	Address    string // the client's IP address
	Helo       string
	Login      string // the account it logged in with, if any
	AuthTried  string // the AUTH mechanism it tried, if any ("PLAIN", "LOGIN")
	From       string // envelope sender
	HeaderFrom string // the message's From address (Message only)
	TLS        string // e.g. "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"; "" without TLS
	Device     string // the device it was recognised as, if any
	Message    bool
}

// Client is what was seen of one address.
type Client struct {
	Address     string    `json:"address"`
	Device      string    `json:"device,omitempty"` // the device it was last recognised as
	Helo        []string  `json:"helo,omitempty"`
	Logins      []string  `json:"logins,omitempty"`
	AuthTried   []string  `json:"auth_tried,omitempty"`
	Senders     []string  `json:"senders,omitempty"`
	HeaderFroms []string  `json:"header_froms,omitempty"`
	TLS         []string  `json:"tls,omitempty"`
	Mails       int       `json:"mails"`    // MAIL commands
	Messages    int       `json:"messages"` // messages accepted
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	// LastMessage is when its last message was accepted (zero: none yet).
	LastMessage time.Time `json:"last_message,omitzero"`
}

// file is the document on disk.
type file struct {
	Version int      `json:"version"`
	Clients []Client `json:"clients"`
}

// Options bound and time a store.
type Options struct {
	MaxClients int
	SaveEvery  time.Duration
	Clock      func() time.Time
	Logger     *slog.Logger
}

// Store is safe for concurrent use.
type Store struct {
	path string
	o    Options

	mu      sync.Mutex
	clients map[string]*Client
	dirty   bool
	saveMu  sync.Mutex // orders writes
}

// Open loads the store kept at path (a missing file is an empty store; a
// damaged one is reported and set aside, since losing the survey loses no
// mail).
func Open(path string, o Options) (*Store, error) {
	if o.MaxClients <= 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.SaveEvery <= 0 {
		o.SaveEvery = DefaultSaveEvery
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{path: path, o: o, clients: map[string]*Client{}}
	clients, err := Read(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		o.Logger.Warn("learned clients unreadable; starting afresh", "file", path, "err", err)
		if err := os.Rename(path, path+".damaged"); err != nil {
			return nil, fmt.Errorf("setting aside damaged learned clients: %w", err)
		}
	}
	for i := range clients {
		c := clients[i]
		s.clients[c.Address] = &c
	}
	s.trim()
	return s, nil
}

// Read returns the clients kept at path, most recently seen first, without
// opening a store (`relayd devices` beside a running relay).
func Read(path string) ([]Client, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("reading learned clients %s: %w", path, err)
	}
	sortClients(f.Clients)
	return f.Clients, nil
}

func sortClients(cs []Client) {
	slices.SortFunc(cs, func(a, b Client) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return strings.Compare(a.Address, b.Address)
	})
}

// Observe records one sighting.
func (s *Store) Observe(v Sighting) {
	if v.Address == "" {
		return
	}
	now := s.o.Clock().UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[v.Address]
	if c == nil {
		c = &Client{Address: v.Address, FirstSeen: now, LastSeen: now}
		s.clients[v.Address] = c
		s.trim()
	}
	c.LastSeen = now
	c.Device = v.Device
	add(&c.Helo, v.Helo)
	add(&c.Logins, v.Login)
	add(&c.AuthTried, v.AuthTried)
	add(&c.Senders, strings.ToLower(v.From))
	add(&c.HeaderFroms, strings.ToLower(v.HeaderFrom))
	add(&c.TLS, v.TLS)
	if v.Message {
		c.Messages++
		c.LastMessage = now
	} else {
		c.Mails++
	}
	s.dirty = true
}

// add puts v in the bounded list l (once; the oldest goes when full).
func add(l *[]string, v string) {
	if v == "" || slices.Contains(*l, v) {
		return
	}
	if len(v) > 200 {
		v = v[:200]
	}
	if len(*l) >= maxList {
		*l = (*l)[1:]
	}
	*l = append(*l, v)
}

// trim drops the least recently seen clients beyond MaxClients; s.mu is
// held.
func (s *Store) trim() {
	for len(s.clients) > s.o.MaxClients {
		var oldest *Client
		for _, c := range s.clients {
			if oldest == nil || c.LastSeen.Before(oldest.LastSeen) {
				oldest = c
			}
		}
		delete(s.clients, oldest.Address)
	}
}

// Clients is everything seen, most recently seen first.
func (s *Store) Clients() []Client {
	s.mu.Lock()
	out := make([]Client, 0, len(s.clients))
	for _, c := range s.clients {
		cc := *c
		for _, l := range []*[]string{&cc.Helo, &cc.Logins, &cc.AuthTried, &cc.Senders, &cc.HeaderFroms, &cc.TLS} {
			*l = slices.Clone(*l)
		}
		out = append(out, cc)
	}
	s.mu.Unlock()
	sortClients(out)
	return out
}

// Save writes the store durably if anything changed since the last save.
func (s *Store) Save() error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	s.mu.Lock()
	dirty := s.dirty
	s.dirty = false
	s.mu.Unlock()
	if !dirty {
		return nil
	}
	b, err := json.MarshalIndent(file{Version: 1, Clients: s.Clients()}, "", "  ")
	if err != nil {
		return fmt.Errorf("saving learned clients: %w", err)
	}
	if err := durable.WriteFile(s.path, append(b, '\n'), 0o600); err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("saving learned clients: %w", err)
	}
	return nil
}

// Run saves every SaveEvery until ctx ends, then once more.
func (s *Store) Run(ctx context.Context) {
	t := time.NewTicker(s.o.SaveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := s.Save(); err != nil {
				s.o.Logger.Warn("cannot save learned clients", "err", err)
			}
			return
		case <-t.C:
			if err := s.Save(); err != nil {
				s.o.Logger.Warn("cannot save learned clients", "err", err)
			}
		}
	}
}
