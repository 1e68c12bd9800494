//! nf_tables notifications (group `NFNLGRP_NFTABLES`), decoded for drift detection.
//!
//! The kernel announces every committed transaction as the objects it changed followed by one
//! `NFT_MSG_NEWGEN` that carries the generation id and the pid and name of the process that
//! committed it (`nft monitor` prints it as "new generation 3 by process 11584 (nft)"). A
//! decoder watches one table and reports the transactions that touched it, and who made them.

use super::abi::*;
use super::{body, TableRef};
use crate::dataplane::netlink::messages;
use crate::dataplane::netlink::AttrExt;

/// One committed transaction that changed the watched table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// What it did, in order (`rule added to chain input`).
    pub changes: Vec<String>,
    /// Who committed it, when the kernel said.
    pub pid: Option<u32>,
    pub process: Option<String>,
}

impl Transaction {
    /// `nft (pid 4242)`, or `pid 4242`, or `unknown`.
    pub fn by(&self) -> String {
        match (&self.process, self.pid) {
            (Some(name), Some(pid)) => format!("{name} (pid {pid})"),
            (None, Some(pid)) => format!("pid {pid}"),
            (Some(name), None) => name.clone(),
            (None, None) => "unknown".into(),
        }
    }
}

/// Collects notifications across datagrams until each transaction's `NEWGEN`.
#[derive(Debug)]
pub struct Decoder {
    family: u8,
    table: String,
    pending: Vec<String>,
}

/// At most this many changes are kept of one transaction: a 10,000-rule table replaced by
/// someone else says what it did in its first ones.
const MAX_CHANGES: usize = 64;

impl Decoder {
    pub fn new(table: TableRef<'_>) -> Decoder {
        Decoder {
            family: table.family as u8,
            table: table.name.to_owned(),
            pending: Vec::new(),
        }
    }

    /// Feeds one datagram; returns the transactions it completed that touched the table.
    pub fn feed(&mut self, datagram: &[u8]) -> Vec<Transaction> {
        let mut done = Vec::new();
        for msg in messages(datagram) {
            if msg.ty >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let kind = msg.ty & 0xff;
            let Some((family, list)) = body(&msg) else {
                continue;
            };
            if kind == NFT_MSG_NEWGEN {
                let (mut pid, mut process) = (None, None);
                for a in list.iter() {
                    match a.ty() {
                        NFTA_GEN_PROC_PID => pid = a.be32(),
                        NFTA_GEN_PROC_NAME => process = Some(a.str().to_owned()),
                        _ => {}
                    }
                }
                if !self.pending.is_empty() {
                    done.push(Transaction {
                        changes: std::mem::take(&mut self.pending),
                        pid,
                        process,
                    });
                }
                continue;
            }
            if family != self.family {
                continue;
            }
            // The first attribute of tables, chains, rules and sets is the table's name.
            let (mut table, mut chain) = ("", "");
            let chain_attr = match kind {
                NFT_MSG_NEWRULE | NFT_MSG_DELRULE | NFT_MSG_DESTROYRULE => NFTA_RULE_CHAIN,
                _ => NFTA_CHAIN_NAME,
            };
            for a in list.iter() {
                if a.ty() == NFTA_TABLE_NAME {
                    table = a.str();
                } else if a.ty() == chain_attr {
                    chain = a.str();
                }
            }
            if table != self.table {
                continue;
            }
            let change = match kind {
                NFT_MSG_NEWTABLE => "table created or changed".to_owned(),
                NFT_MSG_DELTABLE | NFT_MSG_DESTROYTABLE => "table deleted".to_owned(),
                NFT_MSG_NEWCHAIN => format!("chain {chain} created or changed"),
                NFT_MSG_DELCHAIN | NFT_MSG_DESTROYCHAIN => format!("chain {chain} deleted"),
                NFT_MSG_NEWRULE => format!("rule added to chain {chain}"),
                NFT_MSG_DELRULE | NFT_MSG_DESTROYRULE => format!("rule deleted from chain {chain}"),
                NFT_MSG_NEWSET | NFT_MSG_DELSET | NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => {
                    "set changed".to_owned()
                }
                _ => continue,
            };
            if self.pending.len() < MAX_CHANGES {
                self.pending.push(change);
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::netlink::genl::attr;
    use crate::dataplane::netlink::request;
    use crate::dataplane::nftables::Nfgenmsg;
    use neli::consts::nl::NlmF;
    use neli::types::Buffer;

    /// Messages laid out back to back, as one datagram.
    #[derive(Default)]
    struct Datagram(Vec<u8>);

    impl Datagram {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    const TABLE: TableRef<'static> = TableRef {
        family: nftnl::ProtoFamily::Inet,
        name: "weft-fw",
    };

    fn msg(d: &mut Datagram, kind: u16, family: u8, table: &str, chain: Option<(u16, &str)>) {
        let mut attrs = vec![attr(NFTA_TABLE_NAME, table)];
        if let Some((ty, name)) = chain {
            attrs.push(attr(ty, name));
        }
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        d.0.extend(request(ty, NlmF::empty(), 0, Nfgenmsg::new(family, attrs)));
    }

    fn newgen(d: &mut Datagram, pid: u32, name: &str) {
        let attrs = vec![
            attr(NFTA_GEN_ID, Buffer::from(&42u32.to_be_bytes()[..])),
            attr(NFTA_GEN_PROC_PID, Buffer::from(&pid.to_be_bytes()[..])),
            attr(NFTA_GEN_PROC_NAME, name),
        ];
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
        d.0.extend(request(ty, NlmF::empty(), 0, Nfgenmsg::new(0, attrs)));
    }

    #[test]
    fn a_transaction_on_our_table_is_reported_with_its_author() {
        let mut d = Datagram::default();
        msg(
            &mut d,
            NFT_MSG_NEWRULE,
            NFPROTO_INET,
            "weft-fw",
            Some((NFTA_RULE_CHAIN, "input")),
        );
        msg(&mut d, NFT_MSG_DELTABLE, NFPROTO_INET, "other", None);
        // Same name, other family: another table.
        msg(&mut d, NFT_MSG_DELTABLE, NFPROTO_IPV4, "weft-fw", None);
        newgen(&mut d, 4242, "nft");
        let got = Decoder::new(TABLE).feed(d.bytes());
        assert_eq!(
            got,
            vec![Transaction {
                changes: vec!["rule added to chain input".into()],
                pid: Some(4242),
                process: Some("nft".into()),
            }]
        );
        assert_eq!(got[0].by(), "nft (pid 4242)");
    }

    #[test]
    fn transactions_on_other_tables_are_ignored_and_may_span_datagrams() {
        let mut dec = Decoder::new(TABLE);
        let mut d = Datagram::default();
        msg(
            &mut d,
            NFT_MSG_NEWRULE,
            NFPROTO_INET,
            "filter",
            Some((NFTA_RULE_CHAIN, "input")),
        );
        newgen(&mut d, 1, "iptables");
        assert!(dec.feed(d.bytes()).is_empty());

        let mut d = Datagram::default();
        msg(
            &mut d,
            NFT_MSG_DELCHAIN,
            NFPROTO_INET,
            "weft-fw",
            Some((NFTA_CHAIN_NAME, "output")),
        );
        assert!(dec.feed(d.bytes()).is_empty());
        let mut d = Datagram::default();
        newgen(&mut d, 7, "python3");
        let got = dec.feed(d.bytes());
        assert_eq!(got[0].changes, vec!["chain output deleted".to_owned()]);
        assert_eq!(got[0].by(), "python3 (pid 7)");
    }
}
