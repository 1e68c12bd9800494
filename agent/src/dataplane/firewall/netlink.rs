//! Just enough netlink for nf_tables: a message writer, an attribute reader, and a blocking
//! `NETLINK_NETFILTER` socket whose buffers grow to fit a whole batch. The table, batch and
//! dump code speak in these terms; nothing here knows about rules.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `_END` (`NLMSG_MIN_TYPE` and the next).
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
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

/// A buffer of netlink messages written back to back.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
    /// Offsets of open messages (`true`) and nests whose length is patched when they end.
    open: Vec<(usize, bool)>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(n),
            open: Vec::new(),
        }
    }

    /// Starts a message with an `nfgenmsg` header (family, version 0, `res_id`).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.open.push((self.buf.len(), true));
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Ends the innermost open message or nest.
    pub fn end(&mut self) {
        let (start, message) = self.open.pop().expect("end without begin");
        let len = self.buf.len() - start;
        if message {
            self.buf[start..start + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        } else {
            // A nest longer than 64 KiB cannot be expressed; callers split before that.
            debug_assert!(len <= usize::from(u16::MAX), "nest of {len} bytes");
            self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        }
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn u32_be(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies expect.
    pub fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn nest(&mut self, ty: u16) {
        self.open.push((self.buf.len(), false));
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
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

/// A blocking `NETLINK_NETFILTER` socket.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    portid: u32,
    sndbuf: usize,
    /// Receive buffer, large enough for any datagram a dump sends.
    rx: Vec<u8>,
}

/// Receive buffer for one datagram: the kernel fills a dump datagram up to 32 KiB.
const RX_BYTES: usize = 1 << 16;
/// The kernel queues every answer to a batch before `sendmsg` returns; this is room for
/// them (one error per failed message) and for dump datagrams.
const RCVBUF_BYTES: usize = 8 << 20;

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before it is used as an fd.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = size_of::<libc::sockaddr_nl>() as u32;
        // SAFETY: addr and len describe a writable sockaddr_nl.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Socket {
            fd,
            portid: addr.nl_pid,
            sndbuf: 0,
            rx: vec![0; RX_BYTES],
        };
        // Errors carry the failed request's header only (not its whole payload), plus the
        // kernel's text saying what it refused.
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)?;
        socket.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES as i32)?;
        Ok(socket)
    }

    /// The port id the kernel records as owner of tables this socket creates.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: value is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                size_of::<i32>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the send buffer big enough to take `bytes` in one datagram (the kernel refuses a
    /// datagram larger than the buffer with EMSGSIZE).
    pub fn fit_send(&mut self, bytes: usize) -> io::Result<()> {
        let want = (bytes + (64 << 10)).next_power_of_two();
        if want > self.sndbuf {
            let v = i32::try_from(want).unwrap_or(i32::MAX);
            self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v)?;
            self.sndbuf = want;
        }
        Ok(())
    }

    /// Sends `data` as one datagram.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data; all-zero addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: data and to are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "netlink datagram sent in part",
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram; `None` when `wait` is false and nothing is queued.
    pub fn recv(&mut self, wait: bool) -> io::Result<Option<&[u8]>> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: rx is a writable buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rx.as_mut_ptr().cast(),
                    self.rx.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock if !wait => return Ok(None),
                    _ => return Err(e),
                }
            }
            return Ok(Some(&self.rx[..n as usize]));
        }
    }
}
