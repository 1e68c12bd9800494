//! Ruleset -> one nf_tables batch (pure). The batch replaces the whole table in one
//! transaction: delete the table when the kernel has one, create it, its two chains, and per
//! rule its anonymous sets, their elements and the rule. Nothing else is ever named, so no
//! other table or chain can be touched.

use super::abi::*;
use super::netlink::{Writer, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES};
use super::netlink::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use super::render::{prefix_of, AddrMatch, Dir, Family, Line, Match, Ruleset, Verdict};
use super::{Chain, CHAINS, TABLE};

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
}

/// A batch ready to send: the bytes of one datagram and a label per sequence number.
#[derive(Debug)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub first_seq: u32,
    pub labels: Vec<Label>,
}

impl Batch {
    pub fn last_seq(&self) -> u32 {
        self.first_seq + self.labels.len() as u32 - 1
    }

    pub fn label(&self, seq: u32) -> Option<Label> {
        self.labels
            .get(seq.wrapping_sub(self.first_seq) as usize)
            .copied()
    }
}

/// Elements per `NEWSETELEM` message: the element list is one attribute, whose length is a
/// u16, so a 10,000-element set goes out in several messages.
const ELEMENTS_PER_MESSAGE: usize = 1024;

struct Builder {
    w: Writer,
    seq: u32,
    first_seq: u32,
    labels: Vec<Label>,
    next_set_id: u32,
}

impl Builder {
    fn begin(&mut self, ty: u16, flags: u16, label: Label) {
        self.w.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            self.seq,
            NFPROTO_INET,
            0,
        );
        self.seq += 1;
        self.labels.push(label);
    }
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
    genid: u32,
    seq: u32,
) -> Batch {
    let mut b = start(
        seq,
        genid,
        512 + 320 * (ruleset.input.len() + ruleset.output.len()),
    );
    if replace {
        b.begin(NFT_MSG_DELTABLE, 0, Label::DeleteTable);
        b.w.str(NFTA_TABLE_NAME, TABLE);
        b.w.end();
    }
    table(&mut b, table_flags);
    for chain in &CHAINS {
        b.begin(NFT_MSG_NEWCHAIN, NLM_F_CREATE, Label::Chain(chain.name));
        b.w.str(NFTA_CHAIN_TABLE, TABLE);
        b.w.str(NFTA_CHAIN_NAME, chain.name);
        b.w.nest(NFTA_CHAIN_HOOK);
        b.w.u32_be(NFTA_HOOK_HOOKNUM, chain.hook);
        b.w.u32_be(NFTA_HOOK_PRIORITY, 0);
        b.w.end();
        b.w.u32_be(NFTA_CHAIN_POLICY, chain.policy);
        b.w.str(NFTA_CHAIN_TYPE, "filter");
        b.w.end();
    }
    for (chain, lines) in [(&CHAINS[0], &ruleset.input), (&CHAINS[1], &ruleset.output)] {
        for (index, line) in lines.iter().enumerate() {
            rule(&mut b, chain, index, line);
        }
    }
    finish(b)
}

/// The batch that re-creates the table with our flags and nothing else: a persistent table
/// left by an agent that exited is adopted by its next owner without touching its rules.
pub(crate) fn adopt(table_flags: u32, genid: u32, seq: u32) -> Batch {
    let mut b = start(seq, genid, 256);
    table(&mut b, table_flags);
    finish(b)
}

/// The batch that deletes the table.
pub(crate) fn delete(seq: u32) -> Batch {
    let mut b = start(seq, 0, 256);
    b.begin(NFT_MSG_DELTABLE, 0, Label::DeleteTable);
    b.w.str(NFTA_TABLE_NAME, TABLE);
    b.w.end();
    finish(b)
}

/// Opens a batch; a `genid` of 0 commits at any generation.
fn start(seq: u32, genid: u32, capacity: usize) -> Builder {
    let mut b = Builder {
        w: Writer::with_capacity(capacity),
        seq,
        first_seq: seq,
        labels: Vec::new(),
        next_set_id: 1,
    };
    b.w.begin(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        b.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    if genid != 0 {
        b.w.u32_be(NFNL_BATCH_GENID, genid);
    }
    b.w.end();
    b.seq += 1;
    b.labels.push(Label::Begin);
    b
}

fn table(b: &mut Builder, flags: u32) {
    b.begin(NFT_MSG_NEWTABLE, NLM_F_CREATE, Label::CreateTable);
    b.w.str(NFTA_TABLE_NAME, TABLE);
    b.w.u32_be(NFTA_TABLE_FLAGS, flags);
    b.w.end();
}

/// Closes the batch. Only the last message asks for an ack: the kernel answers a batch
/// before `sendmsg` returns, with one error per refused message and this one ack, instead of
/// one ack per rule.
fn finish(mut b: Builder) -> Batch {
    if let Some(start) = last_message_start(&b.w.buf) {
        let flags = u16::from_ne_bytes([b.w.buf[start + 6], b.w.buf[start + 7]]) | NLM_F_ACK;
        b.w.buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    }
    b.w.begin(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        b.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    b.w.end();
    b.labels.push(Label::Batch);
    Batch {
        bytes: b.w.buf,
        first_seq: b.first_seq,
        labels: b.labels,
    }
}

fn last_message_start(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut last = None;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        last = Some(at);
        at += (len + 3) & !3;
    }
    last
}

/// One rule, preceded by the anonymous sets it looks up.
fn rule(b: &mut Builder, chain: &Chain, index: usize, line: &Line) {
    let dir = chain.dir;
    // Sets first: the rule refers to them by their id within this transaction.
    let mut addr_set = None;
    let mut port_set = None;
    if let Line::Match(m) = line {
        if let Some(a) = &m.addr {
            if a.ranges.len() > 1 {
                let key = (a.family.len(), set_type(a.family));
                let ranges: Vec<_> = a.ranges.clone();
                addr_set = Some(set(b, chain.name, index, key, &ranges, a.family.max()));
            }
        }
        if m.ports.len() > 1 {
            let ranges: Vec<_> = m
                .ports
                .iter()
                .map(|&(x, y)| (u128::from(x), u128::from(y)))
                .collect();
            port_set = Some(set(
                b,
                chain.name,
                index,
                (2, TYPE_INET_SERVICE),
                &ranges,
                u128::from(u16::MAX),
            ));
        }
    }

    b.begin(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        Label::Rule {
            chain: chain.name,
            index,
        },
    );
    let w = &mut b.w;
    w.str(NFTA_RULE_TABLE, TABLE);
    w.str(NFTA_RULE_CHAIN, chain.name);
    w.nest(NFTA_RULE_EXPRESSIONS);
    let mut comment = None;
    match line {
        Line::Established => {
            ct_state(w);
            bitwise(w, &CT_STATE_ESTABLISHED_RELATED.to_ne_bytes(), &[0; 4]);
            cmp(w, NFT_CMP_NEQ, &[0; 4]);
            verdict(w, NF_ACCEPT);
        }
        Line::Loopback => {
            meta(w, NFT_META_IIFNAME);
            let mut name = [0u8; 16];
            name[..2].copy_from_slice(b"lo");
            cmp(w, NFT_CMP_EQ, &name);
            verdict(w, NF_ACCEPT);
        }
        Line::WireGuardPort(port) => {
            meta(w, NFT_META_L4PROTO);
            cmp(w, NFT_CMP_EQ, &[super::render::IPPROTO_UDP]);
            payload(w, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            cmp(w, NFT_CMP_EQ, &port.to_be_bytes());
            verdict(w, NF_ACCEPT);
        }
        Line::Match(m) => {
            match_exprs(w, m, dir, addr_set, port_set);
            comment = m.comment.as_deref();
        }
        // Never rendered, only read back.
        Line::Foreign(_) => {}
    }
    w.end();
    if let Some(c) = comment {
        // libnftnl's userdata TLV, which `nft` prints as `comment "..."`.
        let mut ud = Vec::with_capacity(c.len() + 3);
        ud.push(NFTNL_UDATA_RULE_COMMENT);
        ud.push((c.len() + 1) as u8);
        ud.extend_from_slice(c.as_bytes());
        ud.push(0);
        w.attr(NFTA_RULE_USERDATA, &ud);
    }
    w.end();
}

fn set_type(family: Family) -> u32 {
    match family {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    }
}

/// The expressions of a spec-derived rule, in the order (and forms) `nft` itself emits for
/// the same text, so the two are interchangeable.
fn match_exprs(w: &mut Writer, m: &Match, dir: Dir, addr_set: Option<u32>, port_set: Option<u32>) {
    if let Some(a) = &m.addr {
        addr_exprs(w, a, dir, addr_set);
    }
    if let Some(p) = m.proto {
        meta(w, NFT_META_L4PROTO);
        cmp(w, NFT_CMP_EQ, &[p]);
    }
    if !m.ports.is_empty() {
        payload(w, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
        match (port_set, m.ports[0]) {
            (Some(id), _) => lookup(w, id),
            (None, (x, y)) if x == y => cmp(w, NFT_CMP_EQ, &x.to_be_bytes()),
            (None, (x, y)) => {
                cmp(w, NFT_CMP_GTE, &x.to_be_bytes());
                cmp(w, NFT_CMP_LTE, &y.to_be_bytes());
            }
        }
    }
    verdict(
        w,
        match m.verdict {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        },
    );
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

fn addr_exprs(w: &mut Writer, a: &AddrMatch, dir: Dir, set_id: Option<u32>) {
    let nfproto = match a.family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    };
    meta(w, NFT_META_NFPROTO);
    cmp(w, NFT_CMP_EQ, &[nfproto]);
    let off = addr_offset(a.family, dir);
    let len = a.family.len();
    let full = len as u32 * 8;
    if let Some(id) = set_id {
        payload(w, NFT_PAYLOAD_NETWORK_HEADER, off, len as u32);
        lookup(w, id);
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
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, off, n as u32);
            cmp(w, NFT_CMP_EQ, &first[..n]);
        }
        Some(p) => {
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, off, len as u32);
            let mask = addr_bytes(a.family, !(a.family.max() >> p) & a.family.max());
            bitwise(w, &mask, &vec![0; len]);
            cmp(w, NFT_CMP_EQ, &first);
        }
        None => {
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, off, len as u32);
            cmp(w, NFT_CMP_GTE, &first);
            cmp(w, NFT_CMP_LTE, &addr_bytes(a.family, range.1));
        }
    }
    debug_assert!(full >= 32);
}

/// An anonymous constant interval set holding `ranges`, written as nft writes one: a range
/// `[a, b]` is a start element `a` and an end element `b + 1` (none when `b` is the top of
/// the key space), after an end element at 0 when the first range does not start there.
/// Returns the set's id for the rule's lookup.
fn set(
    b: &mut Builder,
    chain: &'static str,
    index: usize,
    (key_len, key_type): (usize, u32),
    ranges: &[(u128, u128)],
    max: u128,
) -> u32 {
    let id = b.next_set_id;
    b.next_set_id += 1;
    let label = Label::Set { chain, index };
    let mut elements: Vec<(u128, bool)> = Vec::with_capacity(ranges.len() * 2 + 1);
    if ranges[0].0 != 0 {
        elements.push((0, true));
    }
    for &(first, last) in ranges {
        elements.push((first, false));
        if last != max {
            elements.push((last + 1, true));
        }
    }

    b.begin(NFT_MSG_NEWSET, NLM_F_CREATE, label);
    b.w.str(NFTA_SET_TABLE, TABLE);
    b.w.str(NFTA_SET_NAME, "__set%d");
    b.w.u32_be(
        NFTA_SET_FLAGS,
        NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL,
    );
    b.w.u32_be(NFTA_SET_KEY_TYPE, key_type);
    b.w.u32_be(NFTA_SET_KEY_LEN, key_len as u32);
    b.w.u32_be(NFTA_SET_ID, id);
    b.w.nest(NFTA_SET_DESC);
    b.w.u32_be(NFTA_SET_DESC_SIZE, elements.len() as u32);
    b.w.end();
    b.w.end();

    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
        b.begin(NFT_MSG_NEWSETELEM, NLM_F_CREATE, label);
        b.w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        b.w.str(NFTA_SET_ELEM_LIST_SET, "__set%d");
        b.w.u32_be(NFTA_SET_ELEM_LIST_SET_ID, id);
        b.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for &(key, end) in chunk {
            b.w.nest(NFTA_LIST_ELEM);
            b.w.nest(NFTA_SET_ELEM_KEY);
            let bytes = key.to_be_bytes();
            b.w.attr(NFTA_DATA_VALUE, &bytes[16 - key_len..]);
            b.w.end();
            if end {
                b.w.u32_be(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            b.w.end();
        }
        b.w.end();
        b.w.end();
    }
    id
}

fn expr(w: &mut Writer, name: &str, body: impl FnOnce(&mut Writer)) {
    w.nest(NFTA_LIST_ELEM);
    w.str(NFTA_EXPR_NAME, name);
    w.nest(NFTA_EXPR_DATA);
    body(w);
    w.end();
    w.end();
}

fn meta(w: &mut Writer, key: u32) {
    expr(w, "meta", |w| {
        w.u32_be(NFTA_META_KEY, key);
        w.u32_be(NFTA_META_DREG, NFT_REG_1);
    });
}

fn ct_state(w: &mut Writer) {
    expr(w, "ct", |w| {
        w.u32_be(NFTA_CT_KEY, NFT_CT_STATE);
        w.u32_be(NFTA_CT_DREG, NFT_REG_1);
    });
}

fn payload(w: &mut Writer, base: u32, offset: u32, len: u32) {
    expr(w, "payload", |w| {
        w.u32_be(NFTA_PAYLOAD_DREG, NFT_REG_1);
        w.u32_be(NFTA_PAYLOAD_BASE, base);
        w.u32_be(NFTA_PAYLOAD_OFFSET, offset);
        w.u32_be(NFTA_PAYLOAD_LEN, len);
    });
}

fn data(w: &mut Writer, ty: u16, value: &[u8]) {
    w.nest(ty);
    w.attr(NFTA_DATA_VALUE, value);
    w.end();
}

fn cmp(w: &mut Writer, op: u32, value: &[u8]) {
    expr(w, "cmp", |w| {
        w.u32_be(NFTA_CMP_SREG, NFT_REG_1);
        w.u32_be(NFTA_CMP_OP, op);
        data(w, NFTA_CMP_DATA, value);
    });
}

fn bitwise(w: &mut Writer, mask: &[u8], xor: &[u8]) {
    expr(w, "bitwise", |w| {
        w.u32_be(NFTA_BITWISE_SREG, NFT_REG_1);
        w.u32_be(NFTA_BITWISE_DREG, NFT_REG_1);
        w.u32_be(NFTA_BITWISE_LEN, mask.len() as u32);
        data(w, NFTA_BITWISE_MASK, mask);
        data(w, NFTA_BITWISE_XOR, xor);
    });
}

fn lookup(w: &mut Writer, set_id: u32) {
    expr(w, "lookup", |w| {
        w.u32_be(NFTA_LOOKUP_SREG, NFT_REG_1);
        w.str(NFTA_LOOKUP_SET, "__set%d");
        w.u32_be(NFTA_LOOKUP_SET_ID, set_id);
    });
}

fn verdict(w: &mut Writer, code: u32) {
    expr(w, "immediate", |w| {
        w.u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        w.nest(NFTA_IMMEDIATE_DATA);
        w.nest(NFTA_DATA_VERDICT);
        w.u32_be(NFTA_VERDICT_CODE, code);
        w.end();
        w.end();
    });
}
