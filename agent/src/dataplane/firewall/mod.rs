//! The firewall: table `inet weft-fw`, which this agent owns and nothing else.
//!
//! - [`render`] (pure): validated spec -> [`Ruleset`], the exact table, and its `nft` text.
//! - `batch` (pure): ruleset -> one nf_tables batch, so no observer ever sees a half-applied
//!   policy: it changes only the rules that differ (a kept rule keeps its handle and its
//!   counter), or replaces the whole table when the change is larger than the table.
//! - `decode` (pure): the kernel's dump -> the same [`Ruleset`] model, so "already in force"
//!   is decided from what the kernel holds, not from memory (a restarted agent writes
//!   nothing when the table is already right), and [`Ruleset::hash`] is equal for equal
//!   rulesets whether rendered or read back.
//! - [`Firewall`] (thin): the table's nftables socket, apply and observe.
//!
//! Messages, expressions, reads and commits are the general nftables layer's
//! (`dataplane::nftables`); this module says which table, chains and rules.
//!
//! Every batch carries the nftables generation it was planned at, so the kernel refuses it
//! whole when anyone committed in between (the plan is then made again from a fresh read).
//! The same generation makes re-reads cheap: a handle that read or wrote the table at the
//! generation the kernel still reports knows the table without dumping it again.
//!
//! Where the kernel has them (6.9+), the table is created with the owner and persist flags:
//! only this agent's socket can change it, `nft flush ruleset` leaves it, and when the agent
//! exits it stays in force (policy drop included) until the next agent adopts it.

mod batch;
mod decode;
mod render;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use weft_schema::{FirewallStatus, Overall, PacketCount};

use super::netlink;
use super::nftables::abi::*;
use super::nftables::batch::Transaction;
use super::nftables::expr::Expr;
use super::nftables::keyed::{self, ChainDiff, Held, RuleKey};
use super::nftables::{CommitError, Committed, Nft, TableRef};
use super::rtnl::Rtnl;
use super::subsystem::Subsystem;
use batch::Label;
pub use decode::ruleset_of;
pub use render::{render, Ruleset};
use render::{Dir, Line};

/// The one table the agent owns, in family `inet`. Everything that names it goes through
/// here (and `CHAINS`), so drift detection can filter on the same names.
pub const TABLE: &str = "weft-fw";
/// [`TABLE`] in its family.
pub const TABLE_REF: TableRef<'static> = TableRef {
    family: nftnl::ProtoFamily::Inet,
    name: TABLE,
};

/// A base chain of the table, as the contract fixes it.
#[derive(Debug)]
pub(crate) struct Chain {
    pub name: &'static str,
    pub hook: nftnl::Hook,
    pub policy: nftnl::Policy,
    /// Which address a rule of this chain matches.
    pub dir: Dir,
}

/// `input` (hook input, priority filter, policy drop) and `output` (hook output, priority
/// filter, policy accept), in that order.
pub(crate) const CHAINS: [Chain; 2] = [
    Chain {
        name: "input",
        hook: nftnl::Hook::In,
        policy: nftnl::Policy::Drop,
        dir: Dir::Src,
    },
    Chain {
        name: "output",
        hook: nftnl::Hook::Out,
        policy: nftnl::Policy::Accept,
        dir: Dir::Dst,
    },
];

/// The owner and persist flags, or none when the kernel lacks them.
const OWNED: u32 = NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open a netlink socket to nf_tables")]
    OpenSocket(#[source] io::Error),
    #[error("send the batch for table inet weft-fw")]
    SendBatch(#[source] netlink::Error),
    #[error("the kernel did not answer the batch for table inet weft-fw")]
    NoAnswer,
    /// The kernel refused the batch; nothing of it took effect.
    #[error("the kernel refused {what}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The message that failed, e.g. ``rule 3 of chain input (`tcp dport 22 accept`)``.
        what: String,
        /// The kernel's extended-ack text, when it gave one.
        detail: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("read back {what} of table inet weft-fw")]
    ReadBack {
        what: &'static str,
        #[source]
        source: netlink::Error,
    },
}

/// What the kernel holds: table flags, chains and rules decoded into the renderer's model.
#[derive(Debug)]
pub struct Seen {
    table: super::nftables::Table,
    chains_ok: bool,
    ruleset: Ruleset,
    /// The handles of the rules of chain input and chain output, in the order of
    /// `ruleset`'s lines (`None`: not known, as when recalled from a [`Record`]).
    handles: Option<[Vec<u64>; 2]>,
    /// The handle of chain input's closing counter, when it has one.
    closing: Option<u64>,
    /// `ruleset`'s keys, computed once.
    keys: OnceLock<[Vec<RuleKey>; 2]>,
    /// `ruleset`'s hash, computed once.
    hash: OnceLock<String>,
}

impl Seen {
    fn new(
        table: super::nftables::Table,
        chains_ok: bool,
        ruleset: Ruleset,
        handles: Option<[Vec<u64>; 2]>,
        closing: Option<u64>,
    ) -> Seen {
        let closing = match (ruleset.input.last(), &handles) {
            (Some(Line::Dropped), Some(h)) => h[0].last().copied(),
            _ => closing,
        };
        Seen {
            table,
            chains_ok,
            ruleset,
            handles,
            closing,
            keys: OnceLock::new(),
            hash: OnceLock::new(),
        }
    }

    /// Its ruleset's keys, when they are already known.
    fn with_keys(self, keys: [Vec<RuleKey>; 2]) -> Seen {
        let _ = self.keys.set(keys);
        self
    }

    fn keys(&self) -> &[Vec<RuleKey>; 2] {
        self.keys.get_or_init(|| self.ruleset.keys())
    }

    fn hash(&self) -> &str {
        self.hash.get_or_init(|| self.ruleset.hash())
    }
}

/// One digest of a ruleset's keys (chain input's, then chain output's, each chain's count
/// first): equal for equal rulesets, and much cheaper than [`Ruleset::hash`], which prints
/// the table.
fn keys_digest(keys: &[Vec<RuleKey>; 2]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for chain in keys {
        h.update((chain.len() as u64).to_be_bytes());
        for k in chain {
            h.update(k.0);
        }
    }
    hex::encode(h.finalize())
}

/// A read: the nftables generation, and the table as it was at that generation (`None`:
/// there is none). Shared, so a read can be kept without copying 10,000 rules.
#[derive(Debug, Clone)]
pub struct Current {
    genid: u32,
    seen: Option<Arc<Seen>>,
}

/// What an apply has to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The kernel holds the desired table already (or one owned by another live socket,
    /// which only its owner can change; the status says so).
    Nothing,
    /// The desired rules are in force in a persistent table no one owns (a previous agent
    /// left it): take ownership without touching a rule.
    Adopt,
    /// Replace the table (delete it first when `present`) in one transaction.
    Replace { present: bool },
    /// Delete and add only the rules `diffs` name (chain input, chain output), in one
    /// transaction; with `adopt`, take over the persistent table a previous agent left in
    /// the same transaction.
    Change {
        diffs: Box<[ChainDiff; 2]>,
        /// The desired rules' keys (chain input, chain output).
        keys: Box<[Vec<RuleKey>; 2]>,
        adopt: bool,
    },
}

/// The table's handle: a netlink socket that, with the owner flag, is the only one allowed
/// to change the table. It lives on the reconciler's thread for the agent's life (a table
/// with the owner flag but without persist would vanish with it).
#[derive(Debug)]
pub struct Firewall {
    nft: Nft,
    /// Table flags to create the table with: owner and persist, or none after the kernel
    /// refused them.
    flags: u32,
    /// The message of the last batch the kernel refused.
    refused: Option<Label>,
    /// The table as this handle last read or wrote it, and the nftables generation at
    /// which that was exact.
    verified: Option<Current>,
    /// Whether the last apply wrote rules.
    wrote: bool,
    /// How many times the table was read back whole.
    full_reads: u64,
    /// Where this handle keeps [`Record`] of its last commit, for the next agent.
    record: Option<PathBuf>,
}

/// What an agent committed last, as a file in its state directory: enough for the next
/// agent to know the table without dumping it, and only when no one could have changed it.
///
/// Every commit in a network namespace, by anyone, moves its nftables generation; table
/// handles are never reused while the system runs (the boot id says which run). So when the
/// table has the recorded handle and the namespace the recorded generation, nothing was
/// committed since this agent's own commit: the table is what it wrote, whose rules' keys
/// are recorded (as one digest). Any other case (another boot, another table, any commit
/// since, a record missing or unreadable) is a full read, as before.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    boot: String,
    table: u64,
    genid: u32,
    hash: String,
    /// The handle of chain input's closing counter (`InputDropped`).
    closing: Option<u64>,
}

impl Record {
    fn line(&self) -> String {
        let closing = self.closing.map_or("-".to_owned(), |h| h.to_string());
        format!(
            "weft-fw 1 {} {} {} {} {closing}\n",
            self.boot, self.table, self.genid, self.hash
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let mut w = text.split_whitespace();
        if (w.next()?, w.next()?) != ("weft-fw", "1") {
            return None;
        }
        Some(Record {
            boot: w.next()?.to_owned(),
            table: w.next()?.parse().ok()?,
            genid: w.next()?.parse().ok()?,
            hash: w.next()?.to_owned(),
            closing: match w.next()? {
                "-" => None,
                h => Some(h.parse().ok()?),
            },
        })
    }
}

/// This boot's id: table handles are unique within one.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

impl Firewall {
    pub fn open() -> Result<Firewall, Error> {
        Ok(Firewall::new(Nft::open().map_err(Error::OpenSocket)?))
    }

    /// The firewall on a socket opened elsewhere (in the namespace it is to manage).
    pub fn new(nft: Nft) -> Firewall {
        Firewall {
            nft,
            flags: OWNED,
            refused: None,
            verified: None,
            wrote: false,
            full_reads: 0,
            record: None,
        }
    }

    /// This firewall keeping a record of each commit in `path` (see [`Record`]), so a
    /// freshly started agent can decide there is nothing to write without a dump.
    pub fn remember_in(mut self, path: PathBuf) -> Firewall {
        self.record = Some(path);
        self
    }

    /// The table as the record says it is, when the record proves it: this boot, the same
    /// table, no commit in the namespace since. Costs a generation, a table and a file
    /// read; `None` sends the caller to a full read.
    fn recalled(&mut self, genid: u32, desired: &Ruleset) -> Option<Current> {
        let path = self.record.as_ref()?;
        let record = Record::parse(&std::fs::read_to_string(path).ok()?)?;
        if record.genid != genid || Some(&record.boot) != boot_id().as_ref() {
            return None;
        }
        let table = self.nft.table(TABLE_REF).ok()??;
        if table.handle != record.table {
            return None;
        }
        let keys = desired.keys();
        if record.hash != keys_digest(&keys) {
            return None;
        }
        let seen = Seen::new(table, true, desired.clone(), None, record.closing);
        Some(Current {
            genid,
            seen: Some(Arc::new(seen.with_keys(keys))),
        })
    }

    /// Writes the record of the commit that made `current` (atomically: a torn record
    /// would only cost a full read, but a rename costs nothing more).
    fn write_record(&self, current: &Current) {
        let (Some(path), Some(seen)) = (&self.record, &current.seen) else {
            return;
        };
        let Some(boot) = boot_id() else { return };
        let record = Record {
            boot,
            table: seen.table.handle,
            genid: current.genid,
            hash: keys_digest(seen.keys()),
            closing: seen.closing,
        };
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, record.line()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not record the firewall's commit"
            );
        }
    }

    /// This firewall with a plain table, as on kernels before 6.9, which refuse the owner
    /// flag: any process may then change the table between two applies, which only the
    /// generation check catches. (Tests take this path on newer kernels too.)
    pub fn without_owner(mut self) -> Firewall {
        self.flags = 0;
        self
    }

    /// Forgets what this handle knows of the table, so the next read dumps it whole even at
    /// a generation it knows: the resync tick's check does not rest on the generation alone.
    pub fn distrust(&mut self) {
        self.verified = None;
    }

    /// How many times this handle read the table back whole (the rest of its reads were one
    /// generation number, and counters read by rule handle).
    pub fn full_reads(&self) -> u64 {
        self.full_reads
    }

    /// True when the table is created owned and persistent (the kernel supports it).
    pub fn owned(&self) -> bool {
        self.flags == OWNED
    }

    /// Makes the kernel's table `desired`. Returns whether the rules were written: when the
    /// kernel already holds exactly `desired` nothing is (rule counters survive); a
    /// persistent table left by a previous agent is only adopted. On error the previous
    /// ruleset stays in force: the batch is one transaction.
    pub fn apply(&mut self, desired: &Ruleset) -> Result<bool, Error> {
        // A batch is committed only at the generation it was planned against; when someone
        // else committed in between, plan again from a fresh read.
        self.wrote = false;
        for attempt in 0.. {
            let mut current = self.current_for(Some(desired))?;
            if current
                .seen
                .as_ref()
                .is_some_and(|s| s.handles.is_none() && s.ruleset != *desired)
            {
                // Known from a record, but rules must change: their handles are needed.
                current.seen = self.read()?.map(Arc::new);
            }
            let plan = plan(self.flags, self.nft.port(), desired, &current);
            match self.carry_out(desired, &current, plan) {
                Err(e) if e.is_restart() && attempt < 3 => self.verified = None,
                other => return other.map(|()| self.wrote),
            }
        }
        unreachable!("the loop returns")
    }

    /// Sends what `plan` says.
    fn carry_out(&mut self, desired: &Ruleset, current: &Current, plan: Plan) -> Result<(), Error> {
        match plan {
            Plan::Nothing => {
                self.verified = Some(current.clone());
                Ok(())
            }
            Plan::Adopt => {
                let batch = batch::adopt(self.flags, Some(current.genid), self.nft.batch_seq());
                match self.send(&batch, desired) {
                    Ok(_) => {
                        tracing::info!(table = TABLE, "adopted the table left in force");
                        if let Some(seen) = &current.seen {
                            let held = (seen.handles.clone(), seen.closing, seen.table.handle);
                            let keys = seen.keys().clone();
                            self.now_holds(current.genid, desired, held, keys);
                        }
                        Ok(())
                    }
                    Err(e) if e.is_restart() => Err(e),
                    Err(e) => {
                        tracing::warn!(
                            cause = %super::error_line(&e),
                            "could not adopt table inet weft-fw; replacing it"
                        );
                        self.replace(desired, current.genid, true)
                    }
                }
            }
            Plan::Replace { present } => self.replace(desired, current.genid, present),
            Plan::Change { diffs, keys, adopt } => {
                self.change(desired, current, &diffs, *keys, adopt)
            }
        }
    }

    /// Sends the batch that changes only the rules that differ. The handles the kernel
    /// echoes for the added rules, with those kept, are the chain as it now is.
    fn change(
        &mut self,
        desired: &Ruleset,
        current: &Current,
        diffs: &[ChainDiff; 2],
        keys: [Vec<RuleKey>; 2],
        adopt: bool,
    ) -> Result<(), Error> {
        self.verified = None;
        let adopt = adopt.then_some(self.flags);
        let batch = batch::change(
            desired,
            diffs,
            adopt,
            Some(current.genid),
            self.nft.batch_seq(),
        );
        let committed = self.send(&batch, desired)?;
        self.wrote = true;
        let mut handles: [Vec<u64>; 2] = Default::default();
        for (i, chain) in CHAINS.iter().enumerate() {
            let added = echoed(&committed, chain.name);
            // The kernel echoes every rule it adds; without them all, the next apply reads.
            let Some(after) = diffs[i].after(&keys[i], &added) else {
                return Ok(());
            };
            handles[i] = after.iter().map(|h| h.handle).collect();
        }
        if adopt.is_some() {
            tracing::info!(table = TABLE, "adopted the table left in force");
        }
        let table = current.seen.as_ref().map_or(0, |s| s.table.handle);
        self.now_holds(current.genid, desired, (Some(handles), None, table), keys);
        Ok(())
    }

    /// Sends the batch that replaces (or first creates) the table.
    fn replace(&mut self, desired: &Ruleset, genid: u32, present: bool) -> Result<(), Error> {
        self.verified = None;
        let batch = batch::replace(
            desired,
            self.flags,
            present,
            Some(genid),
            self.nft.batch_seq(),
        );
        let committed = match self.send(&batch, desired) {
            Err(Error::Refused { source, .. })
                if self.flags != 0
                    && source.raw_os_error() == Some(libc::EOPNOTSUPP)
                    && self.refused == Some(Label::CreateTable) =>
            {
                tracing::warn!(
                    table = TABLE,
                    "the kernel lacks owned persistent tables (Linux 6.9+): using a plain \
                     table, which other processes can change and which nft flush ruleset removes"
                );
                self.flags = 0;
                let batch = batch::replace(desired, 0, present, Some(genid), self.nft.batch_seq());
                self.send(&batch, desired)?
            }
            other => other?,
        };
        self.wrote = true;
        let handles = [
            echoed(&committed, CHAINS[0].name),
            echoed(&committed, CHAINS[1].name),
        ];
        let table = committed.tables.iter().find(|(name, _)| name == TABLE);
        let (Some((_, table)), true) = (
            table,
            handles[0].len() == desired.input.len() && handles[1].len() == desired.output.len(),
        ) else {
            return Ok(());
        };
        let table = table.handle;
        self.now_holds(genid, desired, (Some(handles), None, table), desired.keys());
        Ok(())
    }

    /// Notes that our own commit, planned at exactly `genid`, made table `held.2` hold
    /// `desired` (whose keys are `keys`; its rules numbered `held.0` when known, else its
    /// closing counter `held.1`), so it is known at the next generation without a read; and
    /// records that for the next agent.
    fn now_holds(
        &mut self,
        genid: u32,
        desired: &Ruleset,
        held: (Option<[Vec<u64>; 2]>, Option<u64>, u64),
        keys: [Vec<RuleKey>; 2],
    ) {
        let (handles, closing, table) = held;
        let table = super::nftables::Table {
            flags: self.flags,
            owner: (self.flags != 0).then_some(self.nft.port()),
            handle: table,
        };
        let seen = Seen::new(table, true, desired.clone(), handles, closing).with_keys(keys);
        let current = Current {
            genid: next_genid(genid),
            seen: Some(Arc::new(seen)),
        };
        self.write_record(&current);
        self.verified = Some(current);
    }

    /// The nftables generation and the table at it. The table is dumped and decoded unless
    /// this handle already saw it at this very generation: every commit by anyone bumps the
    /// generation, so an unchanged generation means an unchanged table. A new process
    /// always dumps.
    fn current(&mut self) -> Result<Current, Error> {
        self.current_for(None)
    }

    /// [`Firewall::current`]; a handle that knows nothing yet first asks its [`Record`]
    /// whether the table is `desired`, unchanged since the last agent committed it.
    fn current_for(&mut self, desired: Option<&Ruleset>) -> Result<Current, Error> {
        let genid = self.genid()?;
        if let Some(v) = &self.verified {
            if v.genid == genid {
                return Ok(v.clone());
            }
        }
        if let Some(recalled) = desired.and_then(|d| self.recalled(genid, d)) {
            return Ok(recalled);
        }
        Ok(Current {
            genid,
            seen: self.read()?.map(Arc::new),
        })
    }

    /// `NFT_MSG_GETGEN`: the netns's nftables generation id.
    fn genid(&mut self) -> Result<u32, Error> {
        self.nft.genid().map_err(|source| Error::ReadBack {
            what: "the ruleset generation",
            source,
        })
    }

    /// Deletes the table, if there is one. The agent itself never does (its table stays in
    /// force while it is down, fail closed); this is for tools and benchmarks that must
    /// leave a namespace as they found it. Returns whether there was a table.
    pub fn remove(&mut self) -> Result<bool, Error> {
        self.verified = None;
        if self.read()?.is_none() {
            return Ok(false);
        }
        let batch = batch::delete(self.nft.batch_seq());
        self.send(&batch, &Ruleset::default())?;
        Ok(true)
    }

    /// Reads the table back and compares it with `desired`. Errors are folded into
    /// `Overall: Degraded` and `LastError`, never raised. `IngressRules` counts the rules of
    /// chain input after the baseline (and the WireGuard allow), `EgressRules` those of
    /// chain output; `RulesetHash` is [`Ruleset::hash`] of what the kernel holds.
    pub fn observe(&mut self, desired: Option<&Ruleset>) -> FirewallStatus {
        let current = self.current_for(desired);
        if let Ok(c) = &current {
            self.verified = Some(c.clone());
        }
        let mut status = self.status_of(desired, current.as_ref());
        if let Ok(Current {
            seen: Some(seen), ..
        }) = &current
        {
            (status.input_dropped, status.egress_dropped) = self.dropped(seen);
        }
        status
    }

    /// What the kernel's counters say fell to chain input's policy drop (the counter of its
    /// last rule, when that is the closing `counter`) and what chain output's rules (each a
    /// drop) dropped: one rule read by its handle and chain output's rules, never the whole
    /// table. `None` for a counter that cannot be read.
    fn dropped(&mut self, seen: &Seen) -> (Option<PacketCount>, Option<PacketCount>) {
        let input = match seen.closing {
            Some(handle) => self
                .nft
                .rule(TABLE_REF, CHAINS[0].name, handle)
                .ok()
                .flatten()
                .and_then(|r| counter(&r.exprs)),
            _ => None,
        };
        let output = self
            .nft
            .chain_rules(TABLE_REF, CHAINS[1].name)
            .ok()
            .map(|rules| {
                rules.iter().filter_map(|r| counter(&r.exprs)).fold(
                    PacketCount::default(),
                    |sum, c| PacketCount {
                        packets: sum.packets + c.packets,
                        bytes: sum.bytes + c.bytes,
                    },
                )
            });
        (input, output)
    }

    fn status_of(
        &self,
        desired: Option<&Ruleset>,
        read: Result<&Current, &Error>,
    ) -> FirewallStatus {
        let mut status = FirewallStatus {
            overall: Overall::Healthy,
            last_error: String::new(),
            table_present: false,
            ingress_rules: 0,
            egress_rules: 0,
            ruleset_hash: String::new(),
            input_dropped: None,
            egress_dropped: None,
        };
        let problem = match read {
            Err(e) => Some(super::error_line(e)),
            Ok(Current { seen: None, .. }) => {
                desired.map(|_| "table inet weft-fw is missing".to_owned())
            }
            Ok(Current {
                seen: Some(seen), ..
            }) => {
                status.table_present = true;
                status.ingress_rules = seen.ruleset.ingress_rules();
                status.egress_rules = seen.ruleset.egress_rules();
                status.ruleset_hash = seen.hash().to_owned();
                if !seen.chains_ok {
                    Some("table inet weft-fw does not have the contract's two chains".to_owned())
                } else if desired.is_some_and(|d| *d != seen.ruleset) {
                    Some(format!(
                        "table inet weft-fw differs from the desired ruleset (hash {}, want {})",
                        status.ruleset_hash,
                        desired.map(Ruleset::hash).unwrap_or_default()
                    ))
                } else if self.flags != 0 && seen.table.owner != Some(self.nft.port()) {
                    Some("table inet weft-fw is not owned by this agent".to_owned())
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            status.overall = Overall::Degraded;
            status.last_error = p;
        }
        status
    }

    /// Commits a batch. The kernel refuses it whole or takes it whole.
    fn send(&mut self, batch: &Transaction<Label>, desired: &Ruleset) -> Result<Committed, Error> {
        match self.nft.commit(batch) {
            Ok(c) => Ok(c),
            Err(CommitError::Refused(r)) => {
                self.refused = r.what;
                Err(Error::Refused {
                    what: describe(r.what, desired),
                    detail: r.text,
                    source: io::Error::from_raw_os_error(r.errno),
                })
            }
            Err(CommitError::Netlink(e)) => Err(Error::SendBatch(e)),
            Err(CommitError::NoAnswer) => Err(Error::NoAnswer),
        }
    }

    /// The table as the kernel holds it, or `None` when there is none.
    fn read(&mut self) -> Result<Option<Seen>, Error> {
        self.full_reads += 1;
        let read = |what| move |source| Error::ReadBack { what, source };
        let Some(table) = self.nft.table(TABLE_REF).map_err(read("the table"))? else {
            return Ok(None);
        };
        let chains = self.nft.chains(TABLE_REF).map_err(read("the chains"))?;
        let rules = self.nft.rules(TABLE_REF).map_err(read("the rules"))?;

        let mut sets: HashMap<String, Option<Vec<super::nftables::Element>>> = HashMap::new();
        let mut ruleset = Ruleset {
            input: Vec::new(),
            output: Vec::new(),
        };
        let mut handles: [Vec<u64>; 2] = Default::default();
        let nft = &mut self.nft;
        for rule in &rules {
            let Some(chain) = CHAINS.iter().find(|c| c.name == rule.chain) else {
                // A rule in a chain that is not ours: the chain check already fails.
                continue;
            };
            let mut lookup = |name: &str| {
                if let Some(cached) = sets.get(name) {
                    return cached.clone();
                }
                // A set that cannot be read makes its rule foreign, hence a difference.
                let value = nft.elements(TABLE_REF, name).ok();
                sets.insert(name.to_owned(), value.clone());
                value
            };
            let line = decode::line(rule, chain.dir, &mut lookup);
            if chain.name == CHAINS[0].name {
                ruleset.input.push(line);
                handles[0].push(rule.handle);
            } else {
                ruleset.output.push(line);
                handles[1].push(rule.handle);
            }
        }
        Ok(Some(Seen::new(
            table,
            decode::chains_as_contract(&chains),
            ruleset.canonical(),
            Some(handles),
            None,
        )))
    }
}

/// The bytes of the one transaction that replaces an existing owned table with `ruleset`
/// (numbered from 1, planned at generation 1): what `apply` sends, as a value (the fuzz
/// targets check that what decodes encodes back to itself).
pub fn replace_batch(ruleset: &Ruleset) -> Vec<u8> {
    batch::replace(ruleset, OWNED, true, Some(1), 1).bytes
}

/// What an apply must do to make the kernel hold `desired` (pure). `flags` are the table
/// flags this handle creates the table with, `port` its socket's.
///
/// A table with the contract's chains and this handle's flags is changed rule by rule (a
/// persistent one no one owns is adopted in the same transaction), unless more rules would
/// change than the desired table has: then, as when the chains or flags are not right, the
/// table is replaced whole.
pub fn plan(flags: u32, port: u32, desired: &Ruleset, current: &Current) -> Plan {
    let Some(seen) = &current.seen else {
        return Plan::Replace { present: false };
    };
    let adopt = flags != 0 && seen.table.owner.is_none();
    if seen.chains_ok && seen.ruleset == *desired {
        // Already in force. Owned by another live socket, it cannot be adopted (nor
        // replaced); the status reports that.
        if flags == 0 || seen.table.owner.is_some() {
            return Plan::Nothing;
        }
        if seen.table.flags & NFT_TABLE_F_PERSIST != 0 {
            return Plan::Adopt;
        }
    }
    let ours = match seen.table.owner {
        Some(owner) => owner == port,
        None => seen.table.flags == flags || (adopt && seen.table.flags & NFT_TABLE_F_PERSIST != 0),
    };
    if let (true, true, Some(handles)) = (seen.chains_ok, ours, &seen.handles) {
        let want = desired.keys();
        let have = seen.keys();
        let diffs: [ChainDiff; 2] = std::array::from_fn(|i| {
            let held: Vec<Held> = handles[i]
                .iter()
                .zip(&have[i])
                .map(|(&handle, &key)| Held {
                    handle,
                    key: Some(key),
                })
                .collect();
            keyed::diff(&want[i], &held)
        });
        let size: usize = diffs.iter().map(ChainDiff::len).sum();
        if size <= desired.input.len() + desired.output.len() {
            return Plan::Change {
                diffs: Box::new(diffs),
                keys: Box::new(want),
                adopt,
            };
        }
    }
    Plan::Replace { present: true }
}

/// The handles the kernel echoed for the rules a transaction added to `chain`, in the order
/// they were written.
fn echoed(committed: &Committed, chain: &str) -> Vec<u64> {
    committed
        .rules
        .iter()
        .filter(|r| r.chain == chain)
        .map(|r| r.handle)
        .collect()
}

/// The packets and bytes of a rule's `counter`.
fn counter(exprs: &[Expr]) -> Option<PacketCount> {
    exprs.iter().find_map(|e| match *e {
        Expr::Counter { packets, bytes } => Some(PacketCount { packets, bytes }),
        _ => None,
    })
}

impl Subsystem for Firewall {
    type Desired = Ruleset;
    type State = Current;
    type Plan<'a> = Plan;
    type Error = Error;
    type Status = FirewallStatus;

    fn read(&mut self, _: &mut Rtnl, _: &Ruleset) -> Result<Current, Error> {
        self.current()
    }

    fn plan<'a>(&self, desired: &'a Ruleset, state: &'a Current) -> Plan {
        plan(self.flags, self.nft.port(), desired, state)
    }

    fn send(
        &mut self,
        _: &mut Rtnl,
        desired: &Ruleset,
        state: &Current,
        plan: Plan,
    ) -> Result<(), Error> {
        self.carry_out(desired, state, plan)
    }

    fn status(&self, desired: &Ruleset, read: Result<&Current, &Error>) -> FirewallStatus {
        self.status_of(Some(desired), read)
    }

    /// Read, plan, send, again from a fresh read when the batch was planned at a generation
    /// someone else's commit made stale.
    fn apply(&mut self, _: &mut Rtnl, desired: &Ruleset) -> Result<(), Error> {
        Firewall::apply(self, desired).map(drop)
    }

    fn observe(&mut self, _: &mut Rtnl, desired: &Ruleset) -> FirewallStatus {
        Firewall::observe(self, Some(desired))
    }
}

/// The generation after one commit (the kernel skips 0).
fn next_genid(genid: u32) -> u32 {
    match genid.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

impl Error {
    /// The batch was planned against a generation that is no longer current.
    fn is_restart(&self) -> bool {
        matches!(self, Error::Refused { source, .. } if source.raw_os_error() == Some(libc::ERESTART))
    }
}

/// Names the message of a batch the kernel refused.
fn describe(label: Option<Label>, desired: &Ruleset) -> String {
    let rule_text = |chain: &str, index: usize| {
        let lines = if chain == CHAINS[0].name {
            &desired.input
        } else {
            &desired.output
        };
        lines
            .get(index)
            .map(|l| {
                render::line_text(
                    l,
                    if chain == CHAINS[0].name {
                        Dir::Src
                    } else {
                        Dir::Dst
                    },
                )
            })
            .unwrap_or_default()
    };
    match label {
        Some(Label::Batch) | None => "the batch for table inet weft-fw".to_owned(),
        Some(Label::Begin) => {
            "the batch for table inet weft-fw (planned at an older ruleset generation)".to_owned()
        }
        Some(Label::DeleteTable) => "deleting the old table inet weft-fw".to_owned(),
        Some(Label::CreateTable) => "creating table inet weft-fw".to_owned(),
        Some(Label::Chain(name)) => format!("chain {name} of table inet weft-fw"),
        Some(Label::Set { chain, index }) => format!(
            "the set of rule {index} of chain {chain} (`{}`)",
            rule_text(chain, index)
        ),
        Some(Label::DeleteRule { chain, handle }) => {
            format!("deleting rule {handle} (a handle) of chain {chain}")
        }
        Some(Label::Rule { chain, index }) => {
            format!(
                "rule {index} of chain {chain} (`{}`)",
                rule_text(chain, index)
            )
        }
    }
}

#[cfg(test)]
mod tests;
