package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"
)

// On disk a segment is a sequence of frames:
//
//	[uint32 LE body length][uint32 LE CRC-32C of (segment seq, body)][body]
//
// and a body is one record: a type byte, then fields as uvarints and
// length-prefixed strings. Segment files are preallocated (zero-filled or
// recycled from an old segment), so the log ends at the first frame that
// does not check: a zero length, or a checksum that fails. Seeding the
// checksum with the segment's sequence number makes frames left over from a
// recycled file's previous life fail it. Everything before the end is
// intact because frames are only acknowledged after an fsync that covers
// them.

const (
	recMessage byte = 1 // a whole message: envelope, recipient states, content
	recUpdate  byte = 2 // one recipient's new state
	recDone    byte = 3 // the message needs nothing more

	frameHeader = 8
	// maxFrame bounds what recovery will believe a length field; inline
	// content is far below it.
	maxFrame = 64 << 20
)

// flagDevice in a message record's flags says the device and class
// strings follow the header byte count; records written before devices
// existed lack both and still read.
const flagDevice = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// State is a recipient's delivery state.
type State byte

const (
	Pending   State = 0
	Delivered State = 1
	Failed    State = 2 // permanently; the bounce has been queued
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Rcpt is one recipient and where it stands.
type Rcpt struct {
	Addr  string
	State State
	// Reply is the last upstream reply for this recipient (success or
	// failure), kept for the trace and the bounce.
	Reply string
}

// Envelope is what the spool keeps besides the content.
type Envelope struct {
	From     string
	To       []Rcpt
	UTF8     bool
	EightBit bool
	Received time.Time
	// Facts for the trace and bounces.
	ClientIP    string
	Login       string
	MessageID   string
	Subject     string
	HeaderBytes int64
	// Device is the configured device that sent it ("" for an unknown
	// client) and Class its priority class: the scheduler shares the
	// upstream by them, also after a restart.
	Device string
	Class  string
	// FromReceived is the envelope sender the device gave, when a fix
	// rewrote From (for the trace).
	FromReceived string
}

type messageRec struct {
	ID  string
	Env Envelope
	// Content is inline (Data) or in a file of its own (File).
	Data []byte
	File string
	Size int64
	// framed, when set, is the record already encoded around Data
	// (frameInPlace): the writer takes it as it is, without a copy.
	// buf is the whole pooled buffer framed lies in.
	framed, buf []byte
}

type updateRec struct {
	ID    string
	Index int
	State State
	Reply string
}

var errCorrupt = errors.New("corrupt record")

// frame wraps a record body in its length and checksum for segment seq.
func frame(dst []byte, seq uint64, body []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(body)))
	dst = binary.LittleEndian.AppendUint32(dst, checksum(seq, body))
	return append(dst, body...)
}

func checksum(seq uint64, body []byte) uint32 {
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], seq)
	return crc32.Update(crc32.Checksum(s[:], castagnoli), castagnoli, body)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// recordSize is the most bytes encodeMessage writes for m (each varint
// counted at its largest), so that its buffer is made once.
func recordSize(m *messageRec) int {
	const v = binary.MaxVarintLen64
	e := &m.Env
	n := 1 + 6*v + len(m.ID) + len(e.From) + len(e.ClientIP) + len(e.Login) + len(e.MessageID) + len(e.Subject)
	for _, r := range e.To {
		n += 2*v + 1 + len(r.Addr) + len(r.Reply)
	}
	n += 3*v + len(e.Device) + len(e.Class) + len(e.FromReceived)
	return n + 1 + 2*v + len(m.File) + len(m.Data)
}

func encodeMessage(b []byte, m *messageRec) []byte {
	return append(encodeMessageHead(b, m), m.Data...)
}

// encodeMessageHead is encodeMessage without Data's bytes: all of the
// record that comes before them.
func encodeMessageHead(b []byte, m *messageRec) []byte {
	b = append(b, recMessage)
	b = appendString(b, m.ID)
	b = binary.AppendVarint(b, m.Env.Received.UnixNano())
	var flags uint64
	if m.Env.UTF8 {
		flags |= 1
	}
	if m.Env.EightBit {
		flags |= 2
	}
	if m.Env.Device != "" || m.Env.Class != "" || m.Env.FromReceived != "" {
		flags |= flagDevice
	}
	b = binary.AppendUvarint(b, flags)
	b = appendString(b, m.Env.From)
	b = binary.AppendUvarint(b, uint64(len(m.Env.To)))
	for _, r := range m.Env.To {
		b = appendString(b, r.Addr)
		b = append(b, byte(r.State))
		b = appendString(b, r.Reply)
	}
	b = appendString(b, m.Env.ClientIP)
	b = appendString(b, m.Env.Login)
	b = appendString(b, m.Env.MessageID)
	b = appendString(b, m.Env.Subject)
	b = binary.AppendUvarint(b, uint64(m.Env.HeaderBytes))
	if flags&flagDevice != 0 {
		b = appendString(b, m.Env.Device)
		b = appendString(b, m.Env.Class)
		b = appendString(b, m.Env.FromReceived)
	}
	if m.File != "" {
		b = append(b, 1)
		b = appendString(b, m.File)
		b = binary.AppendUvarint(b, uint64(m.Size))
	} else {
		b = append(b, 0)
		b = binary.AppendUvarint(b, uint64(len(m.Data)))
	}
	return b
}

// record is m's record to append: the one framed in place around its
// content, or else a copy encoded into a pooled buffer.
func (m *messageRec) record() []byte {
	if m.framed != nil {
		return m.framed
	}
	return encodeMessage(newRecord(recordSize(m)), m)
}

// pooled is the buffer rec (m's record) lies in, for the writer to pool
// once it is written: framed's buffer, or rec itself (newRecord's).
func (m *messageRec) pooled(rec []byte) []byte {
	if m.framed != nil {
		return m.buf
	}
	return rec
}

// frameInPlace encodes m, whose Data is buf[room:], into the room before
// it and returns the record (frameHeader bytes of room, then its body)
// as a slice of buf, so that a message's content is not copied into a
// record of its own (with 50 sessions of 64 KiB messages those copies
// were a third of the heap). It returns nil when the room is too small
// for the record's head (an envelope with many recipients): the caller
// encodes a copy as before.
func frameInPlace(buf []byte, room int, m *messageRec) []byte {
	var scratch [contentRoom]byte
	head := encodeMessageHead(scratch[:0], m)
	start := room - frameHeader - len(head)
	if start < 0 || len(buf)-room != len(m.Data) {
		return nil
	}
	copy(buf[start+frameHeader:], head)
	m.buf = buf
	return buf[start:]
}

func encodeUpdate(b []byte, u *updateRec) []byte {
	b = append(b, recUpdate)
	b = appendString(b, u.ID)
	b = binary.AppendUvarint(b, uint64(u.Index))
	b = append(b, byte(u.State))
	return appendString(b, u.Reply)
}

func encodeDone(b []byte, id string) []byte {
	b = append(b, recDone)
	return appendString(b, id)
}

// decoder reads fields from a record body; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.err = errCorrupt
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.err = errCorrupt
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) string() string { return string(d.bytes()) }

// decodeRecord parses one record body. Message content stays a sub-slice
// of body (no copy): the caller records only its offset.
func decodeRecord(body []byte) (typ byte, m *messageRec, u *updateRec, id string, err error) {
	d := &decoder{b: body}
	typ = d.byte()
	switch typ {
	case recMessage:
		m = &messageRec{}
		m.ID = d.string()
		m.Env.Received = time.Unix(0, d.varint()).UTC()
		flags := d.uvarint()
		m.Env.UTF8, m.Env.EightBit = flags&1 != 0, flags&2 != 0
		m.Env.From = d.string()
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			return 0, nil, nil, "", errCorrupt
		}
		m.Env.To = make([]Rcpt, 0, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			r := Rcpt{Addr: d.string(), State: State(d.byte()), Reply: d.string()}
			m.Env.To = append(m.Env.To, r)
		}
		m.Env.ClientIP = d.string()
		m.Env.Login = d.string()
		m.Env.MessageID = d.string()
		m.Env.Subject = d.string()
		m.Env.HeaderBytes = int64(d.uvarint())
		if flags&flagDevice != 0 {
			m.Env.Device = d.string()
			m.Env.Class = d.string()
			m.Env.FromReceived = d.string()
		}
		switch d.byte() {
		case 0:
			m.Data = d.bytes()
			m.Size = int64(len(m.Data))
		case 1:
			m.File = d.string()
			m.Size = int64(d.uvarint())
		default:
			d.err = errCorrupt
		}
		id = m.ID
	case recUpdate:
		u = &updateRec{ID: d.string(), Index: int(d.uvarint()), State: State(d.byte()), Reply: d.string()}
		id = u.ID
	case recDone:
		id = d.string()
	default:
		d.err = errCorrupt
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	if d.err != nil {
		return 0, nil, nil, "", d.err
	}
	return typ, m, u, id, nil
}
