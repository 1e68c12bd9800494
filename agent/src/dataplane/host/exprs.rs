//! The host tables' rules as nftables expressions, laid out as `nft` lays out the same rule
//! text: a rule the agent writes and the one `nft -f` writes from [`super::tables::Rule`]'s
//! text read back alike. Pure.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_schema::host::L4;

use super::slot::{GUEST_IP, HOST_LINK_PREFIX, SANDBOX_LINK};
use super::tables::Rule;
use super::LOOPBACK;
use crate::dataplane::nftables::abi::*;
use crate::dataplane::nftables::expr::{Expr, Nat, Value};

/// Offsets in the IPv4 header.
const SADDR: u32 = 12;
const DADDR: u32 = 16;
/// `ct state` bits.
const CT_STATE_NEW: u32 = 8;
/// `ct status` bit of a connection a DNAT rewrote (`IPS_DST_NAT`).
const IPS_DST_NAT: u32 = 1 << 5;
/// `NFT_CT_STATUS`.
const NFT_CT_STATUS: u32 = libc::NFT_CT_STATUS as u32;
/// Register 2, for a NAT's port.
const NFT_REG_2: u32 = libc::NFT_REG_2 as u32;

fn value(bytes: &[u8]) -> Value {
    Value::new(bytes).expect("at most 16 bytes")
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data: value(data),
    }
}

fn meta(key: u32) -> Expr {
    Expr::Meta {
        key,
        dreg: NFT_REG_1,
    }
}

/// `iifname`/`oifname` equal to `name`: 16 bytes, zero-padded; a name ending in `*` matches
/// its prefix (only the prefix's bytes are compared).
fn ifname(key: u32, name: &str) -> [Expr; 2] {
    let data = match name.strip_suffix('*') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => {
            let mut padded = [0u8; 16];
            padded[..name.len()].copy_from_slice(name.as_bytes());
            padded.to_vec()
        }
    };
    [meta(key), cmp(NFT_CMP_EQ, &data)]
}

/// `ip saddr|daddr (==|!=) net`: the whole bytes the prefix covers are loaded; a prefix that
/// ends within a byte is masked.
fn ip(offset: u32, op: u32, net: Ipv4Net) -> Vec<Expr> {
    let prefix = u32::from(net.prefix_len());
    let len = prefix.div_ceil(8);
    let octets = net.network().octets();
    let mut exprs = vec![Expr::Payload {
        dreg: NFT_REG_1,
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
    }];
    if prefix % 8 != 0 {
        let mask = net.netmask().octets();
        exprs.push(Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            len,
            mask: value(&mask[..len as usize]),
            xor: value(&[0; 4][..len as usize]),
        });
    }
    exprs.push(cmp(op, &octets[..len as usize]));
    exprs
}

fn host(addr: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(addr, 32).expect("32 is a prefix")
}

/// `ct <key> & bits`, then `op 0`.
fn ct_bits(key: u32, bits: u32, op: u32) -> [Expr; 3] {
    [
        Expr::Ct {
            key,
            dreg: NFT_REG_1,
        },
        Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            len: 4,
            mask: value(&bits.to_ne_bytes()),
            xor: value(&[0; 4]),
        },
        cmp(op, &[0; 4]),
    ]
}

fn counter() -> Expr {
    Expr::Counter {
        packets: 0,
        bytes: 0,
    }
}

/// `snat`/`dnat to addr[:port]`, as nft writes it: the range's both ends in the same
/// registers, and the flags the kernel reports back.
fn nat(kind: u32, to: Ipv4Addr, port: Option<u16>) -> Vec<Expr> {
    let mut exprs = vec![Expr::Immediate {
        dreg: NFT_REG_1,
        data: value(&to.octets()),
    }];
    let mut n = Nat {
        kind,
        family: u32::from(NFPROTO_IPV4),
        addr_min: Some(NFT_REG_1),
        addr_max: Some(NFT_REG_1),
        proto_min: None,
        proto_max: None,
        flags: NF_NAT_RANGE_MAP_IPS,
    };
    if let Some(port) = port {
        exprs.push(Expr::Immediate {
            dreg: NFT_REG_2,
            data: value(&port.to_be_bytes()),
        });
        n.proto_min = Some(NFT_REG_2);
        n.proto_max = Some(NFT_REG_2);
        n.flags |= NF_NAT_RANGE_PROTO_SPECIFIED;
    }
    exprs.push(Expr::Nat(n));
    exprs
}

/// The expressions of one rule.
pub fn exprs(rule: &Rule) -> Vec<Expr> {
    let any = format!("{HOST_LINK_PREFIX}*");
    let mut e = Vec::new();
    match rule {
        Rule::SnatGuest { to } => {
            e.extend(ifname(NFT_META_OIFNAME, SANDBOX_LINK));
            e.extend(ip(SADDR, NFT_CMP_EQ, host(GUEST_IP)));
            e.push(counter());
            e.extend(nat(NFT_NAT_SNAT, *to, None));
        }
        Rule::DnatGuest { from } => {
            e.extend(ifname(NFT_META_IIFNAME, SANDBOX_LINK));
            e.extend(ip(DADDR, NFT_CMP_EQ, host(*from)));
            e.push(counter());
            e.extend(nat(NFT_NAT_DNAT, GUEST_IP, None));
        }
        Rule::Masquerade { uplink, from } => {
            e.extend(ifname(NFT_META_OIFNAME, uplink.as_str()));
            e.extend(ip(SADDR, NFT_CMP_EQ, *from));
            e.push(counter());
            e.push(Expr::Masquerade { flags: 0 });
        }
        Rule::Established => {
            e.extend(ct_bits(
                NFT_CT_STATE,
                CT_STATE_ESTABLISHED_RELATED,
                NFT_CMP_NEQ,
            ));
            e.push(counter());
            e.push(Expr::Verdict(NF_ACCEPT));
        }
        Rule::BetweenSandboxes => {
            e.extend(ifname(NFT_META_IIFNAME, &any));
            e.extend(ifname(NFT_META_OIFNAME, &any));
            e.push(counter());
            e.push(Expr::Verdict(NF_DROP));
        }
        Rule::IntoSandboxes => {
            e.extend(ifname(NFT_META_OIFNAME, &any));
            e.extend(ct_bits(NFT_CT_STATE, CT_STATE_NEW, NFT_CMP_NEQ));
            e.extend(ct_bits(NFT_CT_STATUS, IPS_DST_NAT, NFT_CMP_EQ));
            e.push(counter());
            e.push(Expr::Verdict(NF_DROP));
        }
        Rule::SandboxesToHost => {
            e.extend(ifname(NFT_META_IIFNAME, &any));
            e.extend(ct_bits(NFT_CT_STATE, CT_STATE_NEW, NFT_CMP_NEQ));
            e.push(counter());
            e.push(Expr::Verdict(NF_DROP));
        }
        Rule::NoEgress { link } => {
            e.extend(ifname(NFT_META_IIFNAME, link));
            e.extend(ct_bits(NFT_CT_STATE, CT_STATE_NEW, NFT_CMP_NEQ));
            e.push(counter());
            e.push(Expr::Verdict(NF_DROP));
        }
        Rule::PortForward {
            protocol,
            host_port,
            to,
            to_port,
        } => {
            e.push(Expr::Fib {
                flags: NFTA_FIB_F_DADDR,
                result: NFT_FIB_RESULT_ADDRTYPE,
                dreg: NFT_REG_1,
            });
            e.push(cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()));
            e.extend(ip(DADDR, NFT_CMP_NEQ, LOOPBACK));
            e.push(meta(NFT_META_L4PROTO));
            e.push(cmp(
                NFT_CMP_EQ,
                &[match protocol {
                    L4::Tcp => libc::IPPROTO_TCP as u8,
                    L4::Udp => libc::IPPROTO_UDP as u8,
                }],
            ));
            e.push(Expr::Payload {
                dreg: NFT_REG_1,
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 2,
                len: 2,
            });
            e.push(cmp(NFT_CMP_EQ, &host_port.to_be_bytes()));
            e.push(counter());
            e.extend(nat(NFT_NAT_DNAT, *to, Some(*to_port)));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_aligned_prefixes_load_only_their_bytes() {
        // `ip saddr 10.12.0.0/16` is nft's `payload load 2b @ network header + 12`, cmp.
        let e = ip(SADDR, NFT_CMP_EQ, "10.12.0.0/16".parse().unwrap());
        assert_eq!(e.len(), 2);
        assert!(matches!(
            e[0],
            Expr::Payload {
                len: 2,
                offset: 12,
                ..
            }
        ));
        // A /17 masks its third byte.
        let e = ip(SADDR, NFT_CMP_EQ, "10.12.128.0/17".parse().unwrap());
        assert_eq!(e.len(), 3);
        match &e[1] {
            Expr::Bitwise { mask, len: 3, .. } => assert_eq!(mask.as_slice(), [255, 255, 128]),
            other => panic!("{other:?}"),
        }
        assert_eq!(e[2], cmp(NFT_CMP_EQ, &[10, 12, 128]));
    }

    #[test]
    fn names_are_padded_and_wildcards_are_prefixes() {
        let [_, exact] = ifname(NFT_META_IIFNAME, "weft-v7");
        let [_, wild] = ifname(NFT_META_IIFNAME, "weft-v*");
        match (exact, wild) {
            (Expr::Cmp { data: a, .. }, Expr::Cmp { data: b, .. }) => {
                assert_eq!(a.as_slice().len(), 16);
                assert_eq!(&a.as_slice()[..8], b"weft-v7\0");
                assert_eq!(b.as_slice(), b"weft-v");
            }
            other => panic!("{other:?}"),
        }
    }
}
