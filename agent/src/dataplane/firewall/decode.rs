//! Kernel dump -> the same model the renderer produces (pure). Every rule of the table is
//! decoded back into a [`Line`]; one this agent would not have written becomes
//! [`Line::Foreign`], which never equals a rendered rule, so any outside change shows as a
//! difference.

use super::batch::{addr_offset, ND_NEIGHBOR_ADVERT, ND_ROUTER_ADVERT};
use super::render::{
    merge, AddrMatch, Dir, Family, Line, Match, Verdict, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use super::CHAINS;
use crate::dataplane::netlink::AttrExt;
use crate::dataplane::nftables::abi::*;
use crate::dataplane::nftables::expr::{self, Value};
use crate::dataplane::nftables::{self, Element};

/// The ruleset a sequence of nf_tables messages (a batch this agent wrote, or rules and
/// sets as a dump gives them) describes for our table: each rule reads the anonymous sets
/// created before it, in order, as `Firewall::read` reads them by name from the kernel.
pub fn ruleset_of(bytes: &[u8]) -> super::Ruleset {
    use std::collections::VecDeque;
    let mut sets: Vec<(Option<u32>, Vec<Element>)> = Vec::new();
    let mut out = super::Ruleset::default();
    let mut pending: VecDeque<Vec<Element>> = VecDeque::new();
    for msg in crate::dataplane::netlink::messages(bytes) {
        if msg.ty >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        match msg.ty & 0xff {
            NFT_MSG_NEWSET => {
                let id = nftables::attrs(&msg)
                    .get(NFTA_SET_ID)
                    .and_then(|a| a.be32());
                sets.push((id, Vec::new()));
            }
            NFT_MSG_NEWSETELEM => {
                let id = nftables::attrs(&msg)
                    .get(NFTA_SET_ELEM_LIST_SET_ID)
                    .and_then(|a| a.be32());
                if let Some(set) = sets.iter_mut().find(|(i, _)| *i == id) {
                    nftables::elements_of(&msg, &mut set.1);
                }
            }
            NFT_MSG_NEWRULE => {
                pending.extend(sets.drain(..).map(|(_, e)| e));
                let Some(rule) = nftables::rule_of(&msg, super::TABLE) else {
                    continue;
                };
                let Some(chain) = CHAINS.iter().find(|c| c.name == rule.chain) else {
                    continue;
                };
                let mut next = |_: &str| pending.pop_front();
                let line = line(&rule, chain.dir, &mut next);
                if chain.name == CHAINS[0].name {
                    out.input.push(line);
                } else {
                    out.output.push(line);
                }
            }
            _ => {}
        }
    }
    out.canonical()
}

/// Fetches the elements of a named anonymous set (`None` when it cannot be read).
pub(crate) type SetReader<'a> = dyn FnMut(&str) -> Option<Vec<Element>> + 'a;

/// True when the chains are exactly the contract's two.
pub(crate) fn chains_as_contract(chains: &[nftables::Chain]) -> bool {
    chains.len() == CHAINS.len()
        && CHAINS.iter().all(|c| {
            chains.iter().any(|s| {
                s.name == c.name
                    && s.kind == "filter"
                    && s.hook == Some((c.hook as u32, 0))
                    && s.policy == Some(c.policy as u32)
            })
        })
}

/// One expression, with the registers checked: anything not reading or writing register 1
/// the way the renderer does is [`Expr::Other`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Meta(u32),
    Ct(u32),
    Cmp(u32, Value),
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        mask: Value,
        xor: Value,
    },
    Lookup(String),
    /// `counter`, whatever it counted.
    Counter,
    Verdict(u32),
    Other(String),
}

impl Expr {
    fn of(e: &expr::Expr) -> Expr {
        let r1 = |reg: u32| reg == NFT_REG_1;
        match *e {
            expr::Expr::Meta { key, dreg } if r1(dreg) => Expr::Meta(key),
            expr::Expr::Ct { key, dreg } if r1(dreg) => Expr::Ct(key),
            expr::Expr::Cmp { sreg, op, data } if r1(sreg) => Expr::Cmp(op, data),
            expr::Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } if r1(dreg) => Expr::Payload { base, offset, len },
            expr::Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                ..
            } if r1(sreg) && r1(dreg) => Expr::Bitwise { mask, xor },
            // An inverted lookup (`!=`) or a map lookup is not ours.
            expr::Expr::Lookup {
                sreg,
                ref set,
                flags: 0,
                dreg: None,
                ..
            } if r1(sreg) => Expr::Lookup(set.clone()),
            expr::Expr::Verdict(code) => Expr::Verdict(code),
            expr::Expr::Counter { .. } => Expr::Counter,
            ref other => Expr::Other(other.name().to_owned()),
        }
    }
}

/// Interval elements back to merged inclusive ranges, for keys of `len` bytes.
pub(crate) fn ranges(elements: &[(Value, bool)], len: usize) -> Option<Vec<(u128, u128)>> {
    let max = if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (len * 8)) - 1
    };
    let mut keyed: Vec<(u128, bool)> = elements
        .iter()
        .map(|(k, end)| (k.as_slice().len() == len).then(|| (uint(k.as_slice()), *end)))
        .collect::<Option<_>>()?;
    // At one key an end (of the previous range) comes before a start.
    keyed.sort_unstable_by_key(|&(k, end)| (k, !end));
    let mut out = Vec::new();
    let mut open: Option<u128> = None;
    for (k, end) in keyed {
        match (end, open) {
            (false, None) => open = Some(k),
            (true, Some(start)) if k > start => {
                out.push((start, k - 1));
                open = None;
            }
            // nft's leading "end at 0" has nothing to close.
            (true, None) if k == 0 => {}
            _ => return None,
        }
    }
    if let Some(start) = open {
        out.push((start, max));
    }
    Some(merge(out))
}

fn uint(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// Decodes the expressions of one rule of a chain whose addresses are `dir`. `set` returns
/// the elements of a named anonymous set.
pub(crate) fn line(rule: &nftables::Rule, dir: Dir, set: &mut SetReader<'_>) -> Line {
    let exprs: Vec<Expr> = rule.exprs.iter().map(Expr::of).collect();
    let e = &exprs[..];
    let zero = |v: &Value| v.as_slice().iter().all(|b| *b == 0);
    if rule.comment.is_none() {
        match e {
            [Expr::Counter] => return Line::Dropped,
            [Expr::Ct(NFT_CT_STATE), Expr::Bitwise { mask, xor }, Expr::Cmp(NFT_CMP_NEQ, z), Expr::Counter, Expr::Verdict(NF_ACCEPT)]
                if mask.as_slice() == CT_STATE_ESTABLISHED_RELATED.to_ne_bytes()
                    && xor.as_slice().len() == 4
                    && zero(xor)
                    && z.as_slice().len() == 4
                    && zero(z) =>
            {
                return Line::Established;
            }
            [Expr::Meta(NFT_META_NFPROTO), Expr::Cmp(NFT_CMP_EQ, family), Expr::Meta(NFT_META_L4PROTO), Expr::Cmp(NFT_CMP_EQ, proto), Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 0,
                len: 1,
            }, Expr::Cmp(NFT_CMP_GTE, first), Expr::Cmp(NFT_CMP_LTE, last), Expr::Counter, Expr::Verdict(NF_ACCEPT)]
                if family.as_slice() == [NFPROTO_IPV6]
                    && proto.as_slice() == [IPPROTO_ICMPV6]
                    && first.as_slice() == [ND_ROUTER_ADVERT]
                    && last.as_slice() == [ND_NEIGHBOR_ADVERT] =>
            {
                return Line::NeighbourDiscovery;
            }
            [Expr::Meta(NFT_META_IIFNAME), Expr::Cmp(NFT_CMP_EQ, name), Expr::Counter, Expr::Verdict(NF_ACCEPT)]
                if name.as_slice().len() == 16
                    && name.as_slice()[..2] == *b"lo"
                    && name.as_slice()[2..].iter().all(|b| *b == 0) =>
            {
                return Line::Loopback;
            }
            _ => {}
        }
    }
    match generic(e, dir, set) {
        Some(mut m) => {
            m.comment = rule.comment.clone();
            Line::Match(m)
        }
        None => Line::Foreign(describe(e, rule.comment.as_deref())),
    }
}

fn describe(exprs: &[Expr], comment: Option<&str>) -> String {
    let names: Vec<String> = exprs
        .iter()
        .map(|e| match e {
            Expr::Meta(k) => format!("meta({k})"),
            Expr::Ct(k) => format!("ct({k})"),
            Expr::Cmp(op, d) => format!("cmp({op},{d:?})"),
            Expr::Payload { base, offset, len } => format!("payload({base},{offset},{len})"),
            Expr::Bitwise { mask, xor } => format!("bitwise({mask:?},{xor:?})"),
            Expr::Lookup(s) => format!("lookup({s})"),
            Expr::Counter => "counter".to_owned(),
            Expr::Verdict(v) => format!("verdict({v})"),
            Expr::Other(n) => n.clone(),
        })
        .collect();
    let mut text = names.join(" ");
    if let Some(c) = comment {
        text.push_str(&format!(" comment {c:?}"));
    }
    text
}

/// A cursor over a rule's expressions.
struct Cursor<'a> {
    e: &'a [Expr],
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&'a Expr> {
        self.e.first()
    }

    fn next(&mut self) -> Option<&'a Expr> {
        let (first, rest) = self.e.split_first()?;
        self.e = rest;
        Some(first)
    }

    /// `meta <key>; cmp eq <one byte>`.
    fn meta_byte(&mut self, key: u32) -> Option<Option<u8>> {
        if self.peek() != Some(&Expr::Meta(key)) {
            return Some(None);
        }
        self.next();
        match self.next()? {
            Expr::Cmp(NFT_CMP_EQ, d) if d.as_slice().len() == 1 => Some(Some(d.as_slice()[0])),
            _ => None,
        }
    }

    /// The match on a loaded value of `len` bytes: `cmp eq`, `cmp gte; cmp lte`, a masked
    /// `bitwise; cmp eq`, or a set lookup. Returns ranges over `full` bytes.
    fn value(
        &mut self,
        loaded: usize,
        full: usize,
        set: &mut SetReader<'_>,
    ) -> Option<Vec<(u128, u128)>> {
        // A value of the first `len` bytes of a `full`-byte key, as the range of keys it
        // covers.
        let widen = |d: &[u8]| {
            let pad = (full - d.len()) as u32 * 8;
            let low = uint(d).checked_shl(pad).unwrap_or(0);
            let host = 1u128.checked_shl(pad).map_or(u128::MAX, |b| b - 1);
            (low, low | host)
        };
        match self.next()? {
            Expr::Cmp(NFT_CMP_EQ, d) if d.as_slice().len() == loaded => {
                Some(vec![widen(d.as_slice())])
            }
            Expr::Cmp(NFT_CMP_GTE, lo) if lo.as_slice().len() == full && loaded == full => {
                let lo = uint(lo.as_slice());
                match self.next()? {
                    Expr::Cmp(NFT_CMP_LTE, hi)
                        if hi.as_slice().len() == full && lo <= uint(hi.as_slice()) =>
                    {
                        Some(vec![(lo, uint(hi.as_slice()))])
                    }
                    _ => None,
                }
            }
            Expr::Bitwise { mask, xor } if loaded == full && mask.as_slice().len() == full => {
                let m = uint(mask.as_slice());
                let bits = full as u32 * 8;
                let ones = m.count_ones();
                let prefix_mask = if ones == 0 {
                    0
                } else {
                    (u128::MAX << (128 - ones)) >> (128 - bits)
                };
                if xor.as_slice().iter().any(|b| *b != 0) || m != prefix_mask {
                    return None;
                }
                match self.next()? {
                    Expr::Cmp(NFT_CMP_EQ, d)
                        if d.as_slice().len() == full && uint(d.as_slice()) & !m == 0 =>
                    {
                        let d = uint(d.as_slice());
                        let host = !m & (u128::MAX >> (128 - bits));
                        Some(vec![(d, d | host)])
                    }
                    _ => None,
                }
            }
            Expr::Lookup(name) if loaded == full && name.starts_with("__set") => {
                let elements = set(name)?;
                ranges(&elements, full).filter(|r| !r.is_empty())
            }
            _ => None,
        }
    }
}

fn generic(e: &[Expr], dir: Dir, set: &mut SetReader<'_>) -> Option<Match> {
    let mut c = Cursor { e };
    let addr = match c.meta_byte(NFT_META_NFPROTO)? {
        None => None,
        Some(p) => {
            let family = match p {
                NFPROTO_IPV4 => Family::V4,
                NFPROTO_IPV6 => Family::V6,
                _ => return None,
            };
            let full = family.len();
            let ranges = match c.peek() {
                Some(&Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset,
                    len,
                }) if offset == addr_offset(family, dir) && (1..=full as u32).contains(&len) => {
                    c.next();
                    c.value(len as usize, full, set)?
                }
                _ => vec![(0, family.max())],
            };
            Some(AddrMatch { family, ranges })
        }
    };
    let proto = c.meta_byte(NFT_META_L4PROTO)?;
    let mut ports = Vec::new();
    if let Some(&Expr::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset: 2,
        len: 2,
    }) = c.peek()
    {
        if !matches!(proto, Some(IPPROTO_TCP | IPPROTO_UDP)) {
            return None;
        }
        c.next();
        ports = c
            .value(2, 2, set)?
            .into_iter()
            .map(|(a, b)| (a as u16, b as u16))
            .collect();
    }
    if c.next()? != &Expr::Counter {
        return None;
    }
    let verdict = match c.next()? {
        Expr::Verdict(NF_ACCEPT) => Verdict::Accept,
        Expr::Verdict(NF_DROP) => Verdict::Drop,
        _ => return None,
    };
    if c.next().is_some() {
        return None;
    }
    Some(Match {
        addr,
        proto,
        ports,
        verdict,
        comment: None,
    })
}
