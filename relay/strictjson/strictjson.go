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
// It returns nil or Errors: a syntax error (with its line), every unknown
// key with its path, and every value of the wrong type with its path.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		var errs Errors
		errs = append(errs, decodeError(b, err))
		// A type error stops encoding/json; unknown keys are still worth
		// listing alongside it.
		if _, ok := err.(*json.UnmarshalTypeError); ok {
			errs = append(errs, unknownKeys(b, v)...)
		}
		return errs
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errors{&KeyError{Key: "(document)", Problem: "extra data after the JSON object"}}
	}
	if errs := unknownKeys(b, v); len(errs) > 0 {
		return errs
	}
	return nil
}

func decodeError(b []byte, err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		key := te.Field
		if key == "" {
			key = "(document)"
		}
		return &KeyError{Key: key, Problem: fmt.Sprintf("want %s, got JSON %s", typeName(te.Type), te.Value)}
	case errors.As(err, &se):
		line := 1 + bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n"))
		return &KeyError{Key: "(document)", Problem: fmt.Sprintf("line %d: %v", line, se)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &KeyError{Key: "(document)", Problem: "empty or cut-off document: want a JSON object"}
	}
	// Errors from a type's own UnmarshalJSON (a duration, a network) keep
	// their message: it names the value.
	msg := err.Error()
	if i := strings.Index(msg, ": "); strings.HasPrefix(msg, "json: cannot unmarshal") && i >= 0 {
		if j := strings.LastIndex(msg, ": "); j > i {
			msg = msg[j+2:]
		}
	}
	return &KeyError{Key: "(document)", Problem: msg}
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

// unknownKeys walks the document beside the type it decodes into and names
// every object key the type has no field for.
func unknownKeys(b []byte, v any) Errors {
	var doc any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if d.Decode(&doc) != nil {
		return nil
	}
	var errs Errors
	walk(&errs, "", doc, reflect.TypeOf(v))
	return errs
}

func walk(errs *Errors, path string, doc any, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		if t.Implements(unmarshaler) || t.Implements(textUnmarshaler) {
			return
		}
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return // the type reads itself
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := doc.(map[string]any)
		if !ok {
			return
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				ft, ok = foldField(fields, k)
			}
			key := join(path, k)
			if !ok {
				*errs = append(*errs, &KeyError{Key: key, Problem: "unknown key (misspelt?)"})
				continue
			}
			walk(errs, key, obj[k], ft)
		}
	case reflect.Slice, reflect.Array:
		list, ok := doc.([]any)
		if !ok {
			return
		}
		for i, e := range list {
			walk(errs, path+"["+strconv.Itoa(i)+"]", e, t.Elem())
		}
	case reflect.Map:
		obj, ok := doc.(map[string]any)
		if !ok {
			return
		}
		for k, e := range obj {
			walk(errs, join(path, k), e, t.Elem())
		}
	}
}

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
