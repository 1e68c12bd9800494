//! nf_tables notifications (group `NFNLGRP_NFTABLES`), decoded for drift detection.
//!
//! The kernel announces every committed transaction as the objects it changed followed by one
//! `NFT_MSG_NEWGEN` that carries the generation id and the pid and name of the process that
//! committed it (`nft monitor` prints it as "new generation 3 by process 11584 (nft)"). We
//! only care about transactions that touched `inet weft-fw`, and about who made them.

use super::abi::NFPROTO_INET;
use super::netlink::{messages, string, NFNL_SUBSYS_NFTABLES};
use super::TABLE;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
/// `NFT_MSG_DESTROY*` (kernel 6.3+): like the deletes, but a missing object is no error.
const NFT_MSG_DESTROYTABLE: u16 = 26;
const NFT_MSG_DESTROYCHAIN: u16 = 27;
const NFT_MSG_DESTROYRULE: u16 = 28;

/// The first attribute of tables, chains, rules and sets is the table name.
const NFTA_X_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// One committed transaction that changed `inet weft-fw`.
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
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<String>,
}

impl Decoder {
    /// Feeds one datagram; returns the transactions it completed that touched our table.
    pub fn feed(&mut self, datagram: &[u8]) -> Vec<Transaction> {
        let mut done = Vec::new();
        for msg in messages(datagram) {
            if msg.ty >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let kind = msg.ty & 0xff;
            if kind == NFT_MSG_NEWGEN {
                let (mut pid, mut process) = (None, None);
                for (ty, v) in msg.nf_attrs() {
                    match ty {
                        NFTA_GEN_PROC_PID => pid = super::netlink::be32(v),
                        NFTA_GEN_PROC_NAME => process = Some(string(v).to_owned()),
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
            if msg.payload.first() != Some(&NFPROTO_INET) {
                continue;
            }
            let (mut table, mut chain) = ("", "");
            let chain_attr = match kind {
                NFT_MSG_NEWRULE | NFT_MSG_DELRULE | NFT_MSG_DESTROYRULE => NFTA_RULE_CHAIN,
                _ => NFTA_CHAIN_NAME,
            };
            for (ty, v) in msg.nf_attrs() {
                if ty == NFTA_X_TABLE {
                    table = string(v);
                } else if ty == chain_attr {
                    chain = string(v);
                }
            }
            if table != TABLE {
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
            self.pending.push(change);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Multicast messages as the kernel sends them, written byte by byte: a header, the
    /// nfgenmsg, then the attributes.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn message(&mut self, ty: u16, family: u8, attrs: &[(u16, Vec<u8>)]) {
            let start = self.0.len();
            self.0.extend_from_slice(&0u32.to_ne_bytes());
            self.0
                .extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
            self.0.extend_from_slice(&[0; 10]);
            self.0.extend_from_slice(&[family, 0, 0, 0]);
            for (ty, value) in attrs {
                self.0
                    .extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
                self.0.extend_from_slice(&ty.to_ne_bytes());
                self.0.extend_from_slice(value);
                self.0.resize(self.0.len().next_multiple_of(4), 0);
            }
            let len = (self.0.len() - start) as u32;
            self.0[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn strz(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn msg(w: &mut Bytes, kind: u16, table: &str, chain: Option<(u16, &str)>) {
        let mut attrs = vec![(NFTA_X_TABLE, strz(table))];
        if let Some((ty, name)) = chain {
            attrs.push((ty, strz(name)));
        }
        w.message(kind, NFPROTO_INET, &attrs);
    }

    fn newgen(w: &mut Bytes, pid: u32, name: &str) {
        w.message(
            NFT_MSG_NEWGEN,
            0,
            &[
                (1, 42u32.to_be_bytes().to_vec()),
                (NFTA_GEN_PROC_PID, pid.to_be_bytes().to_vec()),
                (NFTA_GEN_PROC_NAME, strz(name)),
            ],
        );
    }

    #[test]
    fn a_transaction_on_our_table_is_reported_with_its_author() {
        let mut w = Bytes::default();
        msg(
            &mut w,
            NFT_MSG_NEWRULE,
            TABLE,
            Some((NFTA_RULE_CHAIN, "input")),
        );
        msg(&mut w, NFT_MSG_DELTABLE, "other", None);
        newgen(&mut w, 4242, "nft");
        let got = Decoder::default().feed(&w.0);
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
        let mut d = Decoder::default();
        let mut w = Bytes::default();
        msg(
            &mut w,
            NFT_MSG_NEWRULE,
            "filter",
            Some((NFTA_RULE_CHAIN, "input")),
        );
        newgen(&mut w, 1, "iptables");
        assert!(d.feed(&w.0).is_empty());

        let mut w = Bytes::default();
        msg(
            &mut w,
            NFT_MSG_DELCHAIN,
            TABLE,
            Some((NFTA_CHAIN_NAME, "output")),
        );
        assert!(d.feed(&w.0).is_empty());
        let mut w = Bytes::default();
        newgen(&mut w, 7, "python3");
        let got = d.feed(&w.0);
        assert_eq!(got[0].changes, vec!["chain output deleted".to_owned()]);
        assert_eq!(got[0].by(), "python3 (pid 7)");
    }
}
