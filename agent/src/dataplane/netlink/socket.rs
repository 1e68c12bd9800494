//! The netlink socket and the one exchange loop every request goes through.
//!
//! A request is answered by messages carrying its sequence number and our port: data (a
//! reply, or one object of a dump), then an end: `NLMSG_ERROR` (an ack when its errno is 0,
//! a refusal otherwise, with the kernel's extended-ack text), or `NLMSG_DONE` for a dump.
//! Anything else on the socket (leftovers of an exchange abandoned on an error) is skipped,
//! never mistaken for the answer. A dump flagged `NLM_F_DUMP_INTR` saw its objects change
//! under it; [`Socket::dump`] reads it again.
//!
//! A socket belongs to the network namespace of the thread that opened it (KERNEL-NOTES),
//! and stays there when it moves to another thread.

use std::io;
use std::mem::size_of;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, RawFd};

use neli::consts::nl::NlmF;

use super::message::{
    messages, request, seq_in, Ack, Message, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLM_F_DUMP_INTR,
};

/// Receive room for one datagram: the kernel fills dump datagrams up to 32 KiB.
const RX_BYTES: usize = 64 << 10;
/// A dump interrupted by a concurrent change is read again this many times before the
/// exchange gives up.
const DUMP_ATTEMPTS: usize = 5;

/// The netlink protocols the agent speaks, as libmnl names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// rtnetlink: links, addresses, routes.
    Route,
    /// nfnetlink: nftables.
    Netfilter,
    /// Generic netlink: WireGuard, through its family id.
    Generic,
}

impl Protocol {
    fn bus(self) -> mnl::Bus {
        match self {
            Protocol::Route => mnl::Bus::Route,
            Protocol::Netfilter => mnl::Bus::Netfilter,
            Protocol::Generic => mnl::Bus::Generic,
        }
    }
}

/// A failed exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("send a netlink request")]
    Send(#[source] io::Error),
    #[error("receive the kernel's answer")]
    Receive(#[source] io::Error),
    /// The kernel refused the request. Displayed as the errno's text, then the kernel's own
    /// words when it gave them (`Network is unreachable (os error 101): Nexthop has invalid
    /// gateway`), so callers prefix what they were doing.
    #[error("{}{}", io::Error::from_raw_os_error(*.errno), .text.as_ref().map(|t| format!(": {t}")).unwrap_or_default())]
    Refused { errno: i32, text: Option<String> },
    #[error("the objects kept changing while they were read ({DUMP_ATTEMPTS} attempts)")]
    Inconsistent,
}

impl Error {
    /// The errno behind the failure, when there is one (EEXIST, ENODEV, ERESTART ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { errno, .. } => Some(*errno),
            Error::Send(e) | Error::Receive(e) => e.raw_os_error(),
            Error::Inconsistent => None,
        }
    }

    fn refused(ack: Ack) -> Error {
        Error::Refused {
            errno: ack.errno,
            text: ack.text,
        }
    }
}

/// What the exchange loop hands to its caller, message by message.
#[derive(Debug)]
pub enum Event<'m, 'a> {
    /// A data message answering one of the requests.
    Data(&'m Message<'a>),
    /// The end of one request's answer: acknowledged (`errno` 0) or refused.
    End(Ack),
}

/// A netlink socket: libmnl's (`mnl::Socket`), for every protocol. Blocking unless it was
/// opened to listen ([`Socket::subscribe`]).
pub struct Socket {
    socket: mnl::Socket,
    port: u32,
    seq: u32,
    sndbuf: usize,
    rcvbuf: usize,
    /// Receive buffer, aligned for `nlmsghdr` as libmnl wants it.
    rx: Vec<u64>,
}

// SAFETY: `mnl::Socket` holds a pointer to a `struct mnl_socket` that libmnl allocated for
// this value alone (a descriptor and its bound address); libmnl keeps no thread-local or
// shared state, so the socket may move to another thread. It is never shared (`!Sync`).
unsafe impl Send for Socket {}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.as_raw_fd())
            .field("port", &self.port)
            .finish()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace. Refusals carry the
    /// kernel's extended-ack text and echo only the failed request's header.
    pub fn open(protocol: Protocol) -> io::Result<Socket> {
        let socket = Socket::bind(protocol)?;
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)?;
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        Ok(socket)
    }

    /// Opens a non-blocking socket that receives the multicast `groups` of `protocol`, with
    /// a receive buffer of `rcvbuf` bytes for bursts.
    pub fn subscribe(protocol: Protocol, groups: &[u32], rcvbuf: usize) -> io::Result<Socket> {
        let mut socket = Socket::bind(protocol)?;
        for &group in groups {
            socket.set_int(
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                group as i32,
            )?;
        }
        socket.fit_recv(rcvbuf)?;
        socket.set_fd_flags(libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)?;
        Ok(socket)
    }

    /// libmnl's socket, bound to a port the kernel picks.
    fn bind(protocol: Protocol) -> io::Result<Socket> {
        let socket = mnl::Socket::new(protocol.bus())?;
        let port = socket.portid();
        let socket = Socket {
            socket,
            port,
            // Distinct across sockets and restarts, so a stray answer is never taken for
            // ours.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            sndbuf: 0,
            rcvbuf: 0,
            rx: vec![0; RX_BYTES / 8],
        };
        // libmnl opens without SOCK_CLOEXEC: the table owner's socket must not leak into
        // the processes the agent starts.
        socket.set_fd_flags(libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
        Ok(socket)
    }

    fn set_fd_flags(&self, get: i32, set: i32, flag: i32) -> io::Result<()> {
        // SAFETY: fcntl get/set of flags on a descriptor this socket owns.
        let ok = unsafe {
            let flags = libc::fcntl(self.as_raw_fd(), get);
            flags >= 0 && libc::fcntl(self.as_raw_fd(), set, flags | flag) >= 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The socket's port: the kernel stamps it on the answers to our requests, on the
    /// notifications they cause, and records it as the owner of nftables tables we create.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// A fresh sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The sequence number [`Socket::next_seq`] will give.
    pub fn peek_seq(&self) -> u32 {
        self.seq.wrapping_add(1)
    }

    /// `n` consecutive sequence numbers; returns the first.
    pub fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n);
        first
    }

    /// Asks the kernel to check dump requests strictly and to honour their filters (a
    /// link's addresses, the routes via a link) instead of sending everything.
    pub fn strict_dumps(&self) -> io::Result<()> {
        self.set_int(libc::SOL_NETLINK, libc::NETLINK_GET_STRICT_CHK, 1)
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: `value` is a live c_int of the size passed; the fd is the socket's own.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Room for at least `bytes` of answers queued before we read them (a batch's errors
    /// and echoes, a burst of notifications); it only grows. Root may exceed the system's
    /// maximum; others get what it allows.
    pub fn fit_recv(&mut self, bytes: usize) -> io::Result<()> {
        if bytes > self.rcvbuf {
            let v = i32::try_from(bytes).unwrap_or(i32::MAX);
            self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
                .or_else(|_| self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, v))?;
            self.rcvbuf = bytes;
        }
        Ok(())
    }

    /// Makes the send buffer big enough for one datagram of `bytes` (the kernel refuses a
    /// larger one with EMSGSIZE).
    pub fn fit_send(&mut self, bytes: usize) -> io::Result<()> {
        let want = (bytes + (64 << 10)).next_power_of_two();
        if want > self.sndbuf {
            let v = i32::try_from(want).unwrap_or(i32::MAX);
            self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v)
                .or_else(|_| self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, v))?;
            self.sndbuf = want;
        }
        Ok(())
    }

    /// Sends `data` to the kernel as one datagram.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        let sent = loop {
            match self.socket.send(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink datagram sent in part",
            ));
        }
        Ok(())
    }

    /// Receives one datagram: waits for it on a blocking socket, `WouldBlock` when nothing
    /// is pending on a listening one. A datagram larger than the buffer is an error (libmnl
    /// reports it as ENOSPC), never silently cut.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        let buf = bytes_mut(&mut self.rx);
        let n = loop {
            match self.socket.recv_raw(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        Ok(&bytes(&self.rx)[..n])
    }

    /// Overwrites the receive buffer: it may have held an answer that carried a secret.
    pub fn wipe(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.rx[..]);
    }

    /// The exchange loop. Sends `datagrams`, whose requests are numbered `seqs`, and hands
    /// every answer to `on` until the request numbered `seqs.end()` has ended. Messages of
    /// other sequence numbers or ports are skipped. Returns whether a dump answer was
    /// flagged `NLM_F_DUMP_INTR`. The last request must end with an ack, an error or a done
    /// (ask for an ack); `on` sees the ends of the others only if they asked for one.
    ///
    /// `on` cannot stop the loop: a caller that cannot use an answer keeps its own error and
    /// lets the answer be read to its end, so nothing of it is left on the socket.
    pub fn exchange(
        &mut self,
        datagrams: &[&[u8]],
        seqs: RangeInclusive<u32>,
        mut on: impl FnMut(Event<'_, '_>),
    ) -> Result<bool, Error> {
        for datagram in datagrams {
            self.send(datagram).map_err(Error::Send)?;
        }
        let last = *seqs.end();
        let port = self.port;
        let mut interrupted = false;
        loop {
            let data = self.recv().map_err(Error::Receive)?;
            for msg in messages(data) {
                if msg.port != port || !seq_in(msg.seq, &seqs) {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let ack = msg.ack().ok_or_else(|| {
                            Error::Receive(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "a malformed end of answer",
                            ))
                        })?;
                        let ended = ack.seq == last;
                        on(Event::End(ack));
                        if ended {
                            return Ok(interrupted);
                        }
                    }
                    NLMSG_NOOP => {}
                    _ => on(Event::Data(&msg)),
                }
            }
        }
    }

    /// Sends one request that asks for an ack (or a dump) and reads its answer to the end;
    /// its data messages go to `each`. Returns whether a dump was interrupted.
    fn answer(
        &mut self,
        request: &[u8],
        mut each: impl FnMut(&Message<'_>),
    ) -> Result<bool, Error> {
        let seq = request_seq(request);
        let mut refused = None;
        let interrupted = self.exchange(&[request], seq..=seq, |event| match event {
            Event::Data(msg) => each(msg),
            Event::End(ack) if ack.errno != 0 => refused = Some(ack),
            Event::End(_) => {}
        })?;
        match refused {
            Some(ack) => Err(Error::refused(ack)),
            None => Ok(interrupted),
        }
    }

    /// Sends one request that asks for an ack and waits for it; data messages of the answer
    /// (the reply to a get) go to `each`.
    pub fn request(&mut self, request: &[u8], each: impl FnMut(&Message<'_>)) -> Result<(), Error> {
        self.answer(request, each).map(drop)
    }

    /// A dump: `build` makes the request with the sequence number it is given, `each`
    /// folds every object of the answer into the result. An answer flagged
    /// `NLM_F_DUMP_INTR` is thrown away and the dump made again from a fresh result, up to
    /// five times.
    pub fn dump<A: Default, B: AsRef<[u8]>>(
        &mut self,
        mut build: impl FnMut(u32) -> B,
        mut each: impl FnMut(&Message<'_>, &mut A),
    ) -> Result<A, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut out = A::default();
            let seq = self.next_seq();
            let request = build(seq);
            if !self.answer(request.as_ref(), |m| each(m, &mut out))? {
                return Ok(out);
            }
        }
        Err(Error::Inconsistent)
    }
}

fn bytes(words: &[u64]) -> &[u8] {
    // SAFETY: any u64 slice is a valid u8 slice of 8 times its length, same lifetime.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
}

fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as `bytes`; the borrow is exclusive for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

/// The sequence number written in a request's header.
pub fn request_seq(request: &[u8]) -> u32 {
    request
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// A request that only asks the kernel to acknowledge it, in any protocol: sent after a
/// batch, its ack marks the end of everything the batch was answered with (the kernel
/// answers each datagram before `send` returns).
pub fn fence(seq: u32) -> Vec<u8> {
    request(NLMSG_NOOP, NlmF::ACK, seq, neli::types::Buffer::new())
}
