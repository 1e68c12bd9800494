package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// signedBytes is the contract's signing rule ("Signed specs"): the header values exactly as
// sent, so no canonical JSON is needed.
func signedBytes(contentType, schema string, body []byte) []byte {
	msg := []byte("weft-spec-v1\n" + contentType + "\n" + schema + "\n")
	return append(msg, body...)
}

// signature returns the Weft-Key and Weft-Signature header values.
func signature(key ed25519.PrivateKey, contentType, schema string, body []byte) (string, string) {
	public := key.Public().(ed25519.PublicKey)
	sig := ed25519.Sign(key, signedBytes(contentType, schema, body))
	return base64.StdEncoding.EncodeToString(public), base64.StdEncoding.EncodeToString(sig)
}

// readSeed reads a file holding the base64 of a 32-byte Ed25519 seed. The seed is a secret:
// no error quotes it.
func readSeed(path string) (ed25519.PrivateKey, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not the base64 of a %d-byte Ed25519 seed", path, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
