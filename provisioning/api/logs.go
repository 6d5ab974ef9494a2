package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/siterelay/siterelay/relay/safetext"
)

// PathLogs is relayd's log (operator): GET with ?since= (an RFC 3339 time
// or a duration back from now), ?level= (debug, info, warn, error; default
// info) and ?follow=1 (keep the answer open and send new lines as they
// are written). The answer is application/x-ndjson: one JSON record a
// line, exactly as relayd logged it ("time", "level", "msg", then its
// attributes), oldest first.
const PathLogs = "/v1/logs"

// LogContentType is the answer's type.
const LogContentType = "application/x-ndjson"

// LogQuery selects log records.
type LogQuery struct {
	// Since is a time, or Ago a duration back from the relay's now.
	Since time.Time
	Ago   time.Duration
	// Level is debug, info, warn or error ("" is info).
	Level  string
	Follow bool
}

// LogLine is one record of relayd's log.
type LogLine struct {
	Time  time.Time
	Level string
	Msg   string
	// Attrs are the other fields, in the order logged; groups are
	// flattened to dotted keys, values written as text.
	Attrs []LogAttr
	// Raw is the record as relayd wrote it (relayctl logs -json).
	Raw json.RawMessage
}

type LogAttr struct{ Key, Value string }

// ParseLogLine reads one record of the answer. A line that is not a JSON
// object becomes a LogLine whose Msg is the line.
func ParseLogLine(b []byte) LogLine {
	b = bytes.TrimSpace(b)
	l := LogLine{Raw: json.RawMessage(bytes.Clone(b))}
	var kvs []LogAttr
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := object(d, "", &kvs); err != nil {
		l.Msg, l.Raw = string(b), nil
		return l
	}
	for _, kv := range kvs {
		switch kv.Key {
		case "time":
			l.Time, _ = time.Parse(time.RFC3339Nano, kv.Value)
		case "level":
			l.Level = kv.Value
		case "msg":
			l.Msg = kv.Value
		default:
			l.Attrs = append(l.Attrs, kv)
		}
	}
	return l
}

func object(d *json.Decoder, prefix string, out *[]LogAttr) error {
	t, err := d.Token()
	if err != nil {
		return err
	}
	if t != json.Delim('{') {
		return fmt.Errorf("not an object")
	}
	for d.More() {
		kt, err := d.Token()
		if err != nil {
			return err
		}
		k, _ := kt.(string)
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return err
		}
		switch {
		case len(raw) > 0 && raw[0] == '{':
			sub := json.NewDecoder(bytes.NewReader(raw))
			sub.UseNumber()
			if err := object(sub, prefix+k+".", out); err != nil {
				return err
			}
		case len(raw) > 0 && raw[0] == '"':
			var s string
			json.Unmarshal(raw, &s)
			*out = append(*out, LogAttr{prefix + k, s})
		default:
			*out = append(*out, LogAttr{prefix + k, string(raw)})
		}
	}
	_, err = d.Token()
	return err
}

// Text is the record for a terminal: "TIME LEVEL msg key=value ...", with
// every field through safetext.Escape, the project's one rule: what a
// device sent (a HELO, a subject) never reaches a terminal raw.
func (l LogLine) Text() string {
	var b strings.Builder
	if l.Time.IsZero() {
		b.WriteString("-")
	} else {
		b.WriteString(l.Time.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	fmt.Fprintf(&b, " %-5s %s", safetext.Escape(l.Level), safetext.Escape(l.Msg))
	for _, a := range l.Attrs {
		v := safetext.Escape(a.Value)
		if v == "" || strings.ContainsAny(v, " \"=") {
			v = fmt.Sprintf("%q", v)
		}
		b.WriteString(" " + safetext.Escape(a.Key) + "=" + v)
	}
	return b.String()
}

// Logs reads relayd's log, calling fn with each record, oldest first; with
// q.Follow it goes on with new records until ctx ends (then it returns
// nil) or fn fails.
func (c *Client) Logs(ctx context.Context, q LogQuery, fn func(LogLine) error) error {
	v := url.Values{}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if q.Ago > 0 {
		v.Set("since", q.Ago.String())
	}
	if q.Level != "" {
		v.Set("level", q.Level)
	}
	if q.Follow {
		v.Set("follow", "1")
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.Base+PathLogs+"?"+v.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", LogContentType)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil && q.Follow {
			return nil
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var eb ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error != nil {
			eb.Error.Status = resp.StatusCode
			return eb.Error
		}
		return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, b)}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := fn(ParseLogLine(sc.Bytes())); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil && q.Follow {
			return nil
		}
		return fmt.Errorf("%w: reading the log: %v", ErrUnreachable, err)
	}
	return nil
}
