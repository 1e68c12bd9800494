//! Kernel dump -> the same model the renderer produces (pure). Every rule of the table is
//! decoded back into a [`Line`]; one this agent would not have written becomes
//! [`Line::Foreign`], which never equals a rendered rule, so any outside change shows as a
//! difference.

use super::abi::*;
use super::batch::addr_offset;
use super::netlink::{attrs, be32, string, Message};
use super::render::{
    merge, AddrMatch, Dir, Family, Line, Match, Verdict, IPPROTO_TCP, IPPROTO_UDP,
};
use super::{CHAINS, TABLE};

/// Set elements as (key, is an interval end).
pub(crate) type Elements = Vec<(Value, bool)>;

/// An expression's or element's data, at most 16 bytes (an IPv6 address), kept inline: a
/// 10,000-rule read-back would otherwise allocate for every comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Value {
    len: u8,
    bytes: [u8; 16],
}

impl Value {
    pub fn new(data: &[u8]) -> Option<Value> {
        let mut bytes = [0; 16];
        bytes.get_mut(..data.len())?.copy_from_slice(data);
        Some(Value {
            len: data.len() as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.as_slice()))
    }
}

/// Fetches the elements of a named anonymous set (`None` when it cannot be read).
pub(crate) type SetReader<'a> = dyn FnMut(&str) -> Option<Elements> + 'a;

/// The table as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableSeen {
    pub flags: u32,
    /// The owning socket's port id, when the table has an owner.
    pub owner: Option<u32>,
}

/// A chain as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainSeen {
    pub name: String,
    pub kind: String,
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
}

/// A table's `NEWTABLE` message.
pub(crate) fn table(msg: &Message<'_>) -> Option<TableSeen> {
    let mut seen = TableSeen {
        flags: 0,
        owner: None,
    };
    let mut name = None;
    for (ty, v) in msg.nf_attrs() {
        match ty {
            NFTA_TABLE_NAME => name = Some(string(v)),
            NFTA_TABLE_FLAGS => seen.flags = be32(v)?,
            NFTA_TABLE_OWNER => seen.owner = be32(v),
            _ => {}
        }
    }
    (name == Some(TABLE)).then_some(seen)
}

/// A chain of our table, from a `NEWCHAIN` message of a chain dump.
pub(crate) fn chain(msg: &Message<'_>) -> Option<ChainSeen> {
    let mut table = None;
    let mut seen = ChainSeen {
        name: String::new(),
        kind: String::new(),
        hook: None,
        policy: None,
    };
    for (ty, v) in msg.nf_attrs() {
        match ty {
            NFTA_CHAIN_TABLE => table = Some(string(v)),
            NFTA_CHAIN_NAME => seen.name = string(v).to_owned(),
            NFTA_CHAIN_TYPE => seen.kind = string(v).to_owned(),
            NFTA_CHAIN_POLICY => seen.policy = be32(v),
            NFTA_CHAIN_HOOK => {
                let (mut num, mut prio) = (None, None);
                for (t, h) in attrs(v) {
                    match t {
                        NFTA_HOOK_HOOKNUM => num = be32(h),
                        NFTA_HOOK_PRIORITY => prio = be32(h).map(|p| p as i32),
                        _ => {}
                    }
                }
                seen.hook = num.zip(prio);
            }
            _ => {}
        }
    }
    (table == Some(TABLE)).then_some(seen)
}

/// True when the chains are exactly the contract's two.
pub(crate) fn chains_as_contract(chains: &[ChainSeen]) -> bool {
    chains.len() == CHAINS.len()
        && CHAINS.iter().all(|c| {
            chains.iter().any(|s| {
                s.name == c.name
                    && s.kind == "filter"
                    && s.hook == Some((c.hook, 0))
                    && s.policy == Some(c.policy)
            })
        })
}

/// One expression, with the registers checked: anything not reading or writing register 1
/// the way the renderer does is [`Expr::Other`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta(u32),
    Ct(u32),
    Cmp(u32, Value),
    Payload { base: u32, offset: u32, len: u32 },
    Bitwise { mask: Value, xor: Value },
    Lookup(String),
    Verdict(u32),
    Other(String),
}

/// A rule of a rule dump: its chain (an index into [`CHAINS`], `None` for another chain),
/// expressions and comment.
#[derive(Clone, Debug)]
pub(crate) struct RuleSeen {
    pub chain: Option<usize>,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

pub(crate) fn rule(msg: &Message<'_>) -> Option<RuleSeen> {
    let mut table = None;
    let mut seen = RuleSeen {
        chain: None,
        exprs: Vec::new(),
        comment: None,
    };
    for (ty, v) in msg.nf_attrs() {
        match ty {
            NFTA_RULE_TABLE => table = Some(string(v)),
            NFTA_RULE_CHAIN => {
                let name = string(v);
                seen.chain = CHAINS.iter().position(|c| c.name == name);
            }
            NFTA_RULE_EXPRESSIONS => {
                seen.exprs = attrs(v)
                    .filter(|(t, _)| *t == NFTA_LIST_ELEM)
                    .map(|(_, e)| expr(e))
                    .collect();
            }
            NFTA_RULE_USERDATA => seen.comment = comment(v),
            _ => {}
        }
    }
    (table == Some(TABLE)).then_some(seen)
}

/// The comment TLV of libnftnl's rule userdata.
fn comment(mut ud: &[u8]) -> Option<String> {
    while ud.len() >= 2 {
        let (ty, len) = (ud[0], ud[1] as usize);
        let value = ud.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(string(value).to_owned());
        }
        ud = &ud[2 + len..];
    }
    None
}

fn data_value(v: &[u8]) -> Option<Value> {
    attrs(v)
        .find(|(t, _)| *t == NFTA_DATA_VALUE)
        .and_then(|(_, d)| Value::new(d))
}

fn expr(e: &[u8]) -> Expr {
    let mut name = "";
    let mut body: &[u8] = &[];
    for (ty, v) in attrs(e) {
        match ty {
            NFTA_EXPR_NAME => name = string(v),
            NFTA_EXPR_DATA => body = v,
            _ => {}
        }
    }
    let a = |want: u16| attrs(body).find(|(t, _)| *t == want).map(|(_, v)| v);
    let u = |want: u16| a(want).and_then(be32);
    let reg1 = |want: u16| u(want) == Some(NFT_REG_1);
    let other = || Expr::Other(name.to_owned());
    match name {
        "meta" if reg1(NFTA_META_DREG) => u(NFTA_META_KEY).map_or_else(other, Expr::Meta),
        "ct" if reg1(NFTA_CT_DREG) => u(NFTA_CT_KEY).map_or_else(other, Expr::Ct),
        "cmp" if reg1(NFTA_CMP_SREG) => {
            match (u(NFTA_CMP_OP), a(NFTA_CMP_DATA).and_then(data_value)) {
                (Some(op), Some(d)) => Expr::Cmp(op, d),
                _ => other(),
            }
        }
        "payload" if reg1(NFTA_PAYLOAD_DREG) => {
            match (
                u(NFTA_PAYLOAD_BASE),
                u(NFTA_PAYLOAD_OFFSET),
                u(NFTA_PAYLOAD_LEN),
            ) {
                (Some(base), Some(offset), Some(len)) => Expr::Payload { base, offset, len },
                _ => other(),
            }
        }
        "bitwise"
            if reg1(NFTA_BITWISE_SREG)
                && reg1(NFTA_BITWISE_DREG)
                && u(NFTA_BITWISE_OP).unwrap_or(NFT_BITWISE_BOOL) == NFT_BITWISE_BOOL =>
        {
            match (
                a(NFTA_BITWISE_MASK).and_then(data_value),
                a(NFTA_BITWISE_XOR).and_then(data_value),
            ) {
                (Some(mask), Some(xor)) => Expr::Bitwise { mask, xor },
                _ => other(),
            }
        }
        // An inverted lookup (`!=`) or a map lookup is not ours.
        "lookup"
            if reg1(NFTA_LOOKUP_SREG)
                && u(NFTA_LOOKUP_FLAGS).unwrap_or(0) == 0
                && a(3).is_none() =>
        {
            a(NFTA_LOOKUP_SET).map_or_else(other, |s| Expr::Lookup(string(s).to_owned()))
        }
        "immediate" if u(NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) => {
            let code = a(NFTA_IMMEDIATE_DATA)
                .and_then(|d| attrs(d).find(|(t, _)| *t == NFTA_DATA_VERDICT))
                .and_then(|(_, v)| attrs(v).find(|(t, _)| *t == NFTA_VERDICT_CODE))
                .and_then(|(_, c)| be32(c));
            code.map_or_else(other, Expr::Verdict)
        }
        _ => other(),
    }
}

/// The elements of an anonymous interval set, as (key, is interval end), in any order.
pub(crate) fn set_elements(msg: &Message<'_>, out: &mut Elements) {
    for (ty, v) in msg.nf_attrs() {
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        // Any nest type, as the kernel reads it: the kernel dumps NFTA_LIST_ELEM, libnftnl
        // numbers the elements it writes 1, 2, 3...
        for (_, elem) in attrs(v) {
            let mut key = None;
            let mut flags = 0;
            for (t, x) in attrs(elem) {
                match t {
                    NFTA_SET_ELEM_KEY => key = data_value(x),
                    NFTA_SET_ELEM_FLAGS => flags = be32(x).unwrap_or(0),
                    _ => {}
                }
            }
            if let Some(k) = key {
                out.push((k, flags & NFT_SET_ELEM_INTERVAL_END != 0));
            }
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
pub(crate) fn line(rule: &RuleSeen, dir: Dir, set: &mut SetReader<'_>) -> Line {
    let e = &rule.exprs[..];
    let zero = |v: &Value| v.as_slice().iter().all(|b| *b == 0);
    if rule.comment.is_none() {
        match e {
            [Expr::Ct(NFT_CT_STATE), Expr::Bitwise { mask, xor }, Expr::Cmp(NFT_CMP_NEQ, z), Expr::Verdict(NF_ACCEPT)]
                if mask.as_slice() == CT_STATE_ESTABLISHED_RELATED.to_ne_bytes()
                    && xor.as_slice().len() == 4
                    && zero(xor)
                    && z.as_slice().len() == 4
                    && zero(z) =>
            {
                return Line::Established;
            }
            [Expr::Meta(NFT_META_IIFNAME), Expr::Cmp(NFT_CMP_EQ, name), Expr::Verdict(NF_ACCEPT)]
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
        None => Line::Foreign(describe(rule)),
    }
}

fn describe(rule: &RuleSeen) -> String {
    let names: Vec<String> = rule
        .exprs
        .iter()
        .map(|e| match e {
            Expr::Meta(k) => format!("meta({k})"),
            Expr::Ct(k) => format!("ct({k})"),
            Expr::Cmp(op, d) => format!("cmp({op},{d:?})"),
            Expr::Payload { base, offset, len } => format!("payload({base},{offset},{len})"),
            Expr::Bitwise { mask, xor } => format!("bitwise({mask:?},{xor:?})"),
            Expr::Lookup(s) => format!("lookup({s})"),
            Expr::Verdict(v) => format!("verdict({v})"),
            Expr::Other(n) => n.clone(),
        })
        .collect();
    let mut text = names.join(" ");
    if let Some(c) = &rule.comment {
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
