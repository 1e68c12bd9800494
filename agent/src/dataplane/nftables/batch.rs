//! One nftables transaction, written by libnftnl (the `nftnl` crate): a batch of messages
//! sent as one datagram, which the kernel applies whole or not at all. Each message carries a
//! caller's label, so a refusal (which names the sequence number of the message refused) can
//! say what failed.
//!
//! Tables, chains, sets and their element messages are the crate's objects. Where the crate
//! has no setter, the same libnftnl objects are filled through `nftnl_sys`, each in a small
//! block: table flags, set flags (intervals) and interval-end elements, rules (the crate's
//! comment stops at 125 bytes where nft allows 128, and it cannot delete by handle) and
//! expressions (see [`Expr::to_nftnl`]). The crate's pages are then joined into one presized
//! datagram and sealed with what the crate does not expose: the sequence numbers, the ack
//! policy and the generation the batch was planned at.

use std::ffi::{c_void, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily};

use super::abi::*;
use super::expr::{Expr, Value};
use super::keyed::{Position, RuleKey};
use super::TableRef;
use crate::dataplane::netlink::message::{NLMSG_HDRLEN, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE};

/// `NLM_F_ECHO`: the kernel sends the committed object back to the sender, with the handle
/// it gave it.
const NLM_F_ECHO: u16 = libc::NLM_F_ECHO as u16;
/// The kernel's bound on a rule's userdata (`NFT_USERDATA_MAXLEN`).
const USERDATA_BYTES: usize = 256;

/// A base chain to create.
#[derive(Clone, Copy, Debug)]
pub struct BaseChain<'a> {
    pub name: &'a str,
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
}

/// An `inet_service` set key: a port (the crate has keys for addresses only).
#[derive(Clone, Copy, Debug)]
pub struct InetService(pub u16);

impl SetKey for InetService {
    const TYPE: u32 = TYPE_INET_SERVICE;
    const LEN: u32 = 2;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0.to_be_bytes())
    }
}

/// How a rule refers to a set made earlier in the same batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRef {
    pub name: &'static str,
    pub id: u32,
}

/// The name under which the kernel numbers anonymous sets itself.
const ANON_SET: &str = "__set%d";

/// A transaction being written.
pub struct Batch<L> {
    batch: nftnl::Batch,
    first_seq: u32,
    genid: Option<u32>,
    labels: Vec<L>,
    next_set_id: u32,
    echo: bool,
}

impl<L> std::fmt::Debug for Batch<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("first_seq", &self.first_seq)
            .field("messages", &self.labels.len())
            .finish()
    }
}

/// A finished transaction: its bytes, and a label per sequence number.
#[derive(Debug)]
pub struct Transaction<L> {
    pub bytes: Vec<u8>,
    pub first_seq: u32,
    pub labels: Vec<L>,
}

impl<L: Copy> Transaction<L> {
    pub fn last_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(self.labels.len() as u32)
            .wrapping_sub(1)
    }

    /// The label of the message numbered `seq`.
    pub fn label(&self, seq: u32) -> Option<L> {
        self.labels
            .get(seq.wrapping_sub(self.first_seq) as usize)
            .copied()
    }

    /// The message the kernel acknowledges when the batch succeeds: the last before the end.
    pub fn acked_seq(&self) -> u32 {
        self.last_seq().wrapping_sub(1)
    }
}

fn c_string(s: &str) -> CString {
    CString::new(s.bytes().take_while(|&b| b != 0).collect::<Vec<u8>>()).expect("NUL removed")
}

fn table_of(table: TableRef<'_>) -> nftnl::Table {
    nftnl::Table::new(c_string(table.name), table.family)
}

impl<L: Copy> Batch<L> {
    /// Starts a batch whose messages are numbered from `first_seq`. With `genid`, the
    /// kernel commits it only at that ruleset generation (ERESTART otherwise), so a batch
    /// planned from a read is never applied over someone else's later change.
    pub fn new(first_seq: u32, genid: Option<u32>, label: L) -> Batch<L> {
        Batch {
            batch: nftnl::Batch::new(),
            first_seq,
            genid,
            labels: vec![label],
            next_set_id: 1,
            echo: false,
        }
    }

    /// Asks the kernel to echo every rule this batch adds, as committed (with the handle it
    /// was given): [`super::Nft::commit_echoed`] returns them.
    pub fn echo_rules(mut self) -> Batch<L> {
        self.echo = true;
        self
    }

    fn add(&mut self, msg: &impl NlMsg, ty: MsgType, label: L) {
        self.batch.add(msg, ty);
        self.labels.push(label);
    }

    pub fn delete_table(&mut self, table: TableRef<'_>, label: L) {
        self.add(&table_of(table), MsgType::Del, label);
    }

    /// Creates the table, or (it exists) sets its flags: adding an existing table is no
    /// error.
    pub fn add_table(&mut self, table: TableRef<'_>, flags: u32, label: L) {
        self.add(&TableMsg::new(table, flags), MsgType::Add, label);
    }

    /// [`Batch::add_table`], and asks the kernel to echo the table once committed, so
    /// [`super::Nft::commit`] returns it with its handle and owner.
    pub fn add_table_echoed(&mut self, table: TableRef<'_>, flags: u32, label: L) {
        let mut t = TableMsg::new(table, flags);
        t.echo = true;
        self.add(&t, MsgType::Add, label);
    }

    pub fn add_chain(&mut self, table: TableRef<'_>, chain: &BaseChain<'_>, label: L) {
        let t = table_of(table);
        let mut c = nftnl::Chain::new(c_string(chain.name), &t);
        c.set_hook(chain.hook, chain.priority);
        c.set_type(chain.kind);
        c.set_policy(chain.policy);
        self.add(&c, MsgType::Add, label);
    }

    /// Creates an anonymous constant set of keys `K` (its type and length are the key's),
    /// with `flags` beyond anonymous and constant (`NFT_SET_INTERVAL`), and its elements:
    /// each a key and whether it ends an interval, in as many messages as their list, whose
    /// length is a u16, needs. Returns how a rule of this batch looks it up.
    pub fn add_anon_set<K: SetKey>(
        &mut self,
        table: TableRef<'_>,
        flags: u32,
        elements: &[(Value, bool)],
        label: L,
    ) -> SetRef {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let t = table_of(table);
        let name = c_string(ANON_SET);
        let set: Set<'_, K> = Set::new(&name, id, &t, table.family);
        let raw = set.as_ptr().as_ptr();
        // SAFETY: `raw` is the set's live libnftnl object; the setters copy their values, and
        // each element, checked for NULL, is handed over to the set, which frees it.
        unsafe {
            sys::nftnl_set_set_u32(
                raw,
                sys::NFTNL_SET_FLAGS as u16,
                NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | flags,
            );
            sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DESC_SIZE as u16, elements.len() as u32);
            for (key, end) in elements {
                let elem = NonNull::new(sys::nftnl_set_elem_alloc()).expect("allocate an element");
                let key = key.as_slice();
                sys::nftnl_set_elem_set(
                    elem.as_ptr(),
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast(),
                    key.len() as u32,
                );
                if *end {
                    sys::nftnl_set_elem_set_u32(
                        elem.as_ptr(),
                        sys::NFTNL_SET_ELEM_FLAGS as u16,
                        NFT_SET_ELEM_INTERVAL_END,
                    );
                }
                sys::nftnl_set_elem_add(raw, elem.as_ptr());
            }
        }
        self.add(&set, MsgType::Add, label);
        for part in set.elems_iter() {
            self.add(&part, MsgType::Add, label);
        }
        SetRef { name: ANON_SET, id }
    }

    /// Appends a rule to `chain`, with `comment` in its userdata as `nft` keeps it.
    pub fn add_rule(
        &mut self,
        table: TableRef<'_>,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
        label: L,
    ) {
        let mut r = RuleMsg::new(table, chain);
        for e in exprs {
            r.push(e);
        }
        r.userdata(comment, None);
        self.add(&r, MsgType::Add, label);
    }

    /// Adds a rule carrying `key` (and `comment`) in its userdata to `chain` at `at`, and
    /// asks the kernel to echo it once committed, so [`super::Nft::commit`] returns the
    /// handle it got (see [`super::keyed`]).
    #[allow(clippy::too_many_arguments)]
    pub fn add_keyed_rule(
        &mut self,
        table: TableRef<'_>,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
        key: RuleKey,
        at: Position,
        label: L,
    ) {
        let mut r = RuleMsg::new(table, chain);
        for e in exprs {
            r.push(e);
        }
        r.userdata(comment, Some(key));
        r.echo = true;
        if let Position::Before(handle) = at {
            r.append = false;
            // SAFETY: the rule object is alive; the setter copies the value.
            unsafe {
                sys::nftnl_rule_set_u64(r.rule.as_ptr(), sys::NFTNL_RULE_POSITION as u16, handle);
            }
        }
        self.add(&r, MsgType::Add, label);
    }

    /// Deletes the rule numbered `handle` of `chain` (the handle a dump reports).
    pub fn delete_rule(&mut self, table: TableRef<'_>, chain: &str, handle: u64, label: L) {
        let r = RuleMsg::new(table, chain);
        // SAFETY: the rule object is alive; the setter copies the value.
        unsafe {
            sys::nftnl_rule_set_u64(r.rule.as_ptr(), sys::NFTNL_RULE_HANDLE as u16, handle);
        }
        self.add(&r, MsgType::Del, label);
    }

    /// Ends the batch: the crate's pages joined into the one datagram the kernel must get
    /// (sent page by page, a large batch is refused), then sealed.
    pub fn finish(mut self, label: L) -> Transaction<L> {
        self.labels.push(label);
        let finalized = self.batch.finalize();
        let pages: Vec<&[u8]> = finalized.iter().collect();
        let mut bytes = seal(&pages, self.first_seq, self.genid);
        if self.echo {
            echo_new_rules(&mut bytes);
        }
        debug_assert_eq!(
            crate::dataplane::netlink::messages(&bytes).count(),
            self.labels.len()
        );
        Transaction {
            bytes,
            first_seq: self.first_seq,
            labels: self.labels,
        }
    }
}

const NLM_SEQ: usize = 8;
const NLM_FLAGS: usize = 6;

/// Joins `pages` into one datagram (one copy into a presized buffer) and seals it: adds
/// `NFNL_BATCH_GENID` to the batch begin when there is a `genid`, so the kernel commits only
/// at that generation; numbers the messages from `first_seq` (the crate starts at 1, and
/// leaves the batch markers unnumbered on kernels before 6.10); asks for an ack only on the
/// last message before the batch end (the kernel then answers a batch with one error per
/// refused message and this one ack, instead of one ack per rule).
fn seal(pages: &[&[u8]], first_seq: u32, genid: Option<u32>) -> Vec<u8> {
    let total: usize = pages.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total + 8);
    for (i, page) in pages.iter().enumerate() {
        match genid {
            Some(genid) if i == 0 && page.len() >= NLMSG_HDRLEN => {
                let len = message_len(page, 0);
                out.extend_from_slice(&page[..len]);
                out.extend_from_slice(&8u16.to_ne_bytes());
                out.extend_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
                out.extend_from_slice(&genid.to_be_bytes());
                let grown = out.len() as u32;
                out[..4].copy_from_slice(&grown.to_ne_bytes());
                out.extend_from_slice(&page[len..]);
            }
            _ => out.extend_from_slice(page),
        }
    }
    let mut at = 0;
    let mut index = 0u32;
    let (mut last, mut before_last) = (None, None);
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

/// Sets `NLM_F_ECHO` on every `NFT_MSG_NEWRULE` of a sealed batch.
fn echo_new_rules(out: &mut [u8]) {
    let newrule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
    let mut at = 0;
    while at + NLMSG_HDRLEN <= out.len() {
        let ty = u16::from_ne_bytes([out[at + 4], out[at + 5]]);
        if ty == newrule {
            let mut flags = u16::from_ne_bytes([out[at + NLM_FLAGS], out[at + NLM_FLAGS + 1]]);
            flags |= libc::NLM_F_ECHO as u16;
            out[at + NLM_FLAGS..at + NLM_FLAGS + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        at += message_len(out, at);
    }
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

/// `NEWTABLE` with flags: `nftnl::Table` sets them to 0 and has no setter.
struct TableMsg {
    table: NonNull<sys::nftnl_table>,
    family: ProtoFamily,
    echo: bool,
}

impl TableMsg {
    fn new(table: TableRef<'_>, flags: u32) -> TableMsg {
        let name = c_string(table.name);
        // SAFETY: a fresh libnftnl table, checked for NULL; the setters copy their values.
        unsafe {
            let t = NonNull::new(sys::nftnl_table_alloc()).expect("allocate an nftnl table");
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                table.family as u32,
            );
            sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, flags);
            TableMsg {
                table: t,
                family: table.family,
                echo: false,
            }
        }
    }
}

// SAFETY: `write` builds one message into `buf`, which the batch sizes for the largest one.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        // SAFETY: the caller gives room for a whole message; the table is alive.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                NFT_MSG_NEWTABLE,
                self.family as u16,
                if self.echo {
                    NLM_F_CREATE | NLM_F_ECHO
                } else {
                    NLM_F_CREATE
                },
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

/// `NEWRULE` (appended, or inserted before a position) or `DELRULE` (by handle) on
/// libnftnl's rule object: `nftnl::Rule` keeps its object private, its comment setter stops
/// at 125 bytes where nft (and the contract) allow 128, it has no userdata of its own, no
/// position and no echo, and its expressions are fixed to register 1.
struct RuleMsg {
    rule: NonNull<sys::nftnl_rule>,
    family: ProtoFamily,
    /// Added at the end (or after its position) rather than before its position.
    append: bool,
    echo: bool,
}

impl RuleMsg {
    fn new(table: TableRef<'_>, chain: &str) -> RuleMsg {
        let (name, chain) = (c_string(table.name), c_string(chain));
        // SAFETY: a fresh libnftnl rule, checked for NULL; the setters copy their values.
        unsafe {
            let rule = NonNull::new(sys::nftnl_rule_alloc()).expect("allocate an nftnl rule");
            sys::nftnl_rule_set_u32(
                rule.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                table.family as u32,
            );
            sys::nftnl_rule_set_str(rule.as_ptr(), sys::NFTNL_RULE_TABLE as u16, name.as_ptr());
            sys::nftnl_rule_set_str(rule.as_ptr(), sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
            RuleMsg {
                rule,
                family: table.family,
                append: true,
                echo: false,
            }
        }
    }

    fn push(&mut self, expr: &Expr) {
        if let Some(expr) = expr.to_nftnl() {
            // SAFETY: `expr` is a fresh libnftnl expression; the rule takes ownership of it.
            unsafe { sys::nftnl_rule_add_expr(self.rule.as_ptr(), expr.as_ptr()) };
        }
    }

    /// libnftnl's userdata TLVs: the comment `nft` prints as `comment "..."` (cut at a NUL,
    /// and to what the kernel's 256 bytes of userdata leave room for), and the key.
    fn userdata(&mut self, comment: Option<&str>, key: Option<RuleKey>) {
        if comment.is_none() && key.is_none() {
            return;
        }
        let room = USERDATA_BYTES - 3 - key.map_or(0, |_| 2 + RuleKey::LEN);
        // SAFETY: the buffer is checked for NULL and sized for the kernel's bound, which the
        // TLVs fit by construction; the rule copies the data before the buffer is freed.
        unsafe {
            let buf = NonNull::new(sys::nftnl_udata_buf_alloc(USERDATA_BYTES as u32))
                .expect("allocate userdata");
            if let Some(text) = comment {
                let text: Vec<u8> = text.bytes().take_while(|&b| b != 0).take(room).collect();
                let text = CString::new(text).expect("NUL removed");
                let fits =
                    sys::nftnl_udata_put_strz(buf.as_ptr(), UDATA_RULE_COMMENT, text.as_ptr());
                debug_assert!(fits, "comment of {} bytes", text.as_bytes().len());
            }
            if let Some(key) = key {
                let fits = sys::nftnl_udata_put(
                    buf.as_ptr(),
                    UDATA_RULE_KEY,
                    RuleKey::LEN as u32,
                    key.0.as_ptr().cast(),
                );
                debug_assert!(fits, "rule key");
            }
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
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, mut flags) = match msg_type {
            MsgType::Add if self.append => (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND),
            MsgType::Add => (NFT_MSG_NEWRULE, NLM_F_CREATE),
            MsgType::Del => (NFT_MSG_DELRULE, 0),
        };
        if self.echo {
            flags |= NLM_F_ECHO;
        }
        // SAFETY: the caller gives room for a whole message; the rule is alive.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty,
                self.family as u16,
                flags,
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

/// One `NEWRULE` message of `exprs` (and `comment` and `key`) as libnftnl writes it: what a
/// batch carries for the rule, for tests and fuzz targets that read rules back.
pub fn rule_message(
    table: TableRef<'_>,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    key: Option<RuleKey>,
) -> Vec<u8> {
    let mut r = RuleMsg::new(table, chain);
    for e in exprs {
        r.push(e);
    }
    r.userdata(comment, key);
    let mut buf = vec![0u64; nftnl::nft_nlmsg_maxsize() as usize / 8 + 1];
    // SAFETY: `buf` is aligned and as large as the largest nf_tables message.
    unsafe { r.write(buf.as_mut_ptr().cast(), 1, MsgType::Add) };
    // SAFETY: any u64 buffer is readable as bytes.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 8) };
    let len = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    bytes[..len].to_vec()
}

/// What a rule's userdata carries that this layer reads: the comment and the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Userdata {
    pub comment: Option<String>,
    pub key: Option<RuleKey>,
}

impl Userdata {
    /// Reads libnftnl's TLVs; others are skipped, a truncated one ends the reading.
    pub fn read(mut ud: &[u8]) -> Userdata {
        let mut out = Userdata::default();
        while ud.len() >= 2 {
            let (ty, len) = (ud[0], usize::from(ud[1]));
            let Some(value) = ud.get(2..2 + len) else {
                break;
            };
            match ty {
                UDATA_RULE_COMMENT => {
                    out.comment = Some(crate::dataplane::netlink::c_str(value).to_owned())
                }
                UDATA_RULE_KEY => out.key = RuleKey::from_slice(value),
                _ => {}
            }
            ud = &ud[2 + len..];
        }
        out
    }
}
