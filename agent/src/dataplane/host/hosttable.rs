//! Table `ip weft-host` as the host plane keeps it: its rules as last read (or written
//! since), by key, and the transactions that change only the keys that differ. A key's
//! rules are compared and changed without looking at the others', so one slot's change costs
//! the same on a host of a thousand. Whatever someone else did to the table makes it read
//! again whole.

use std::collections::{BTreeMap, BTreeSet};

use super::exprs::exprs;
use super::plane::{commit_error, replace_table, Error, Label};
use super::read;
use super::tables::{Key, Keyed, HOST_CHAINS, HOST_TABLE};
use crate::dataplane::netlink;
use crate::dataplane::nftables::batch::Batch;
use crate::dataplane::nftables::expr::Expr;
use crate::dataplane::nftables::keyed::{self, Want};
use crate::dataplane::nftables::{self, Nft, TableRef};

/// The host's table.
pub const HOST_TABLE_REF: TableRef<'static> = TableRef {
    family: nftnl::ProtoFamily::Ipv4,
    name: HOST_TABLE,
};

/// The comment of rules without one.
const NONE: &str = "";

/// Which keys a change may touch.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every rule of the table: what is not wanted goes, whoever made it.
    All,
    /// These keys' rules only.
    Keys(BTreeSet<String>),
}

impl Scope {
    fn has(&self, comment: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Keys(keys) => keys.contains(comment),
        }
    }
}

/// The table as the plane last knew it.
#[derive(Debug, Default)]
pub struct HostTable {
    /// Rules by comment (`""`: none); added since the last read with handle 0 (not known).
    /// `None`: to read.
    rules: Option<BTreeMap<String, Vec<nftables::Rule>>>,
    /// Its chains are the agent's (checked at the last read).
    chains_ok: bool,
    /// Keys whose rules changed since [`HostTable::take_changed`]; `None`: all.
    changed: Option<BTreeSet<String>>,
}

/// Rules and their expressions, with the keys as text, for a plan.
struct Wanted {
    rules: Vec<(String, &'static str, Vec<Expr>)>,
}

impl Wanted {
    fn of(rules: &[Keyed]) -> Wanted {
        Wanted {
            rules: rules
                .iter()
                .map(|k| (k.key.to_string(), k.chain, exprs(&k.rule)))
                .collect(),
        }
    }

    fn wants(&self) -> Vec<Want<'_>> {
        self.rules
            .iter()
            .map(|(key, chain, e)| Want {
                chain,
                key,
                exprs: e,
            })
            .collect()
    }
}

fn by_key(rules: Vec<nftables::Rule>) -> BTreeMap<String, Vec<nftables::Rule>> {
    let mut map: BTreeMap<String, Vec<nftables::Rule>> = BTreeMap::new();
    for r in rules {
        map.entry(r.comment.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    map
}

impl HostTable {
    /// Someone else changed the table: it is read again before it is trusted.
    pub fn invalidate(&mut self) {
        self.rules = None;
        self.changed = None;
    }

    pub fn known(&self) -> bool {
        self.rules.is_some()
    }

    /// Reads the table (an absent table reads as no rules, with chains that are not ours).
    pub fn read(&mut self, nft: &mut Nft) -> Result<(), netlink::Error> {
        self.changed = None;
        if nft.table(HOST_TABLE_REF)?.is_none() {
            self.rules = None;
            self.chains_ok = false;
            return Ok(());
        }
        self.chains_ok = read::chains_are(&nft.chains(HOST_TABLE_REF)?, &HOST_CHAINS);
        self.rules = Some(by_key(nft.rules(HOST_TABLE_REF)?));
        Ok(())
    }

    fn mark(&mut self, key: &str) {
        if let Some(c) = &mut self.changed {
            c.insert(key.to_owned());
        }
    }

    /// The keys whose rules changed since the last call (`None`: all of them may have).
    pub fn take_changed(&mut self) -> Option<BTreeSet<String>> {
        self.changed.replace(BTreeSet::new())
    }

    /// Makes the table hold `want` for the keys in `scope` (`want` holds those keys' rules,
    /// all of them): only rules that differ are deleted and added, in one transaction. A
    /// table that is missing or not the agent's in shape is made whole instead, with
    /// `all` (every rule it should hold).
    pub fn sync(
        &mut self,
        nft: &mut Nft,
        want: &[Keyed],
        scope: &Scope,
        all: impl Fn() -> Vec<Keyed>,
    ) -> Result<(), Error> {
        let wanted = Wanted::of(want);
        let wants = wanted.wants();
        for attempt in 0..2 {
            if self.rules.is_none() || attempt > 0 {
                self.read(nft)
                    .map_err(|e| Error::Table(format!("read: {e}")))?;
            }
            if self.rules.is_none() || !self.chains_ok {
                let everything = all();
                let tx = replace_table(
                    HOST_TABLE_REF,
                    &HOST_CHAINS,
                    &everything,
                    self.rules.is_some(),
                    nft.batch_seq(),
                );
                match nft.commit_echoed(&tx, Some(HOST_TABLE)) {
                    Ok(rules) => {
                        self.rules = Some(by_key(rules));
                        self.chains_ok = true;
                        self.changed = None;
                        return Ok(());
                    }
                    Err(e) if attempt == 0 => {
                        tracing::debug!(error = %commit_error(e), "host table refused; reading again");
                        continue;
                    }
                    Err(e) => return Err(Error::Table(commit_error(e))),
                }
            }
            let cache = self.rules.as_ref().expect("read above");
            let have: Vec<nftables::Rule> = match scope {
                Scope::All => cache.values().flatten().cloned().collect(),
                Scope::Keys(keys) => keys
                    .iter()
                    .filter_map(|k| cache.get(k))
                    .flatten()
                    .cloned()
                    .collect(),
            };
            let plan = keyed::plan(&wants, &have, |c| scope.has(c.unwrap_or(NONE)));
            if plan.is_empty() {
                return Ok(());
            }
            if plan.delete.iter().any(|(_, handle)| *handle == 0) && attempt == 0 {
                // Rules added since the last read: their handles are not known yet.
                self.rules = None;
                continue;
            }
            let mut b = Batch::new(nft.batch_seq(), None, Label::Begin).echo_rules();
            keyed::write(&mut b, HOST_TABLE_REF, &wants, &plan, Label::Rule);
            let tx = b.finish(Label::Batch);
            let deleted: BTreeSet<u64> = plan.delete.iter().map(|(_, h)| *h).collect();
            match nft.commit_echoed(&tx, Some(HOST_TABLE)) {
                Ok(echoed) => {
                    // The kernel's own account of what it added; what it did not echo is
                    // kept as wanted, handle unknown (read again before it is deleted).
                    let added = if echoed.len() == plan.add.len() {
                        echoed
                    } else {
                        unhandled(&plan.add.iter().map(|&i| wants[i]).collect::<Vec<_>>())
                    };
                    let touched: BTreeSet<String> = have
                        .iter()
                        .filter(|r| deleted.contains(&r.handle))
                        .map(|r| r.comment.clone().unwrap_or_default())
                        .chain(added.iter().map(|r| r.comment.clone().unwrap_or_default()))
                        .collect();
                    let cache = self.rules.as_mut().expect("planned from it");
                    for key in &touched {
                        if let Some(rules) = cache.get_mut(key) {
                            rules.retain(|r| !deleted.contains(&r.handle));
                        }
                    }
                    for r in added {
                        cache
                            .entry(r.comment.clone().unwrap_or_default())
                            .or_default()
                            .push(r);
                    }
                    for key in &touched {
                        if cache.get(key).is_some_and(Vec::is_empty) {
                            cache.remove(key);
                        }
                    }
                    for key in touched {
                        self.mark(&key);
                    }
                    return Ok(());
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %commit_error(e), "host table change refused; reading again");
                }
                Err(e) => return Err(Error::Table(commit_error(e))),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// A key's rules compared with `want` (that key's): the problems, and for each wanted
    /// rule whether it is there.
    pub fn key_problems(&self, key: &Key, want: &[Keyed]) -> (Vec<String>, Vec<bool>) {
        let Some(cache) = &self.rules else {
            return (
                vec!["table ip weft-host missing".into()],
                vec![false; want.len()],
            );
        };
        let empty = Vec::new();
        let held = cache.get(&key.to_string()).unwrap_or(&empty);
        let mut matched = vec![false; held.len()];
        let mut problems = Vec::new();
        let mut present = Vec::with_capacity(want.len());
        for k in want {
            let e = exprs(&k.rule);
            let found = held
                .iter()
                .enumerate()
                .find(|(i, r)| !matched[*i] && r.chain == k.chain && keyed::same(&r.exprs, &e));
            match found {
                Some((i, _)) => {
                    matched[i] = true;
                    present.push(true);
                }
                None => {
                    problems.push(format!("rule missing in chain {}: {}", k.chain, k.rule));
                    present.push(false);
                }
            }
        }
        for (i, r) in held.iter().enumerate() {
            if !matched[i] {
                problems.push(format!("a rule in chain {} is not the spec's", r.chain));
            }
        }
        (problems, present)
    }

    /// What differs in the table's shape, its shared rules, and the rules that are nobody's
    /// (no key, or the key of no slot `slots` names).
    pub fn base_problems(&self, base: &[Keyed], slots: &BTreeSet<String>) -> Vec<String> {
        let Some(cache) = &self.rules else {
            return vec!["missing".into()];
        };
        let mut problems = Vec::new();
        if !self.chains_ok {
            problems.push("its chains are not the agent's".into());
        }
        let (mut shared, mut problems_of) = (Vec::new(), Vec::new());
        for (key, rules) in cache {
            if key == &Key::Base.to_string() {
                shared.extend(rules.iter().cloned());
            } else if !slots.contains(key) {
                problems_of.extend(
                    rules
                        .iter()
                        .map(|r| format!("a rule in chain {} is not the agent's", r.chain)),
                );
            }
        }
        let wanted = Wanted::of(base);
        let plan = keyed::plan(&wanted.wants(), &shared, |_| true);
        for &i in &plan.add {
            problems.push(format!(
                "rule missing in chain {}: {}",
                base[i].chain, base[i].rule
            ));
        }
        for (chain, _) in &plan.delete {
            problems.push(format!("a rule in chain {chain} is not the agent's"));
        }
        problems.extend(problems_of);
        problems
    }
}

/// Wanted rules as the cache keeps rules added since the last read (handle not known).
fn unhandled(want: &[Want<'_>]) -> Vec<nftables::Rule> {
    want.iter()
        .map(|w| nftables::Rule {
            chain: w.chain.to_owned(),
            handle: 0,
            exprs: w.exprs.to_vec(),
            comment: Some(w.key.to_owned()),
            key: None,
        })
        .collect()
}
