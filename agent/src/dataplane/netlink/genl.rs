//! Generic netlink: neli's `Genlmsghdr` after the netlink header, and the controller that
//! maps a family's name (`wireguard`) to the message type its requests use.

use std::io;

use neli::consts::genl::{Cmd, CtrlAttr, CtrlCmd, NlAttrType};
use neli::consts::nl::{GenlId, NlmF};
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::types::{Buffer, GenlBuffer};
use neli::{Size, ToBytes};

use super::message::{self, Message};
use super::socket::{Error, Protocol, Socket};

/// `genlmsghdr`: command, version, reserved.
pub const GENL_HDRLEN: usize = 4;

/// An attribute of type `ty` whose payload neli serializes (`&str` NUL-terminated,
/// integers in host order).
pub fn attr<T: NlAttrType, P: Size + ToBytes>(ty: T, payload: P) -> Nlattr<T, Buffer> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(ty)
                .build()
                .expect("the type is set"),
        )
        .nla_payload(payload)
        .build()
        .expect("type and payload are set")
}

/// A generic netlink message of `cmd` carrying `attrs`.
pub fn message<C: Cmd, T: NlAttrType>(
    cmd: C,
    version: u8,
    attrs: GenlBuffer<T, Buffer>,
) -> Genlmsghdr<C, T> {
    GenlmsghdrBuilder::default()
        .cmd(cmd)
        .version(version)
        .attrs(attrs)
        .build()
        .expect("command, version and attributes are set")
}

/// The controller request that looks up `name`.
pub fn family_request(name: &str, seq: u32) -> Vec<u8> {
    let attrs = std::iter::once(attr(CtrlAttr::FamilyName, name)).collect();
    let msg = message(CtrlCmd::Getfamily, 1, attrs);
    message::request(GenlId::Ctrl, NlmF::ACK, seq, msg)
}

/// The family id in a controller reply.
pub fn family_id(msg: &Message<'_>) -> Option<u16> {
    if msg.ty != u16::from(GenlId::Ctrl) {
        return None;
    }
    let reply: Genlmsghdr<CtrlCmd, CtrlAttr> = message::parse(msg.payload)?;
    reply
        .attrs()
        .get_attr_handle()
        .get_attr_payload_as::<u16>(CtrlAttr::FamilyId)
        .ok()
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
        self.socket.request(&family_request(name, seq), |m| {
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
    use crate::dataplane::netlink::messages;

    #[test]
    fn the_family_request_names_the_family_to_the_controller() {
        let fam = family_request("wireguard", 4);
        assert_eq!(
            u16::from_ne_bytes([fam[4], fam[5]]),
            u16::from(GenlId::Ctrl)
        );
        assert_eq!(&fam[16..18], &[u8::from(CtrlCmd::Getfamily), 1]);
        let m = messages(&fam).next().unwrap();
        let req: Genlmsghdr<CtrlCmd, CtrlAttr> = message::parse(m.payload).unwrap();
        assert_eq!(
            req.attrs()
                .get_attr_handle()
                .get_attr_payload_as_with_len::<String>(CtrlAttr::FamilyName)
                .unwrap(),
            "wireguard"
        );
        // A reply carries the id.
        let attrs = std::iter::once(attr(CtrlAttr::FamilyId, 0x1cu16)).collect();
        let reply = message::request(
            GenlId::Ctrl,
            NlmF::empty(),
            4,
            message(CtrlCmd::Newfamily, 1, attrs),
        );
        let m = messages(&reply).next().unwrap();
        assert_eq!(family_id(&m), Some(0x1c));
    }
}
