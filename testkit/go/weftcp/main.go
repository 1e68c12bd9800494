// weftcp: a small weft control plane in Go, for tests that weft speaks to Go as the contract
// says. It publishes specs as requests with the contract's headers (optionally signed), reads
// replies and statuses with a decoder that refuses unknown and missing fields, and exits
// non-zero on any mismatch.
//
//	weftcp apply  NATS -pod ID -spec FILE [-sign-key SEED_FILE] [-expect Applied] [-sent FILE]
//	weftcp status NATS -pod ID [-want-generation N] [-want-overall Healthy]
//	weftcp sign   -sign-key SEED_FILE -body FILE [-content-type CT] [-schema 1]
//
// NATS is -nats-url URL and the contract's NATS flags for who the client is (each secret in a
// file): -nats-nkey SEED_FILE, -nats-tls-ca FILE, -nats-tls-cert FILE with -nats-tls-key FILE.
//
// Exit status: 0 as expected, 1 a mismatch or failure (one line on stderr says which),
// 2 a bad command line.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "apply":
		err = apply(os.Args[2:])
	case "status":
		err = status(os.Args[2:])
	case "sign":
		err = sign(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftcp %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: weftcp apply|status|sign [flags] (-h for the flags)")
	os.Exit(2)
}

func parse(fs *flag.FlagSet, args []string, required map[string]*string) {
	fs.Parse(args) // ExitOnError: exits 2
	for name, value := range required {
		if *value == "" {
			badFlag(fs, "-"+name+" is required")
		}
	}
}

// badFlag ends a bad command line: one line, exit 2.
func badFlag(fs *flag.FlagSet, why string) {
	fmt.Fprintf(os.Stderr, "weftcp %s: %s\n", fs.Name(), why)
	os.Exit(2)
}

// checkHeaders: replies are encoded like a JSON request and always carry both headers.
func checkHeaders(m *nats.Msg) error {
	if got := m.Header.Get(headerContentType); got != contentTypeJSON {
		return fmt.Errorf("reply %s is %q, want %q", headerContentType, got, contentTypeJSON)
	}
	if got := m.Header.Get(headerSchema); got != schemaVersion {
		return fmt.Errorf("reply %s is %q, want %q", headerSchema, got, schemaVersion)
	}
	return nil
}

func apply(args []string) error {
	fs := flag.NewFlagSet("apply", flag.ExitOnError)
	var c connection
	c.flags(fs)
	specFile := fs.String("spec", "", "spec file, JSON (required); fields left out stay nil")
	contentType := fs.String("content-type", contentTypeJSON, "Content-Type header, as sent and signed")
	keyFile := fs.String("sign-key", "", "file holding the base64 of an Ed25519 seed: sign the spec")
	expect := fs.String("expect", "Applied", "the Result the reply must carry")
	sent := fs.String("sent", "", "write the exact body published to this file")
	parse(fs, args, map[string]*string{"pod": &c.pod, "spec": specFile})
	c.check(fs)
	if err := oneOf("-expect", *expect, results); err != nil {
		return err
	}

	text, err := os.ReadFile(*specFile)
	if err != nil {
		return err
	}
	var spec PodSpec
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("%s: %w", *specFile, err)
	}
	// As a Go control plane sends it: encoding/json, nil slices and pointers as null.
	body, err := json.Marshal(&spec)
	if err != nil {
		return err
	}
	if *sent != "" {
		if err := os.WriteFile(*sent, body, 0o644); err != nil {
			return err
		}
	}

	msg := nats.NewMsg(specSubject(c.prefix, c.pod))
	msg.Data = body
	msg.Header.Set(headerContentType, *contentType)
	msg.Header.Set(headerSchema, schemaVersion)
	if *keyFile != "" {
		key, err := readSeed(*keyFile)
		if err != nil {
			return err
		}
		k, s := signature(key, *contentType, schemaVersion, body)
		msg.Header.Set(headerKey, k)
		msg.Header.Set(headerSignature, s)
	}
	reply, err := c.request(msg)
	if err != nil {
		return err
	}
	var r ApplyReply
	if err := decodeStrict(reply.Data, &r); err != nil {
		return fmt.Errorf("reply %s: %w", reply.Data, err)
	}
	if err := oneOf("Result", r.Result, results); err != nil {
		return err
	}
	out, _ := json.Marshal(&r)
	fmt.Println(string(out))
	switch {
	case r.PodId != c.pod:
		return fmt.Errorf("reply for pod %q, want %q", r.PodId, c.pod)
	// A body refused before it was decoded (unsigned, under trust keys) is answered with
	// Generation 0, as the contract says.
	case r.Generation != spec.Generation && !(r.Result == "Rejected" && r.Generation == 0):
		return fmt.Errorf("reply for generation %d, want %d", r.Generation, spec.Generation)
	case r.Result != *expect:
		return fmt.Errorf("result %s (%q), want %s", r.Result, r.Error, *expect)
	}
	return nil
}

func status(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	var c connection
	c.flags(fs)
	wantGeneration := fs.Int64("want-generation", -1, "the ObservedGeneration the status must carry")
	wantOverall := fs.String("want-overall", "", "the Overall the status must carry")
	parse(fs, args, map[string]*string{"pod": &c.pod})
	c.check(fs)

	msg := nats.NewMsg(statusGetSubject(c.prefix, c.pod))
	msg.Header.Set(headerContentType, contentTypeJSON)
	msg.Header.Set(headerSchema, schemaVersion)
	reply, err := c.request(msg)
	if err != nil {
		return err
	}
	var s PodStatus
	if err := decodeStrict(reply.Data, &s); err != nil {
		return fmt.Errorf("status %s: %w", reply.Data, err)
	}
	if err := s.check(); err != nil {
		return err
	}
	out, _ := json.Marshal(&s)
	fmt.Println(string(out))
	switch {
	case s.PodId != c.pod:
		return fmt.Errorf("status of pod %q, want %q", s.PodId, c.pod)
	case *wantGeneration >= 0 && s.ObservedGeneration != uint64(*wantGeneration):
		return fmt.Errorf("ObservedGeneration %d, want %d", s.ObservedGeneration, *wantGeneration)
	case *wantOverall != "" && s.Overall != *wantOverall:
		return fmt.Errorf("Overall %s (%q), want %s", s.Overall, s.LastError, *wantOverall)
	}
	return nil
}

// sign prints the two signature headers for a body, for test vectors.
func sign(args []string) error {
	fs := flag.NewFlagSet("sign", flag.ExitOnError)
	keyFile := fs.String("sign-key", "", "file holding the base64 of an Ed25519 seed (required)")
	bodyFile := fs.String("body", "", "the body, as sent (required)")
	contentType := fs.String("content-type", contentTypeJSON, "Content-Type header, as sent")
	schema := fs.String("schema", schemaVersion, "Weft-Schema header, as sent")
	parse(fs, args, map[string]*string{"sign-key": keyFile, "body": bodyFile})
	key, err := readSeed(*keyFile)
	if err != nil {
		return err
	}
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		return err
	}
	k, s := signature(key, *contentType, *schema, body)
	fmt.Printf("%s: %s\n%s: %s\n", headerKey, k, headerSignature, s)
	return nil
}
