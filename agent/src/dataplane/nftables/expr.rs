//! Rule expressions as typed values: written into a rule message in the attribute order
//! libnftnl (and so `nft`) uses, and read back from the kernel's rule dumps. One enum for
//! both directions, so a rule read back compares equal to the rule written.

use std::ffi::CString;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

use super::abi::*;
use crate::dataplane::netlink::{AttrExt, AttrRef, Attrs};

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

/// A NAT expression: what it rewrites and the registers holding the new address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat {
    /// `NFT_NAT_SNAT` or `NFT_NAT_DNAT`.
    pub kind: u32,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
    pub family: u32,
    pub addr_min: Option<u32>,
    pub addr_max: Option<u32>,
    pub proto_min: Option<u32>,
    pub proto_max: Option<u32>,
    /// `NF_NAT_RANGE_*`; 0 when absent.
    pub flags: u32,
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
    /// Data into `dreg` (a NAT address or port, a mark).
    Immediate { dreg: u32, data: Value },
    /// Counts packets and bytes (written as 0; read back as the kernel's counts).
    Counter { packets: u64, bytes: u64 },
    /// `snat`/`dnat` (`NFT_NAT_*`) to the address (and port) in registers.
    Nat(Nat),
    /// `masquerade`, with `NF_NAT_RANGE_*` flags (0: none).
    Masquerade { flags: u32 },
    /// A FIB lookup (`fib saddr . iif oif`): `NFTA_FIB_F_*` flags, `NFT_FIB_RESULT_*` into
    /// `dreg`.
    Fib { flags: u32, result: u32, dreg: u32 },
    /// An expression this layer does not model, by name, or one it could not read.
    Other(String),
}

impl Expr {
    /// The expression as a libnftnl object, which lays out its attributes; a rule takes it
    /// over. libnftnl has an object for every kind of expression, but the `nftnl` crate's
    /// typed ones fix register 1 and whole header fields and it has no `fib`, so each kind
    /// is filled here with libnftnl's own setters (`NFTNL_EXPR_*`). `None` for an
    /// [`Expr::Other`] libnftnl does not know by name.
    pub(crate) fn to_nftnl(&self) -> Option<NonNull<sys::nftnl_expr>> {
        let name = CString::new(self.name()).unwrap_or_default();
        // SAFETY: a fresh libnftnl expression, checked for NULL; every setter copies its
        // value (`Value`s and strings are live for the call).
        unsafe {
            let e = NonNull::new(sys::nftnl_expr_alloc(name.as_ptr()))?;
            let p = e.as_ptr();
            let u32_ = |ty: u32, v: u32| sys::nftnl_expr_set_u32(p, ty as u16, v);
            let data = |ty: u32, v: &Value| {
                let b = v.as_slice();
                sys::nftnl_expr_set(p, ty as u16, b.as_ptr().cast(), b.len() as u32);
            };
            match self {
                Expr::Meta { key, dreg } => {
                    u32_(sys::NFTNL_EXPR_META_KEY, *key);
                    u32_(sys::NFTNL_EXPR_META_DREG, *dreg);
                }
                Expr::Ct { key, dreg } => {
                    u32_(sys::NFTNL_EXPR_CT_KEY, *key);
                    u32_(sys::NFTNL_EXPR_CT_DREG, *dreg);
                }
                Expr::Cmp { sreg, op, data: v } => {
                    u32_(sys::NFTNL_EXPR_CMP_SREG, *sreg);
                    u32_(sys::NFTNL_EXPR_CMP_OP, *op);
                    data(sys::NFTNL_EXPR_CMP_DATA, v);
                }
                Expr::Payload {
                    dreg,
                    base,
                    offset,
                    len,
                } => {
                    u32_(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
                }
                Expr::Bitwise {
                    sreg,
                    dreg,
                    len,
                    mask,
                    xor,
                } => {
                    u32_(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
                    u32_(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
                    u32_(sys::NFTNL_EXPR_BITWISE_LEN, *len);
                    data(sys::NFTNL_EXPR_BITWISE_MASK, mask);
                    data(sys::NFTNL_EXPR_BITWISE_XOR, xor);
                }
                Expr::Lookup {
                    sreg,
                    set,
                    set_id,
                    flags,
                    dreg,
                } => {
                    u32_(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                    if let Some(dreg) = dreg {
                        u32_(sys::NFTNL_EXPR_LOOKUP_DREG, *dreg);
                    }
                    let set = CString::new(set.as_str()).unwrap_or_default();
                    sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                    if let Some(id) = set_id {
                        u32_(sys::NFTNL_EXPR_LOOKUP_SET_ID, *id);
                    }
                    if *flags != 0 {
                        u32_(sys::NFTNL_EXPR_LOOKUP_FLAGS, *flags);
                    }
                }
                Expr::Verdict(code) => {
                    u32_(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
                    u32_(sys::NFTNL_EXPR_IMM_VERDICT, *code);
                }
                Expr::Immediate { dreg, data: v } => {
                    u32_(sys::NFTNL_EXPR_IMM_DREG, *dreg);
                    data(sys::NFTNL_EXPR_IMM_DATA, v);
                }
                Expr::Counter { packets, bytes } => {
                    sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_CTR_PACKETS as u16, *packets);
                    sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_CTR_BYTES as u16, *bytes);
                }
                Expr::Nat(n) => {
                    u32_(sys::NFTNL_EXPR_NAT_TYPE, n.kind);
                    u32_(sys::NFTNL_EXPR_NAT_FAMILY, n.family);
                    for (ty, reg) in [
                        (sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, n.addr_min),
                        (sys::NFTNL_EXPR_NAT_REG_ADDR_MAX, n.addr_max),
                        (sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, n.proto_min),
                        (sys::NFTNL_EXPR_NAT_REG_PROTO_MAX, n.proto_max),
                    ] {
                        if let Some(reg) = reg {
                            u32_(ty, reg);
                        }
                    }
                    if n.flags != 0 {
                        u32_(sys::NFTNL_EXPR_NAT_FLAGS, n.flags);
                    }
                }
                Expr::Masquerade { flags } => {
                    if *flags != 0 {
                        u32_(sys::NFTNL_EXPR_MASQ_FLAGS, *flags);
                    }
                }
                Expr::Fib {
                    flags,
                    result,
                    dreg,
                } => {
                    u32_(sys::NFTNL_EXPR_FIB_FLAGS, *flags);
                    u32_(sys::NFTNL_EXPR_FIB_RESULT, *result);
                    u32_(sys::NFTNL_EXPR_FIB_DREG, *dreg);
                }
                Expr::Other(_) => {}
            }
            Some(e)
        }
    }

    /// Whether libnftnl knows the expression by name: a rule carries only those.
    pub fn writable(&self) -> bool {
        match self.to_nftnl() {
            Some(e) => {
                // SAFETY: a fresh expression no rule took over, freed once.
                unsafe { sys::nftnl_expr_free(e.as_ptr()) };
                true
            }
            None => false,
        }
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
            Expr::Verdict(_) | Expr::Immediate { .. } => "immediate",
            Expr::Counter { .. } => "counter",
            Expr::Nat(_) => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Fib { .. } => "fib",
            Expr::Other(name) => name,
        }
    }

    /// Reads one `NFTA_LIST_ELEM` of a rule's expression list. Whatever it cannot read as
    /// one of the modelled forms is [`Expr::Other`].
    pub fn read(elem: AttrRef<'_>) -> Expr {
        let parts = elem.nested();
        let name = parts.get(NFTA_EXPR_NAME).map_or("", |a| a.str());
        let body = parts
            .get(NFTA_EXPR_DATA)
            .map_or_else(|| Attrs::read(&[]), |a| a.nested());
        read_body(name, &body).unwrap_or_else(|| Expr::Other(name.to_owned()))
    }
}

fn read_value(a: AttrRef<'_>) -> Option<Value> {
    Value::new(a.nested().get(NFTA_DATA_VALUE)?.bytes())
}

/// The most attribute types of an expression this layer reads (`nat` has 7).
const EXPR_ATTRS: usize = 8;

fn read_body(name: &str, body: &Attrs<'_>) -> Option<Expr> {
    let table: [Option<AttrRef<'_>>; EXPR_ATTRS] = body.table();
    let get = |ty: u16| table.get(usize::from(ty)).copied().flatten();
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
        "immediate" if u(NFTA_IMMEDIATE_DREG)? != NFT_REG_VERDICT => Expr::Immediate {
            dreg: u(NFTA_IMMEDIATE_DREG)?,
            data: read_value(get(NFTA_IMMEDIATE_DATA)?)?,
        },
        "counter" => Expr::Counter {
            packets: get(NFTA_COUNTER_PACKETS)?.be64()?,
            bytes: get(NFTA_COUNTER_BYTES)?.be64()?,
        },
        "nat" => Expr::Nat(Nat {
            kind: u(NFTA_NAT_TYPE)?,
            family: u(NFTA_NAT_FAMILY)?,
            addr_min: u(NFTA_NAT_REG_ADDR_MIN),
            addr_max: u(NFTA_NAT_REG_ADDR_MAX),
            proto_min: u(NFTA_NAT_REG_PROTO_MIN),
            proto_max: u(NFTA_NAT_REG_PROTO_MAX),
            flags: u(NFTA_NAT_FLAGS).unwrap_or(0),
        }),
        "masq" => Expr::Masquerade {
            flags: u(NFTA_MASQ_FLAGS).unwrap_or(0),
        },
        "fib" => Expr::Fib {
            flags: u(NFTA_FIB_FLAGS)?,
            result: u(NFTA_FIB_RESULT)?,
            dreg: u(NFTA_FIB_DREG)?,
        },
        "immediate" => {
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
    use super::super::batch::rule_message;
    use super::super::TableRef;
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
            (1u32.., value()).prop_map(|(dreg, data)| Expr::Immediate { dreg, data }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(packets, bytes)| Expr::Counter { packets, bytes }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                any::<u32>()
            )
                .prop_map(
                    |(kind, family, addr_min, addr_max, proto_min, proto_max, flags)| {
                        Expr::Nat(Nat {
                            kind,
                            family,
                            addr_min,
                            addr_max,
                            proto_min,
                            proto_max,
                            flags,
                        })
                    }
                ),
            any::<u32>().prop_map(|flags| Expr::Masquerade { flags }),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(flags, result, dreg)| {
                Expr::Fib {
                    flags,
                    result,
                    dreg,
                }
            }),
        ]
    }

    fn read_back(exprs: &[Expr]) -> Vec<Expr> {
        let bytes = rule_message(TABLE, "c", exprs, None, None);
        let msg = messages(&bytes).next().unwrap();
        super::super::rule_of(&msg, TABLE.name).unwrap().exprs
    }

    const TABLE: TableRef<'static> = TableRef {
        family: nftnl::ProtoFamily::Ipv4,
        name: "t",
    };

    proptest! {
        /// Any expressions, written by libnftnl into a rule, read back as written.
        #[test]
        fn every_expression_reads_back_as_written(exprs in proptest::collection::vec(expr(), 0..8)) {
            prop_assert_eq!(read_back(&exprs), exprs);
        }
    }

    #[test]
    fn unknown_and_malformed_expressions_are_other() {
        let back = read_back(&[Expr::Other("counter".into()), Expr::Verdict(1)]);
        assert_eq!(back, vec![Expr::Other("counter".into()), Expr::Verdict(1)]);
        // libnftnl has no such expression: it is left out.
        assert_eq!(read_back(&[Expr::Other("no such".into())]), vec![]);
        assert_eq!(Value::new(&[0; 17]), None);
    }
}
