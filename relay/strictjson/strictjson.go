// Package strictjson decodes the documents people write by hand (the relay's
// configuration, a site file, an admin API request) strictly, and reports
// every problem with the full key that has it: `upstream.smtp.adress:
// unknown key (misspelt?)`, not encoding/json's first error without a path.
// A typo must never silently turn a setting off.
//
// It is a leaf: any package of the project may import it (netcfg too).
package strictjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// KeyError is one bad key.
type KeyError struct {
	Key     string // e.g. "listeners[0].allowed_networks[1]"; "(document)" for the whole
	Problem string
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Problem }

// Errors is every problem found in a document, each naming its key.
type Errors []error

func (e Errors) Error() string {
	var b strings.Builder
	if len(e) == 1 {
		b.WriteString("1 error:")
	} else {
		fmt.Fprintf(&b, "%d errors:", len(e))
	}
	for _, err := range e {
		b.WriteString("\n  ")
		b.WriteString(err.Error())
	}
	return b.String()
}

// Keys are the keys named, in order (for API answers and tests).
func (e Errors) Keys() []string {
	var out []string
	for _, err := range e {
		var ke *KeyError
		if errors.As(err, &ke) {
			out = append(out, ke.Key)
		}
	}
	return out
}

// Bad appends a KeyError; a helper for validators.
func (e *Errors) Bad(key, format string, a ...any) {
	*e = append(*e, &KeyError{Key: key, Problem: fmt.Sprintf(format, a...)})
}

// Prefixed returns errs with prefix put before every key (a document
// embedded in another, e.g. a site file's "relay." section).
func Prefixed(prefix string, errs Errors) Errors {
	out := make(Errors, len(errs))
	for i, err := range errs {
		var ke *KeyError
		if errors.As(err, &ke) {
			k := ke.Key
			if k == "(document)" {
				k = strings.TrimSuffix(prefix, ".")
			} else {
				k = prefix + k
			}
			out[i] = &KeyError{Key: k, Problem: ke.Problem}
			continue
		}
		out[i] = err
	}
	return out
}

// Decode decodes one JSON object from b into v (a pointer to a struct).
// It returns nil or Errors listing every problem at once, each with its
// full key (`listeners[0].starttls`): a syntax error (with its line), every
// unknown key, every value of the wrong type, and every value a type's own
// decoder refuses (a duration, against its key). With Errors, v still holds
// every value that could be decoded (the bad ones are left out), so a
// validator can judge the rest and list its findings beside them.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return Errors{decodeError(b, err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errors{&KeyError{Key: "(document)", Problem: "extra data after the JSON object"}}
	}
	t := reflect.TypeOf(v)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if _, ok := doc.(map[string]any); !ok && t.Kind() == reflect.Struct {
		return Errors{&KeyError{Key: "(document)", Problem: "want an object, got JSON " + jsonKind(doc)}}
	}
	var errs Errors
	clean, _ := check(&errs, "", doc, t)
	if len(errs) == 0 {
		if err := json.Unmarshal(b, v); err != nil {
			return Errors{decodeError(b, err)} // not expected: check tried every value
		}
		return nil
	}
	// What is left decodes; it fills v for the validator.
	if cb, err := json.Marshal(clean); err == nil {
		json.Unmarshal(cb, v)
	}
	return errs
}

// check walks doc beside the type t it decodes into, appends a KeyError
// for every unknown key and every value t cannot take, and returns doc
// without them (keep false: leave this value out).
func check(errs *Errors, path string, doc any, t reflect.Type) (clean any, keep bool) {
	if doc == nil {
		return nil, true // null is a value every key takes
	}
	key := path
	if key == "" {
		key = "(document)"
	}
	if reads(t) {
		// The type reads itself (a duration, a network, a raw message):
		// its own error names the value.
		b, _ := json.Marshal(doc)
		if err := json.Unmarshal(b, reflect.New(t).Interface()); err != nil {
			*errs = append(*errs, &KeyError{Key: key, Problem: valueProblem(err, t, doc)})
			return nil, false
		}
		return doc, true
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Interface:
		return doc, true
	case reflect.Struct:
		obj, ok := doc.(map[string]any)
		if !ok {
			*errs = append(*errs, &KeyError{Key: key, Problem: "want an object, got JSON " + jsonKind(doc)})
			return nil, false
		}
		fields := jsonFields(t)
		out := map[string]any{}
		for _, k := range sortedKeys(obj) {
			ft, ok := fields[k]
			if !ok {
				ft, ok = foldField(fields, k)
			}
			if !ok {
				*errs = append(*errs, &KeyError{Key: join(path, k), Problem: "unknown key (misspelt?)"})
				continue
			}
			if c, keep := check(errs, join(path, k), obj[k], ft); keep {
				out[k] = c
			}
		}
		return out, true
	case reflect.Slice, reflect.Array:
		list, ok := doc.([]any)
		if !ok {
			if t.Elem().Kind() == reflect.Uint8 {
				if _, isStr := doc.(string); isStr {
					return checkLeaf(errs, key, doc, t) // []byte is base64
				}
			}
			*errs = append(*errs, &KeyError{Key: key, Problem: "want a list, got JSON " + jsonKind(doc)})
			return nil, false
		}
		out := make([]any, len(list))
		for i, e := range list {
			// A bad element stays as null, so the others keep their index.
			out[i], _ = check(errs, path+"["+strconv.Itoa(i)+"]", e, t.Elem())
		}
		return out, true
	case reflect.Map:
		obj, ok := doc.(map[string]any)
		if !ok {
			*errs = append(*errs, &KeyError{Key: key, Problem: "want an object, got JSON " + jsonKind(doc)})
			return nil, false
		}
		out := map[string]any{}
		for _, k := range sortedKeys(obj) {
			if c, keep := check(errs, join(path, k), obj[k], t.Elem()); keep {
				out[k] = c
			}
		}
		return out, true
	}
	return checkLeaf(errs, key, doc, t)
}

// checkLeaf tries one value into a new t.
func checkLeaf(errs *Errors, key string, doc any, t reflect.Type) (any, bool) {
	b, _ := json.Marshal(doc)
	if err := json.Unmarshal(b, reflect.New(t).Interface()); err != nil {
		*errs = append(*errs, &KeyError{Key: key, Problem: valueProblem(err, t, doc)})
		return nil, false
	}
	return doc, true
}

// reads says whether t (or *t) decodes itself.
func reads(t reflect.Type) bool {
	return t.Implements(unmarshaler) || t.Implements(textUnmarshaler) ||
		(t.Kind() != reflect.Pointer && (reflect.PointerTo(t).Implements(unmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)))
}

// valueProblem words a value's decoding error.
func valueProblem(err error, t reflect.Type, doc any) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		for te.Type != nil && te.Type.Kind() == reflect.Pointer {
			te.Type = te.Type.Elem()
		}
		if te.Type == nil {
			te.Type = t
		}
		return fmt.Sprintf("want %s, got JSON %s", typeName(te.Type), te.Value)
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "json: cannot unmarshal") {
		if j := strings.LastIndex(msg, ": "); j >= 0 {
			msg = msg[j+2:]
		}
	}
	return msg
}

func jsonKind(doc any) string {
	switch doc.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "bool"
	}
	return "null"
}

func sortedKeys(obj map[string]any) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func decodeError(b []byte, err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		line := 1 + bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n"))
		return &KeyError{Key: "(document)", Problem: fmt.Sprintf("line %d: %v", line, se)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &KeyError{Key: "(document)", Problem: "empty or cut-off document: want a JSON object"}
	}
	return &KeyError{Key: "(document)", Problem: valueProblem(err, nil, nil)}
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

var (
	unmarshaler     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// join names key k below path. A key that would not read as one (empty,
// or with a dot, bracket or space in it) is quoted.
func join(path, k string) string {
	if k == "" || strings.ContainsAny(k, ".[] \t\"") {
		k = strconv.Quote(k)
	}
	if path == "" {
		return k
	}
	return path + "." + k
}

// jsonFields maps a struct's JSON names to their types, embedded structs
// included, as encoding/json sees them.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, ok := out[k]; !ok {
						out[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// foldField finds a field the way encoding/json does when no name matches
// exactly: case-insensitively.
func foldField(fields map[string]reflect.Type, k string) (reflect.Type, bool) {
	for name, t := range fields {
		if strings.EqualFold(name, k) {
			return t, true
		}
	}
	return nil, false
}

// Unreadable says whether err from Decode means the document could not be
// read at all (a syntax error, not an object): then there is nothing to
// validate. Other Errors leave the decodable values in v, and a validator's
// findings belong beside them.
func Unreadable(err error) bool {
	var errs Errors
	if !errors.As(err, &errs) {
		return err != nil
	}
	for _, e := range errs {
		var ke *KeyError
		if errors.As(e, &ke) && ke.Key == "(document)" {
			return true
		}
	}
	return false
}

// Under says whether key is k or below it (k.x, k[0]): a value error
// found under a key whose value could not be decoded is a consequence, not
// a second problem.
func Under(key, k string) bool {
	return key == k || strings.HasPrefix(key, k+".") || strings.HasPrefix(key, k+"[")
}

// Merge appends to decoding errors the validator's, leaving out those
// under a key that could not be decoded.
func Merge(decoding, validation Errors) Errors {
	out := append(Errors(nil), decoding...)
	bad := decoding.Keys()
next:
	for _, e := range validation {
		var ke *KeyError
		if errors.As(e, &ke) {
			for _, k := range bad {
				if Under(ke.Key, k) {
					continue next
				}
			}
		}
		out = append(out, e)
	}
	return out
}
