//! Rule expressions as typed values: written into a rule message in the attribute order
//! libnftnl (and so `nft`) uses, and read back from the kernel's rule dumps. One enum for
//! both directions, so a rule read back compares equal to the rule written.

use super::abi::*;
use crate::dataplane::netlink::{Attr, Attrs, Datagram};

/// An expression's or element's data, at most 16 bytes (an IPv6 address, an interface
/// name), kept inline: a 10,000-rule read-back would otherwise allocate for every compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Value {
    len: u8,
    bytes: [u8; 16],
}

impl Value {
    /// `None` when `data` is longer than 16 bytes.
    pub fn new(data: &[u8]) -> Option<Value> {
        let mut bytes = [0; 16];
        bytes.get_mut(..data.len())?.copy_from_slice(data);
        Some(Value {
            len: data.len() as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.as_slice()))
    }
}

/// One expression of a rule. Registers are kept as numbers: what they must be is the
/// caller's rule, not the codec's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta <key>` into `dreg`.
    Meta { key: u32, dreg: u32 },
    /// `ct <key>` into `dreg`.
    Ct { key: u32, dreg: u32 },
    /// Compare `sreg` with `data` by `op` (`NFT_CMP_*`).
    Cmp { sreg: u32, op: u32, data: Value },
    /// Load `len` bytes at `offset` of header `base` into `dreg`.
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    /// `dreg = (sreg & mask) ^ xor` over `len` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Value,
        xor: Value,
    },
    /// Look `sreg` up in a set, named, or (in the transaction that creates it) by id.
    Lookup {
        sreg: u32,
        set: String,
        set_id: Option<u32>,
        /// `NFT_LOOKUP_F_INV` and friends; 0 when absent.
        flags: u32,
        /// A map lookup's destination register.
        dreg: Option<u32>,
    },
    /// An immediate verdict (`accept`, `drop` ...), into the verdict register.
    Verdict(u32),
    /// An expression this layer does not model, by name, or one it could not read.
    Other(String),
}

impl Expr {
    /// Writes the expression as one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn write(&self, d: &mut Datagram) {
        let elem = d.nest(NFTA_LIST_ELEM);
        d.attr_str(NFTA_EXPR_NAME, self.name());
        let data = d.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Meta { key, dreg } => {
                d.attr_be32(NFTA_META_KEY, *key)
                    .attr_be32(NFTA_META_DREG, *dreg);
            }
            Expr::Ct { key, dreg } => {
                d.attr_be32(NFTA_CT_KEY, *key)
                    .attr_be32(NFTA_CT_DREG, *dreg);
            }
            Expr::Cmp { sreg, op, data } => {
                d.attr_be32(NFTA_CMP_SREG, *sreg)
                    .attr_be32(NFTA_CMP_OP, *op);
                value(d, NFTA_CMP_DATA, data);
            }
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                d.attr_be32(NFTA_PAYLOAD_DREG, *dreg)
                    .attr_be32(NFTA_PAYLOAD_BASE, *base)
                    .attr_be32(NFTA_PAYLOAD_OFFSET, *offset)
                    .attr_be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                d.attr_be32(NFTA_BITWISE_SREG, *sreg)
                    .attr_be32(NFTA_BITWISE_DREG, *dreg)
                    .attr_be32(NFTA_BITWISE_LEN, *len);
                value(d, NFTA_BITWISE_MASK, mask);
                value(d, NFTA_BITWISE_XOR, xor);
            }
            Expr::Lookup {
                sreg,
                set,
                set_id,
                flags,
                dreg,
            } => {
                d.attr_be32(NFTA_LOOKUP_SREG, *sreg);
                if let Some(dreg) = dreg {
                    d.attr_be32(NFTA_LOOKUP_DREG, *dreg);
                }
                d.attr_str(NFTA_LOOKUP_SET, set);
                if let Some(id) = set_id {
                    d.attr_be32(NFTA_LOOKUP_SET_ID, *id);
                }
                if *flags != 0 {
                    d.attr_be32(NFTA_LOOKUP_FLAGS, *flags);
                }
            }
            Expr::Verdict(code) => {
                d.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let imm = d.nest(NFTA_IMMEDIATE_DATA);
                let verdict = d.nest(NFTA_DATA_VERDICT);
                d.attr_be32(NFTA_VERDICT_CODE, *code);
                d.end_nest(verdict);
                d.end_nest(imm);
            }
            Expr::Other(_) => {}
        }
        d.end_nest(data);
        d.end_nest(elem);
    }

    /// The kernel's name of the expression.
    pub fn name(&self) -> &str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Verdict(_) => "immediate",
            Expr::Other(name) => name,
        }
    }

    /// Reads one `NFTA_LIST_ELEM` of a rule's expression list. Whatever it cannot read as
    /// one of the modelled forms is [`Expr::Other`].
    pub fn read(elem: &Attr<'_>) -> Expr {
        let mut name = "";
        let mut body = crate::dataplane::netlink::attrs(&[]);
        for a in elem.nested() {
            match a.ty {
                NFTA_EXPR_NAME => name = a.str(),
                NFTA_EXPR_DATA => body = a.nested(),
                _ => {}
            }
        }
        read_body(name, body).unwrap_or_else(|| Expr::Other(name.to_owned()))
    }
}

fn value(d: &mut Datagram, ty: u16, v: &Value) {
    let n = d.nest(ty);
    d.attr(NFTA_DATA_VALUE, v.as_slice());
    d.end_nest(n);
}

fn read_value(a: Attr<'_>) -> Option<Value> {
    Value::new(a.nested().get(NFTA_DATA_VALUE)?.payload)
}

fn read_body(name: &str, body: Attrs<'_>) -> Option<Expr> {
    let get = |ty: u16| body.clone().get(ty);
    let u = |ty: u16| get(ty).and_then(|a| a.be32());
    Some(match name {
        "meta" => Expr::Meta {
            key: u(NFTA_META_KEY)?,
            dreg: u(NFTA_META_DREG)?,
        },
        "ct" => Expr::Ct {
            key: u(NFTA_CT_KEY)?,
            dreg: u(NFTA_CT_DREG)?,
        },
        "cmp" => Expr::Cmp {
            sreg: u(NFTA_CMP_SREG)?,
            op: u(NFTA_CMP_OP)?,
            data: read_value(get(NFTA_CMP_DATA)?)?,
        },
        "payload" => Expr::Payload {
            dreg: u(NFTA_PAYLOAD_DREG)?,
            base: u(NFTA_PAYLOAD_BASE)?,
            offset: u(NFTA_PAYLOAD_OFFSET)?,
            len: u(NFTA_PAYLOAD_LEN)?,
        },
        // Only the boolean form (mask and xor); shifts are another expression to us.
        "bitwise" if u(NFTA_BITWISE_OP).unwrap_or(NFT_BITWISE_BOOL) == NFT_BITWISE_BOOL => {
            Expr::Bitwise {
                sreg: u(NFTA_BITWISE_SREG)?,
                dreg: u(NFTA_BITWISE_DREG)?,
                len: u(NFTA_BITWISE_LEN)?,
                mask: read_value(get(NFTA_BITWISE_MASK)?)?,
                xor: read_value(get(NFTA_BITWISE_XOR)?)?,
            }
        }
        "lookup" => Expr::Lookup {
            sreg: u(NFTA_LOOKUP_SREG)?,
            set: get(NFTA_LOOKUP_SET)?.str().to_owned(),
            set_id: u(NFTA_LOOKUP_SET_ID),
            flags: u(NFTA_LOOKUP_FLAGS).unwrap_or(0),
            dreg: u(NFTA_LOOKUP_DREG),
        },
        "immediate" if u(NFTA_IMMEDIATE_DREG)? == NFT_REG_VERDICT => {
            let code = get(NFTA_IMMEDIATE_DATA)?
                .nested()
                .get(NFTA_DATA_VERDICT)?
                .nested()
                .get(NFTA_VERDICT_CODE)?
                .be32()?;
            Expr::Verdict(code)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::messages;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        proptest::collection::vec(any::<u8>(), 0..=16).prop_map(|v| Value::new(&v).unwrap())
    }

    fn expr() -> impl Strategy<Value = Expr> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(key, dreg)| Expr::Meta { key, dreg }),
            (any::<u32>(), any::<u32>()).prop_map(|(key, dreg)| Expr::Ct { key, dreg }),
            (any::<u32>(), any::<u32>(), value()).prop_map(|(sreg, op, data)| Expr::Cmp {
                sreg,
                op,
                data
            }),
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(dreg, base, offset, len)| Expr::Payload {
                    dreg,
                    base,
                    offset,
                    len
                }
            ),
            (any::<u32>(), any::<u32>(), any::<u32>(), value(), value()).prop_map(
                |(sreg, dreg, len, mask, xor)| Expr::Bitwise {
                    sreg,
                    dreg,
                    len,
                    mask,
                    xor
                }
            ),
            (
                any::<u32>(),
                "[a-z_%0-9]{1,16}",
                proptest::option::of(any::<u32>()),
                any::<u32>(),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(sreg, set, set_id, flags, dreg)| Expr::Lookup {
                    sreg,
                    set,
                    set_id,
                    flags,
                    dreg
                }),
            any::<u32>().prop_map(Expr::Verdict),
        ]
    }

    proptest! {
        #[test]
        fn every_expression_reads_back_as_written(exprs in proptest::collection::vec(expr(), 0..8)) {
            let mut d = Datagram::new();
            d.message(1, 0, 1);
            let list = d.nest(NFTA_RULE_EXPRESSIONS);
            for e in &exprs {
                e.write(&mut d);
            }
            d.end_nest(list);
            let msg = messages(d.bytes()).next().unwrap();
            let list = msg.attrs(0).get(NFTA_RULE_EXPRESSIONS).unwrap();
            let back: Vec<Expr> = list.nested().map(|e| Expr::read(&e)).collect();
            prop_assert_eq!(back, exprs);
        }
    }

    #[test]
    fn unknown_and_malformed_expressions_are_other() {
        let mut d = Datagram::new();
        d.message(1, 0, 1);
        Expr::Other("counter".into()).write(&mut d);
        Expr::Verdict(1).write(&mut d);
        let msg = messages(d.bytes()).next().unwrap();
        let back: Vec<Expr> = msg.attrs(0).map(|e| Expr::read(&e)).collect();
        assert_eq!(back, vec![Expr::Other("counter".into()), Expr::Verdict(1)]);
        assert_eq!(Value::new(&[0; 17]), None);
    }
}
