//! Generic netlink: the `genlmsghdr` after the netlink header, and the controller that maps
//! a family's name (`wireguard`) to the message type its requests use.

use std::io;

use super::message::{Datagram, Message, NLM_F_ACK, NLM_F_REQUEST};
use super::socket::{Error, Protocol, Socket};

/// `genlmsghdr`: command, version, reserved.
pub const GENL_HDRLEN: usize = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// Starts a generic netlink message of `family` (its id) carrying `cmd`.
pub fn message(
    d: &mut Datagram,
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
) -> &mut Datagram {
    d.message(family, flags, seq).fixed(&[cmd, version, 0, 0])
}

/// The controller request that looks up `name`.
pub fn family_request(name: &str, seq: u32) -> Datagram {
    let mut d = Datagram::new();
    message(
        &mut d,
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
    )
    .attr_str(CTRL_ATTR_FAMILY_NAME, name);
    d
}

/// The family id in a controller reply.
pub fn family_id(msg: &Message<'_>) -> Option<u16> {
    if msg.ty != GENL_ID_CTRL {
        return None;
    }
    msg.attrs(GENL_HDRLEN).get(CTRL_ATTR_FAMILY_ID)?.u16()
}

/// A generic netlink socket and the ids of the families it has looked up.
#[derive(Debug)]
pub struct Genl {
    socket: Socket,
    families: Vec<(&'static str, u16)>,
}

impl Genl {
    /// Opens the socket in the calling thread's namespace. Looks nothing up yet: a family
    /// the kernel lacks (no WireGuard module) is an error only for whoever asks for it.
    pub fn open() -> io::Result<Genl> {
        Ok(Genl {
            socket: Socket::open(Protocol::Generic)?,
            families: Vec::new(),
        })
    }

    /// The id of family `name`, looked up once (ENOENT when the kernel does not have it).
    pub fn family(&mut self, name: &'static str) -> Result<u16, Error> {
        if let Some(&(_, id)) = self.families.iter().find(|(n, _)| *n == name) {
            return Ok(id);
        }
        let seq = self.socket.next_seq();
        let mut id = None;
        self.socket
            .request(family_request(name, seq).bytes(), |m| {
                id = id.or(family_id(m));
            })?;
        let id = id.ok_or_else(|| {
            Error::Receive(io::Error::new(
                io::ErrorKind::InvalidData,
                "the controller's answer names no family id",
            ))
        })?;
        self.families.push((name, id));
        Ok(id)
    }

    pub fn socket(&mut self) -> &mut Socket {
        &mut self.socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::message::{align4, messages, NLMSG_HDRLEN};

    #[test]
    fn the_family_request_names_the_family_to_the_controller() {
        let d = family_request("wireguard", 4);
        let fam = d.bytes();
        assert_eq!(u16::from_ne_bytes([fam[4], fam[5]]), GENL_ID_CTRL);
        assert_eq!(&fam[16..18], &[CTRL_CMD_GETFAMILY, 1]);
        assert_eq!(
            fam.len(),
            NLMSG_HDRLEN + GENL_HDRLEN + 4 + align4("wireguard".len() + 1)
        );
        let m = messages(fam).next().unwrap();
        assert_eq!(
            m.attrs(GENL_HDRLEN)
                .get(CTRL_ATTR_FAMILY_NAME)
                .unwrap()
                .str(),
            "wireguard"
        );
        // A reply carries the id.
        let mut reply = Datagram::new();
        message(&mut reply, GENL_ID_CTRL, 0, 4, 1, 1).attr_u16(CTRL_ATTR_FAMILY_ID, 0x1c);
        let m = messages(reply.bytes()).next().unwrap();
        assert_eq!(family_id(&m), Some(0x1c));
    }
}
