//! Just enough netlink to read nf_tables answers: messages, attributes and the kernel's
//! errors. Writing is libnftnl's (`batch`, `socket`).

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLM_F_ACK_TLVS`: the error message carries extended ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLM_F_CAPPED`: the error message carries only the header of the failed request.
const NLM_F_CAPPED: u16 = 0x100;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes in `data`, as (type without flags, payload).
pub(crate) fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, payload))
    })
}

pub(crate) fn be32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub(crate) fn string(data: &[u8]) -> &str {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    std::str::from_utf8(&data[..end]).unwrap_or("")
}

/// One received message: its type, flags, sequence number and payload after the `nlmsghdr`.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The attributes after the `nfgenmsg` header.
    pub fn nf_attrs(&self) -> impl Iterator<Item = (u16, &'a [u8])> {
        attrs(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }

    /// For `NLMSG_ERROR`: the errno (0 for an ack), the sequence number of the request it
    /// answers, and the kernel's extended-ack text when it sent one.
    pub fn error(&self) -> Option<(i32, u32, Option<String>)> {
        let p = self.payload;
        let errno = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
        // The request's header follows: its seq is at offset 8 within it.
        let seq = u32::from_ne_bytes(p.get(12..16)?.try_into().ok()?);
        let mut text = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            let req_len = u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?) as usize;
            let skip = if self.flags & NLM_F_CAPPED != 0 {
                4 + NLMSG_HDRLEN
            } else {
                4 + align4(req_len)
            };
            for (ty, v) in attrs(p.get(skip..).unwrap_or(&[])) {
                if ty == NLMSGERR_ATTR_MSG {
                    text = Some(string(v).to_owned());
                }
            }
        }
        Some((-errno, seq, text))
    }
}

/// The messages in one datagram.
pub(crate) fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let msg = Message {
            ty: u16::from_ne_bytes(data[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(data[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(data[8..12].try_into().ok()?),
            payload: &data[NLMSG_HDRLEN..len],
        };
        data = &data[align4(len).min(data.len())..];
        Some(msg)
    })
}
