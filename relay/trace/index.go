package trace

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The index beside each day file (2026-11-23.idx beside 2026-11-23.jsonl)
// maps hashed keys (queue ID, message ID, each sender and recipient
// address, the device: its name, login and listener) to the offsets of the lines that hold them, so that a lookup
// by one of them reads a few lines instead of the whole day.
//
// The day file stays the truth: the index only says where to look, and
// every line it points at is parsed and matched like a scanned one, so a
// hash collision costs a line read and a damaged index never gives a
// wrong event (it may miss some until it is rebuilt: the writer and the
// rebuild check every segment's CRC, a query only the headers). The index is a chain of segments, each covering a contiguous
// range of the day file from its start:
//
//	header (20 bytes): "stx1" | start uint32 | end uint32 | count uint32 | CRC-32C of the entries
//	count entries (16 bytes each), sorted by hash then offset:
//	    hash uint32 | offset uint32 | length uint32 | milliseconds into the (UTC) day uint32
//
// The time in the entry lets a lookup with a limit read only the newest
// lines of a key that has many (a busy device's sender address).
//
// all little-endian. A reader uses the chain as far as it is whole and
// scans the rest of the day file (the lines written since the last
// segment, or everything after damage). The writer adds a segment every
// segmentEntries keys, at a change of day and at Close; it checks the
// chain when it opens a day and indexes what is missing; a background pass
// rebuilds the index of past days that lack a whole one (old boxes' files,
// a crash, damage).
const (
	indexSuffix = ".idx"
	// segMagic names the format; "stx1" indexes lacked the device keys,
	// so a reader takes one for no index (it scans) and the writer and
	// the background pass index those days again.
	segMagic       = "stx2"
	segHeader      = 20
	entrySize      = 16
	segmentEntries = 32768
	// maxIndexed is the largest day-file offset an entry can hold; lines
	// beyond it are found by scanning.
	maxIndexed = 1<<32 - 1
)

// Key tags, so that a queue ID never matches a recipient.
const (
	tagQueue     = 'q'
	tagMessage   = 'm'
	tagSender    = 's'
	tagRecipient = 'r'
	tagDevice    = 'd' // Filter.Device: the device's name, the login or the listener
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// entry is one key of one line: off and n are the line's place in the day
// file (in a chunk, relative to the chunk's start), ms the event's time.
type entry struct{ h, off, n, ms uint32 }

// msOfDay is t's milliseconds since the start of its UTC day.
func msOfDay(t time.Time) uint32 {
	ms := t.UnixMilli() % 86_400_000
	if ms < 0 {
		ms += 86_400_000
	}
	return uint32(ms)
}

// hashKey is FNV-1a of the tag and s folded to lower case (ASCII), cut as
// appendString cuts fields on disk so that writer and reader agree.
func hashKey(tag byte, s string) uint32 {
	if len(s) > maxField {
		s = s[:maxField]
	}
	const prime = 16777619
	h := uint32(2166136261)
	h = (h ^ uint32(tag)) * prime
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h = (h ^ uint32(c)) * prime
	}
	return h
}

// eventKeys calls fn with the hash of every key of e.
func eventKeys(e *Event, fn func(h uint32)) {
	if e.QueueID != "" {
		fn(hashKey(tagQueue, e.QueueID))
	}
	if id := strings.Trim(e.MessageID, "<>"); id != "" {
		fn(hashKey(tagMessage, id))
	}
	if e.From != "" {
		fn(hashKey(tagSender, e.From))
	}
	if e.FromReceived != "" && !strings.EqualFold(e.FromReceived, e.From) {
		fn(hashKey(tagSender, e.FromReceived))
	}
	for _, to := range e.To {
		if to != "" {
			fn(hashKey(tagRecipient, to))
		}
	}
	// What Filter.Device matches, each once.
	if e.Device != "" {
		fn(hashKey(tagDevice, e.Device))
	}
	if e.Account != "" && !strings.EqualFold(e.Account, e.Device) {
		fn(hashKey(tagDevice, e.Account))
	}
	if e.Listener != "" && !strings.EqualFold(e.Listener, e.Device) && !strings.EqualFold(e.Listener, e.Account) {
		fn(hashKey(tagDevice, e.Listener))
	}
}

func indexName(d int64) string {
	return strings.TrimSuffix(dayName(d), fileSuffix) + indexSuffix
}

// segment is one segment of a chain: where its entries are in the index
// file, how many, and the day-file range it covers.
type segment struct {
	pos        int64
	count      int
	start, end int64
}

// readChain reads the segment headers of an index file as far as they
// form a whole chain within a day file of size bytes. With verify it also
// checks every segment's CRC (the writer and the rebuild do; a query only
// trusts the headers, see above). valid is the length of the index file
// that holds the whole segments; covered the day-file length they cover.
func readChain(f *os.File, size int64, verify bool) (segs []segment, covered, valid int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, 0, err
	}
	flen := st.Size()
	var hdr [segHeader]byte
	var buf []byte
	for valid+segHeader <= flen {
		if _, err := f.ReadAt(hdr[:], valid); err != nil {
			return segs, covered, valid, nil
		}
		start := int64(binary.LittleEndian.Uint32(hdr[4:]))
		end := int64(binary.LittleEndian.Uint32(hdr[8:]))
		count := int64(binary.LittleEndian.Uint32(hdr[12:]))
		next := valid + segHeader + count*entrySize
		if string(hdr[:4]) != segMagic || start != covered || end <= start || end > size || next > flen {
			break
		}
		if verify {
			buf = slices.Grow(buf[:0], int(count*entrySize))[:count*entrySize]
			if _, err := f.ReadAt(buf, valid+segHeader); err != nil || crc32.Checksum(buf, crcTable) != binary.LittleEndian.Uint32(hdr[16:]) {
				break
			}
		}
		segs = append(segs, segment{pos: valid + segHeader, count: int(count), start: start, end: end})
		covered, valid = end, next
	}
	return segs, covered, valid, nil
}

// lookup returns the entries of h in seg (binary search with one read per
// probe: a segment is never read whole for a lookup).
func lookup(f *os.File, seg segment, h uint32, out []entry) ([]entry, error) {
	var b [entrySize]byte
	read := func(i int) (entry, error) {
		if _, err := f.ReadAt(b[:], seg.pos+int64(i)*entrySize); err != nil {
			return entry{}, err
		}
		return entry{binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:])}, nil
	}
	lo, hi := 0, seg.count
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		e, err := read(mid)
		if err != nil {
			return out, err
		}
		if e.h < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	// The run of h, a block at a time (a busy sender has thousands).
	var blk []byte
	for i := lo; i < seg.count; {
		n := min(seg.count-i, 256)
		blk = slices.Grow(blk[:0], n*entrySize)[:n*entrySize]
		if _, err := f.ReadAt(blk, seg.pos+int64(i)*entrySize); err != nil {
			return out, err
		}
		for k := 0; k < n; k++ {
			p := blk[k*entrySize:]
			e := entry{binary.LittleEndian.Uint32(p[0:]), binary.LittleEndian.Uint32(p[4:]), binary.LittleEndian.Uint32(p[8:]), binary.LittleEndian.Uint32(p[12:])}
			if e.h != h {
				return out, nil
			}
			if int64(e.off) >= seg.start && int64(e.off)+int64(e.n) <= seg.end {
				out = append(out, e)
			}
		}
		i += n
	}
	return out, nil
}

// encodeSegment appends to dst the bytes of a segment covering
// [start, end) with es, which it sorts.
func encodeSegment(dst []byte, es []entry, start, end int64) []byte {
	slices.SortFunc(es, func(a, b entry) int {
		if a.h != b.h {
			return cmpU32(a.h, b.h)
		}
		return cmpU32(a.off, b.off)
	})
	n := segHeader + len(es)*entrySize
	dst = slices.Grow(dst, n)
	b := dst[len(dst) : len(dst)+n]
	clear(b)
	copy(b, segMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(start))
	binary.LittleEndian.PutUint32(b[8:], uint32(end))
	binary.LittleEndian.PutUint32(b[12:], uint32(len(es)))
	p := b[segHeader:]
	for i, e := range es {
		binary.LittleEndian.PutUint32(p[i*entrySize:], e.h)
		binary.LittleEndian.PutUint32(p[i*entrySize+4:], e.off)
		binary.LittleEndian.PutUint32(p[i*entrySize+8:], e.n)
		binary.LittleEndian.PutUint32(p[i*entrySize+12:], e.ms)
	}
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(p, crcTable))
	return dst[:len(dst)+n]
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// indexRange parses the lines of the day file f in [from, to) and returns
// their keys (damaged lines have none) and where the last whole line ends.
// stop is polled now and then; when it returns true indexRange gives up.
func indexRange(f *os.File, from, to int64, stop func() bool) ([]entry, int64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(f, from, to-from), 64<<10)
	var es []entry
	off := from
	for n := 0; ; n++ {
		if n%4096 == 0 && stop != nil && stop() {
			return nil, off, errStopped
		}
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return es, off, nil // a last line without its newline stays for the next pass
		}
		if err != nil {
			return nil, off, err
		}
		if off+int64(len(line)) > maxIndexed {
			return es, off, nil
		}
		if e, perr := parseLine(line); perr == nil {
			ms := msOfDay(e.Time)
			eventKeys(&e, func(h uint32) { es = append(es, entry{h, uint32(off), uint32(len(line)), ms}) })
		}
		off += int64(len(line))
	}
}

var errStopped = errors.New("stopped")

// dayIndex is the writer's index of the day file it appends to.
type dayIndex struct {
	f        *os.File
	size     int64   // of the day file: where the next line goes
	segStart int64   // end of the last segment written
	pending  []entry // keys of the lines in [segStart, size)
	buf      []byte  // a segment being written, kept for the next
	// off: the day file was too big to index when opened (an old box's
	// file of today); it is left to the rebuild once the day is over.
	off bool
}

// openIndex opens (or makes) the index of the day file df, keeps the
// whole part of its chain and indexes the lines written after it. A large
// unindexed day (an old box's file, today) is not indexed here, where it
// would hold up the writer: the index stays off for that day.
func openIndex(path string, df *os.File) (*dayIndex, error) {
	st, err := df.Stat()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening trace index: %w", err)
	}
	_, covered, valid, err := readChain(f, st.Size(), true)
	if err == nil {
		err = f.Truncate(valid)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening trace index: %w", err)
	}
	if _, err := f.Seek(valid, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("opening trace index: %w", err)
	}
	x := &dayIndex{f: f, size: st.Size(), segStart: covered}
	if st.Size()-covered > maxGapBytes {
		x.off = true
		return x, nil
	}
	es, end, err := indexRange(df, covered, st.Size(), nil)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening trace index: %w", err)
	}
	if end != st.Size() {
		// openDay ends a cut line with a newline, so this is only a file
		// changed under us: leave the day to the scan.
		x.off = true
	}
	x.pending = es
	return x, nil
}

// maxGapBytes is the most of a day file the writer indexes when it opens
// the day (what a crash leaves unindexed is one segment's worth).
const maxGapBytes = 8 << 20

// add records the keys of a chunk just written at the end of the day file.
func (x *dayIndex) add(c *chunk) {
	base := x.size
	x.size += int64(len(c.b))
	if x.off || x.size > maxIndexed {
		return
	}
	for _, e := range c.keys {
		x.pending = append(x.pending, entry{e.h, uint32(base) + e.off, e.n, e.ms})
	}
}

// flush writes the pending keys as a segment.
func (x *dayIndex) flush() error {
	if x.off || x.size == x.segStart || x.size > maxIndexed {
		return nil
	}
	x.buf = encodeSegment(x.buf[:0], x.pending, x.segStart, x.size)
	if _, err := x.f.Write(x.buf); err != nil {
		return fmt.Errorf("writing trace index: %w", err)
	}
	x.segStart = x.size
	x.pending = x.pending[:0]
	return nil
}

func (x *dayIndex) close() error {
	err := x.flush()
	return errors.Join(err, x.f.Close())
}

// rebuildIndex writes a whole index for the day file at path (a past
// day), if its index is missing, damaged or does not cover it. It writes
// a new file and renames it, so a reader sees the old index or the new.
func rebuildIndex(dir string, d int64, stop func() bool) error {
	dayPath := filepath.Join(dir, dayName(d))
	idxPath := filepath.Join(dir, indexName(d))
	df, err := os.Open(dayPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer df.Close()
	st, err := df.Stat()
	if err != nil {
		return err
	}
	if f, err := os.Open(idxPath); err == nil {
		_, covered, _, cerr := readChain(f, st.Size(), true)
		f.Close()
		if cerr == nil && covered == min(st.Size(), maxIndexed) {
			return nil
		}
	}
	es, end, err := indexRange(df, 0, st.Size(), stop)
	if err != nil {
		if errors.Is(err, errStopped) {
			return nil
		}
		return fmt.Errorf("rebuilding trace index %s: %w", filepath.Base(idxPath), err)
	}
	if end == 0 {
		return nil
	}
	tmp := idxPath + ".tmp"
	if err := os.WriteFile(tmp, encodeSegment(nil, es, 0, end), 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rebuilding trace index: %w", err)
	}
	if err := os.Rename(tmp, idxPath); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rebuilding trace index: %w", err)
	}
	return nil
}
