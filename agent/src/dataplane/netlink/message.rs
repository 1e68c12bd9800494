//! Netlink messages as bytes: requests made of neli's types ([`request`]), the messages of a
//! datagram ([`messages`]) with their header fields, the end of an answer ([`Message::ack`],
//! with the kernel's extended-ack text), and attributes read by neli ([`Attrs`]: the one
//! attribute reader of every family, rtnetlink's `Rtattr` aside, which neli reads with its
//! `Ifinfomsg`, `Ifaddrmsg` and `Rtmsg`).
//!
//! Layout (`linux/netlink.h`): a 16-byte `nlmsghdr` (length, type, flags, sequence, port),
//! then the family's fixed header, then attributes, each a 4-byte `nlattr` (length, type) and
//! its payload padded to 4 bytes. Integers are in host order unless a family says otherwise
//! (nftables: big-endian).

use std::io::Cursor;
use std::ops::RangeInclusive;

use neli::consts::nl::{NlType, NlmF, NlmsgerrAttr};
use neli::genl::Nlattr;
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::types::{Buffer, GenlBuffer};
use neli::{FromBytes, FromBytesWithInput, Size, ToBytes};

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
        Attrs::read(self.payload.get(align4(fixed)..).unwrap_or(&[]))
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
            let tlvs: Option<GenlBuffer<NlmsgerrAttr, Buffer>> =
                parse(p.get(tlvs..).unwrap_or(&[]));
            text = tlvs
                .iter()
                .flat_map(|t| t.iter())
                .find(|a| *a.nla_type().nla_type() == NlmsgerrAttr::Msg)
                .map(|a| bounded(c_str(a.nla_payload().as_ref())));
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

/// An attribute as neli writes it (requests, and tests that lay out what the kernel sends).
pub type Attr = Nlattr<u16, Buffer>;

/// Where an attribute's payload lies in the bytes it was read from. As the payload type of
/// neli's `Nlattr`, it lets neli read an attribute's header, type and padding and leave the
/// payload where it is: a 10,000-rule dump is read without copying an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    start: usize,
    len: usize,
}

impl Size for Span {
    fn unpadded_size(&self) -> usize {
        self.len
    }
}

impl FromBytesWithInput for Span {
    type Input = usize;

    fn from_bytes_with_input(
        buffer: &mut Cursor<impl AsRef<[u8]>>,
        input: usize,
    ) -> Result<Span, neli::err::DeError> {
        let start = buffer.position() as usize;
        match start.checked_add(input) {
            Some(end) if end <= buffer.get_ref().as_ref().len() => {
                buffer.set_position(end as u64);
                Ok(Span { start, len: input })
            }
            _ => Err(neli::err::DeError::InvalidInput(input)),
        }
    }
}

/// The attributes of a message or a nest, read one at a time by neli's `Nlattr` where they
/// lie (see [`Span`]). A list with a malformed attribute anywhere reads as no attributes: a
/// decoder then finds nothing it needs, never half of a list.
#[derive(Clone, Copy, Debug)]
pub struct Attrs<'a>(&'a [u8]);

impl<'a> Attrs<'a> {
    pub fn read(data: &'a [u8]) -> Attrs<'a> {
        let whole = Attrs(data);
        let mut cursor = Cursor::new(data);
        while (cursor.position() as usize) < data.len() {
            if Nlattr::<u16, Span>::from_bytes(&mut cursor).is_err() {
                return Attrs(&[]);
            }
        }
        whole
    }

    pub fn iter(&self) -> impl Iterator<Item = AttrRef<'a>> + 'a {
        let data = self.0;
        let mut cursor = Cursor::new(data);
        std::iter::from_fn(move || {
            if cursor.position() as usize >= data.len() {
                return None;
            }
            let a = Nlattr::<u16, Span>::from_bytes(&mut cursor).ok()?;
            let span = *a.nla_payload();
            Some(AttrRef {
                ty: *a.nla_type().nla_type(),
                bytes: &data[span.start..span.start + span.len],
            })
        })
    }

    /// The first attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<AttrRef<'a>> {
        self.iter().find(|a| a.ty == ty)
    }

    /// The attributes by type, `N` types from 0: the first of each type, as libmnl's
    /// `mnl_attr_parse` fills a table. Types from `N` up are left out.
    pub fn table<const N: usize>(&self) -> [Option<AttrRef<'a>>; N] {
        let mut t = [None; N];
        for a in self.iter() {
            if let Some(slot @ None) = t.get_mut(usize::from(a.ty)) {
                *slot = Some(a);
            }
        }
        t
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One attribute read: its type (without the nested and byte-order flags) and its payload,
/// borrowed from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrRef<'a> {
    ty: u16,
    bytes: &'a [u8],
}

impl<'a> AttrRef<'a> {
    /// The attributes nested inside this one.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::read(self.bytes)
    }

    /// A NUL-terminated string attribute ("" when it is not UTF-8).
    pub fn str(&self) -> &'a str {
        c_str(self.bytes)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Typed reads of an attribute's payload (`None` when it is too short).
pub trait AttrExt {
    fn ty(&self) -> u16;
    fn payload(&self) -> &[u8];

    fn u8(&self) -> Option<u8> {
        self.payload().first().copied()
    }

    fn u16(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(
            self.payload().get(..2)?.try_into().ok()?,
        ))
    }

    fn u32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(
            self.payload().get(..4)?.try_into().ok()?,
        ))
    }

    fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.payload().get(..4)?.try_into().ok()?,
        ))
    }

    fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(
            self.payload().get(..8)?.try_into().ok()?,
        ))
    }
}

impl AttrExt for AttrRef<'_> {
    fn ty(&self) -> u16 {
        self.ty
    }

    fn payload(&self) -> &[u8] {
        self.bytes
    }
}

impl AttrExt for Attr {
    fn ty(&self) -> u16 {
        *self.nla_type().nla_type()
    }

    fn payload(&self) -> &[u8] {
        self.nla_payload().as_ref()
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
    use crate::dataplane::netlink::genl::attr;

    fn bytes_of<T: ToBytes>(v: &T) -> Vec<u8> {
        let mut c = Cursor::new(Vec::new());
        v.to_bytes(&mut c).unwrap();
        c.into_inner()
    }

    #[test]
    fn messages_and_nested_attributes_round_trip() {
        let inner: Nlattr<u16, Buffer> = attr(18u16, Buffer::new())
            .nest(&attr(1u16, 0xdead_beefu32))
            .unwrap()
            .nest(&attr(2u16, Buffer::from(&0x1234u16.to_be_bytes()[..])))
            .unwrap();
        let attrs: GenlBuffer<u16, Buffer> = [attr(3u16, "eth0"), inner, attr(4u16, 9u8)]
            .into_iter()
            .collect();
        let mut d = request(16u16, NlmF::ACK, 7, attrs);
        d.extend(request(NLMSG_NOOP, NlmF::ACK, 8, Buffer::new()));
        assert_eq!(d.len() % 4, 0);
        let all: Vec<Message<'_>> = messages(&d).collect();
        assert_eq!(all.len(), 2);
        let m = all[0];
        assert_eq!((m.ty, m.flags, m.seq, m.port), (16, 5, 7, 0));
        let a = m.attrs(0);
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(3).unwrap().str(), "eth0");
        let nested = a.get(18).unwrap();
        assert_eq!(nested.ty(), 18, "the nested flag is kept apart");
        assert_eq!(nested.nested().get(1).unwrap().u32(), Some(0xdead_beef));
        assert_eq!(
            nested.nested().get(2).unwrap().bytes(),
            &0x1234u16.to_be_bytes()
        );
        assert_eq!(a.get(4).unwrap().u8(), Some(9));
        assert_eq!(all[1].ty, NLMSG_NOOP);
        assert!(all[1].payload.is_empty());
    }

    #[test]
    fn malformed_input_ends_iteration_or_reads_as_nothing() {
        let attrs: GenlBuffer<u16, Buffer> =
            [attr(1u16, 5u32), attr(2u16, 6u32)].into_iter().collect();
        let mut bytes = request(20u16, NlmF::empty(), 1, attrs);
        // The second attribute claims more than there is.
        bytes[NLMSG_HDRLEN + 8] = 200;
        let m = messages(&bytes).next().unwrap();
        assert!(m.attrs(0).is_empty());
        assert_eq!(m.attrs(0).iter().count(), 0);
        assert_eq!(m.attrs(0).table::<4>(), [None; 4]);
        // A message longer than the datagram ends the iteration.
        bytes[0] = 255;
        assert_eq!(messages(&bytes).count(), 0);
        assert_eq!(messages(&bytes[..10]).count(), 0);
    }

    fn error_message(flags: u16, errno: i32, request: &[u8], text: Option<&str>) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(request);
        if let Some(text) = text {
            body.extend(bytes_of(&attr(NlmsgerrAttr::Msg, text)));
        }
        let mut d = (NLMSG_HDRLEN as u32 + body.len() as u32)
            .to_ne_bytes()
            .to_vec();
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&flags.to_ne_bytes());
        d.extend_from_slice(&[0; 8]);
        d.extend(body);
        d
    }

    #[test]
    fn errors_give_errno_seq_and_the_extended_ack_text() {
        let attrs: GenlBuffer<u16, Buffer> = std::iter::once(attr(5u16, 1u32)).collect();
        let req = request(24u16, NlmF::empty(), 42, attrs);
        // Not capped: the whole request is echoed before the attributes.
        let full = error_message(NLM_F_ACK_TLVS, 22, &req, Some("bad gw"));
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
            Some("no"),
        );
        let ack = messages(&capped).next().unwrap().ack().unwrap();
        assert_eq!(
            (ack.errno, ack.seq, ack.text.as_deref()),
            (1, 42, Some("no"))
        );
        // A plain ack.
        let ok = error_message(0, 0, &req[..NLMSG_HDRLEN], None);
        let ack = messages(&ok).next().unwrap().ack().unwrap();
        assert_eq!((ack.errno, ack.seq, ack.text), (0, 42, None));
        // A long text is bounded.
        let long = "x".repeat(5000);
        let noisy = error_message(
            NLM_F_ACK_TLVS | NLM_F_CAPPED,
            1,
            &req[..16],
            Some(&long[..4000]),
        );
        let ack = messages(&noisy).next().unwrap().ack().unwrap();
        assert_eq!(ack.text.unwrap().len(), ACK_TEXT_BYTES);
    }

    #[test]
    fn wiped_payloads_read_what_was_written() {
        let attrs: GenlBuffer<u16, Buffer> =
            std::iter::once(attr(2u16, Buffer::from(&[7u8; 100][..]))).collect();
        let bytes = bytes_of(&attrs);
        let read: GenlBuffer<u16, Wiped> = parse(&bytes).unwrap();
        let a = read.iter().next().unwrap();
        assert_eq!(a.nla_payload().as_ref(), &[7; 100]);
        assert_eq!(format!("{:?}", a.nla_payload()), "Wiped(100 bytes)");
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
