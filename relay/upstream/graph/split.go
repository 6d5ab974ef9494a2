package graph

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/textproto"
	"slices"
	"strings"
)

// attachment is a top-level MIME part taken out of a message so the rest
// fits in one Graph request; it is added back by the upload route.
type attachment struct {
	Name, ContentType string
	Data              []byte
}

type part struct {
	start, end int // raw bytes from its delimiter line to before the next
	header     textproto.MIMEHeader
	bodyStart  int
}

// splitAttachments removes the largest top-level attachments from a
// multipart message until its base64 form is at most limit bytes.
func splitAttachments(raw []byte, limit int) ([]byte, []attachment, error) {
	hdrEnd := bytes.Index(raw, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		return nil, nil, errors.New("message has no header end")
	}
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw[:hdrEnd+4]))).ReadMIMEHeader()
	if err != nil && err != io.EOF {
		return nil, nil, err
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return nil, nil, errors.New("the message is one large part, not attachments: Graph cannot take it in pieces")
	}
	parts, err := findParts(raw, hdrEnd+4, params["boundary"])
	if err != nil {
		return nil, nil, err
	}
	var cands []int
	for i, p := range parts {
		if isAttachment(p.header) {
			cands = append(cands, i)
		}
	}
	slices.SortFunc(cands, func(a, b int) int { return (parts[b].end - parts[b].start) - (parts[a].end - parts[a].start) })
	size := len(raw)
	removed := map[int]bool{}
	for _, i := range cands {
		if base64.StdEncoding.EncodedLen(size) <= limit {
			break
		}
		removed[i] = true
		size -= parts[i].end - parts[i].start
	}
	if base64.StdEncoding.EncodedLen(size) > limit {
		return nil, nil, errors.New("even without its attachments the message is too large for Graph")
	}
	var out bytes.Buffer
	var atts []attachment
	pos := 0
	for i, p := range parts {
		if !removed[i] {
			continue
		}
		out.Write(raw[pos:p.start])
		pos = p.end
		a, err := decodePart(raw[p.bodyStart:p.end], p.header)
		if err != nil {
			return nil, nil, err
		}
		atts = append(atts, a)
	}
	out.Write(raw[pos:])
	return out.Bytes(), atts, nil
}

// findParts locates the top-level parts' delimiter lines.
func findParts(raw []byte, from int, boundary string) ([]part, error) {
	delim := []byte("--" + boundary)
	var starts []int
	closing := -1
	for i := from; i < len(raw); {
		j := bytes.Index(raw[i:], []byte("\n"))
		lineEnd := len(raw)
		if j >= 0 {
			lineEnd = i + j + 1
		}
		line := bytes.TrimRight(raw[i:lineEnd], "\r\n \t")
		if bytes.Equal(line, append(slices.Clone(delim), '-', '-')) {
			closing = i
			break
		}
		if bytes.Equal(line, delim) {
			starts = append(starts, i)
		}
		i = lineEnd
	}
	if closing < 0 || len(starts) == 0 {
		return nil, errors.New("malformed multipart message: no closing boundary")
	}
	parts := make([]part, len(starts))
	for k, s := range starts {
		end := closing
		if k+1 < len(starts) {
			end = starts[k+1]
		}
		nl := bytes.IndexByte(raw[s:], '\n')
		hs := s + nl + 1
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw[hs:end])))
		h, err := r.ReadMIMEHeader()
		if err != nil && err != io.EOF {
			return nil, errors.New("malformed part header")
		}
		he := bytes.Index(raw[hs:end], []byte("\r\n\r\n"))
		bs := end
		if he >= 0 {
			bs = hs + he + 4
		}
		parts[k] = part{start: s, end: end, header: h, bodyStart: bs}
	}
	return parts, nil
}

func isAttachment(h textproto.MIMEHeader) bool {
	d, p, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	if d == "attachment" || p["filename"] != "" {
		return true
	}
	_, cp, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return cp["name"] != ""
}

func decodePart(body []byte, h textproto.MIMEHeader) (attachment, error) {
	ct, cp, _ := mime.ParseMediaType(h.Get("Content-Type"))
	_, dp, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	name := dp["filename"]
	if name == "" {
		name = cp["name"]
	}
	if name == "" {
		name = "attachment"
	}
	if ct == "" {
		ct = "application/octet-stream"
	}
	body = bytes.TrimSuffix(body, []byte("\r\n")) // the CRLF before the next delimiter
	var data []byte
	var err error
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		data, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, &stripSpace{r: bytes.NewReader(body)}))
	case "quoted-printable":
		data, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
	default:
		data = body
	}
	if err != nil {
		return attachment{}, errors.New("attachment " + name + " does not decode")
	}
	return attachment{Name: name, ContentType: ct, Data: data}, nil
}

// stripSpace drops CR, LF, space and tab (line breaks in base64 bodies).
type stripSpace struct{ r io.Reader }

func (s *stripSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		k := 0
		for _, c := range p[:n] {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				p[k] = c
				k++
			}
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}
