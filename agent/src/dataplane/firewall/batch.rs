//! Ruleset -> one nftables transaction (pure): either the whole table (delete the table when
//! the kernel has one, create it, its two chains, and per rule its anonymous sets and the
//! rule), or only the rules that differ (deleted by handle, the new ones added where they
//! belong; see `nftables::keyed`). Every rule is written with its key and echoed, so the
//! handles the kernel gave are known without a dump. Nothing else is ever named, so no other
//! table or chain can be touched.

use std::net::{Ipv4Addr, Ipv6Addr};

use nftnl::set::SetKey;

use super::render::{key, prefix_of, AddrMatch, Dir, Family, Line, Match, Ruleset, Verdict};
use super::{Chain, CHAINS, TABLE_REF};
use crate::dataplane::nftables::abi::*;
use crate::dataplane::nftables::batch::{BaseChain, Batch, InetService, SetRef, Transaction};
use crate::dataplane::nftables::expr::{Expr, Value};
use crate::dataplane::nftables::keyed::{ChainDiff, Position};

/// What a message of the batch does, so a refusal can say what failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    /// The batch's first message, which carries the generation it was planned at.
    Begin,
    Batch,
    DeleteTable,
    CreateTable,
    Chain(&'static str),
    /// An anonymous set (or a part of its elements) of rule `index` of a chain.
    Set {
        chain: &'static str,
        index: usize,
    },
    Rule {
        chain: &'static str,
        index: usize,
    },
    /// Deleting the rule of this handle, which the desired ruleset no longer has.
    DeleteRule {
        chain: &'static str,
        handle: u64,
    },
}

/// The batch that makes the kernel's table `ruleset`. `table_flags` are the table's flags
/// (owner and persist, or none); `replace` deletes the existing table first, in the same
/// transaction, so no observer sees the table missing or half-filled.
///
/// `genid` is the ruleset generation the batch was planned at: the kernel refuses it
/// (ERESTART) when anyone committed since, instead of deleting a table it did not read.
pub(crate) fn replace(
    ruleset: &Ruleset,
    table_flags: u32,
    replace: bool,
    genid: Option<u32>,
    seq: u32,
) -> Transaction<Label> {
    let mut b = Batch::new(seq, genid, Label::Begin);
    if replace {
        b.delete_table(TABLE_REF, Label::DeleteTable);
    }
    // Echoed: its handle is what a record of this commit names.
    b.add_table_echoed(TABLE_REF, table_flags, Label::CreateTable);
    for chain in &CHAINS {
        b.add_chain(
            TABLE_REF,
            &BaseChain {
                name: chain.name,
                kind: nftnl::ChainType::Filter,
                hook: chain.hook,
                priority: 0,
                policy: chain.policy,
            },
            Label::Chain(chain.name),
        );
    }
    for (chain, lines) in [(&CHAINS[0], &ruleset.input), (&CHAINS[1], &ruleset.output)] {
        for (index, line) in lines.iter().enumerate() {
            rule(&mut b, chain, index, line, Position::Append);
        }
    }
    b.finish(Label::Batch)
}

/// The batch that changes only the rules `diffs` (per chain, input then output) name:
/// deletes first, then the new rules at their places. With `adopt`, it also takes the table
/// over with those flags (a persistent table a previous agent left).
pub(crate) fn change(
    ruleset: &Ruleset,
    diffs: &[ChainDiff; 2],
    adopt: Option<u32>,
    genid: Option<u32>,
    seq: u32,
) -> Transaction<Label> {
    let mut b = Batch::new(seq, genid, Label::Begin);
    if let Some(flags) = adopt {
        b.add_table(TABLE_REF, flags, Label::CreateTable);
    }
    for (chain, d) in CHAINS.iter().zip(diffs) {
        for &handle in &d.delete {
            let label = Label::DeleteRule {
                chain: chain.name,
                handle,
            };
            b.delete_rule(TABLE_REF, chain.name, handle, label);
        }
    }
    for ((chain, d), lines) in CHAINS
        .iter()
        .zip(diffs)
        .zip([&ruleset.input, &ruleset.output])
    {
        for add in &d.add {
            rule(&mut b, chain, add.index, &lines[add.index], add.at);
        }
    }
    b.finish(Label::Batch)
}

/// The batch that re-creates the table with our flags and nothing else: a persistent table
/// left by an agent that exited is adopted by its next owner without touching its rules.
pub(crate) fn adopt(table_flags: u32, genid: Option<u32>, seq: u32) -> Transaction<Label> {
    let mut b = Batch::new(seq, genid, Label::Begin);
    b.add_table(TABLE_REF, table_flags, Label::CreateTable);
    b.finish(Label::Batch)
}

/// The batch that deletes the table.
pub(crate) fn delete(seq: u32) -> Transaction<Label> {
    let mut b = Batch::new(seq, None, Label::Begin);
    b.delete_table(TABLE_REF, Label::DeleteTable);
    b.finish(Label::Batch)
}

fn load(base: u32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        dreg: NFT_REG_1,
        base,
        offset,
        len,
    }
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data: Value::new(data).expect("at most 16 bytes"),
    }
}

fn meta(key: u32) -> Expr {
    Expr::Meta {
        key,
        dreg: NFT_REG_1,
    }
}

fn bitwise(mask: &[u8], xor: &[u8]) -> Expr {
    Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        len: mask.len() as u32,
        mask: Value::new(mask).expect("at most 16 bytes"),
        xor: Value::new(xor).expect("at most 16 bytes"),
    }
}

fn lookup(set: &SetRef) -> Expr {
    Expr::Lookup {
        sreg: NFT_REG_1,
        set: set.name.to_owned(),
        set_id: Some(set.id),
        flags: 0,
        dreg: None,
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Verdict(match v {
        Verdict::Accept => NF_ACCEPT,
        Verdict::Drop => NF_DROP,
    })
}

/// One rule at `at`, preceded by the anonymous sets it looks up, carrying its key.
fn rule(b: &mut Batch<Label>, chain: &Chain, index: usize, line: &Line, at: Position) {
    let label_set = Label::Set {
        chain: chain.name,
        index,
    };
    // Sets first: the rule refers to them by their id within this transaction.
    let mut addr_set = None;
    let mut port_set = None;
    if let Line::Match(m) = line {
        if let Some(a) = &m.addr {
            if a.ranges.len() > 1 {
                addr_set = Some(match a.family {
                    Family::V4 => set::<Ipv4Addr>(b, label_set, &a.ranges, a.family.max()),
                    Family::V6 => set::<Ipv6Addr>(b, label_set, &a.ranges, a.family.max()),
                });
            }
        }
        if m.ports.len() > 1 {
            let ranges: Vec<_> = m
                .ports
                .iter()
                .map(|&(x, y)| (u128::from(x), u128::from(y)))
                .collect();
            port_set = Some(set::<InetService>(
                b,
                label_set,
                &ranges,
                u128::from(u16::MAX),
            ));
        }
    }
    let mut comment = None;
    let exprs = match line {
        Line::Established => vec![
            Expr::Ct {
                key: NFT_CT_STATE,
                dreg: NFT_REG_1,
            },
            bitwise(&CT_STATE_ESTABLISHED_RELATED.to_ne_bytes(), &[0; 4]),
            cmp(NFT_CMP_NEQ, &[0; 4]),
            COUNTER,
            Expr::Verdict(NF_ACCEPT),
        ],
        // As nft writes `icmpv6 type 134-136 accept` in an inet table.
        Line::NeighbourDiscovery => vec![
            meta(NFT_META_NFPROTO),
            cmp(NFT_CMP_EQ, &[NFPROTO_IPV6]),
            meta(NFT_META_L4PROTO),
            cmp(NFT_CMP_EQ, &[super::render::IPPROTO_ICMPV6]),
            load(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1),
            cmp(NFT_CMP_GTE, &[ND_ROUTER_ADVERT]),
            cmp(NFT_CMP_LTE, &[ND_NEIGHBOR_ADVERT]),
            COUNTER,
            Expr::Verdict(NF_ACCEPT),
        ],
        Line::Loopback => {
            let mut name = [0u8; 16];
            name[..2].copy_from_slice(b"lo");
            vec![
                meta(NFT_META_IIFNAME),
                cmp(NFT_CMP_EQ, &name),
                COUNTER,
                Expr::Verdict(NF_ACCEPT),
            ]
        }
        Line::WireGuardPort(port) => vec![
            meta(NFT_META_L4PROTO),
            cmp(NFT_CMP_EQ, &[super::render::IPPROTO_UDP]),
            load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(NFT_CMP_EQ, &port.to_be_bytes()),
            COUNTER,
            Expr::Verdict(NF_ACCEPT),
        ],
        Line::Dropped => vec![COUNTER],
        Line::Match(m) => {
            comment = m.comment.as_deref();
            match_exprs(m, chain.dir, addr_set.as_ref(), port_set.as_ref())
        }
        // Never rendered, only read back.
        Line::Foreign(_) => Vec::new(),
    };
    b.add_keyed_rule(
        TABLE_REF,
        chain.name,
        &exprs,
        comment,
        key(chain.name, line),
        at,
        Label::Rule {
            chain: chain.name,
            index,
        },
    );
}

/// `counter`, from zero.
const COUNTER: Expr = Expr::Counter {
    packets: 0,
    bytes: 0,
};

/// ICMPv6 types (RFC 4861): router advertisement; 135 (neighbour solicitation) lies between.
pub(crate) const ND_ROUTER_ADVERT: u8 = 134;
pub(crate) const ND_NEIGHBOR_ADVERT: u8 = 136;

/// The expressions of a spec-derived rule, in the order (and forms) `nft` itself emits for
/// the same text, so the two are interchangeable.
fn match_exprs(
    m: &Match,
    dir: Dir,
    addr_set: Option<&SetRef>,
    port_set: Option<&SetRef>,
) -> Vec<Expr> {
    let mut e = Vec::new();
    if let Some(a) = &m.addr {
        addr_exprs(&mut e, a, dir, addr_set);
    }
    if let Some(p) = m.proto {
        e.push(meta(NFT_META_L4PROTO));
        e.push(cmp(NFT_CMP_EQ, &[p]));
    }
    if !m.ports.is_empty() {
        e.push(load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
        match (port_set, m.ports[0]) {
            (Some(set), _) => e.push(lookup(set)),
            (None, (x, y)) if x == y => e.push(cmp(NFT_CMP_EQ, &x.to_be_bytes())),
            (None, (x, y)) => {
                e.push(cmp(NFT_CMP_GTE, &x.to_be_bytes()));
                e.push(cmp(NFT_CMP_LTE, &y.to_be_bytes()));
            }
        }
    }
    e.push(COUNTER);
    e.push(verdict(m.verdict));
    e
}

/// Offset of the source or destination address in the network header.
pub(crate) fn addr_offset(family: Family, dir: Dir) -> u32 {
    match (family, dir) {
        (Family::V4, Dir::Src) => 12,
        (Family::V4, Dir::Dst) => 16,
        (Family::V6, Dir::Src) => 8,
        (Family::V6, Dir::Dst) => 24,
    }
}

pub(crate) fn addr_bytes(family: Family, v: u128) -> Vec<u8> {
    match family {
        Family::V4 => (v as u32).to_be_bytes().to_vec(),
        Family::V6 => v.to_be_bytes().to_vec(),
    }
}

fn addr_exprs(e: &mut Vec<Expr>, a: &AddrMatch, dir: Dir, set: Option<&SetRef>) {
    let nfproto = match a.family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    };
    e.push(meta(NFT_META_NFPROTO));
    e.push(cmp(NFT_CMP_EQ, &[nfproto]));
    let off = addr_offset(a.family, dir);
    let len = a.family.len();
    if let Some(set) = set {
        e.push(load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
        e.push(lookup(set));
        return;
    }
    let range = a.ranges[0];
    let first = addr_bytes(a.family, range.0);
    match prefix_of(a.family, range) {
        // The whole family: the nfproto match is all there is.
        Some(0) => {}
        // Whole bytes: load only the prefix's bytes.
        Some(p) if p % 8 == 0 => {
            let n = (p / 8) as usize;
            e.push(load(NFT_PAYLOAD_NETWORK_HEADER, off, n as u32));
            e.push(cmp(NFT_CMP_EQ, &first[..n]));
        }
        Some(p) => {
            e.push(load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
            let mask = addr_bytes(a.family, !(a.family.max() >> p) & a.family.max());
            e.push(bitwise(&mask, &vec![0u8; len]));
            e.push(cmp(NFT_CMP_EQ, &first));
        }
        None => {
            e.push(load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
            e.push(cmp(NFT_CMP_GTE, &first));
            e.push(cmp(NFT_CMP_LTE, &addr_bytes(a.family, range.1)));
        }
    }
}

/// An anonymous constant interval set holding `ranges`, written as nft writes one: a range
/// `[a, b]` is a start element `a` and an end element `b + 1` (none when `b` is the top of
/// the key space), after an end element at 0 when the first range does not start there.
fn set<K: SetKey>(
    b: &mut Batch<Label>,
    label: Label,
    ranges: &[(u128, u128)],
    max: u128,
) -> SetRef {
    let key_len = K::LEN as usize;
    let key = |v: u128| Value::new(&v.to_be_bytes()[16 - key_len..]).expect("16 bytes at most");
    let mut elements = Vec::with_capacity(ranges.len() * 2 + 1);
    if ranges[0].0 != 0 {
        elements.push((key(0), true));
    }
    for &(first, last) in ranges {
        elements.push((key(first), false));
        if last != max {
            elements.push((key(last + 1), true));
        }
    }
    b.add_anon_set::<K>(TABLE_REF, NFT_SET_INTERVAL, &elements, label)
}
