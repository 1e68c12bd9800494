//! The blocking `NETLINK_NETFILTER` socket (`mnl::Socket`), its buffers sized for a whole
//! batch, and the read requests (`GET*`), built by libnftnl.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

use super::abi::NFPROTO_INET;
use super::TABLE;

/// Receive buffer for one datagram: the kernel fills a dump datagram up to 32 KiB.
const RX_BYTES: usize = 1 << 16;
/// The kernel queues every answer to a batch before `sendmsg` returns; this is room for
/// them (one error per failed message) and for dump datagrams.
const RCVBUF_BYTES: usize = 8 << 20;

pub(crate) struct Socket {
    socket: mnl::Socket,
    sndbuf: usize,
    /// Receive buffer; `mnl` wants it aligned for `nlmsghdr`, so it starts at `rx_at`.
    rx: Vec<u8>,
    rx_at: usize,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("portid", &self.portid())
            .field("sndbuf", &self.sndbuf)
            .finish()
    }
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let rx = vec![0; RX_BYTES + 8];
        let rx_at = rx.as_ptr().align_offset(8);
        let socket = Socket {
            socket,
            sndbuf: 0,
            rx,
            rx_at,
        };
        // mnl opens without SOCK_CLOEXEC: the owner socket must not leak into children.
        // SAFETY: fcntl on a descriptor this socket owns.
        if unsafe { libc::fcntl(socket.socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Errors carry the failed request's header only (not its whole payload), plus the
        // kernel's text saying what it refused.
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        socket.set_int(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)?;
        socket.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES as i32)?;
        Ok(socket)
    }

    /// The port id the kernel records as owner of tables this socket creates.
    pub fn portid(&self) -> u32 {
        self.socket.portid()
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: value is a live c_int of the size passed; the fd is the socket's own.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
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
        let sent = self.socket.send(data)?;
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink datagram sent in part",
            ));
        }
        Ok(())
    }

    /// Receives one datagram, waiting for it.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        let buf = &mut self.rx[self.rx_at..self.rx_at + RX_BYTES];
        let n = loop {
            match self.socket.recv_raw(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        Ok(&self.rx[self.rx_at..self.rx_at + n])
    }
}

/// What a read request names.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// Nothing: the generation, or every chain.
    All,
    /// Table `inet weft-fw`.
    Table,
    /// The rules of table `inet weft-fw`.
    Rules,
    /// The elements of a set of table `inet weft-fw`.
    Elements(&'a str),
}

/// One `NFT_MSG_GET*` request for family inet, with `NLM_F_REQUEST | flags`.
pub(crate) fn request(ty: u16, flags: u16, seq: u32, target: Target<'_>) -> Vec<u8> {
    let table = CString::new(TABLE).expect("the table name has no NUL");
    // Room for the header, the nfgenmsg and two names of at most 256 bytes.
    let mut buf = vec![0u64; 128];
    let bytes = buf.len() * size_of::<u64>();
    let at = buf.as_mut_ptr().cast::<c_char>();
    // SAFETY: `buf` is aligned and larger than any request built here; every libnftnl
    // object is checked for NULL and freed after its payload was copied into `buf`.
    unsafe {
        let header = sys::nftnl_nlmsg_build_hdr(at, ty, u16::from(NFPROTO_INET), flags, seq);
        match target {
            Target::All => {}
            Target::Table => {
                let t = NonNull::new(sys::nftnl_table_alloc()).expect("allocate a table");
                sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, table.as_ptr());
                sys::nftnl_table_nlmsg_build_payload(header, t.as_ptr());
                sys::nftnl_table_free(t.as_ptr());
            }
            Target::Rules => {
                let r = NonNull::new(sys::nftnl_rule_alloc()).expect("allocate a rule");
                sys::nftnl_rule_set_str(r.as_ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
                sys::nftnl_rule_nlmsg_build_payload(header, r.as_ptr());
                sys::nftnl_rule_free(r.as_ptr());
            }
            Target::Elements(name) => {
                let name = CString::new(name).unwrap_or_default();
                let s = NonNull::new(sys::nftnl_set_alloc()).expect("allocate a set");
                sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
                sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, name.as_ptr());
                sys::nftnl_set_elems_nlmsg_build_payload(header, s.as_ptr());
                sys::nftnl_set_free(s.as_ptr());
            }
        }
        let len = ((*header).nlmsg_len as usize).min(bytes);
        std::slice::from_raw_parts(at.cast::<u8>(), len).to_vec()
    }
}
