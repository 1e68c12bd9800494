//! Bad inputs and the exact error each must give. Every case goes through what the agent does
//! with an inbound spec (headers, decode, validate, see `support::accept`), and the message is
//! the line that ends up in `ApplyReply.Error`: it must name the field and say what is wrong.

mod support;

use support::*;
use weft_schema::codec::MAX_BODY_BYTES;
use weft_schema::validate::limits;
use weft_schema::{Encoding, PodSpec};

const JSON: Option<&str> = Some("application/json");
const BINCODE: Option<&str> = Some("application/x-bincode");

/// One bad input.
struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    schema: Option<&'static str>,
    body: Vec<u8>,
    /// The whole error line.
    error: String,
}

fn json(name: &'static str, body: &str, error: &str) -> Case {
    Case {
        name,
        content_type: None,
        schema: None,
        body: body.as_bytes().to_vec(),
        error: error.to_owned(),
    }
}

fn with_headers(
    name: &'static str,
    content_type: Option<&'static str>,
    schema: Option<&'static str>,
    body: Vec<u8>,
    error: &str,
) -> Case {
    Case {
        name,
        content_type,
        schema,
        body,
        error: error.to_owned(),
    }
}

/// A spec with only `Network` set to `network` (a JSON object body).
fn network(network: &str) -> String {
    format!(r#"{{"PodId":"web-1","Generation":1,"Network":{network}}}"#)
}

/// A spec with one ingress rule.
fn ingress(rule: &str) -> String {
    format!(r#"{{"PodId":"web-1","Generation":1,"Firewall":{{"Ingress":[{rule}]}}}}"#)
}

/// A spec with one egress rule.
fn egress(rule: &str) -> String {
    format!(r#"{{"PodId":"web-1","Generation":1,"Firewall":{{"Egress":[{rule}]}}}}"#)
}

/// A spec with `WireGuard` set to `{"Interface":"wg0","Address":"10.9.0.1/24",<fields>}`.
fn wireguard(fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { "," };
    format!(
        r#"{{"PodId":"web-1","Generation":1,"WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24"{sep}{fields}}}}}"#
    )
}

/// A spec with one peer: `{"PublicKey":<key 1>,<fields>}`.
fn peer(fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { "," };
    wireguard(&format!(
        r#""Peers":[{{"PublicKey":"{}"{sep}{fields}}}]"#,
        public_key(1)
    ))
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(","))
}

fn cases() -> Vec<Case> {
    let minimal_bincode = Encoding::Bincode.encode(&minimal_spec());
    let key16 = "AAAAAAAAAAAAAAAAAAAAAA=="; // base64 of 16 bytes
    let comment_129 = "x".repeat(129);
    let comment_euro = "\u{20ac}".repeat(43); // 129 bytes in 43 characters
    vec![
        // Headers.
        with_headers(
            "unknown content type",
            Some("text/plain"),
            None,
            br#"{"PodId":"web-1","Generation":1}"#.to_vec(),
            r#"unsupported Content-Type "text/plain" (application/json or application/x-bincode)"#,
        ),
        with_headers(
            "near-miss content type",
            Some("application/bincode"),
            None,
            minimal_bincode.clone(),
            r#"unsupported Content-Type "application/bincode" (application/json or application/x-bincode)"#,
        ),
        with_headers(
            "empty content type",
            Some(""),
            None,
            br#"{"PodId":"web-1","Generation":1}"#.to_vec(),
            r#"unsupported Content-Type "" (application/json or application/x-bincode)"#,
        ),
        with_headers(
            "schema version 2",
            JSON,
            Some("2"),
            br#"{"PodId":"web-1","Generation":1}"#.to_vec(),
            r#"unsupported Weft-Schema "2" (this agent speaks 1)"#,
        ),
        with_headers(
            "schema version not a number",
            JSON,
            Some("v1"),
            br#"{"PodId":"web-1","Generation":1}"#.to_vec(),
            r#"unsupported Weft-Schema "v1" (this agent speaks 1)"#,
        ),
        // Bodies that do not decode.
        json(
            "truncated JSON",
            r#"{"PodId":"web-1","#,
            "invalid JSON at ?: EOF while parsing a value at line 1 column 17",
        ),
        json(
            "empty JSON body",
            "",
            "invalid JSON: EOF while parsing a value at line 1 column 0",
        ),
        json(
            "JSON array instead of object",
            "[]",
            "invalid JSON at .: an object with field names is expected, not an array",
        ),
        with_headers(
            "JSON not UTF-8",
            None,
            None,
            b"{\"PodId\":\"web-\xff\",\"Generation\":1}".to_vec(),
            "invalid JSON at PodId: invalid unicode code point at line 1 column 15",
        ),
        json(
            "JSON trailing value",
            r#"{"PodId":"web-1","Generation":1} {}"#,
            "invalid JSON: trailing characters at line 1 column 34",
        ),
        json(
            "unknown field Source for Sources",
            &ingress(r#"{"Protocol":"tcp","Source":["198.51.100.0/24"]}"#),
            "invalid JSON at Firewall.Ingress[0].Source: unknown field `Source`, expected one of \
             `Protocol`, `Ports`, `Sources`, `Comment` at line 1 column 81",
        ),
        json(
            "Destinations in an ingress rule",
            &ingress(r#"{"Destinations":["198.51.100.0/24"]}"#),
            "invalid JSON at Firewall.Ingress[0].Destinations: unknown field `Destinations`, expected \
             one of `Protocol`, `Ports`, `Sources`, `Comment` at line 1 column 70",
        ),
        json(
            "field name in the wrong case",
            r#"{"PodId":"web-1","Generation":1,"Wireguard":null}"#,
            "invalid JSON at Wireguard: unknown field `Wireguard`, expected one of `PodId`, \
             `Generation`, `NotAfterUnix`, `Network`, `Firewall`, `WireGuard` at line 1 column 43",
        ),
        json(
            "missing PodId",
            r#"{"Generation":1}"#,
            "invalid JSON: missing field `PodId` at line 1 column 16",
        ),
        json(
            "missing Generation",
            r#"{"PodId":"web-1"}"#,
            "invalid JSON: missing field `Generation` at line 1 column 17",
        ),
        json(
            "duplicate field",
            r#"{"PodId":"web-1","PodId":"web-1","Generation":1}"#,
            "invalid JSON: duplicate field `PodId` at line 1 column 24",
        ),
        json(
            "Generation as a string",
            r#"{"PodId":"web-1","Generation":"7"}"#,
            r#"invalid JSON at Generation: invalid type: string "7", expected u64 at line 1 column 33"#,
        ),
        json(
            "negative Generation",
            r#"{"PodId":"web-1","Generation":-1}"#,
            "invalid JSON at Generation: invalid value: integer `-1`, expected u64 at line 1 \
             column 32",
        ),
        json(
            "Mtu as a float",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Mtu":1500.0}"#),
            "invalid JSON at Network.Mtu: invalid type: floating point `1500.0`, expected u32 \
             at line 1 column 99",
        ),
        json(
            "port as a number",
            &ingress(r#"{"Protocol":"tcp","Ports":[22]}"#),
            "invalid JSON at Firewall.Ingress[0].Ports[0]: invalid type: integer `22`, \
             expected a string at line 1 column 84",
        ),
        // `null` means "left out" (contract v1.1); for a required field that is an error
        // naming it, and a list may be null but not hold one.
        json(
            "PodId null",
            r#"{"PodId":null,"Generation":1}"#,
            "invalid JSON at PodId: invalid type: null, expected a string at line 1 column 13",
        ),
        json(
            "Generation null",
            r#"{"PodId":"web-1","Generation":null}"#,
            "invalid JSON at Generation: invalid type: null, expected u64 at line 1 column 34",
        ),
        json(
            "Network.Address null",
            &network(r#"{"Interface":"eth0","Address":null}"#),
            "invalid JSON at Network.Address: invalid type: null, expected a string at line 1 \
             column 76",
        ),
        json(
            "WireGuard.Interface null",
            r#"{"PodId":"web-1","Generation":1,"WireGuard":{"Interface":null,"Address":"10.9.0.1/24"}}"#,
            "invalid JSON at WireGuard.Interface: invalid type: null, expected a string at line 1 \
             column 61",
        ),
        json(
            "peer PublicKey null",
            &wireguard(r#""Peers":[{"PublicKey":null}]"#),
            "invalid JSON at WireGuard.Peers[0].PublicKey: invalid type: null, expected a string \
             at line 1 column 113",
        ),
        json(
            "null in a list",
            &ingress(r#"{"Protocol":"tcp","Ports":["22",null]}"#),
            "invalid JSON at Firewall.Ingress[0].Ports[1]: invalid type: null, expected a string \
             at line 1 column 91",
        ),
        json(
            "null rule",
            &ingress("null"),
            "invalid JSON at Firewall.Ingress[0]: invalid type: null, expected struct IngressRule \
             at line 1 column 59",
        ),
        json(
            "null peer",
            &wireguard(r#""Peers":[null]"#),
            "invalid JSON at WireGuard.Peers[0]: invalid type: null, expected struct PeerSpec at \
             line 1 column 100",
        ),
        json(
            "null body",
            "null",
            "invalid JSON: invalid type: null, expected struct PodSpec at line 1 column 4",
        ),
        // Bincode bodies.
        with_headers(
            "bincode garbage",
            BINCODE,
            None,
            vec![0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "invalid bincode: UnexpectedEnd { additional: 65529 }",
        ),
        with_headers(
            "empty bincode body",
            BINCODE,
            None,
            vec![],
            "invalid bincode: UnexpectedEnd { additional: 1 }",
        ),
        with_headers(
            "bincode truncated",
            BINCODE,
            None,
            minimal_bincode[..minimal_bincode.len() - 1].to_vec(),
            "invalid bincode: UnexpectedEnd { additional: 1 }",
        ),
        with_headers(
            "bincode trailing bytes",
            BINCODE,
            None,
            [minimal_bincode.as_slice(), &[0, 0]].concat(),
            "2 bytes after the bincode value",
        ),
        with_headers(
            "bincode Option tag 2",
            BINCODE,
            None,
            b"\x05web-1\x01\x02\x00\x00".to_vec(),
            "invalid bincode: UnexpectedVariant { type_name: \"Option<T>\", allowed: Range { min: 0, \
             max: 1 }, found: 2 }",
        ),
        with_headers(
            "bincode string not UTF-8",
            BINCODE,
            None,
            b"\x05web-\xff\x01\x00\x00\x00".to_vec(),
            "invalid bincode: Utf8 { inner: Utf8Error { valid_up_to: 4, error_len: Some(1) } }: \
             invalid utf-8 sequence of 1 bytes from index 4",
        ),
        with_headers(
            "JSON body sent as bincode",
            BINCODE,
            None,
            br#"{"PodId":"web-1","Generation":1}"#.to_vec(),
            "invalid bincode: UnexpectedEnd { additional: 92 }",
        ),
        with_headers(
            "body over 16 MiB",
            JSON,
            None,
            vec![b' '; MAX_BODY_BYTES + 1],
            "body of 16777217 bytes, at most 16777216",
        ),
        // PodId and Generation.
        json(
            "another pod's spec",
            r#"{"PodId":"web-2","Generation":1}"#,
            "PodId: web-2 is not this agent's pod (web-1)",
        ),
        json(
            "pod id with a dot",
            r#"{"PodId":"web.1","Generation":1}"#,
            r#"PodId: "web.1" has '.'; only A-Z a-z 0-9 _ - are allowed"#,
        ),
        json(
            "empty pod id",
            r#"{"PodId":"","Generation":1}"#,
            r#"PodId: "" must be 1 to 63 characters"#,
        ),
        json(
            "pod id of 64 characters",
            &format!(r#"{{"PodId":"{}","Generation":1}}"#, "p".repeat(64)),
            &format!(r#"PodId: "{}" must be 1 to 63 characters"#, "p".repeat(64)),
        ),
        json(
            "generation past u64",
            r#"{"PodId":"web-1","Generation":18446744073709551616}"#,
            "invalid JSON at Generation: invalid type: floating point `1.8446744073709552e+19`, \
             expected u64 at line 1 column 50",
        ),
        json(
            "generation 0",
            r#"{"PodId":"web-1","Generation":0}"#,
            "Generation: must be at least 1 (0 means nothing applied)",
        ),
        // Network.
        json(
            "interface name of 16 characters",
            &network(r#"{"Interface":"eth0123456789abc","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: "eth0123456789abc" is not an interface name (1-15 characters)"#,
        ),
        json(
            "empty interface name",
            &network(r#"{"Interface":"","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: "" is not an interface name (1-15 characters)"#,
        ),
        json(
            "interface name with a slash",
            &network(r#"{"Interface":"eth/0","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: "eth/0" is not an interface name (has '/')"#,
        ),
        json(
            "interface name with a colon",
            &network(r#"{"Interface":"eth0:1","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: "eth0:1" is not an interface name (has ':')"#,
        ),
        json(
            "interface name with a space",
            &network(r#"{"Interface":"eth 0","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: "eth 0" is not an interface name (has ' ')"#,
        ),
        json(
            "interface name ..",
            &network(r#"{"Interface":"..","Address":"192.0.2.5/24"}"#),
            r#"Network.Interface: ".." is not an interface name"#,
        ),
        json(
            "address without a prefix",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5"}"#),
            r#"Network.Address: "192.0.2.5" is not a CIDR with its prefix (10.0.0.5/24)"#,
        ),
        json(
            "address prefix too long",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/33"}"#),
            r#"Network.Address: "192.0.2.5/33" is not a CIDR with its prefix (10.0.0.5/24)"#,
        ),
        json(
            "IPv6 pod address",
            &network(r#"{"Interface":"eth0","Address":"2001:db8::5/64"}"#),
            r#"Network.Address: "2001:db8::5/64" is not IPv4 (an IPv6 address goes in Address6)"#,
        ),
        // Network.Address6 and Gateway6 (v1.1).
        json(
            "IPv4 in Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"192.0.2.6/24"}"#),
            r#"Network.Address6: "192.0.2.6/24" is not IPv6 (the IPv4 address goes in Address)"#,
        ),
        json(
            "Address6 without its prefix",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5"}"#),
            r#"Network.Address6: "2001:db8::5" is not an IPv6 CIDR with its prefix (2001:db8::5/64)"#,
        ),
        json(
            "Address6 prefix too long",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5/129"}"#),
            r#"Network.Address6: "2001:db8::5/129" is not an IPv6 CIDR with its prefix (2001:db8::5/64)"#,
        ),
        json(
            "link-local Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"fe80::5/64"}"#),
            r#"Network.Address6: "fe80::5/64" is link-local (the kernel keeps the link-local address; Address6 is the global one)"#,
        ),
        json(
            "multicast Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"ff02::5/64"}"#),
            r#"Network.Address6: "ff02::5/64" is multicast"#,
        ),
        json(
            "loopback Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"::1/128"}"#),
            r#"Network.Address6: "::1/128" is not a unicast address"#,
        ),
        json(
            "IPv4-mapped Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"::ffff:192.0.2.6/120"}"#),
            r#"Network.Address6: "::ffff:192.0.2.6/120" is IPv4-mapped (an IPv4 address goes in Address or Gateway)"#,
        ),
        json(
            "IPv4 in Gateway6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5/64","Gateway6":"192.0.2.1"}"#),
            r#"Network.Gateway6: "192.0.2.1" is not an IPv6 address (the IPv4 gateway goes in Gateway)"#,
        ),
        json(
            "Gateway6 with a prefix",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5/64","Gateway6":"fe80::1/64"}"#),
            r#"Network.Gateway6: "fe80::1/64" is not an IPv6 address"#,
        ),
        json(
            "multicast Gateway6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5/64","Gateway6":"ff02::2"}"#),
            r#"Network.Gateway6: "ff02::2" is multicast"#,
        ),
        json(
            "unspecified Gateway6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Address6":"2001:db8::5/64","Gateway6":"::"}"#),
            r#"Network.Gateway6: "::" is not a unicast address"#,
        ),
        json(
            "Gateway6 without Address6",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Gateway6":"fe80::1"}"#),
            "Network.Gateway6: needs Network.Address6 (without a global IPv6 address there is nothing to route)",
        ),
        json(
            "IPv6 gateway",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Gateway":"2001:db8::1"}"#),
            r#"Network.Gateway: "2001:db8::1" is not an IPv4 address"#,
        ),
        json(
            "gateway with a prefix",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Gateway":"192.0.2.1/24"}"#),
            r#"Network.Gateway: "192.0.2.1/24" is not an IPv4 address"#,
        ),
        json(
            "MTU below 576",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Mtu":575}"#),
            "Network.Mtu: 575 is not an MTU (576-65535)",
        ),
        json(
            "MTU above 65535",
            &network(r#"{"Interface":"eth0","Address":"192.0.2.5/24","Mtu":65536}"#),
            "Network.Mtu: 65536 is not an MTU (576-65535)",
        ),
        json(
            "nameserver host name",
            &network(
                r#"{"Interface":"eth0","Address":"192.0.2.5/24","Nameservers":["dns.example"]}"#,
            ),
            r#"Network.Nameservers[0]: "dns.example" is not an IP address"#,
        ),
        json(
            "nameserver with a port",
            &network(
                r#"{"Interface":"eth0","Address":"192.0.2.5/24","Nameservers":["192.0.2.53:53"]}"#,
            ),
            r#"Network.Nameservers[0]: "192.0.2.53:53" is not an IP address"#,
        ),
        json(
            "four nameservers",
            &network(&format!(
                r#"{{"Interface":"eth0","Address":"192.0.2.5/24","Nameservers":{}}}"#,
                list((1..=4).map(|i| format!("192.0.2.{i}")))
            )),
            "Network.Nameservers: 4 entries, at most 3",
        ),
        json(
            "seven search domains",
            &network(&format!(
                r#"{{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":{}}}"#,
                list((1..=7).map(|i| format!("d{i}.example")))
            )),
            "Network.SearchDomains: 7 entries, at most 6",
        ),
        json(
            "search domain with a space",
            &network(
                r#"{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":["pods example"]}"#,
            ),
            r#"Network.SearchDomains[0]: "pods example" is not a DNS name"#,
        ),
        json(
            "search domain with a newline",
            &network(
                r#"{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":["a\nnameserver 203.0.113.66"]}"#,
            ),
            r#"Network.SearchDomains[0]: "a\nnameserver 203.0.113.66" is not a DNS name"#,
        ),
        json(
            "search domain with an empty label",
            &network(
                r#"{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":["pods..example"]}"#,
            ),
            r#"Network.SearchDomains[0]: "pods..example" is not a DNS name"#,
        ),
        // Firewall rules.
        json(
            "protocol in capitals",
            &ingress(r#"{"Protocol":"TCP"}"#),
            r#"Firewall.Ingress[0].Protocol: "TCP" is not a protocol (tcp, udp, icmp, icmpv6 or any)"#,
        ),
        json(
            "unknown protocol",
            &egress(r#"{"Protocol":"sctp"}"#),
            r#"Firewall.Egress[0].Protocol: "sctp" is not a protocol (tcp, udp, icmp, icmpv6 or any)"#,
        ),
        json(
            "ports on icmp",
            &ingress(r#"{"Protocol":"icmp","Ports":["8"]}"#),
            "Firewall.Ingress[0].Ports: ports need protocol tcp or udp, not icmp",
        ),
        json(
            "ports without a protocol (any)",
            &ingress(r#"{"Ports":["22"]}"#),
            "Firewall.Ingress[0].Ports: ports need protocol tcp or udp, not any",
        ),
        json(
            "port 0",
            &ingress(r#"{"Protocol":"tcp","Ports":["0"]}"#),
            "Firewall.Ingress[0].Ports[0]: 0 is not a port (1-65535)",
        ),
        json(
            "port 70000",
            &ingress(r#"{"Protocol":"udp","Ports":["53","70000"]}"#),
            "Firewall.Ingress[0].Ports[1]: 70000 is not a port (1-65535)",
        ),
        json(
            "range ending past 65535",
            &egress(r#"{"Protocol":"tcp","Ports":["1000-65536"]}"#),
            "Firewall.Egress[0].Ports[0]: 65536 is not a port (1-65535)",
        ),
        json(
            "reversed range",
            &ingress(r#"{"Protocol":"tcp","Ports":["8080-8000"]}"#),
            r#"Firewall.Ingress[0].Ports[0]: "8080-8000" is an empty range (start after end)"#,
        ),
        json(
            "port by name",
            &ingress(r#"{"Protocol":"tcp","Ports":["http"]}"#),
            r#"Firewall.Ingress[0].Ports[0]: "http" is not a port or range ("N" or "N-M")"#,
        ),
        json(
            "open-ended range",
            &ingress(r#"{"Protocol":"tcp","Ports":["1024-"]}"#),
            r#"Firewall.Ingress[0].Ports[0]: "1024-" is not a port or range ("N" or "N-M")"#,
        ),
        json(
            "port with a sign",
            &ingress(r#"{"Protocol":"tcp","Ports":["+22"]}"#),
            r#"Firewall.Ingress[0].Ports[0]: "+22" is not a port or range ("N" or "N-M")"#,
        ),
        json(
            "range with spaces",
            &ingress(r#"{"Protocol":"tcp","Ports":["1000 - 2000"]}"#),
            r#"Firewall.Ingress[0].Ports[0]: "1000 - 2000" is not a port or range ("N" or "N-M")"#,
        ),
        json(
            "source prefix too long",
            &ingress(r#"{"Sources":["198.51.100.0/33"]}"#),
            r#"Firewall.Ingress[0].Sources[0]: "198.51.100.0/33" is not an IP address or CIDR"#,
        ),
        json(
            "source host name",
            &ingress(r#"{"Sources":["198.51.100.0/24","db.example"]}"#),
            r#"Firewall.Ingress[0].Sources[1]: "db.example" is not an IP address or CIDR"#,
        ),
        json(
            "destination with a port",
            &egress(r#"{"Destinations":["203.0.113.5:443"]}"#),
            r#"Firewall.Egress[0].Destinations[0]: "203.0.113.5:443" is not an IP address or CIDR"#,
        ),
        json(
            "icmp with IPv6 sources",
            &ingress(r#"{"Protocol":"icmp","Sources":["198.51.100.0/24","2001:db8::/32"]}"#),
            "Firewall.Ingress[0].Sources: protocol icmp matches IPv4 only, but IPv6 addresses \
             are named (use icmpv6)",
        ),
        json(
            "icmpv6 with IPv4 destinations",
            &egress(r#"{"Protocol":"icmpv6","Destinations":["203.0.113.0/24"]}"#),
            "Firewall.Egress[0].Destinations: protocol icmpv6 matches IPv6 only, but IPv4 \
             addresses are named (use icmp)",
        ),
        json(
            "comment of 129 bytes",
            &ingress(&format!(r#"{{"Comment":"{comment_129}"}}"#)),
            "Firewall.Ingress[0].Comment: 129 bytes, at most 128",
        ),
        json(
            "comment of 43 characters but 129 bytes",
            &egress(&format!(r#"{{"Comment":"{comment_euro}"}}"#)),
            "Firewall.Egress[0].Comment: 129 bytes, at most 128",
        ),
        json(
            "comment with a newline",
            &ingress(r#"{"Comment":"ssh\nrule"}"#),
            "Firewall.Ingress[0].Comment: has control characters",
        ),
        // WireGuard.
        json(
            "wireguard interface with a space",
            r#"{"PodId":"web-1","Generation":1,"WireGuard":{"Interface":"wg 0","Address":"10.9.0.1/24"}}"#,
            r#"WireGuard.Interface: "wg 0" is not an interface name (has ' ')"#,
        ),
        json(
            "wireguard address without a prefix",
            r#"{"PodId":"web-1","Generation":1,"WireGuard":{"Interface":"wg0","Address":"10.9.0.1"}}"#,
            r#"WireGuard.Address: "10.9.0.1" is not a CIDR with its prefix (10.9.0.1/24)"#,
        ),
        json(
            "listen port 0",
            &wireguard(r#""ListenPort":0"#),
            "WireGuard.ListenPort: 0 is not a port (1-65535)",
        ),
        json(
            "listen port 70000",
            &wireguard(r#""ListenPort":70000"#),
            "WireGuard.ListenPort: 70000 is not a port (1-65535)",
        ),
        json(
            "wireguard MTU 100",
            &wireguard(r#""Mtu":100"#),
            "WireGuard.Mtu: 100 is not an MTU (576-65535)",
        ),
        json(
            "private key not base64",
            &wireguard(r#""PrivateKey":"not a key!""#),
            "WireGuard.PrivateKey: not a key: not base64",
        ),
        json(
            "private key of 16 bytes",
            &wireguard(&format!(r#""PrivateKey":"{key16}""#)),
            "WireGuard.PrivateKey: not a key: 16 bytes, a key is 32",
        ),
        json(
            "public key not base64",
            &wireguard(r#""Peers":[{"PublicKey":"abc$"}]"#),
            r#"WireGuard.Peers[0].PublicKey: "abc$" is not a key: not base64"#,
        ),
        json(
            "public key of 16 bytes",
            &wireguard(&format!(r#""Peers":[{{"PublicKey":"{key16}"}}]"#)),
            &format!(r#"WireGuard.Peers[0].PublicKey: "{key16}" is not a key: 16 bytes, a key is 32"#),
        ),
        json(
            "preshared key of 16 bytes",
            &peer(&format!(r#""PresharedKey":"{key16}""#)),
            "WireGuard.Peers[0].PresharedKey: not a key: 16 bytes, a key is 32",
        ),
        json(
            "endpoint host name",
            &peer(r#""Endpoint":"vpn.example:51820""#),
            r#"WireGuard.Peers[0].Endpoint: "vpn.example:51820" is not IP:port or [IPv6]:port (host names are not resolved)"#,
        ),
        json(
            "endpoint without a port",
            &peer(r#""Endpoint":"203.0.113.10""#),
            r#"WireGuard.Peers[0].Endpoint: "203.0.113.10" is not IP:port or [IPv6]:port (host names are not resolved)"#,
        ),
        json(
            "IPv6 endpoint without brackets",
            &peer(r#""Endpoint":"2001:db8::10:51820""#),
            r#"WireGuard.Peers[0].Endpoint: "2001:db8::10:51820" is not IP:port or [IPv6]:port (host names are not resolved)"#,
        ),
        json(
            "endpoint port 0",
            &peer(r#""Endpoint":"203.0.113.10:0""#),
            r#"WireGuard.Peers[0].Endpoint: "203.0.113.10:0" has port 0"#,
        ),
        json(
            "keepalive over 65535",
            &peer(r#""PersistentKeepaliveSeconds":65536"#),
            "WireGuard.Peers[0].PersistentKeepaliveSeconds: 65536 is more than 65535",
        ),
        json(
            "allowed IP not a CIDR",
            &peer(r#""AllowedIps":["10.9.0.2/32","10.9.0.300/32"]"#),
            r#"WireGuard.Peers[0].AllowedIps[1]: "10.9.0.300/32" is not an IP address or CIDR"#,
        ),
        json(
            "duplicate peers",
            &wireguard(&format!(
                r#""Peers":[{{"PublicKey":"{a}"}},{{"PublicKey":"{b}"}},{{"PublicKey":"{a}"}}]"#,
                a = public_key(1),
                b = public_key(2)
            )),
            "WireGuard.Peers[2].PublicKey: the same key as Peers[0]",
        ),
        // WireGuard.DefaultRoute (v1.1): the endpoints need a way out.
        json(
            "DefaultRoute without Network",
            &wireguard(r#""DefaultRoute":true"#),
            "WireGuard.DefaultRoute: needs a Network section: the peers' endpoints stay reachable via its gateway",
        ),
        json(
            "DefaultRoute with an IPv4 endpoint and no Gateway",
            &format!(
                r#"{{"PodId":"web-1","Generation":1,
                    "Network":{{"Interface":"eth0","Address":"192.0.2.5/24"}},
                    "WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24","DefaultRoute":true,
                        "Peers":[{{"PublicKey":"{}","Endpoint":"203.0.113.10:51820","AllowedIps":["0.0.0.0/0"]}}]}}}}"#,
                public_key(1)
            ),
            "WireGuard.Peers[0].Endpoint: with DefaultRoute the endpoint 203.0.113.10:51820 is reached via Network.Gateway, which is not set",
        ),
        json(
            "DefaultRoute with an IPv6 endpoint and no Gateway6",
            &format!(
                r#"{{"PodId":"web-1","Generation":1,
                    "Network":{{"Interface":"eth0","Address":"192.0.2.5/24","Gateway":"192.0.2.1"}},
                    "WireGuard":{{"Interface":"wg0","Address":"10.9.0.1/24","DefaultRoute":true,
                        "Peers":[{{"PublicKey":"{}","Endpoint":"203.0.113.10:51820"}},
                                 {{"PublicKey":"{}","Endpoint":"[2001:db8::10]:51820"}}]}}}}"#,
                public_key(1),
                public_key(2)
            ),
            "WireGuard.Peers[1].Endpoint: with DefaultRoute the endpoint [2001:db8::10]:51820 is reached via Network.Gateway6, which is not set",
        ),
        json(
            "DefaultRoute not a boolean",
            &wireguard(r#""DefaultRoute":"yes""#),
            "invalid JSON at WireGuard.DefaultRoute: invalid type: string \"yes\", expected a boolean at line 1 column 107",
        ),
        json(
            "wireguard on the pod interface",
            r#"{"PodId":"web-1","Generation":1,
                "Network":{"Interface":"eth0","Address":"192.0.2.5/24"},
                "WireGuard":{"Interface":"eth0","Address":"10.9.0.1/24"}}"#,
            "WireGuard.Interface: eth0 is already Network.Interface",
        ),
        // Every problem is reported, not just the first.
        json(
            "several errors at once",
            r#"{"PodId":"web-2","Generation":0,
                "Network":{"Interface":"eth0","Address":"192.0.2.5","Mtu":1},
                "Firewall":{"Ingress":[{"Protocol":"TCP","Ports":["0"]}]}}"#,
            "PodId: web-2 is not this agent's pod (web-1); Generation: must be at least 1 \
             (0 means nothing applied); Network.Address: \"192.0.2.5\" is not a CIDR with its \
             prefix (10.0.0.5/24); Network.Mtu: 1 is not an MTU (576-65535); \
             Firewall.Ingress[0].Protocol: \"TCP\" is not a protocol (tcp, udp, icmp, icmpv6 \
             or any); Firewall.Ingress[0].Ports[0]: 0 is not a port (1-65535)",
        ),
    ]
}

#[test]
fn bad_inputs_give_their_errors() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        match accept(case.content_type, case.schema, &case.body) {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(got) if got != case.error => failures.push(format!(
                "{}:\n   want {}\n   got  {}",
                case.name, case.error, got
            )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn error_lists_are_capped() {
    // 25 bad ports: 20 kept, the rest counted.
    let ports = list((0..25).map(|i| format!("x{i}")));
    let err = accept_json(&ingress(&format!(
        r#"{{"Protocol":"tcp","Ports":{ports}}}"#
    )))
    .unwrap_err();
    assert!(
        err.starts_with(r#"Firewall.Ingress[0].Ports[0]: "x0" is not a port or range"#),
        "{err}"
    );
    assert!(
        err.ends_with(r#"Ports[19]: "x19" is not a port or range ("N" or "N-M"); and 5 more"#),
        "{err}"
    );
    assert_eq!(err.matches("; ").count(), 20, "{err}");
}

#[test]
fn secret_keys_are_not_echoed_in_errors() {
    // A wrong private or preshared key is still somebody's secret (a truncated paste).
    let almost = &secret_key(7)[..40];
    for body in [
        wireguard(&format!(r#""PrivateKey":"{almost}""#)),
        peer(&format!(r#""PresharedKey":"{almost}""#)),
    ] {
        let err = accept_json(&body).unwrap_err();
        assert!(err.contains("not a key"), "{err}");
        assert!(!err.contains(almost), "{err}");
    }
}

/// Bodies with `n` entries in one bounded list, built fast and without JSON formatting
/// surprises. `at` and `over` are the bound and one more.
struct Limit {
    what: &'static str,
    bound: usize,
    body: fn(usize) -> String,
    error_path: &'static str,
}

fn sources(n: usize) -> String {
    let addrs = (0..n).map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff));
    ingress(&format!(r#"{{"Sources":{}}}"#, list(addrs)))
}

fn destinations(n: usize) -> String {
    let addrs = (0..n).map(|i| format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff));
    egress(&format!(r#"{{"Destinations":{}}}"#, list(addrs)))
}

fn ports(n: usize) -> String {
    let ports = (0..n).map(|i| (i + 1).to_string());
    ingress(&format!(r#"{{"Protocol":"tcp","Ports":{}}}"#, list(ports)))
}

fn ingress_rules(n: usize) -> String {
    let rules = vec![r#"{"Protocol":"tcp","Ports":["22"]}"#; n].join(",");
    format!(r#"{{"PodId":"web-1","Generation":1,"Firewall":{{"Ingress":[{rules}]}}}}"#)
}

fn egress_rules(n: usize) -> String {
    let rules = vec!["{}"; n].join(",");
    format!(r#"{{"PodId":"web-1","Generation":1,"Firewall":{{"Egress":[{rules}]}}}}"#)
}

fn peers(n: usize) -> String {
    let peers: Vec<String> = (0..n)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            format!(
                r#"{{"PublicKey":"{}"}}"#,
                weft_schema::PublicKey(key).to_base64()
            )
        })
        .collect();
    wireguard(&format!(r#""Peers":[{}]"#, peers.join(",")))
}

fn allowed_ips(n: usize) -> String {
    let ips = (0..n).map(|i| format!("10.9.{}.{}/32", i >> 8, i & 0xff));
    peer(&format!(r#""AllowedIps":{}"#, list(ips)))
}

fn nameservers(n: usize) -> String {
    let ns = list((0..n).map(|i| format!("192.0.2.{}", i + 1)));
    network(&format!(
        r#"{{"Interface":"eth0","Address":"192.0.2.5/24","Nameservers":{ns}}}"#
    ))
}

fn search_domains(n: usize) -> String {
    let domains = list((0..n).map(|i| format!("d{i}.example")));
    network(&format!(
        r#"{{"Interface":"eth0","Address":"192.0.2.5/24","SearchDomains":{domains}}}"#
    ))
}

#[test]
fn every_limit_holds_at_its_bound_and_refuses_one_more() {
    let table = [
        Limit {
            what: "rules per direction (ingress)",
            bound: limits::RULES_PER_DIRECTION,
            body: ingress_rules,
            error_path: "Firewall.Ingress",
        },
        Limit {
            what: "rules per direction (egress)",
            bound: limits::RULES_PER_DIRECTION,
            body: egress_rules,
            error_path: "Firewall.Egress",
        },
        Limit {
            what: "Sources per rule",
            bound: limits::ADDRESSES_PER_RULE,
            body: sources,
            error_path: "Firewall.Ingress[0].Sources",
        },
        Limit {
            what: "Destinations per rule",
            bound: limits::ADDRESSES_PER_RULE,
            body: destinations,
            error_path: "Firewall.Egress[0].Destinations",
        },
        Limit {
            what: "Ports per rule",
            bound: limits::PORTS_PER_RULE,
            body: ports,
            error_path: "Firewall.Ingress[0].Ports",
        },
        Limit {
            what: "peers",
            bound: limits::PEERS,
            body: peers,
            error_path: "WireGuard.Peers",
        },
        Limit {
            what: "AllowedIps per peer",
            bound: limits::ALLOWED_IPS_PER_PEER,
            body: allowed_ips,
            error_path: "WireGuard.Peers[0].AllowedIps",
        },
        Limit {
            what: "nameservers",
            bound: limits::NAMESERVERS,
            body: nameservers,
            error_path: "Network.Nameservers",
        },
        Limit {
            what: "search domains",
            bound: limits::SEARCH_DOMAINS,
            body: search_domains,
            error_path: "Network.SearchDomains",
        },
    ];
    // The numbers are the contract's Limits table, not whatever the constants say.
    let contract = [10_000, 10_000, 65_536, 65_536, 1_024, 10_000, 1_024, 3, 6];
    for (limit, bound) in table.iter().zip(contract) {
        assert_eq!(limit.bound, bound, "{}", limit.what);
        if let Err(e) = accept_json(&(limit.body)(limit.bound)) {
            panic!("{} at the bound {}: {e}", limit.what, limit.bound);
        }
        let err = accept_json(&(limit.body)(limit.bound + 1)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: {} entries, at most {}",
                limit.error_path,
                limit.bound + 1,
                limit.bound
            ),
            "{}",
            limit.what
        );
    }
    // The contract's own example, word for word.
    assert_eq!(
        accept_json(&sources(70_000)).unwrap_err(),
        "Firewall.Ingress[0].Sources: 70000 entries, at most 65536"
    );
}

#[test]
fn the_body_limit_is_16_mib_in_both_encodings() {
    assert_eq!(MAX_BODY_BYTES, 16 * 1024 * 1024);
    // Exactly at the bound the body is decoded (and fails only for what it holds).
    let mut body = br#"{"PodId":"web-1","Generation":1}"#.to_vec();
    body.resize(MAX_BODY_BYTES, b' ');
    assert!(accept(JSON, None, &body).is_ok());
    body.push(b' ');
    assert_eq!(
        accept(JSON, None, &body).unwrap_err(),
        "body of 16777217 bytes, at most 16777216"
    );
    let mut bincode = Encoding::Bincode.encode(&minimal_spec());
    bincode.resize(MAX_BODY_BYTES + 1, 0);
    assert_eq!(
        accept(BINCODE, None, &bincode).unwrap_err(),
        "body of 16777217 bytes, at most 16777216"
    );
    // A length prefix that claims more than a body can hold fails without allocating it.
    let claim = [0xfc, 0xff, 0xff, 0xff, 0x7f]; // u32 varint: a 2 GiB PodId
    assert!(Encoding::Bincode.decode::<PodSpec>(&claim).is_err());
}
