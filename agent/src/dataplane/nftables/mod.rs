//! nftables over netlink, for any table: the socket that reads tables, chains, rules and set
//! elements and commits transactions, the typed expressions ([`expr`]), the transaction
//! writer ([`batch`], libnftnl through the `nftnl` crate), keyed rules and the diff that
//! changes a chain rule by rule ([`keyed`]), and the notification decoder ([`events`]).
//! Requests are libnftnl's; what the kernel answers and announces is read by our typed
//! decoder (libnftnl has no safe parser) over neli's attribute reader (`netlink::Attrs`, which
//! leaves payloads in place). The firewall is one user; nothing here knows its table.
//!
//! Reads go through the netlink layer's exchange loop (a dump the kernel flags interrupted
//! is read again). A transaction is one datagram followed by a fence (a request the kernel
//! only acknowledges): the kernel has queued every answer to the batch before the fence's,
//! so the fence's ack ends the reading.

pub mod abi;
pub mod batch;
pub mod events;
pub mod expr;
pub mod keyed;

use std::io;

use abi::*;
use batch::{Transaction, Userdata};
use expr::{Expr, Value};
use keyed::RuleKey;

use std::ffi::CString;
use std::ptr::NonNull;

use neli::types::{Buffer, GenlBuffer};
use nftnl::nftnl_sys as sys;

use super::netlink::message::{NLM_F_ACK, NLM_F_DUMP};
use super::netlink::{self, fence, AttrExt, AttrRef, Attrs, Event, Message, Protocol, Socket};

/// The kernel queues every answer to a batch before `send` returns (one error per refused
/// message): room for them, and for dump datagrams.
const RCVBUF_BYTES: usize = 8 << 20;

/// A table, by family and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef<'a> {
    pub family: nftnl::ProtoFamily,
    pub name: &'a str,
}

/// A table as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub flags: u32,
    /// The owning socket's port, when the table has an owner.
    pub owner: Option<u32>,
    /// The kernel's number for this table, unique across namespaces and never reused while
    /// the system runs: a table deleted and made again has another.
    pub handle: u64,
}

/// A chain as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub kind: String,
    /// Hook number and priority, for a base chain.
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
    /// Rules in the chain and jumps to it (`NFTA_CHAIN_USE`).
    pub uses: Option<u32>,
}

/// A rule as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
    /// The key in its userdata, when it has one (see [`keyed`]).
    pub key: Option<RuleKey>,
}

/// A rule as far as a diff needs it, read without decoding its expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleId {
    pub chain: String,
    pub handle: u64,
    pub key: Option<RuleKey>,
}

/// What the kernel said about a committed transaction: the tables and rules written with an
/// echo request ([`batch::Batch::add_table_echoed`], [`batch::Batch::add_keyed_rule`]), in
/// the order they were written, as committed (with the handles the kernel gave them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Each table by name.
    pub tables: Vec<(String, Table)>,
    pub rules: Vec<RuleId>,
}

/// A set element: its key and whether it ends an interval.
pub type Element = (Value, bool);

/// A transaction the kernel refused: nothing of it took effect.
#[derive(Debug)]
pub struct Refusal<L> {
    /// The label of the message refused (`None`: the kernel named no message of the batch).
    pub what: Option<L>,
    pub errno: i32,
    /// The kernel's extended-ack text.
    pub text: Option<String>,
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum CommitError<L> {
    Refused(Refusal<L>),
    /// The datagram could not be sized, sent or answered.
    Netlink(netlink::Error),
    /// Every answer came, but not the ack of the batch.
    NoAnswer,
}

/// A `NETLINK_NETFILTER` socket. Tables created through it with the owner flag can be
/// changed only through it.
#[derive(Debug)]
pub struct Nft {
    socket: Socket,
}

/// What a read request names.
#[derive(Clone, Copy, Debug)]
enum Target<'a> {
    /// Nothing beyond the family: the generation, or every chain.
    All,
    Table(&'a str),
    /// The rules of a table, or of one chain of it.
    Rules(&'a str, Option<&'a str>),
    /// One rule: table, chain, handle.
    Rule(&'a str, &'a str, u64),
    /// The elements of set `.1` of table `.0`.
    Elements(&'a str, &'a str),
}

/// `NFT_MSG_GET*` for `family`, asking for a dump or an ack, built by libnftnl from its
/// table, rule or set object.
fn request(ty: u16, dump: bool, family: u8, seq: u32, target: Target<'_>) -> Vec<u8> {
    let flags = if dump { NLM_F_DUMP } else { 0 } | NLM_F_ACK;
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let mut buf = vec![0u64; nftnl::nft_nlmsg_maxsize() as usize / 8 + 1];
    // SAFETY: `buf` is aligned and as large as the largest nf_tables message; every libnftnl
    // object is checked for NULL, its setters copy their values, and it is freed after its
    // payload was written into `buf`.
    unsafe {
        let header =
            sys::nftnl_nlmsg_build_hdr(buf.as_mut_ptr().cast(), ty, u16::from(family), flags, seq);
        match target {
            Target::All => {}
            Target::Table(name) => {
                let t = NonNull::new(sys::nftnl_table_alloc()).expect("allocate a table");
                sys::nftnl_table_set_str(
                    t.as_ptr(),
                    sys::NFTNL_TABLE_NAME as u16,
                    c(name).as_ptr(),
                );
                sys::nftnl_table_nlmsg_build_payload(header, t.as_ptr());
                sys::nftnl_table_free(t.as_ptr());
            }
            Target::Rules(table, chain) => {
                let r = NonNull::new(sys::nftnl_rule_alloc()).expect("allocate a rule");
                sys::nftnl_rule_set_str(
                    r.as_ptr(),
                    sys::NFTNL_RULE_TABLE as u16,
                    c(table).as_ptr(),
                );
                if let Some(chain) = chain {
                    sys::nftnl_rule_set_str(
                        r.as_ptr(),
                        sys::NFTNL_RULE_CHAIN as u16,
                        c(chain).as_ptr(),
                    );
                }
                sys::nftnl_rule_nlmsg_build_payload(header, r.as_ptr());
                sys::nftnl_rule_free(r.as_ptr());
            }
            Target::Rule(table, chain, handle) => {
                let r = NonNull::new(sys::nftnl_rule_alloc()).expect("allocate a rule");
                let p = r.as_ptr();
                sys::nftnl_rule_set_str(p, sys::NFTNL_RULE_TABLE as u16, c(table).as_ptr());
                sys::nftnl_rule_set_str(p, sys::NFTNL_RULE_CHAIN as u16, c(chain).as_ptr());
                sys::nftnl_rule_set_u64(p, sys::NFTNL_RULE_HANDLE as u16, handle);
                sys::nftnl_rule_nlmsg_build_payload(header, p);
                sys::nftnl_rule_free(p);
            }
            Target::Elements(table, set) => {
                let s = NonNull::new(sys::nftnl_set_alloc()).expect("allocate a set");
                sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, c(table).as_ptr());
                sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, c(set).as_ptr());
                sys::nftnl_set_elems_nlmsg_build_payload(header, s.as_ptr());
                sys::nftnl_set_free(s.as_ptr());
            }
        }
        let len = ((*header).nlmsg_len as usize).min(buf.len() * 8);
        std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len).to_vec()
    }
}

/// `struct nfgenmsg` and the attributes after it: every nf_tables message, read and written
/// by neli.
#[derive(Debug)]
pub struct Nfgenmsg {
    /// `NFPROTO_*` of the object.
    pub family: u8,
    pub version: u8,
    /// The resource id, big-endian (the subsystem, on a batch's begin and end).
    pub res_id: u16,
    pub attrs: GenlBuffer<u16, Buffer>,
}

impl neli::Size for Nfgenmsg {
    fn unpadded_size(&self) -> usize {
        NFGENMSG_LEN + self.attrs.unpadded_size()
    }
}

impl neli::ToBytes for Nfgenmsg {
    fn to_bytes(&self, buffer: &mut std::io::Cursor<Vec<u8>>) -> Result<(), neli::err::SerError> {
        self.family.to_bytes(buffer)?;
        self.version.to_bytes(buffer)?;
        self.res_id.to_bytes(buffer)?;
        self.attrs.to_bytes(buffer)
    }
}

impl neli::FromBytesWithInput for Nfgenmsg {
    type Input = usize;

    fn from_bytes_with_input(
        buffer: &mut std::io::Cursor<impl AsRef<[u8]>>,
        input: usize,
    ) -> Result<Nfgenmsg, neli::err::DeError> {
        let attrs_len = input
            .checked_sub(NFGENMSG_LEN)
            .ok_or(neli::err::DeError::InvalidInput(input))?;
        Ok(Nfgenmsg {
            family: neli::FromBytes::from_bytes(buffer)?,
            version: neli::FromBytes::from_bytes(buffer)?,
            res_id: neli::FromBytes::from_bytes(buffer)?,
            attrs: GenlBuffer::from_bytes_with_input(buffer, attrs_len)?,
        })
    }
}

impl Nfgenmsg {
    /// A message about an object of `family` carrying `attrs` (tests, and callers that
    /// describe objects the way the kernel does).
    pub fn new(family: u8, attrs: Vec<netlink::Attr>) -> Nfgenmsg {
        Nfgenmsg {
            family,
            version: 0,
            res_id: 0,
            attrs: attrs.into_iter().collect(),
        }
    }
}

fn is_nft(msg: &Message<'_>, ty: u16) -> bool {
    msg.ty == (NFNL_SUBSYS_NFTABLES << 8) | ty
}

/// The family (`NFPROTO_*`) of an nf_tables message and its attributes after the
/// `nfgenmsg`, read by neli where they lie (`None`: no `nfgenmsg`).
pub fn body<'a>(msg: &Message<'a>) -> Option<(u8, Attrs<'a>)> {
    let rest = msg.payload.get(NFGENMSG_LEN..)?;
    Some((msg.payload[0], Attrs::read(rest)))
}

/// The attributes of an nf_tables message, after its `nfgenmsg` (none when malformed).
pub fn attrs<'a>(msg: &Message<'a>) -> Attrs<'a> {
    body(msg).map_or_else(|| Attrs::read(&[]), |(_, a)| a)
}

/// The generation id of a `NFT_MSG_NEWGEN`.
pub fn genid_of(msg: &Message<'_>) -> Option<u32> {
    if !is_nft(msg, NFT_MSG_NEWGEN) {
        return None;
    }
    attrs(msg).get(NFTA_GEN_ID)?.be32()
}

/// Table `name` from a `NFT_MSG_NEWTABLE`.
pub fn table_of(msg: &Message<'_>, name: &str) -> Option<Table> {
    if !is_nft(msg, NFT_MSG_NEWTABLE) {
        return None;
    }
    let t = attrs(msg).table::<{ NFTA_TABLE_OWNER as usize + 1 }>();
    if t[usize::from(NFTA_TABLE_NAME)]?.str() != name {
        return None;
    }
    Some(Table {
        flags: t[usize::from(NFTA_TABLE_FLAGS)].map_or(Some(0), |a| a.be32())?,
        owner: t[usize::from(NFTA_TABLE_OWNER)].and_then(|a| a.be32()),
        handle: t[usize::from(NFTA_TABLE_HANDLE)]
            .and_then(|a| a.be64())
            .unwrap_or(0),
    })
}

/// A chain of table `name` from a `NFT_MSG_NEWCHAIN`.
pub fn chain_of(msg: &Message<'_>, table: &str) -> Option<Chain> {
    if !is_nft(msg, NFT_MSG_NEWCHAIN) {
        return None;
    }
    let t = attrs(msg).table::<{ NFTA_CHAIN_TYPE as usize + 1 }>();
    if t[usize::from(NFTA_CHAIN_TABLE)]?.str() != table {
        return None;
    }
    let text = |ty: u16| t[usize::from(ty)].map_or(String::new(), |a| a.str().to_owned());
    let hook = t[usize::from(NFTA_CHAIN_HOOK)].and_then(|a| {
        let hook = a.nested();
        let num = hook.get(NFTA_HOOK_HOOKNUM).and_then(|h| h.be32());
        let prio = hook.get(NFTA_HOOK_PRIORITY).and_then(|h| h.be32());
        num.zip(prio.map(|p| p as i32))
    });
    Some(Chain {
        name: text(NFTA_CHAIN_NAME),
        kind: text(NFTA_CHAIN_TYPE),
        hook,
        policy: t[usize::from(NFTA_CHAIN_POLICY)].and_then(|a| a.be32()),
        uses: t[usize::from(NFTA_CHAIN_USE)].and_then(|a| a.be32()),
    })
}

/// The attributes of a `NFT_MSG_NEWRULE` of table `table`, by type.
fn rule_attrs<'a>(
    msg: &Message<'a>,
    table: &str,
) -> Option<[Option<AttrRef<'a>>; NFTA_RULE_USERDATA as usize + 1]> {
    if !is_nft(msg, NFT_MSG_NEWRULE) {
        return None;
    }
    let t = attrs(msg).table();
    (t[usize::from(NFTA_RULE_TABLE)]?.str() == table).then_some(t)
}

/// A rule of table `table` from a `NFT_MSG_NEWRULE` (a dump's, or one a batch writes).
pub fn rule_of(msg: &Message<'_>, table: &str) -> Option<Rule> {
    let t = rule_attrs(msg, table)?;
    let userdata = t[usize::from(NFTA_RULE_USERDATA)]
        .map(|a| Userdata::read(a.bytes()))
        .unwrap_or_default();
    let exprs = t[usize::from(NFTA_RULE_EXPRESSIONS)].map_or_else(Vec::new, |a| {
        a.nested()
            .iter()
            .filter(|e| e.ty() == NFTA_LIST_ELEM)
            .map(Expr::read)
            .collect()
    });
    Some(Rule {
        chain: t[usize::from(NFTA_RULE_CHAIN)].map_or(String::new(), |a| a.str().to_owned()),
        handle: t[usize::from(NFTA_RULE_HANDLE)]
            .and_then(|a| a.be64())
            .unwrap_or(0),
        exprs,
        comment: userdata.comment,
        key: userdata.key,
    })
}

/// The chain, handle and key of a rule of table `table` from a `NFT_MSG_NEWRULE`, its
/// expressions left unread.
pub fn rule_id_of(msg: &Message<'_>, table: Option<&str>) -> Option<RuleId> {
    let t = match table {
        Some(table) => rule_attrs(msg, table)?,
        None if is_nft(msg, NFT_MSG_NEWRULE) => attrs(msg).table(),
        None => return None,
    };
    Some(RuleId {
        chain: t[usize::from(NFTA_RULE_CHAIN)].map_or(String::new(), |a| a.str().to_owned()),
        handle: t[usize::from(NFTA_RULE_HANDLE)]?.be64()?,
        key: t[usize::from(NFTA_RULE_USERDATA)].and_then(|a| Userdata::read(a.bytes()).key),
    })
}

/// The elements of a `NFT_MSG_NEWSETELEM` (a dump's, or one a batch writes), appended to
/// `out`.
pub fn elements_of(msg: &Message<'_>, out: &mut Vec<Element>) {
    if !is_nft(msg, NFT_MSG_NEWSETELEM) {
        return;
    }
    for list in attrs(msg)
        .iter()
        .filter(|a| a.ty() == NFTA_SET_ELEM_LIST_ELEMENTS)
    {
        // Any nest type, as the kernel reads it: the kernel dumps NFTA_LIST_ELEM, libnftnl
        // numbers the elements it writes 1, 2, 3...
        for elem in list.nested().iter() {
            out.extend(element(elem));
        }
    }
}

fn element(elem: AttrRef<'_>) -> Option<Element> {
    let (mut key, mut flags) = (None, 0);
    for a in elem.nested().iter() {
        match a.ty() {
            NFTA_SET_ELEM_KEY => key = Value::new(a.nested().get(NFTA_DATA_VALUE)?.bytes()),
            NFTA_SET_ELEM_FLAGS => flags = a.be32().unwrap_or(0),
            _ => {}
        }
    }
    Some((key?, flags & NFT_SET_ELEM_INTERVAL_END != 0))
}

impl Nft {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Nft> {
        let mut socket = Socket::open(Protocol::Netfilter)?;
        socket.fit_recv(RCVBUF_BYTES)?;
        Ok(Nft { socket })
    }

    /// The port the kernel records as owner of tables this socket creates.
    pub fn port(&self) -> u32 {
        self.socket.port()
    }

    /// The sequence number the next batch is to start at ([`Nft::commit`] takes the rest).
    pub fn batch_seq(&self) -> u32 {
        self.socket.peek_seq()
    }

    /// The namespace's ruleset generation.
    pub fn genid(&mut self) -> Result<u32, netlink::Error> {
        let seq = self.socket.next_seq();
        let mut genid = None;
        self.socket.request(
            &request(NFT_MSG_GETGEN, false, NFPROTO_UNSPEC, seq, Target::All),
            |m| genid = genid.or(genid_of(m)),
        )?;
        genid.ok_or_else(|| {
            netlink::Error::Receive(io::Error::new(
                io::ErrorKind::InvalidData,
                "NEWGEN without an id",
            ))
        })
    }

    /// The table, or `None` when there is none.
    pub fn table(&mut self, table: TableRef<'_>) -> Result<Option<Table>, netlink::Error> {
        let seq = self.socket.next_seq();
        let d = request(
            NFT_MSG_GETTABLE,
            false,
            table.family as u8,
            seq,
            Target::Table(table.name),
        );
        let mut found = None;
        match self
            .socket
            .request(&d, |m| found = found.take().or(table_of(m, table.name)))
        {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The chains of the table.
    pub fn chains(&mut self, table: TableRef<'_>) -> Result<Vec<Chain>, netlink::Error> {
        self.socket.dump(
            |seq| request(NFT_MSG_GETCHAIN, true, table.family as u8, seq, Target::All),
            |m, out: &mut Vec<Chain>| out.extend(chain_of(m, table.name)),
        )
    }

    /// The rules of the table, in chain order.
    pub fn rules(&mut self, table: TableRef<'_>) -> Result<Vec<Rule>, netlink::Error> {
        self.rules_of(table, None)
    }

    /// The rules of one chain of the table, in order (the kernel skips the other chains).
    pub fn chain_rules(
        &mut self,
        table: TableRef<'_>,
        chain: &str,
    ) -> Result<Vec<Rule>, netlink::Error> {
        self.rules_of(table, Some(chain))
    }

    fn rules_of(
        &mut self,
        table: TableRef<'_>,
        chain: Option<&str>,
    ) -> Result<Vec<Rule>, netlink::Error> {
        self.socket.dump(
            |seq| {
                let target = Target::Rules(table.name, chain);
                request(NFT_MSG_GETRULE, true, table.family as u8, seq, target)
            },
            |m, out: &mut Vec<Rule>| out.extend(rule_of(m, table.name)),
        )
    }

    /// One rule, by chain and handle (`None` when there is no such rule).
    pub fn rule(
        &mut self,
        table: TableRef<'_>,
        chain: &str,
        handle: u64,
    ) -> Result<Option<Rule>, netlink::Error> {
        let seq = self.socket.next_seq();
        let target = Target::Rule(table.name, chain, handle);
        let d = request(NFT_MSG_GETRULE, false, table.family as u8, seq, target);
        let mut found = None;
        match self
            .socket
            .request(&d, |m| found = found.take().or(rule_of(m, table.name)))
        {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The elements of set `set` of the table, in the kernel's order.
    pub fn elements(
        &mut self,
        table: TableRef<'_>,
        set: &str,
    ) -> Result<Vec<Element>, netlink::Error> {
        self.socket.dump(
            |seq| {
                let target = Target::Elements(table.name, set);
                request(NFT_MSG_GETSETELEM, true, table.family as u8, seq, target)
            },
            |m, out: &mut Vec<Element>| elements_of(m, out),
        )
    }

    /// Sends a transaction as one datagram and reads the kernel's answers: what it said
    /// when the transaction committed (the tables and rules it echoed), the first refusal
    /// otherwise (the kernel then applied none of it).
    pub fn commit<L: Copy>(&mut self, tx: &Transaction<L>) -> Result<Committed, CommitError<L>> {
        self.commit_reading(tx, None).map(|(c, _)| c)
    }

    /// [`Nft::commit`] of a batch that asked for its rules back
    /// ([`batch::Batch::echo_rules`]): the rules of table `table` it added, as the kernel
    /// committed them (handles, expressions and all).
    pub fn commit_echoed<L: Copy>(
        &mut self,
        tx: &Transaction<L>,
        table: Option<&str>,
    ) -> Result<Vec<Rule>, CommitError<L>> {
        self.commit_reading(tx, table).map(|(_, rules)| rules)
    }

    /// Commits, keeping what was echoed: tables and rules (chain, handle, key) always, and
    /// whole rules of `table` when named.
    fn commit_reading<L: Copy>(
        &mut self,
        tx: &Transaction<L>,
        table: Option<&str>,
    ) -> Result<(Committed, Vec<Rule>), CommitError<L>> {
        let net = |e| CommitError::Netlink(netlink::Error::Send(e));
        self.socket.fit_send(tx.bytes.len()).map_err(net)?;
        // The echoes of the rules it adds come before its ack, all queued before we read:
        // never more than the rules as sent (each once, with its handle added).
        self.socket
            .fit_recv(2 * tx.bytes.len() + RCVBUF_BYTES)
            .map_err(net)?;
        self.socket.reserve_seqs(tx.labels.len() as u32);
        let fence_seq = self.socket.next_seq();
        let fence = fence(fence_seq);
        let mut refused = None;
        let mut acked = false;
        let mut committed = Committed::default();
        let mut echoed = Vec::new();
        let acked_seq = tx.acked_seq();
        self.socket
            .exchange(
                &[&tx.bytes, &fence],
                tx.first_seq..=fence_seq,
                |e| match e {
                    Event::Data(m) if is_nft(m, NFT_MSG_NEWTABLE) => {
                        let name = attrs(m).get(NFTA_TABLE_NAME).map(|a| a.str());
                        if let Some(t) = name.and_then(|n| table_of(m, n)) {
                            committed
                                .tables
                                .push((name.unwrap_or_default().to_owned(), t));
                        }
                    }
                    Event::Data(m) => {
                        committed.rules.extend(rule_id_of(m, None));
                        if let Some(table) = table {
                            echoed.extend(rule_of(m, table));
                        }
                    }
                    Event::End(ack) if ack.errno == 0 => acked |= ack.seq == acked_seq,
                    Event::End(ack) => {
                        if refused.is_none() && ack.seq != fence_seq {
                            refused = Some(Refusal {
                                what: tx.label(ack.seq),
                                errno: ack.errno,
                                text: ack.text,
                            });
                        }
                    }
                },
            )
            .map_err(CommitError::Netlink)?;
        match refused {
            Some(r) => Err(CommitError::Refused(r)),
            None if !acked => Err(CommitError::NoAnswer),
            None => Ok((committed, echoed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::batch::{BaseChain, Batch};
    use super::expr::{Nat, Value};
    use super::keyed::{diff, Held, Position};
    use super::*;
    use nftnl::{ChainType, Hook, Policy, ProtoFamily};

    const TABLE: TableRef<'static> = TableRef {
        family: ProtoFamily::Ipv4,
        name: "weft-nat-test",
    };

    fn reg1(key: u32) -> Expr {
        Expr::Meta {
            key,
            dreg: NFT_REG_1,
        }
    }

    fn cmp(data: &[u8]) -> Expr {
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: NFT_CMP_EQ,
            data: Value::new(data).unwrap(),
        }
    }

    fn ifname(name: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.resize(16, 0);
        b
    }

    /// The host role's shapes, written by libnftnl, accepted by the kernel and read back as
    /// written: a table of family ip with nat chains, masquerade by output interface, a dnat
    /// of a port to an address, a fib check, counters, ct state; then one rule deleted by its
    /// handle in a batch of its own, leaving the others.
    #[test]
    fn nat_chains_and_rules_commit_read_back_and_delete_by_handle() {
        weft_testkit::require_root();
        let ns = weft_testkit::Netns::new("nftnat").unwrap();
        ns.enter(|| {
            let mut nft = Nft::open().unwrap();
            let post = BaseChain {
                name: "postrouting",
                kind: ChainType::Nat,
                hook: Hook::PostRouting,
                priority: 100,
                policy: Policy::Accept,
            };
            let pre = BaseChain {
                name: "prerouting",
                kind: ChainType::Nat,
                hook: Hook::PreRouting,
                priority: -100,
                policy: Policy::Accept,
            };
            let masquerade = vec![
                reg1(NFT_META_OIFNAME),
                cmp(&ifname("uplink0")),
                Expr::Counter {
                    packets: 0,
                    bytes: 0,
                },
                Expr::Masquerade { flags: 0 },
            ];
            let dnat = vec![
                Expr::Fib {
                    flags: NFTA_FIB_F_DADDR,
                    result: NFT_FIB_RESULT_ADDRTYPE,
                    dreg: NFT_REG_1,
                },
                cmp(&RTN_LOCAL.to_ne_bytes()),
                reg1(NFT_META_L4PROTO),
                cmp(&[libc::IPPROTO_TCP as u8]),
                Expr::Payload {
                    dreg: NFT_REG_1,
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                },
                cmp(&8080u16.to_be_bytes()),
                Expr::Immediate {
                    dreg: NFT_REG_1,
                    data: Value::new(&[10, 0, 0, 2]).unwrap(),
                },
                Expr::Immediate {
                    dreg: 2,
                    data: Value::new(&80u16.to_be_bytes()).unwrap(),
                },
                Expr::Nat(Nat {
                    kind: NFT_NAT_DNAT,
                    family: u32::from(NFPROTO_IPV4),
                    // As nft writes it, and as the kernel reports it either way.
                    addr_min: Some(NFT_REG_1),
                    addr_max: Some(NFT_REG_1),
                    proto_min: Some(2),
                    proto_max: Some(2),
                    flags: NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
                }),
            ];
            let established = vec![
                Expr::Ct {
                    key: NFT_CT_STATE,
                    dreg: NFT_REG_1,
                },
                Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: 4,
                    mask: Value::new(&CT_STATE_ESTABLISHED_RELATED.to_ne_bytes()).unwrap(),
                    xor: Value::new(&[0; 4]).unwrap(),
                },
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: NFT_CMP_NEQ,
                    data: Value::new(&[0; 4]).unwrap(),
                },
                Expr::Verdict(NF_ACCEPT),
            ];
            let mut b = Batch::new(nft.batch_seq(), Some(nft.genid().unwrap()), "begin");
            b.add_table(TABLE, 0, "table");
            b.add_chain(TABLE, &post, "postrouting");
            b.add_chain(TABLE, &pre, "prerouting");
            b.add_rule(TABLE, "postrouting", &masquerade, Some("masq"), "masq");
            b.add_rule(TABLE, "prerouting", &dnat, None, "dnat");
            b.add_rule(TABLE, "prerouting", &established, None, "ct");
            let tx = b.finish("end");
            nft.commit(&tx).unwrap();

            let text =
                String::from_utf8(ns.run("nft", &["list", "ruleset"]).unwrap().stdout).unwrap();
            for want in [
                "type nat hook postrouting priority srcnat; policy accept;",
                "oifname \"uplink0\" counter packets 0 bytes 0 masquerade comment \"masq\"",
                "fib daddr type local tcp dport 8080 dnat to 10.0.0.2:80",
                "ct state established,related accept",
            ] {
                assert!(text.contains(want), "missing {want:?} in\n{text}");
            }
            let rules = nft.rules(TABLE).unwrap();
            let exprs: Vec<&Vec<Expr>> = rules.iter().map(|r| &r.exprs).collect();
            assert_eq!(exprs, vec![&masquerade, &dnat, &established]);
            assert_eq!(rules[0].comment.as_deref(), Some("masq"));

            let mut b = Batch::new(nft.batch_seq(), None, "begin");
            b.delete_rule(TABLE, "prerouting", rules[1].handle, "delete dnat");
            nft.commit(&b.finish("end")).unwrap();
            let left: Vec<u64> = nft.rules(TABLE).unwrap().iter().map(|r| r.handle).collect();
            assert_eq!(left, vec![rules[0].handle, rules[2].handle]);
        });
    }

    fn port_rule(port: u16) -> Vec<Expr> {
        vec![
            reg1(NFT_META_L4PROTO),
            cmp(&[libc::IPPROTO_TCP as u8]),
            Expr::Payload {
                dreg: NFT_REG_1,
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 2,
                len: 2,
            },
            cmp(&port.to_be_bytes()),
            Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            Expr::Verdict(NF_ACCEPT),
        ]
    }

    fn key(port: u16) -> RuleKey {
        RuleKey::digest(&[b"port", &port.to_be_bytes()])
    }

    fn held(nft: &mut Nft, table: TableRef<'_>) -> Vec<Held> {
        nft.rules(table)
            .unwrap()
            .iter()
            .map(|r| Held {
                handle: r.handle,
                key: r.key,
            })
            .collect()
    }

    /// The keyed facility against the kernel: rules written with their keys, echoed with
    /// their handles; a diff that changes one rule, adds one first and one last deletes and
    /// adds only those, in one transaction, at the right places; the rules kept keep their
    /// handles; what `ChainDiff::after` predicts is what a dump shows. A chain reports its
    /// number of rules, and one rule and one chain's rules are read alone.
    #[test]
    fn keyed_rules_change_in_place_and_echo_their_handles() {
        weft_testkit::require_root();
        let ns = weft_testkit::Netns::new("nftkey").unwrap();
        let table = TableRef {
            family: ProtoFamily::Ipv4,
            name: "weft-keyed-test",
        };
        let input = BaseChain {
            name: "input",
            kind: ChainType::Filter,
            hook: Hook::In,
            priority: 0,
            policy: Policy::Accept,
        };
        ns.enter(|| {
            let mut nft = Nft::open().unwrap();
            let ports: Vec<u16> = (1..=5).collect();
            let mut b = Batch::new(nft.batch_seq(), Some(nft.genid().unwrap()), "begin");
            b.add_table_echoed(table, 0, "table");
            b.add_chain(table, &input, "chain");
            for &p in &ports {
                b.add_keyed_rule(
                    table,
                    "input",
                    &port_rule(p),
                    Some("c"),
                    key(p),
                    Position::Append,
                    "rule",
                );
            }
            let committed = nft.commit(&b.finish("end")).unwrap();
            let (name, t) = &committed.tables[0];
            assert_eq!(name, table.name);
            assert_eq!(Some(t.clone()), nft.table(table).unwrap());
            let first = held(&mut nft, table);
            let echoed: Vec<Held> = committed
                .rules
                .iter()
                .map(|r| Held {
                    handle: r.handle,
                    key: r.key,
                })
                .collect();
            assert_eq!(echoed, first);
            assert_eq!(
                first.iter().map(|h| h.key).collect::<Vec<_>>(),
                ports.iter().map(|p| Some(key(*p))).collect::<Vec<_>>()
            );
            let chains = nft.chains(table).unwrap();
            assert_eq!(chains[0].uses, Some(5), "{chains:?}");

            // Port 3 becomes 30; 100 goes first and 200 last.
            let want: Vec<u16> = vec![100, 1, 2, 30, 4, 5, 200];
            let keys: Vec<RuleKey> = want.iter().map(|p| key(*p)).collect();
            let d = diff(&keys, &first);
            assert_eq!(d.delete, vec![first[2].handle]);
            assert_eq!(d.add.len(), 3);
            let mut b = Batch::new(nft.batch_seq(), Some(nft.genid().unwrap()), "begin");
            for &h in &d.delete {
                b.delete_rule(table, "input", h, "delete");
            }
            for add in &d.add {
                let p = want[add.index];
                b.add_keyed_rule(table, "input", &port_rule(p), None, key(p), add.at, "add");
            }
            let committed = nft.commit(&b.finish("end")).unwrap();
            let added: Vec<u64> = committed.rules.iter().map(|r| r.handle).collect();
            let after = d.after(&keys, &added).unwrap();
            assert_eq!(held(&mut nft, table), after);
            for kept in [0, 1, 3, 4] {
                assert!(after.contains(&first[kept]), "rule {kept} kept its handle");
            }
            let text =
                String::from_utf8(ns.run("nft", &["list", "ruleset"]).unwrap().stdout).unwrap();
            let order: Vec<usize> = ["dport 100 ", "dport 1 ", "dport 30 ", "dport 200 "]
                .iter()
                .map(|p| text.find(p).unwrap_or_else(|| panic!("{p} in {text}")))
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
            assert!(text.contains("accept comment \"c\""), "{text}");

            let one = nft.rule(table, "input", after[3].handle).unwrap().unwrap();
            assert_eq!(one.exprs, port_rule(30));
            assert_eq!(one.key, Some(key(30)));
            assert_eq!(nft.rule(table, "input", 999_999).unwrap(), None);
            assert_eq!(nft.chain_rules(table, "input").unwrap().len(), 7);
            assert_eq!(
                nft.chain_rules(table, "nosuch").unwrap_or_default().len(),
                0
            );
        });
    }
}
