#![allow(dead_code)] // The batch writer the nftables layer replaced, kept for one comparison.
//! Ruleset -> one nf_tables batch (pure). The batch replaces the whole table in one
//! transaction: delete the table when the kernel has one, create it, its two chains, and per
//! rule its anonymous sets, their elements and the rule. Nothing else is ever named, so no
//! other table or chain can be touched.
//!
//! The messages are written by libnftnl through the `nftnl` crate. Where the crate has no
//! setter (table flags, interval set flags and interval-end elements, rule userdata, payload
//! loads of any offset and length) the same libnftnl objects are filled through `nftnl_sys`.
//! The crate's pages are then joined into one datagram and sealed: sequence numbers, the
//! ack policy and the generation the batch was planned at, which the crate does not expose.

use std::ffi::{c_void, CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::{Bitwise, Cmp, CmpOp, Conntrack, Expression, Lookup, Meta};
use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily};

use super::render::{prefix_of, AddrMatch, Dir, Family, Line, Match, Ruleset, Verdict};
use super::{Chain, CHAINS, TABLE};
use crate::dataplane::netlink::message::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE};
use crate::dataplane::nftables::abi::*;

/// What a message of the batch does, so a refusal can say what failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OldLabel {
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
    pub labels: Vec<OldLabel>,
}

impl Batch {
    pub fn last_seq(&self) -> u32 {
        self.first_seq + self.labels.len() as u32 - 1
    }

    pub fn label(&self, seq: u32) -> Option<OldLabel> {
        self.labels
            .get(seq.wrapping_sub(self.first_seq) as usize)
            .copied()
    }
}

/// The name of the set a rule of this batch looks up: the kernel numbers anonymous sets
/// itself, the rule names its set by id within the transaction.
const ANON_SET: &CStr = c"__set%d";

struct Builder {
    batch: nftnl::Batch,
    table: nftnl::Table,
    labels: Vec<OldLabel>,
    next_set_id: u32,
}

impl Builder {
    fn add(&mut self, msg: &impl NlMsg, ty: MsgType, label: OldLabel) {
        self.batch.add(msg, ty);
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
    let mut b = start();
    if replace {
        let table = nftnl::Table::new(b.table.get_name(), ProtoFamily::Inet);
        b.add(&table, MsgType::Del, OldLabel::DeleteTable);
    }
    let created = TableMsg::new(table_flags);
    b.add(&created, MsgType::Add, OldLabel::CreateTable);
    // The crate's objects borrow the table; a second handle keeps `b` mutable.
    let table = nftnl::Table::new(b.table.get_name(), ProtoFamily::Inet);
    for chain in &CHAINS {
        let c = base_chain(&table, chain);
        b.add(&c, MsgType::Add, OldLabel::Chain(chain.name));
    }
    for (chain, lines) in [(&CHAINS[0], &ruleset.input), (&CHAINS[1], &ruleset.output)] {
        let name = CString::new(chain.name).expect("chain names have no NUL");
        let nft_chain = nftnl::Chain::new(&name, &table);
        // The crate builds expressions in the context of a rule (only rejects use it).
        let context = nftnl::Rule::new(&nft_chain);
        for (index, line) in lines.iter().enumerate() {
            rule(&mut b, &table, &context, chain, index, line);
        }
    }
    finish(b, seq, genid)
}

/// The batch that re-creates the table with our flags and nothing else: a persistent table
/// left by an agent that exited is adopted by its next owner without touching its rules.
pub(crate) fn adopt(table_flags: u32, genid: u32, seq: u32) -> Batch {
    let mut b = start();
    let created = TableMsg::new(table_flags);
    b.add(&created, MsgType::Add, OldLabel::CreateTable);
    finish(b, seq, genid)
}

/// The batch that deletes the table.
pub(crate) fn delete(seq: u32) -> Batch {
    let mut b = start();
    let table = nftnl::Table::new(b.table.get_name(), ProtoFamily::Inet);
    b.add(&table, MsgType::Del, OldLabel::DeleteTable);
    finish(b, seq, 0)
}

fn start() -> Builder {
    Builder {
        batch: nftnl::Batch::new(),
        table: nftnl::Table::new(
            CString::new(TABLE).expect("the table name has no NUL"),
            ProtoFamily::Inet,
        ),
        labels: vec![OldLabel::Begin],
        next_set_id: 1,
    }
}

/// Closes the batch: the crate's pages joined into the one datagram the kernel must get
/// (sent page by page, a large batch is refused), then sealed.
fn finish(mut b: Builder, seq: u32, genid: u32) -> Batch {
    b.labels.push(OldLabel::Batch);
    let finalized = b.batch.finalize();
    let pages: Vec<&[u8]> = finalized.iter().collect();
    let bytes = seal(&pages, seq, genid);
    debug_assert_eq!(
        crate::dataplane::netlink::messages(&bytes).count(),
        b.labels.len()
    );
    Batch {
        bytes,
        first_seq: seq,
        labels: b.labels,
    }
}

const NLMSG_HDRLEN: usize = 16;
const NLM_SEQ: usize = 8;
const NLM_FLAGS: usize = 6;

/// Joins `pages` into one datagram (one copy) and seals it: adds `NFNL_BATCH_GENID` to the
/// batch begin when `genid` is not 0, so the kernel commits only at that generation;
/// numbers the messages from `first_seq` (the crate always starts at 1, and skips the batch
/// markers on kernels before 6.10); asks for an ack only on the last message before the
/// batch end (the kernel then answers a batch with one error per refused message and this
/// one ack, instead of one ack per rule).
fn seal(pages: &[&[u8]], first_seq: u32, genid: u32) -> Vec<u8> {
    let total: usize = pages.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total + 8);
    for (i, page) in pages.iter().enumerate() {
        if i == 0 && genid != 0 && page.len() >= NLMSG_HDRLEN {
            let len = message_len(page, 0);
            out.extend_from_slice(&page[..len]);
            out.extend_from_slice(&8u16.to_ne_bytes());
            out.extend_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
            out.extend_from_slice(&genid.to_be_bytes());
            let grown = out.len() as u32;
            out[..4].copy_from_slice(&grown.to_ne_bytes());
            out.extend_from_slice(&page[len..]);
        } else {
            out.extend_from_slice(page);
        }
    }
    let mut at = 0;
    let mut index = 0u32;
    let mut last = None;
    let mut before_last = None;
    while at + NLMSG_HDRLEN <= out.len() {
        let seq = first_seq.wrapping_add(index);
        out[at + NLM_SEQ..at + NLM_SEQ + 4].copy_from_slice(&seq.to_ne_bytes());
        set_ack(&mut out[at..], false);
        before_last = last;
        last = Some(at);
        index += 1;
        at += message_len(&out, at);
    }
    // Batch begin, at least one message, batch end.
    if let (true, Some(at)) = (index > 2, before_last) {
        set_ack(&mut out[at..], true);
    }
    out
}

/// The aligned length of the message at `at`, never past the end nor under a header.
fn message_len(buf: &[u8], at: usize) -> usize {
    let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    ((len + 3) & !3).clamp(NLMSG_HDRLEN, buf.len() - at)
}

fn set_ack(msg: &mut [u8], on: bool) {
    let mut flags = u16::from_ne_bytes([msg[NLM_FLAGS], msg[NLM_FLAGS + 1]]);
    if on {
        flags |= NLM_F_ACK;
    } else {
        flags &= !NLM_F_ACK;
    }
    msg[NLM_FLAGS..NLM_FLAGS + 2].copy_from_slice(&flags.to_ne_bytes());
}

/// `NEWTABLE` with flags: `nftnl::Table` has no setter for them.
struct TableMsg {
    table: NonNull<sys::nftnl_table>,
}

impl TableMsg {
    fn new(flags: u32) -> TableMsg {
        let name = CString::new(TABLE).expect("the table name has no NUL");
        // SAFETY: a fresh libnftnl table, checked for NULL; the setters copy their values.
        unsafe {
            let table = NonNull::new(sys::nftnl_table_alloc()).expect("allocate an nftnl table");
            sys::nftnl_table_set_str(table.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(
                table.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                u32::from(NFPROTO_INET),
            );
            sys::nftnl_table_set_u32(table.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, flags);
            TableMsg { table }
        }
    }
}

// SAFETY: `write` builds one message into `buf`, which the batch sizes for the largest one.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (NFT_MSG_NEWTABLE, NLM_F_CREATE),
            MsgType::Del => (NFT_MSG_DELTABLE, 0),
        };
        // SAFETY: the caller gives room for a whole message; the table is alive.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty,
                u16::from(NFPROTO_INET),
                flags,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(header, self.table.as_ptr());
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_table_free(self.table.as_ptr()) };
    }
}

fn base_chain<'a>(table: &'a nftnl::Table, chain: &Chain) -> nftnl::Chain<'a> {
    let name = CString::new(chain.name).expect("chain names have no NUL");
    let mut c = nftnl::Chain::new(&name, table);
    let hook = match chain.hook {
        NF_INET_LOCAL_IN => Hook::In,
        _ => Hook::Out,
    };
    debug_assert_eq!(hook as u32, chain.hook);
    c.set_hook(hook, 0);
    c.set_policy(if chain.policy == NF_DROP {
        Policy::Drop
    } else {
        Policy::Accept
    });
    c.set_type(ChainType::Filter);
    c
}

/// `NEWRULE` built on libnftnl's rule object: `nftnl::Rule` keeps its object private, and
/// its comment setter stops at 125 bytes where nft (and the contract) allow 128.
struct RuleMsg {
    rule: NonNull<sys::nftnl_rule>,
}

impl RuleMsg {
    fn new(table: &CStr, chain: &CStr) -> RuleMsg {
        // SAFETY: a fresh libnftnl rule, checked for NULL; the setters copy their values.
        unsafe {
            let rule = NonNull::new(sys::nftnl_rule_alloc()).expect("allocate an nftnl rule");
            sys::nftnl_rule_set_u32(
                rule.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                u32::from(NFPROTO_INET),
            );
            sys::nftnl_rule_set_str(rule.as_ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            sys::nftnl_rule_set_str(rule.as_ptr(), sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
            RuleMsg { rule }
        }
    }

    fn push(&mut self, context: &nftnl::Rule<'_>, expr: &impl Expression) {
        let expr = expr.to_expr(context);
        // SAFETY: `expr` is a fresh libnftnl expression; the rule takes ownership of it.
        unsafe { sys::nftnl_rule_add_expr(self.rule.as_ptr(), expr.as_ptr()) };
    }

    /// libnftnl's userdata TLV, which `nft` prints as `comment "..."`.
    fn comment(&mut self, text: &str) {
        let text: Vec<u8> = text.bytes().take_while(|&b| b != 0).collect();
        let text = CString::new(text).expect("NUL removed");
        // SAFETY: the buffer is checked for NULL and freed after the rule copied its data.
        unsafe {
            let buf = NonNull::new(sys::nftnl_udata_buf_alloc(256)).expect("allocate userdata");
            let fits = sys::nftnl_udata_put_strz(
                buf.as_ptr(),
                sys::NFTNL_UDATA_RULE_COMMENT as u8,
                text.as_ptr(),
            );
            debug_assert!(fits, "comment of {} bytes", text.as_bytes().len());
            sys::nftnl_rule_set_data(
                self.rule.as_ptr(),
                sys::NFTNL_RULE_USERDATA as u16,
                sys::nftnl_udata_buf_data(buf.as_ptr()),
                sys::nftnl_udata_buf_len(buf.as_ptr()),
            );
            sys::nftnl_udata_buf_free(buf.as_ptr());
        }
    }
}

// SAFETY: `write` builds one message into `buf`, which the batch sizes for the largest one.
unsafe impl NlMsg for RuleMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        // SAFETY: the caller gives room for a whole message; the rule is alive.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                NFT_MSG_NEWRULE,
                u16::from(NFPROTO_INET),
                NLM_F_CREATE | NLM_F_APPEND,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(header, self.rule.as_ptr());
        }
    }
}

impl Drop for RuleMsg {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once (with its expressions).
        unsafe { sys::nftnl_rule_free(self.rule.as_ptr()) };
    }
}

/// A payload load of any offset and length into register 1 (the crate only knows whole
/// header fields; a /24 loads three bytes).
struct Load {
    base: u32,
    offset: u32,
    len: u32,
}

impl Expression for Load {
    fn to_expr(&self, _rule: &nftnl::Rule<'_>) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh libnftnl expression, checked for NULL; the setters copy values.
        unsafe {
            let expr =
                NonNull::new(sys::nftnl_expr_alloc(c"payload".as_ptr())).expect("allocate expr");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, self.base);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.offset);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, self.len);
            expr
        }
    }
}

fn load(base: u32, offset: u32, len: u32) -> Load {
    Load { base, offset, len }
}

fn cmp(op: CmpOp, value: &[u8]) -> Cmp<&[u8]> {
    Cmp::new(op, value)
}

fn verdict(v: Verdict) -> nftnl::expr::Verdict {
    match v {
        Verdict::Accept => nftnl::expr::Verdict::Accept,
        Verdict::Drop => nftnl::expr::Verdict::Drop,
    }
}

/// One rule, preceded by the anonymous sets it looks up.
fn rule(
    b: &mut Builder,
    table: &nftnl::Table,
    context: &nftnl::Rule<'_>,
    chain: &Chain,
    index: usize,
    line: &Line,
) {
    let dir = chain.dir;
    let label_set = OldLabel::Set {
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
                    Family::V4 => set::<Ipv4Addr>(b, table, label_set, &a.ranges, a.family.max()),
                    Family::V6 => set::<Ipv6Addr>(b, table, label_set, &a.ranges, a.family.max()),
                });
            }
        }
        if m.ports.len() > 1 {
            let ranges: Vec<_> = m
                .ports
                .iter()
                .map(|&(x, y)| (u128::from(x), u128::from(y)))
                .collect();
            port_set = Some(set::<Port>(
                b,
                table,
                label_set,
                &ranges,
                u128::from(u16::MAX),
            ));
        }
    }

    let mut r = RuleMsg::new(table.get_name(), context.get_chain().get_name());
    match line {
        Line::Established => {
            r.push(context, &Conntrack::State);
            let mask = CT_STATE_ESTABLISHED_RELATED.to_ne_bytes();
            r.push(context, &Bitwise::new(&mask[..], &[0u8; 4][..]));
            r.push(context, &cmp(CmpOp::Neq, &[0; 4]));
            r.push(context, &nftnl::expr::Verdict::Accept);
        }
        Line::Loopback => {
            r.push(context, &Meta::IifName);
            let mut name = [0u8; 16];
            name[..2].copy_from_slice(b"lo");
            r.push(context, &cmp(CmpOp::Eq, &name));
            r.push(context, &nftnl::expr::Verdict::Accept);
        }
        Line::WireGuardPort(port) => {
            r.push(context, &Meta::L4Proto);
            r.push(context, &cmp(CmpOp::Eq, &[super::render::IPPROTO_UDP]));
            r.push(context, &load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
            r.push(context, &cmp(CmpOp::Eq, &port.to_be_bytes()));
            r.push(context, &nftnl::expr::Verdict::Accept);
        }
        Line::Match(m) => {
            match_exprs(
                &mut r,
                context,
                m,
                dir,
                addr_set.as_ref(),
                port_set.as_ref(),
            );
            if let Some(c) = &m.comment {
                r.comment(c);
            }
        }
        // Never rendered, only read back.
        Line::Foreign(_) => {}
    }
    b.add(
        &r,
        MsgType::Add,
        OldLabel::Rule {
            chain: chain.name,
            index,
        },
    );
}

/// The expressions of a spec-derived rule, in the order (and forms) `nft` itself emits for
/// the same text, so the two are interchangeable.
fn match_exprs(
    r: &mut RuleMsg,
    context: &nftnl::Rule<'_>,
    m: &Match,
    dir: Dir,
    addr_set: Option<&Lookup>,
    port_set: Option<&Lookup>,
) {
    if let Some(a) = &m.addr {
        addr_exprs(r, context, a, dir, addr_set);
    }
    if let Some(p) = m.proto {
        r.push(context, &Meta::L4Proto);
        r.push(context, &cmp(CmpOp::Eq, &[p]));
    }
    if !m.ports.is_empty() {
        r.push(context, &load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
        match (port_set, m.ports[0]) {
            (Some(lookup), _) => r.push(context, lookup),
            (None, (x, y)) if x == y => r.push(context, &cmp(CmpOp::Eq, &x.to_be_bytes())),
            (None, (x, y)) => {
                r.push(context, &cmp(CmpOp::Gte, &x.to_be_bytes()));
                r.push(context, &cmp(CmpOp::Lte, &y.to_be_bytes()));
            }
        }
    }
    r.push(context, &verdict(m.verdict));
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

fn addr_exprs(
    r: &mut RuleMsg,
    context: &nftnl::Rule<'_>,
    a: &AddrMatch,
    dir: Dir,
    set: Option<&Lookup>,
) {
    let nfproto = match a.family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    };
    r.push(context, &Meta::NfProto);
    r.push(context, &cmp(CmpOp::Eq, &[nfproto]));
    let off = addr_offset(a.family, dir);
    let len = a.family.len();
    if let Some(lookup) = set {
        r.push(context, &load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
        r.push(context, lookup);
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
            r.push(context, &load(NFT_PAYLOAD_NETWORK_HEADER, off, n as u32));
            r.push(context, &cmp(CmpOp::Eq, &first[..n]));
        }
        Some(p) => {
            r.push(context, &load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
            let mask = addr_bytes(a.family, !(a.family.max() >> p) & a.family.max());
            let xor = vec![0u8; len];
            r.push(context, &Bitwise::new(&mask[..], &xor[..]));
            r.push(context, &cmp(CmpOp::Eq, &first));
        }
        None => {
            r.push(context, &load(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32));
            r.push(context, &cmp(CmpOp::Gte, &first));
            r.push(context, &cmp(CmpOp::Lte, &addr_bytes(a.family, range.1)));
        }
    }
}

/// A port as an `inet_service` set key (the crate has keys for addresses only).
struct Port(u16);

impl SetKey for Port {
    const TYPE: u32 = TYPE_INET_SERVICE;
    const LEN: u32 = 2;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0.to_be_bytes())
    }
}

/// An anonymous constant interval set holding `ranges`, written as nft writes one: a range
/// `[a, b]` is a start element `a` and an end element `b + 1` (none when `b` is the top of
/// the key space), after an end element at 0 when the first range does not start there.
/// libnftnl splits the elements over as many messages as their u16-sized list needs.
/// Returns the rule's lookup of it.
fn set<K: SetKey>(
    b: &mut Builder,
    table: &nftnl::Table,
    label: OldLabel,
    ranges: &[(u128, u128)],
    max: u128,
) -> Lookup {
    let id = b.next_set_id;
    b.next_set_id += 1;
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

    let set: Set<'_, K> = Set::new(ANON_SET, id, table, ProtoFamily::Inet);
    let raw = set.as_ptr().as_ptr();
    let key_len = K::LEN as usize;
    // SAFETY: `raw` is the set's live libnftnl object; the setters copy their values, and
    // each element, checked for NULL, is handed over to the set, which frees it.
    unsafe {
        sys::nftnl_set_set_u32(
            raw,
            sys::NFTNL_SET_FLAGS as u16,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL,
        );
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DESC_SIZE as u16, elements.len() as u32);
        for &(key, end) in &elements {
            let elem = NonNull::new(sys::nftnl_set_elem_alloc()).expect("allocate an element");
            let bytes = key.to_be_bytes();
            sys::nftnl_set_elem_set(
                elem.as_ptr(),
                sys::NFTNL_SET_ELEM_KEY as u16,
                bytes[16 - key_len..].as_ptr().cast(),
                key_len as u32,
            );
            if end {
                sys::nftnl_set_elem_set_u32(
                    elem.as_ptr(),
                    sys::NFTNL_SET_ELEM_FLAGS as u16,
                    NFT_SET_ELEM_INTERVAL_END,
                );
            }
            sys::nftnl_set_elem_add(raw, elem.as_ptr());
        }
    }
    b.add(&set, MsgType::Add, label);
    for part in set.elems_iter() {
        b.add(&part, MsgType::Add, label);
    }
    Lookup::new(&set)
}
