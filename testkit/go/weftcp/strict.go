package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
)

// decodeStrict decodes what the agent wrote, refusing what a lenient decoder would let pass:
// a field the Go types do not have (DisallowUnknownFields), a field they have that is missing,
// `null` where the type has no way to say "none" (Go would quietly leave a zero value), and
// anything after the value.
func decodeStrict(body []byte, v interface{}) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data after the JSON value")
	}
	return everyField(body, reflect.TypeOf(v).Elem(), "")
}

func everyField(raw json.RawMessage, t reflect.Type, at string) error {
	isNull := bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
	if t.Kind() == reflect.Ptr {
		if isNull {
			return nil
		}
		return everyField(raw, t.Elem(), at)
	}
	if isNull {
		return fmt.Errorf("%s: null, expected a %s", name(at), t.Kind())
	}
	switch t.Kind() {
	case reflect.Slice:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return fmt.Errorf("%s: %v", name(at), err)
		}
		for i, item := range items {
			if err := everyField(item, t.Elem(), fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case reflect.Struct:
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil {
			return fmt.Errorf("%s: %v", name(at), err)
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := f.Tag.Get("json")
			path := key
			if at != "" {
				path = at + "." + key
			}
			value, ok := fields[key]
			if !ok {
				return fmt.Errorf("%s: missing", path)
			}
			if err := everyField(value, f.Type, path); err != nil {
				return err
			}
		}
	}
	return nil
}

func name(at string) string {
	if at == "" {
		return "(root)"
	}
	return at
}
