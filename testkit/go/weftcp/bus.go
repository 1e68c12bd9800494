package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// connection holds the flags every NATS subcommand takes. The NATS ones are named as in the
// contract ("NATS authentication and TLS"), and a secret comes from a file, never from the
// command line.
type connection struct {
	url, prefix, pod string
	timeout          time.Duration
	nkey             string // file holding a user nkey seed (SU...)
	tlsCA            string // CA bundle the server's certificate must chain to
	tlsCert, tlsKey  string // client certificate and its key (mutual TLS)
}

func (c *connection) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "nats-url", "nats://127.0.0.1:4222", "NATS server URL (comma-separated for a cluster)")
	fs.StringVar(&c.nkey, "nats-nkey", "", "file holding a user nkey seed (SU...)")
	fs.StringVar(&c.tlsCA, "nats-tls-ca", "", "CA bundle (PEM) the server's certificate must chain to; TLS required")
	fs.StringVar(&c.tlsCert, "nats-tls-cert", "", "client certificate (PEM), with -nats-tls-key: mutual TLS")
	fs.StringVar(&c.tlsKey, "nats-tls-key", "", "the client certificate's key (PEM)")
	fs.StringVar(&c.prefix, "prefix", "weft", "subject prefix")
	fs.StringVar(&c.pod, "pod", "", "pod id (required)")
	fs.DurationVar(&c.timeout, "timeout", 20*time.Second, "how long to wait for the agent")
}

// check refuses a flag given without its pair, as the agent does.
func (c *connection) check(fs *flag.FlagSet) {
	switch {
	case c.tlsCert != "" && c.tlsKey == "":
		badFlag(fs, "-nats-tls-cert needs -nats-tls-key")
	case c.tlsKey != "" && c.tlsCert == "":
		badFlag(fs, "-nats-tls-key needs -nats-tls-cert")
	}
}

// connect opens a connection with the configured credentials. With a CA the connection must
// be TLS: nats.go refuses a server that does not offer it.
func (c *connection) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("weftcp"), nats.Timeout(c.timeout)}
	if c.nkey != "" {
		// nats.go reads the seed again for each signature and wipes it after; its errors
		// name the file, never quote it.
		opt, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, fmt.Errorf("-nats-nkey: %w", err)
		}
		opts = append(opts, opt)
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	nc, err := nats.Connect(c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.url, err)
	}
	return nc, nil
}

// request sends msg until the agent answers: until it has subscribed, NATS says there are no
// responders.
func (c *connection) request(msg *nats.Msg) (*nats.Msg, error) {
	nc, err := c.connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	deadline := time.Now().Add(c.timeout)
	for {
		reply, err := nc.RequestMsg(msg, 3*time.Second)
		if err == nil {
			return reply, checkHeaders(reply)
		}
		if time.Now().After(deadline) ||
			!(errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout)) {
			return nil, fmt.Errorf("request on %s: %w", msg.Subject, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
