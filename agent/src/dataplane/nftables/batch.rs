//! One nftables transaction: a batch of messages sent as one datagram, which the kernel
//! applies whole or not at all. Each message carries a caller's label, so a refusal (which
//! names the sequence number of the message refused) can say what failed.
//!
//! The layout is libnftnl's, attribute for attribute, so what `nft` reads back from a table
//! this wrote is what it reads from its own.

use super::abi::*;
use super::expr::{Expr, Value};
use super::TableRef;
use crate::dataplane::netlink::message::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::dataplane::netlink::Datagram;

/// A base chain to create.
#[derive(Clone, Copy, Debug)]
pub struct BaseChain<'a> {
    pub name: &'a str,
    /// `filter`, `nat`, `route`.
    pub kind: &'a str,
    pub hook: u32,
    pub priority: i32,
    pub policy: u32,
}

/// An anonymous constant set, created in the transaction that creates the rule using it.
#[derive(Clone, Copy, Debug)]
pub struct AnonSet<'a> {
    /// `NFT_SET_*` flags beyond anonymous and constant (interval).
    pub flags: u32,
    /// nft's datatype id of the key (so `nft list` prints elements as it would its own).
    pub key_type: u32,
    pub key_len: u32,
    /// Keys, each with whether it ends an interval.
    pub elements: &'a [(Value, bool)],
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
#[derive(Debug)]
pub struct Batch<L> {
    d: Datagram,
    first_seq: u32,
    labels: Vec<L>,
    next_set_id: u32,
    /// Where the last message before the batch end starts: it asks for the ack.
    last: usize,
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

fn nfgenmsg(family: u8) -> [u8; NFGENMSG_LEN] {
    // Version NFNETLINK_V0, resource id 0.
    [family, 0, 0, 0]
}

impl<L: Copy> Batch<L> {
    /// Starts a batch whose messages are numbered from `first_seq`. With `genid`, the
    /// kernel commits it only at that ruleset generation (ERESTART otherwise), so a batch
    /// planned from a read is never applied over someone else's later change.
    pub fn new(first_seq: u32, genid: Option<u32>, label: L) -> Batch<L> {
        let mut b = Batch {
            d: Datagram::new(),
            first_seq,
            labels: Vec::new(),
            next_set_id: 1,
            last: 0,
        };
        let d = b.start(NFNL_MSG_BATCH_BEGIN, 0, label);
        // The resource id is the subsystem the batch is for, big-endian.
        let mut h = nfgenmsg(NFPROTO_UNSPEC);
        h[2..4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        d.fixed(&h);
        if let Some(genid) = genid {
            d.attr_be32(NFNL_BATCH_GENID, genid);
        }
        b
    }

    /// Starts the next message, numbered in order.
    fn start(&mut self, ty: u16, flags: u16, label: L) -> &mut Datagram {
        let seq = self.first_seq.wrapping_add(self.labels.len() as u32);
        self.labels.push(label);
        self.last = self.d.len();
        self.d.message(ty, NLM_F_REQUEST | flags, seq)
    }

    /// Starts an nf_tables message about an object of `family`.
    fn object(&mut self, ty: u16, flags: u16, family: u8, label: L) -> &mut Datagram {
        self.start((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, label)
            .fixed(&nfgenmsg(family))
    }

    pub fn delete_table(&mut self, table: TableRef<'_>, label: L) {
        self.object(NFT_MSG_DELTABLE, 0, table.family, label)
            .attr_str(NFTA_TABLE_NAME, table.name)
            .attr_be32(NFTA_TABLE_FLAGS, 0);
    }

    /// Creates the table, or (it exists) sets its flags: adding an existing table is no
    /// error.
    pub fn add_table(&mut self, table: TableRef<'_>, flags: u32, label: L) {
        self.object(NFT_MSG_NEWTABLE, NLM_F_CREATE, table.family, label)
            .attr_str(NFTA_TABLE_NAME, table.name)
            .attr_be32(NFTA_TABLE_FLAGS, flags);
    }

    pub fn add_chain(&mut self, table: TableRef<'_>, chain: &BaseChain<'_>, label: L) {
        let d = self
            .object(NFT_MSG_NEWCHAIN, NLM_F_CREATE, table.family, label)
            .attr_str(NFTA_CHAIN_TABLE, table.name)
            .attr_str(NFTA_CHAIN_NAME, chain.name);
        let hook = d.nest(NFTA_CHAIN_HOOK);
        d.attr_be32(NFTA_HOOK_HOOKNUM, chain.hook)
            .attr_be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
        d.end_nest(hook);
        d.attr_be32(NFTA_CHAIN_POLICY, chain.policy)
            .attr_str(NFTA_CHAIN_TYPE, chain.kind);
    }

    /// Creates an anonymous constant set and its elements (in as many messages as their
    /// list, whose length is a u16, needs). Returns how a rule of this batch looks it up.
    pub fn add_anon_set(&mut self, table: TableRef<'_>, set: &AnonSet<'_>, label: L) -> SetRef {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let d = self
            .object(
                NFT_MSG_NEWSET,
                NLM_F_CREATE | NLM_F_APPEND,
                table.family,
                label,
            )
            .attr_str(NFTA_SET_TABLE, table.name)
            .attr_str(NFTA_SET_NAME, ANON_SET)
            .attr_be32(
                NFTA_SET_FLAGS,
                NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | set.flags,
            )
            .attr_be32(NFTA_SET_KEY_TYPE, set.key_type)
            .attr_be32(NFTA_SET_KEY_LEN, set.key_len)
            .attr_be32(NFTA_SET_ID, id);
        let desc = d.nest(NFTA_SET_DESC);
        d.attr_be32(NFTA_SET_DESC_SIZE, set.elements.len() as u32);
        d.end_nest(desc);

        let mut rest = set.elements;
        while !rest.is_empty() {
            let d = self
                .object(
                    NFT_MSG_NEWSETELEM,
                    NLM_F_CREATE | NLM_F_EXCL,
                    table.family,
                    label,
                )
                .attr_str(NFTA_SET_ELEM_LIST_SET, ANON_SET)
                .attr_be32(NFTA_SET_ELEM_LIST_SET_ID, id)
                .attr_str(NFTA_SET_ELEM_LIST_TABLE, table.name);
            let list = d.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut used = 4;
            let mut n = 0;
            for (i, (key, end)) in rest.iter().enumerate() {
                let size = element_size(key, *end);
                if used + size > usize::from(u16::MAX) {
                    break;
                }
                used += size;
                n += 1;
                // libnftnl numbers the elements it writes; the kernel reads any type.
                let elem = d.nest(i as u16 + 1);
                if *end {
                    d.attr_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                let k = d.nest(NFTA_SET_ELEM_KEY);
                d.attr(NFTA_DATA_VALUE, key.as_slice());
                d.end_nest(k);
                d.end_nest(elem);
            }
            d.end_nest(list);
            rest = &rest[n..];
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
        let d = self
            .object(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                table.family,
                label,
            )
            .attr_str(NFTA_RULE_TABLE, table.name)
            .attr_str(NFTA_RULE_CHAIN, chain);
        if let Some(comment) = comment {
            d.attr(NFTA_RULE_USERDATA, &userdata_comment(comment));
        }
        let list = d.nest(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            e.write(d);
        }
        d.end_nest(list);
    }

    /// Ends the batch. Only the last message before the end asks for an ack: the kernel
    /// then answers with one error per refused message and this one ack, not one ack per
    /// rule.
    pub fn finish(mut self, label: L) -> Transaction<L> {
        let acked = self.last;
        let d = self.start(NFNL_MSG_BATCH_END, 0, label);
        let mut h = nfgenmsg(NFPROTO_UNSPEC);
        h[2..4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        d.fixed(&h);
        let mut bytes = self.d.bytes().to_vec();
        if self.labels.len() > 2 {
            let flags = u16::from_ne_bytes([bytes[acked + 6], bytes[acked + 7]]) | NLM_F_ACK;
            bytes[acked + 6..acked + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        Transaction {
            bytes,
            first_seq: self.first_seq,
            labels: self.labels,
        }
    }
}

/// The bytes an element takes in an element list.
fn element_size(key: &Value, end: bool) -> usize {
    let value = 4 + key.as_slice().len().div_ceil(4) * 4;
    4 + if end { 8 } else { 0 } + 4 + value
}

/// libnftnl's rule userdata: one TLV, type comment, the text NUL-terminated. The text is
/// cut at a NUL and at 254 bytes (the TLV's length is one byte).
pub fn userdata_comment(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().take_while(|&b| b != 0).take(254).collect();
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(NFTNL_UDATA_RULE_COMMENT);
    out.push(text.len() as u8 + 1);
    out.extend_from_slice(&text);
    out.push(0);
    out
}

/// The comment in a rule's userdata, if it has one.
pub fn comment_of(mut ud: &[u8]) -> Option<String> {
    while ud.len() >= 2 {
        let (ty, len) = (ud[0], usize::from(ud[1]));
        let value = ud.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(crate::dataplane::netlink::c_str(value).to_owned());
        }
        ud = &ud[2 + len..];
    }
    None
}
