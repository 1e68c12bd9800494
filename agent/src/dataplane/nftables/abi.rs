//! nf_tables constants from `linux/netfilter/nfnetlink.h`, `nf_tables.h` and friends, named
//! as there, in the types this layer uses: the one place they are named. Those the `libc`
//! crate has (which `nftnl` re-exports and builds on) are taken from it; the attribute
//! numbers (`NFTA_*`) and the newer flags and messages it lacks are written here.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
pub const NFNL_MSG_BATCH_BEGIN: u16 = libc::NFNL_MSG_BATCH_BEGIN as u16;
pub const NFNL_MSG_BATCH_END: u16 = libc::NFNL_MSG_BATCH_END as u16;
/// Batch-begin attribute: commit only if the ruleset generation is still this one.
pub const NFNL_BATCH_GENID: u16 = libc::NFNL_BATCH_GENID as u16;
/// The multicast group of committed ruleset changes.
pub const NFNLGRP_NFTABLES: u32 = libc::NFNLGRP_NFTABLES as u32;
/// `struct nfgenmsg`: family, version, resource id.
pub const NFGENMSG_LEN: usize = 4;

pub const NFPROTO_UNSPEC: u8 = libc::NFPROTO_UNSPEC as u8;
pub const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;
pub const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
pub const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;

pub const NFT_MSG_NEWTABLE: u16 = libc::NFT_MSG_NEWTABLE as u16;
pub const NFT_MSG_GETTABLE: u16 = libc::NFT_MSG_GETTABLE as u16;
pub const NFT_MSG_DELTABLE: u16 = libc::NFT_MSG_DELTABLE as u16;
pub const NFT_MSG_NEWCHAIN: u16 = libc::NFT_MSG_NEWCHAIN as u16;
pub const NFT_MSG_GETCHAIN: u16 = libc::NFT_MSG_GETCHAIN as u16;
pub const NFT_MSG_DELCHAIN: u16 = libc::NFT_MSG_DELCHAIN as u16;
pub const NFT_MSG_NEWRULE: u16 = libc::NFT_MSG_NEWRULE as u16;
pub const NFT_MSG_GETRULE: u16 = libc::NFT_MSG_GETRULE as u16;
pub const NFT_MSG_DELRULE: u16 = libc::NFT_MSG_DELRULE as u16;
pub const NFT_MSG_NEWSET: u16 = libc::NFT_MSG_NEWSET as u16;
pub const NFT_MSG_DELSET: u16 = libc::NFT_MSG_DELSET as u16;
pub const NFT_MSG_NEWSETELEM: u16 = libc::NFT_MSG_NEWSETELEM as u16;
pub const NFT_MSG_GETSETELEM: u16 = libc::NFT_MSG_GETSETELEM as u16;
pub const NFT_MSG_DELSETELEM: u16 = libc::NFT_MSG_DELSETELEM as u16;
pub const NFT_MSG_NEWGEN: u16 = libc::NFT_MSG_NEWGEN as u16;
pub const NFT_MSG_GETGEN: u16 = libc::NFT_MSG_GETGEN as u16;
/// `NFT_MSG_DESTROY*` (kernel 6.3+): like the deletes, but a missing object is no error.
pub const NFT_MSG_DESTROYTABLE: u16 = 26;
pub const NFT_MSG_DESTROYCHAIN: u16 = 27;
pub const NFT_MSG_DESTROYRULE: u16 = 28;

pub const NFTA_GEN_ID: u16 = 1;
pub const NFTA_GEN_PROC_PID: u16 = 2;
pub const NFTA_GEN_PROC_NAME: u16 = 3;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFTA_TABLE_HANDLE: u16 = 4;
pub const NFTA_TABLE_OWNER: u16 = 7;
/// Only the owning netlink socket may change the table; it goes when the socket closes...
pub const NFT_TABLE_F_OWNER: u32 = 2;
/// ...unless it is also persistent: then it stays, unowned, until a new owner adopts it.
pub const NFT_TABLE_F_PERSIST: u32 = 4;

pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
/// How many rules and jumps use the chain: for a base chain, its rules.
pub const NFTA_CHAIN_USE: u16 = 6;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NF_INET_LOCAL_IN: u32 = libc::NF_INET_LOCAL_IN as u32;
pub const NF_INET_LOCAL_OUT: u32 = libc::NF_INET_LOCAL_OUT as u32;
pub const NF_DROP: u32 = libc::NF_DROP as u32;
pub const NF_ACCEPT: u32 = libc::NF_ACCEPT as u32;

pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_HANDLE: u16 = 3;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;
/// In a rule's userdata (libnftnl's TLVs, one-byte type and length): the comment `nft`
/// prints, and the [`super::keyed::RuleKey`] weft writes. libnftnl's rule types end at 1
/// and `nft` skips types it does not know, so the key is invisible to it.
pub const UDATA_RULE_COMMENT: u8 = nftnl::nftnl_sys::NFTNL_UDATA_RULE_COMMENT as u8;
pub const UDATA_RULE_KEY: u8 = 0x57;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;

pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;

pub const NFT_REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;
pub const NFT_REG_1: u32 = libc::NFT_REG_1 as u32;

pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFT_META_OIFNAME: u32 = libc::NFT_META_OIFNAME as u32;
pub const NFT_META_IIFNAME: u32 = libc::NFT_META_IIFNAME as u32;
pub const NFT_META_NFPROTO: u32 = libc::NFT_META_NFPROTO as u32;
pub const NFT_META_L4PROTO: u32 = libc::NFT_META_L4PROTO as u32;

pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFT_CMP_EQ: u32 = libc::NFT_CMP_EQ as u32;
pub const NFT_CMP_NEQ: u32 = libc::NFT_CMP_NEQ as u32;
pub const NFT_CMP_LTE: u32 = libc::NFT_CMP_LTE as u32;
pub const NFT_CMP_GTE: u32 = libc::NFT_CMP_GTE as u32;

pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;

pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;
pub const NFTA_BITWISE_OP: u16 = 6;
pub const NFT_BITWISE_BOOL: u32 = 0;

pub const NFTA_CT_DREG: u16 = 1;
pub const NFTA_CT_KEY: u16 = 2;
pub const NFT_CT_STATE: u32 = libc::NFT_CT_STATE as u32;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
pub const CT_STATE_ESTABLISHED_RELATED: u32 = 0b110;

pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;

pub const NFTA_LOOKUP_SET: u16 = 1;
pub const NFTA_LOOKUP_SREG: u16 = 2;
pub const NFTA_LOOKUP_DREG: u16 = 3;
pub const NFTA_LOOKUP_SET_ID: u16 = 4;
pub const NFTA_LOOKUP_FLAGS: u16 = 5;

pub const NFTA_SET_TABLE: u16 = 1;
pub const NFTA_SET_NAME: u16 = 2;
pub const NFTA_SET_FLAGS: u16 = 3;
pub const NFTA_SET_KEY_TYPE: u16 = 4;
pub const NFTA_SET_KEY_LEN: u16 = 5;
pub const NFTA_SET_DESC: u16 = 9;
pub const NFTA_SET_ID: u16 = 10;
pub const NFTA_SET_DESC_SIZE: u16 = 1;
pub const NFT_SET_ANONYMOUS: u32 = libc::NFT_SET_ANONYMOUS as u32;
pub const NFT_SET_CONSTANT: u32 = libc::NFT_SET_CONSTANT as u32;
pub const NFT_SET_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
/// nft's datatype id of ports, kept in a set so `nft list` prints its elements as ports
/// (`nftnl`'s set keys carry those of addresses).
pub const TYPE_INET_SERVICE: u32 = 13;

pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub const NFT_SET_ELEM_INTERVAL_END: u32 = libc::NFT_SET_ELEM_INTERVAL_END as u32;

pub const NFTA_COUNTER_BYTES: u16 = 1;
pub const NFTA_COUNTER_PACKETS: u16 = 2;

pub const NFTA_NAT_TYPE: u16 = 1;
pub const NFTA_NAT_FAMILY: u16 = 2;
pub const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
pub const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
pub const NFTA_NAT_FLAGS: u16 = 7;
pub const NFT_NAT_SNAT: u32 = libc::NFT_NAT_SNAT as u32;
pub const NFT_NAT_DNAT: u32 = libc::NFT_NAT_DNAT as u32;

pub const NF_NAT_RANGE_MAP_IPS: u32 = 1;
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

pub const NFTA_MASQ_FLAGS: u16 = 1;

pub const NFTA_FIB_DREG: u16 = 1;
pub const NFTA_FIB_RESULT: u16 = 2;
pub const NFTA_FIB_FLAGS: u16 = 3;
pub const NFTA_FIB_F_SADDR: u32 = 1;
pub const NFTA_FIB_F_DADDR: u32 = 2;
pub const NFTA_FIB_F_IIF: u32 = 8;
pub const NFTA_FIB_F_OIF: u32 = 16;
pub const NFT_FIB_RESULT_OIF: u32 = 1;
pub const NFT_FIB_RESULT_OIFNAME: u32 = 2;
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `RTN_LOCAL`: what `fib ... type local` compares the address type with.
pub const RTN_LOCAL: u32 = libc::RTN_LOCAL as u32;
