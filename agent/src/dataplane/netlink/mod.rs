//! The one netlink layer: every byte the agent exchanges with the kernel's rtnetlink,
//! nftables and generic netlink (WireGuard) goes through here.
//!
//! - [`message`]: messages and attributes, written ([`Datagram`]) and read
//!   ([`messages`], [`Attrs`], [`Message::ack`] with the kernel's extended-ack text), and the
//!   netlink constants, once.
//! - [`socket`]: the socket and the one exchange loop, which matches answers by sequence
//!   number and port, reads a dump again when the kernel flags it `NLM_F_DUMP_INTR`, and
//!   turns a refusal into [`Error::Refused`] with the errno and the kernel's words.
//! - [`genl`]: generic netlink's header and family lookup.
//!
//! Each family's messages are typed functions over this layer in the family's own module
//! (`rtnl/{link,addr,route}`, `nftables/`, `wireguard/kernel`), with that family's constants.
//!
//! Why our own codec and not neli's genl, `netlink-packet-*` or libnftnl: one attribute
//! writer and reader serve all three families alike, so one exchange loop (sequence, port,
//! `DUMP_INTR`, extended ack) and one fuzzed set of readers cover them; a message is written
//! into a buffer we size, so WireGuard's 10,000-peer chunking is tested without root and a
//! message that carries a private key is built in one allocation and wiped (`zeroize`),
//! which no crate's internal buffers allow; and the nftables batches need things libnftnl
//! has no setter for (batch generation id, interval set flags, per-message labels), which
//! had taken `unsafe` over `nftnl_sys`. What it costs is writing each message's layout from
//! the kernel's headers, which the golden and property tests check.
//!
//! A socket belongs to the network namespace of the thread that opened it; `Sockets::open_in`
//! opens them inside another namespace.

pub mod genl;
pub mod message;
pub mod socket;

pub use message::{c_str, messages, parse, request, Ack, Attr, AttrExt, Attrs, Message, Wiped};
pub use socket::{fence, request_seq, Error, Event, Protocol, Socket};
