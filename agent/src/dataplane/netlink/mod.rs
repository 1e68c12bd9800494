//! The one netlink layer: every byte the agent exchanges with the kernel's rtnetlink,
//! nftables and generic netlink (WireGuard) goes through here, on the crates the project
//! chose: libmnl's socket (`mnl`) for the transport, neli's types for rtnetlink, generic
//! netlink and every attribute read, libnftnl (`nftnl`) for nftables batches and requests.
//!
//! - [`socket`]: the socket, `mnl::Socket` for every family (rtnetlink, generic, netfilter,
//!   and the event subscriptions), and the one exchange loop, which matches answers by
//!   sequence number and port, reads a dump again when the kernel flags it
//!   `NLM_F_DUMP_INTR`, and turns a refusal into [`Error::Refused`] with the errno and the
//!   kernel's extended-ack text.
//! - [`message`]: requests made of neli's types ([`request`]), the messages of a datagram
//!   ([`messages`]) and the end of an answer ([`Message::ack`]), neli's attribute reader
//!   ([`Attrs`]: neli's `Nlattr` with payloads left where they lie, [`Span`]; [`Wiped`]
//!   payloads for answers that carry keys), and the netlink constants, once, from the libc
//!   crate neli, mnl and nftnl all build on.
//! - [`genl`]: neli's `Genlmsghdr` and the controller's family lookup.
//!
//! Each family's messages are typed functions over this layer in the family's own module:
//! `rtnl/{link,addr,route,events}` (neli's `Ifinfomsg`, `Ifaddrmsg`, `Rtmsg`, `Rtattr`),
//! `nftables/` (batches by libnftnl, dumps and `NFNLGRP_NFTABLES` events by our typed decoder
//! over [`Attrs`]: libnftnl has no safe parser) and `wireguard/kernel` (neli's `Nlattr` with
//! `neli_enum` attribute types).
//!
//! Why libmnl's socket for every family and not neli's: nftables batches come from libnftnl,
//! whose partner is libmnl (libnftnl's own examples and Mullvad's firewall send batches and
//! read the answers over it), and neli's socket would serve rtnetlink and generic netlink
//! no better; with one socket type for all families, one exchange loop (sequence, port,
//! `DUMP_INTR`, extended ack) covers them. The loop reads message headers in place (a
//! 10,000-rule dump is not copied before it is decoded) and leaves payloads to neli.
//! `mnl::Socket` is not `Send`; [`Socket`] makes it so (libmnl keeps no per-thread state,
//! and a socket is only ever used by its one owner).
//!
//! Keys: neli copies attribute payloads into buffers it frees without wiping, so it never
//! sees one: WireGuard's SET messages carry a placeholder where each key goes, written over
//! in the finished message, which is `Zeroizing`; answers that carry keys are read into
//! [`Wiped`] payloads, and the socket's receive buffer is wiped after such a read.
//!
//! A socket belongs to the network namespace of the thread that opened it; `Sockets::open_in`
//! opens them inside another namespace.

pub mod genl;
pub mod message;
pub mod socket;

pub use message::{
    c_str, messages, parse, request, Ack, Attr, AttrExt, AttrRef, Attrs, Message, Span, Wiped,
};
pub use socket::{fence, request_seq, Error, Event, Protocol, Socket};
