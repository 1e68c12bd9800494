//! Netlink messages and attributes as bytes: a writer that lays out headers, fixed family
//! headers, attributes and nests (lengths patched when a message or nest ends), and readers
//! for what the kernel sends back. Pure; every family's codec is built on these two halves.
//!
//! Layout (`linux/netlink.h`): a 16-byte `nlmsghdr` (length, type, flags, sequence, port),
//! then the family's fixed header, then attributes, each a 4-byte `nlattr` (length, type) and
//! its payload padded to 4 bytes. Integers are in host order unless a family says otherwise
//! (nftables: big-endian).

use std::io::Cursor;
use std::ops::RangeInclusive;

use neli::consts::nl::{NlType, NlmF};
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::{FromBytesWithInput, Size, ToBytes};

pub const NLMSG_HDRLEN: usize = 16;

// The netlink constants, in the types this layer uses, from the libc crate that neli, mnl and
// nftnl all build on.
pub const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
pub const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;

pub const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
pub const NLM_F_MULTI: u16 = libc::NLM_F_MULTI as u16;
pub const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
/// On a dump reply: the dumped objects changed while the dump ran; it may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
pub const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
pub const NLM_F_REPLACE: u16 = libc::NLM_F_REPLACE as u16;
pub const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
pub const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
pub const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;
/// On an error message: only the failed request's header follows, not its whole payload.
const NLM_F_CAPPED: u16 = libc::NLM_F_CAPPED as u16;
/// On an error or done message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = libc::NLM_F_ACK_TLVS as u16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
fn nlmsgerr_attr_msg() -> u16 {
    u16::from(neli::consts::nl::NlmsgerrAttr::Msg)
}

pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDRLEN: usize = 4;

/// The longest extended-ack text kept: the kernel's are one short sentence.
const ACK_TEXT_BYTES: usize = 256;

/// A request made of neli's types (`Ifinfomsg`, `Rtmsg`, `Genlmsghdr` ...): the netlink
/// header around `payload`, serialized as the socket sends it.
pub fn request<T, P>(ty: T, flags: NlmF, seq: u32, payload: P) -> Vec<u8>
where
    T: NlType,
    P: Size + ToBytes,
{
    let msg = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags | NlmF::REQUEST)
        .nl_seq(seq)
        .nl_pid(0)
        .nl_payload(NlPayload::Payload(payload))
        .build()
        .expect("every field of the header is set");
    let mut out = Cursor::new(Vec::with_capacity(msg.padded_size()));
    msg.to_bytes(&mut out)
        .expect("serializing into a vector cannot fail");
    out.into_inner()
}

/// Reads neli's type `P` (`Ifinfomsg`, `Genlmsghdr` ...) from a message's payload; `None`
/// when it is malformed.
pub fn parse<P: FromBytesWithInput<Input = usize>>(payload: &[u8]) -> Option<P> {
    P::from_bytes_with_input(&mut Cursor::new(payload), payload.len()).ok()
}

/// An attribute payload read into a buffer that is wiped when dropped: neli reads the
/// attributes of answers that carry keys (`GenlBuffer<T, Wiped>`) into it, so no copy of a
/// key is left in freed memory.
pub struct Wiped(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Wiped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wiped({} bytes)", self.0.len())
    }
}

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Size for Wiped {
    fn unpadded_size(&self) -> usize {
        self.0.len()
    }
}

impl ToBytes for Wiped {
    fn to_bytes(&self, buffer: &mut Cursor<Vec<u8>>) -> Result<(), neli::err::SerError> {
        std::io::Write::write_all(buffer, &self.0)?;
        Ok(())
    }
}

impl FromBytesWithInput for Wiped {
    type Input = usize;

    fn from_bytes_with_input(
        buffer: &mut Cursor<impl AsRef<[u8]>>,
        input: usize,
    ) -> Result<Wiped, neli::err::DeError> {
        let mut bytes = zeroize::Zeroizing::new(vec![0; input]);
        std::io::Read::read_exact(buffer, &mut bytes)?;
        Ok(Wiped(bytes))
    }
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One or more messages laid out back to back: a request, or a batch sent as one datagram.
///
/// [`Datagram::message`] starts a message; the attribute writers add to the message last
/// started, whose length is kept up to date as it grows. Nests are closed with
/// [`Datagram::end_nest`].
#[derive(Debug, Default)]
pub struct Datagram {
    buf: Vec<u8>,
    /// Where the message being written starts.
    start: usize,
    nests: Vec<usize>,
    count: usize,
    /// Wipe the bytes when they are dropped or outgrown: they carry a secret.
    secret: bool,
}

/// An open nest, closed with [`Datagram::end_nest`].
#[derive(Debug)]
#[must_use = "a nest is closed with end_nest"]
pub struct Nest(usize);

impl Datagram {
    pub fn new() -> Datagram {
        Datagram::default()
    }

    /// A datagram with room for `capacity` bytes before it must grow.
    pub fn with_capacity(capacity: usize) -> Datagram {
        let mut d = Datagram::secret(capacity);
        d.secret = false;
        d
    }

    /// A datagram that will carry a secret (a WireGuard private or preshared key): its
    /// bytes are wiped when it is dropped, and when it outgrows `capacity` the old buffer is
    /// wiped before it is freed, so no copy of the secret is left behind.
    pub fn secret(capacity: usize) -> Datagram {
        Datagram {
            buf: Vec::with_capacity(capacity),
            start: 0,
            nests: Vec::new(),
            count: 0,
            secret: true,
        }
    }

    /// From now on the datagram carries a secret: wiped when dropped or outgrown. Call it
    /// before writing the secret.
    pub fn set_secret(&mut self) {
        self.secret = true;
    }

    /// Starts a message; the attribute writers below add to it.
    pub fn message(&mut self, ty: u16, flags: u16, seq: u32) -> &mut Datagram {
        debug_assert!(self.nests.is_empty(), "the previous message has open nests");
        self.start = self.buf.len();
        self.count += 1;
        let mut header = [0u8; NLMSG_HDRLEN];
        header[4..6].copy_from_slice(&ty.to_ne_bytes());
        header[6..8].copy_from_slice(&flags.to_ne_bytes());
        header[8..12].copy_from_slice(&seq.to_ne_bytes());
        // The port stays 0: it addresses the kernel, which fills in ours.
        self.put(&header);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        debug_assert!(self.nests.is_empty(), "a nest is still open");
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// How many messages it holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The length of the message being written.
    #[inline]
    pub fn message_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The family's fixed header (`ifinfomsg`, `nfgenmsg`, `genlmsghdr` ...), padded to 4.
    #[inline]
    pub fn fixed(&mut self, header: &[u8]) -> &mut Datagram {
        self.put(header);
        self.pad();
        self
    }

    #[inline]
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Datagram {
        self.put_attr(ty, &[payload])
    }

    #[inline]
    pub fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Datagram {
        self.attr(ty, &[v])
    }

    #[inline]
    pub fn attr_u16(&mut self, ty: u16, v: u16) -> &mut Datagram {
        self.attr(ty, &v.to_ne_bytes())
    }

    #[inline]
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Datagram {
        self.attr(ty, &v.to_ne_bytes())
    }

    #[inline]
    pub fn attr_be16(&mut self, ty: u16, v: u16) -> &mut Datagram {
        self.attr(ty, &v.to_be_bytes())
    }

    #[inline]
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Datagram {
        self.attr(ty, &v.to_be_bytes())
    }

    #[inline]
    pub fn attr_be64(&mut self, ty: u16, v: u64) -> &mut Datagram {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A string attribute, NUL-terminated as the kernel wants it.
    #[inline]
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Datagram {
        self.put_attr(ty, &[s.as_bytes(), &[0]])
    }

    /// Opens a nested attribute (`NLA_F_NESTED` set, as the kernel's strict policies want).
    #[inline]
    pub fn nest(&mut self, ty: u16) -> Nest {
        self.nest_as(ty | NLA_F_NESTED)
    }

    /// Opens a nest whose type is written exactly as given: nftables validates its lists by
    /// type alone, and libnftnl and nft write most of them without the flag.
    #[inline]
    pub fn nest_as(&mut self, ty: u16) -> Nest {
        let at = self.buf.len();
        self.put(&0u16.to_ne_bytes());
        self.put(&ty.to_ne_bytes());
        self.nests.push(at);
        Nest(at)
    }

    #[inline]
    pub fn end_nest(&mut self, nest: Nest) {
        let at = self.nests.pop().expect("a nest is open");
        debug_assert_eq!(at, nest.0, "nests end in the order they were opened");
        let len = self.buf.len() - at;
        debug_assert!(len <= usize::from(u16::MAX), "nest of {len} bytes");
        self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// One attribute whose payload is `parts`, padded, in one step.
    #[inline]
    fn put_attr(&mut self, ty: u16, parts: &[&[u8]]) -> &mut Datagram {
        let len = NLA_HDRLEN + parts.iter().map(|p| p.len()).sum::<usize>();
        debug_assert!(
            len <= usize::from(u16::MAX),
            "attribute {ty} of {len} bytes"
        );
        self.reserve(align4(len));
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.resize(self.buf.len() + align4(len) - len, 0);
        self.patch_len();
        self
    }

    /// Appends to the message being written and keeps its length current.
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf.extend_from_slice(bytes);
        self.patch_len();
    }

    /// Room for `n` more bytes; a secret's old buffer is wiped when it is outgrown.
    #[inline]
    fn reserve(&mut self, n: usize) {
        if self.buf.len() + n <= self.buf.capacity() {
            return;
        }
        if self.secret {
            let mut grown = Vec::with_capacity((2 * self.buf.capacity()).max(self.buf.len() + n));
            grown.extend_from_slice(&self.buf);
            zeroize::Zeroize::zeroize(&mut self.buf);
            self.buf = grown;
        } else {
            self.buf.reserve(n);
        }
    }

    #[inline]
    fn patch_len(&mut self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    #[inline]
    fn pad(&mut self) {
        let padding = align4(self.message_len()) - self.message_len();
        self.put(&[0; 3][..padding]);
    }
}

impl AsRef<[u8]> for Datagram {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for Datagram {
    fn drop(&mut self) {
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.buf);
        }
    }
}

/// One received message: its header fields and the bytes after the `nlmsghdr`.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// `nlmsg_pid`: in an answer, our port; in a notification, the port of the socket whose
    /// request caused it (0: the kernel itself).
    pub port: u32,
    pub payload: &'a [u8],
}

/// The messages in one datagram. A malformed length ends the iteration.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        let header = data.get(..NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(header[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            data = &[];
            return None;
        }
        let msg = Message {
            ty: u16::from_ne_bytes([header[4], header[5]]),
            flags: u16::from_ne_bytes([header[6], header[7]]),
            seq: u32::from_ne_bytes(header[8..12].try_into().ok()?),
            port: u32::from_ne_bytes(header[12..16].try_into().ok()?),
            payload: &data[NLMSG_HDRLEN..len],
        };
        data = &data[align4(len).min(data.len())..];
        Some(msg)
    })
}

/// How an exchange's request ended, read from an `NLMSG_ERROR` or `NLMSG_DONE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// 0 for an acknowledgement, else the (positive) errno of the refusal.
    pub errno: i32,
    /// The sequence number of the request it answers.
    pub seq: u32,
    /// The kernel's extended-ack text, when it sent one.
    pub text: Option<String>,
}

impl<'a> Message<'a> {
    /// The attributes after a fixed header of `fixed` bytes (padded to 4).
    pub fn attrs(&self, fixed: usize) -> Attrs<'a> {
        attrs(self.payload.get(align4(fixed)..).unwrap_or(&[]))
    }

    /// For `NLMSG_ERROR` and `NLMSG_DONE`: the outcome of the request it ends. An error
    /// message echoes the request's header (and, unless capped, its payload), then carries
    /// the extended-ack attributes; a done message carries only the status and attributes.
    pub fn ack(&self) -> Option<Ack> {
        let p = self.payload;
        let status = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
        let (seq, tlvs) = match self.ty {
            NLMSG_ERROR => {
                let echoed = p.get(4..4 + NLMSG_HDRLEN)?;
                let req_len = u32::from_ne_bytes(echoed[0..4].try_into().ok()?) as usize;
                let skip = if self.flags & NLM_F_CAPPED != 0 || status == 0 {
                    4 + NLMSG_HDRLEN
                } else {
                    4 + align4(req_len)
                };
                (u32::from_ne_bytes(echoed[8..12].try_into().ok()?), skip)
            }
            NLMSG_DONE => (self.seq, 4),
            _ => return None,
        };
        let mut text = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            for a in attrs(p.get(tlvs..).unwrap_or(&[])) {
                if a.ty == nlmsgerr_attr_msg() {
                    text = Some(bounded(a.str()));
                }
            }
        }
        Some(Ack {
            errno: status.checked_neg().unwrap_or(i32::MAX),
            seq,
            text,
        })
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(ACK_TEXT_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// One attribute: its type (without the nested and byte-order flags) and payload.
#[derive(Clone, Copy, Debug)]
pub struct Attr<'a> {
    pub ty: u16,
    pub payload: &'a [u8],
}

/// An attribute whose length does not fit what holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("truncated netlink attribute")]
pub struct Truncated;

/// The attributes in `data`; iteration ends at the first malformed one (see [`try_attrs`]
/// to tell that apart from the end).
pub fn attrs(data: &[u8]) -> Attrs<'_> {
    Attrs { data }
}

/// The attributes in `data`, with a malformed one reported as [`Truncated`].
pub fn try_attrs(data: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, Truncated>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header is no attribute.
            return None;
        }
        match next_attr(rest) {
            Some((attr, tail)) => {
                rest = tail;
                Some(Ok(attr))
            }
            None => {
                rest = &[];
                Some(Err(Truncated))
            }
        }
    })
}

fn next_attr(data: &[u8]) -> Option<(Attr<'_>, &[u8])> {
    let len = usize::from(u16::from_ne_bytes([*data.first()?, *data.get(1)?]));
    let ty = u16::from_ne_bytes([*data.get(2)?, *data.get(3)?]) & NLA_TYPE_MASK;
    if len < NLA_HDRLEN || len > data.len() {
        return None;
    }
    let attr = Attr {
        ty,
        payload: &data[NLA_HDRLEN..len],
    };
    Some((attr, &data[align4(len).min(data.len())..]))
}

/// Iterator over attributes; see [`attrs`].
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let (attr, rest) = next_attr(self.data)?;
        self.data = rest;
        Some(attr)
    }
}

impl<'a> Attrs<'a> {
    /// The payload of the first attribute of type `ty`.
    pub fn get(self, ty: u16) -> Option<Attr<'a>> {
        self.into_iter().find(|a| a.ty == ty)
    }
}

impl<'a> Attr<'a> {
    /// The attributes nested inside this one.
    pub fn nested(&self) -> Attrs<'a> {
        attrs(self.payload)
    }

    pub fn try_nested(&self) -> impl Iterator<Item = Result<Attr<'a>, Truncated>> {
        try_attrs(self.payload)
    }

    pub fn u8(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    pub fn u16(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    pub fn u32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    pub fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    /// A NUL-terminated string attribute ("" when it is not UTF-8).
    pub fn str(&self) -> &'a str {
        c_str(self.payload)
    }

    /// The payload as exactly `N` bytes.
    pub fn array<const N: usize>(&self) -> Option<[u8; N]> {
        self.payload.try_into().ok()
    }
}

/// Bytes up to the first NUL, as UTF-8 ("" when they are not).
pub fn c_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).unwrap_or("")
}

/// Whether `seq` lies in `range`, counting across the wrap of u32 sequence numbers.
pub(crate) fn seq_in(seq: u32, range: &RangeInclusive<u32>) -> bool {
    seq.wrapping_sub(*range.start()) <= range.end().wrapping_sub(*range.start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_nests_round_trips_and_is_padded() {
        let mut d = Datagram::new();
        d.message(16, NLM_F_REQUEST | NLM_F_ACK, 7)
            .fixed(&[1, 2, 3])
            .attr_str(3, "eth0");
        let outer = d.nest(18);
        d.attr_u32(1, 0xdead_beef).attr_be16(2, 0x1234);
        d.end_nest(outer);
        d.attr_u8(4, 9);
        d.message(NLMSG_NOOP, NLM_F_ACK, 8);
        let bytes = d.bytes();
        assert_eq!(bytes.len() % 4, 0);
        let all: Vec<Message<'_>> = messages(bytes).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(d.count(), 2);
        let m = all[0];
        assert_eq!((m.ty, m.flags, m.seq, m.port), (16, 5, 7, 0));
        assert_eq!(&m.payload[..4], &[1, 2, 3, 0]);
        let a: Vec<Attr<'_>> = m.attrs(3).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].str(), "eth0");
        assert_eq!(a[1].ty, 18, "the nested flag is masked off");
        let inner: Vec<Attr<'_>> = a[1].nested().collect();
        assert_eq!(inner[0].u32(), Some(0xdead_beef));
        assert_eq!(inner[1].be16(), Some(0x1234));
        assert_eq!(a[2].u8(), Some(9));
        assert_eq!(all[1].ty, NLMSG_NOOP);
        assert!(all[1].payload.is_empty());
    }

    #[test]
    fn malformed_input_ends_iteration_or_is_reported() {
        let mut d = Datagram::new();
        d.message(20, 0, 1).attr_u32(1, 5).attr_u32(2, 6);
        let mut bytes = d.bytes().to_vec();
        // The second attribute claims more than there is.
        bytes[NLMSG_HDRLEN + 8] = 200;
        let m = messages(&bytes).next().unwrap();
        assert_eq!(m.attrs(0).count(), 1);
        let checked: Vec<_> = try_attrs(m.payload).collect();
        assert_eq!(checked.len(), 2);
        assert_eq!(checked[1].unwrap_err(), Truncated);
        // A message longer than the datagram ends the iteration.
        bytes[0] = 255;
        assert_eq!(messages(&bytes).count(), 0);
        assert_eq!(messages(&bytes[..10]).count(), 0);
    }

    fn error_message(flags: u16, errno: i32, request: &[u8], tlvs: &[(u16, &str)]) -> Vec<u8> {
        let mut d = Datagram::new();
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(request);
        d.message(NLMSG_ERROR, flags, 0).fixed(&body);
        for (ty, text) in tlvs {
            d.attr_str(*ty, text);
        }
        d.bytes().to_vec()
    }

    #[test]
    fn errors_give_errno_seq_and_the_extended_ack_text() {
        let mut req = Datagram::new();
        req.message(24, NLM_F_REQUEST, 42).attr_u32(5, 1);
        let req = req.bytes().to_vec();
        // Not capped: the whole request is echoed before the attributes.
        let full = error_message(NLM_F_ACK_TLVS, 22, &req, &[(nlmsgerr_attr_msg(), "bad gw")]);
        let ack = messages(&full).next().unwrap().ack().unwrap();
        assert_eq!(
            ack,
            Ack {
                errno: 22,
                seq: 42,
                text: Some("bad gw".into())
            }
        );
        // Capped: only its header.
        let capped = error_message(
            NLM_F_ACK_TLVS | NLM_F_CAPPED,
            1,
            &req[..NLMSG_HDRLEN],
            &[(nlmsgerr_attr_msg(), "no")],
        );
        let ack = messages(&capped).next().unwrap().ack().unwrap();
        assert_eq!(
            (ack.errno, ack.seq, ack.text.as_deref()),
            (1, 42, Some("no"))
        );
        // A plain ack.
        let ok = error_message(0, 0, &req[..NLMSG_HDRLEN], &[]);
        let ack = messages(&ok).next().unwrap().ack().unwrap();
        assert_eq!((ack.errno, ack.seq, ack.text), (0, 42, None));
        // A long text is bounded.
        let long = "x".repeat(5000);
        let noisy = error_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, 1, &req[..16], &[(1, &long)]);
        let ack = messages(&noisy).next().unwrap().ack().unwrap();
        assert_eq!(ack.text.unwrap().len(), ACK_TEXT_BYTES);
    }

    #[test]
    fn a_secret_datagram_outgrowing_its_capacity_keeps_its_bytes() {
        let mut d = Datagram::secret(24);
        d.message(1, 0, 1).attr(2, &[7; 100]);
        let m = messages(d.bytes()).next().unwrap();
        assert_eq!(m.attrs(0).get(2).unwrap().payload, &[7; 100]);
    }

    #[test]
    fn sequence_ranges_wrap() {
        assert!(seq_in(5, &(5..=5)));
        assert!(!seq_in(6, &(5..=5)));
        let wrapping = RangeInclusive::new(u32::MAX - 1, 2);
        assert!(seq_in(1, &wrapping));
        assert!(!seq_in(3, &wrapping));
    }
}
