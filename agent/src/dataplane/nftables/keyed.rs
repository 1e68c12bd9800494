//! Keyed rules: changing a table by the rules that differ, not by replacing it. Two owners,
//! two kinds of chain, one module:
//!
//! - chains whose order matters (the firewall's): each rule is known by a [`RuleKey`] and
//!   [`diff`] keeps, in place, the longest run of rules already right (below);
//! - rules whose order does not matter, tagged by their comment (the host table's, a tag
//!   per sandbox slot): [`plan`] matches them by chain, tag and expressions ([`same`]), and
//!   [`write`] puts the plan in a batch (see "Tagged rules").
//!
//! Both write in one transaction, delete by handle, and learn the handles of what they add
//! from the kernel's echo ([`super::Nft::commit`], [`super::Nft::commit_echoed`]), so the
//! next change needs no dump.
//!
//! Every rule an owner writes carries a [`RuleKey`] in its userdata (next to the comment, as
//! a TLV `nft` ignores): a digest of everything that makes it this rule, computed by the
//! owner from its own model (the firewall digests the rule as `nft` prints it). Given the
//! keys of the rules a chain should hold, in order, and the rules it holds ([`Held`]: handle
//! and key, in the kernel's order), [`diff`] says which rules to delete (by handle) and which
//! to add where, keeping in place the longest run of rules that are already right. A rule
//! that is kept keeps its handle and its counters; one that differs in any way has another
//! key, so it is deleted and its replacement added.
//!
//! How an owner uses it, in one transaction (all or nothing, as a replacement is):
//!
//! 1. Know the chain: the rules with their handles and keys, from a dump ([`super::Nft::rules`]
//!    reads each rule's key; an owner that does not trust the keys in a table others could
//!    have written computes them from the decoded rules instead), or from its own last commit.
//! 2. `let d = diff(&desired_keys, &held)`; when [`ChainDiff::len`] is larger than the chain,
//!    replacing the table is cheaper.
//! 3. In a [`super::batch::Batch`]: [`Batch::delete_rule`] each of `d.delete`, then for each
//!    of `d.add`, in that order, the desired rule `add.index` (its anonymous sets first) with
//!    [`Batch::add_keyed_rule`] at `add.at`, asking for its echo.
//! 4. Commit; [`super::Committed::rules`] gives the handles the kernel gave the added rules,
//!    in the order they were written, and [`ChainDiff::after`] the chain as it now is, so the
//!    next diff needs no dump.
//!
//! The positions need no rule numbers of the same transaction: a run of new rules before a
//! kept rule is inserted, one by one in order, before that kept rule; a run after the last
//! kept rule is appended. Deletes come first, and no kept rule is deleted, so every position
//! names a rule that stays.
//!
//! [`Batch::delete_rule`]: super::batch::Batch::delete_rule
//! [`Batch::add_keyed_rule`]: super::batch::Batch::add_keyed_rule

use std::collections::{HashMap, VecDeque};
use std::fmt;

use sha2::{Digest, Sha256};

use super::batch::Batch;
use super::expr::Expr;
use super::{Rule, TableRef};

/// What identifies a rule: 128 bits of SHA-256 over what makes it this rule. Two rules with
/// the same key are taken to be the same rule (finding two that collide would take about
/// 2^64 work).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey(pub [u8; RuleKey::LEN]);

impl RuleKey {
    pub const LEN: usize = 16;

    /// The digest of `parts`, each with its length first, so where one part ends counts.
    pub fn digest(parts: &[&[u8]]) -> RuleKey {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut key = [0; RuleKey::LEN];
        key.copy_from_slice(&h.finalize()[..RuleKey::LEN]);
        RuleKey(key)
    }

    /// The key in a rule's userdata bytes, when it has the key's exact length.
    pub fn from_slice(bytes: &[u8]) -> Option<RuleKey> {
        Some(RuleKey(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A rule of a chain as the kernel holds it, as far as a diff needs: its handle, and its
/// key (`None`: a rule without one, which no desired rule matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub handle: u64,
    pub key: Option<RuleKey>,
}

/// Where a rule is added to its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// At the end of the chain.
    Append,
    /// Right before the rule of this handle.
    Before(u64),
}

/// One desired rule to add, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Add {
    /// Its index among the desired rules.
    pub index: usize,
    pub at: Position,
}

/// What makes a chain hold the desired rules, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainDiff {
    /// Handles of the rules to delete, in the kernel's order.
    pub delete: Vec<u64>,
    /// The rules to add, in the desired order: the order to write them in.
    pub add: Vec<Add>,
    /// Per desired rule, the handle of the rule kept for it; `None` for the added ones.
    pub kept: Vec<Option<u64>>,
}

impl ChainDiff {
    /// True when the chain holds the desired rules already.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }

    /// Rules the transaction writes: deletes and adds.
    pub fn len(&self) -> usize {
        self.delete.len() + self.add.len()
    }

    /// The chain as the kernel holds it once the diff is committed: `added` are the handles
    /// the kernel gave the added rules, in the order they were written (`None` when their
    /// number is not the number of adds).
    pub fn after(&self, desired: &[RuleKey], added: &[u64]) -> Option<Vec<Held>> {
        if added.len() != self.add.len() || desired.len() != self.kept.len() {
            return None;
        }
        let mut added = added.iter();
        self.kept
            .iter()
            .zip(desired)
            .map(|(kept, key)| {
                let handle = match kept {
                    Some(h) => *h,
                    None => *added.next()?,
                };
                Some(Held {
                    handle,
                    key: Some(*key),
                })
            })
            .collect()
    }
}

/// The deletes and adds that turn `held` into `desired`, keeping the longest run of rules
/// that are right and in the right order. Rules with equal keys are matched in order.
/// O(n log n) in the number of rules that differ: the rules that are already right at the
/// start and at the end of the chain (all but a few, for a small change) are kept as they
/// are before the rest is matched.
pub fn diff(desired: &[RuleKey], held: &[Held]) -> ChainDiff {
    let same = |d: &RuleKey, h: &Held| h.key == Some(*d);
    let pre = desired
        .iter()
        .zip(held)
        .take_while(|(d, h)| same(d, h))
        .count();
    let suf = desired[pre..]
        .iter()
        .rev()
        .zip(held[pre..].iter().rev())
        .take_while(|(d, h)| same(d, h))
        .count();
    let (d_end, h_end) = (desired.len() - suf, held.len() - suf);
    let middle = diff_all(&desired[pre..d_end], &held[pre..h_end]);
    let after = held.get(h_end).map(|h| h.handle);
    let mut kept: Vec<Option<u64>> = Vec::with_capacity(desired.len());
    kept.extend(held[..pre].iter().map(|h| Some(h.handle)));
    kept.extend(middle.kept);
    kept.extend(held[h_end..].iter().map(|h| Some(h.handle)));
    let add = middle
        .add
        .into_iter()
        .map(|a| Add {
            index: a.index + pre,
            at: match (a.at, after) {
                (Position::Append, Some(handle)) => Position::Before(handle),
                (at, _) => at,
            },
        })
        .collect();
    ChainDiff {
        delete: middle.delete,
        add,
        kept,
    }
}

/// [`diff`] without the trimming: every rule matched by key.
fn diff_all(desired: &[RuleKey], held: &[Held]) -> ChainDiff {
    // Each desired rule takes the first unmatched held rule with its key.
    let mut by_key: HashMap<RuleKey, VecDeque<usize>> = HashMap::with_capacity(held.len());
    for (i, h) in held.iter().enumerate() {
        if let Some(k) = h.key {
            by_key.entry(k).or_default().push_back(i);
        }
    }
    let matched: Vec<(usize, usize)> = desired
        .iter()
        .enumerate()
        .filter_map(|(d, k)| Some((d, by_key.get_mut(k)?.pop_front()?)))
        .collect();

    // Of the matches, keep the longest run whose kernel order is the desired order (the
    // longest increasing subsequence of their held indices): those stay where they are.
    let mut tails: Vec<usize> = Vec::new();
    let mut before: Vec<Option<usize>> = vec![None; matched.len()];
    for (i, &(_, h)) in matched.iter().enumerate() {
        let at = tails.partition_point(|&t| matched[t].1 < h);
        before[i] = at.checked_sub(1).map(|p| tails[p]);
        if at == tails.len() {
            tails.push(i);
        } else {
            tails[at] = i;
        }
    }
    let mut kept: Vec<Option<u64>> = vec![None; desired.len()];
    let mut keeps = vec![false; held.len()];
    let mut next = tails.last().copied();
    while let Some(i) = next {
        let (d, h) = matched[i];
        kept[d] = Some(held[h].handle);
        keeps[h] = true;
        next = before[i];
    }

    let delete = held
        .iter()
        .zip(&keeps)
        .filter(|(_, keep)| !**keep)
        .map(|(h, _)| h.handle)
        .collect();
    // A new rule goes before the next kept rule, or at the end when none follows.
    let mut add = Vec::new();
    let mut following = None;
    for (index, k) in kept.iter().enumerate().rev() {
        match k {
            Some(handle) => following = Some(*handle),
            None => add.push(Add {
                index,
                at: following.map_or(Position::Append, Position::Before),
            }),
        }
    }
    add.reverse();
    ChainDiff { delete, add, kept }
}

// Tagged rules: order within a chain is not compared.

/// A rule a table should hold.
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    pub chain: &'a str,
    /// The tag, kept as the rule's comment.
    pub key: &'a str,
    pub exprs: &'a [Expr],
}

/// What to change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan<'r> {
    /// The rules to delete: their chain and handle.
    pub delete: Vec<(&'r str, u64)>,
    /// The wanted rules to add, by index.
    pub add: Vec<usize>,
}

impl Plan<'_> {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

/// Whether two expression lists are the same rule: equal but for counters.
pub fn same(a: &[Expr], b: &[Expr]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Expr::Counter { .. }, Expr::Counter { .. }) => true,
            (x, y) => x == y,
        })
}

/// The changes that take the rules `have` (a table's, as dumped) to `want`, for the rules in
/// scope: `in_scope(comment)` says whether a held rule with that comment (`None`: no comment)
/// is this plan's to delete. Every wanted rule is held exactly once afterwards; a held rule in
/// scope that no wanted rule matches is deleted. `want`'s keys must be in scope.
pub fn plan<'r>(
    want: &[Want<'_>],
    have: &'r [Rule],
    in_scope: impl Fn(Option<&str>) -> bool,
) -> Plan<'r> {
    let mut by_key: HashMap<(&str, Option<&str>), Vec<usize>> = HashMap::new();
    for (i, r) in have.iter().enumerate() {
        by_key
            .entry((r.chain.as_str(), r.comment.as_deref()))
            .or_default()
            .push(i);
    }
    let mut matched = vec![false; have.len()];
    let mut out = Plan::default();
    for (w, rule) in want.iter().enumerate() {
        let found = by_key.get(&(rule.chain, Some(rule.key))).and_then(|held| {
            held.iter()
                .copied()
                .find(|&i| !matched[i] && same(&have[i].exprs, rule.exprs))
        });
        match found {
            Some(i) => matched[i] = true,
            None => out.add.push(w),
        }
    }
    for (i, r) in have.iter().enumerate() {
        if !matched[i] && in_scope(r.comment.as_deref()) {
            out.delete.push((r.chain.as_str(), r.handle));
        }
    }
    out
}

/// Writes `plan` into `batch`: the deletions first, then the additions (appended to their
/// chains, each with its key as comment).
pub fn write<L: Copy>(
    batch: &mut Batch<L>,
    table: TableRef<'_>,
    want: &[Want<'_>],
    plan: &Plan<'_>,
    label: L,
) {
    for (chain, handle) in &plan.delete {
        batch.delete_rule(table, chain, *handle, label);
    }
    for &w in &plan.add {
        let r = &want[w];
        batch.add_rule(table, r.chain, r.exprs, Some(r.key), label);
    }
}

#[cfg(test)]
mod tests {
    use super::super::abi::{NF_ACCEPT, NF_DROP};
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> RuleKey {
        RuleKey([n; RuleKey::LEN])
    }

    fn held(keys: &[u8]) -> Vec<Held> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Held {
                handle: 100 + i as u64,
                key: Some(key(*k)),
            })
            .collect()
    }

    fn keys(ks: &[u8]) -> Vec<RuleKey> {
        ks.iter().map(|k| key(*k)).collect()
    }

    /// The chain the kernel holds after `d` (rules as keys), applying deletes, then adds in
    /// order at their positions, as the kernel does.
    fn play(held: &[Held], desired: &[RuleKey], d: &ChainDiff) -> Vec<Option<RuleKey>> {
        let mut chain: Vec<Held> = held
            .iter()
            .filter(|h| !d.delete.contains(&h.handle))
            .copied()
            .collect();
        for (n, add) in d.add.iter().enumerate() {
            let new = Held {
                handle: 10_000 + n as u64,
                key: Some(desired[add.index]),
            };
            match add.at {
                Position::Append => chain.push(new),
                Position::Before(h) => {
                    let at = chain.iter().position(|r| r.handle == h).expect("kept");
                    chain.insert(at, new);
                }
            }
        }
        chain.iter().map(|h| h.key).collect()
    }

    #[test]
    fn equal_chains_need_nothing() {
        let d = diff(&keys(&[1, 2, 3]), &held(&[1, 2, 3]));
        assert!(d.is_empty());
        assert_eq!(d.kept, vec![Some(100), Some(101), Some(102)]);
    }

    #[test]
    fn one_changed_rule_is_one_delete_and_one_add_in_its_place() {
        let d = diff(&keys(&[1, 9, 3, 4]), &held(&[1, 2, 3, 4]));
        assert_eq!(d.delete, vec![101]);
        assert_eq!(
            d.add,
            vec![Add {
                index: 1,
                at: Position::Before(102)
            }]
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn new_rules_at_the_end_are_appended_in_order() {
        let d = diff(&keys(&[1, 2, 5, 6]), &held(&[1, 2]));
        assert!(d.delete.is_empty());
        assert_eq!(
            d.add,
            vec![
                Add {
                    index: 2,
                    at: Position::Append
                },
                Add {
                    index: 3,
                    at: Position::Append
                }
            ]
        );
        let after = d.after(&keys(&[1, 2, 5, 6]), &[7, 8]).unwrap();
        let handles: Vec<u64> = after.iter().map(|h| h.handle).collect();
        assert_eq!(handles, vec![100, 101, 7, 8]);
    }

    #[test]
    fn a_moved_rule_is_deleted_and_added_where_it_now_belongs() {
        let desired = keys(&[3, 1, 2]);
        let d = diff(&desired, &held(&[1, 2, 3]));
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            play(&held(&[1, 2, 3]), &desired, &d),
            [3, 1, 2].map(|k| Some(key(k)))
        );
    }

    #[test]
    fn rules_without_keys_are_deleted() {
        let mut h = held(&[1, 2]);
        h.insert(
            1,
            Held {
                handle: 7,
                key: None,
            },
        );
        let d = diff(&keys(&[1, 2]), &h);
        assert_eq!(d.delete, vec![7]);
        assert!(d.add.is_empty());
    }

    #[test]
    fn duplicates_are_matched_in_order() {
        let desired = keys(&[1, 1, 2]);
        let h = held(&[1, 2, 1, 1]);
        let d = diff(&desired, &h);
        assert_eq!(play(&h, &desired, &d), [1, 1, 2].map(|k| Some(key(k))));
        assert_eq!(d.len(), 3, "{d:?}");
    }

    #[test]
    fn keys_digest_their_parts_with_the_boundaries() {
        assert_ne!(
            RuleKey::digest(&[b"ab", b"c"]),
            RuleKey::digest(&[b"a", b"bc"])
        );
        assert_eq!(RuleKey::digest(&[b"x"]), RuleKey::digest(&[b"x"]));
    }

    proptest! {
        /// Whatever the chain holds, the diff makes it hold exactly the desired rules, and
        /// deletes no rule it keeps.
        #[test]
        fn the_diff_makes_the_chain_the_desired_one(
            have in proptest::collection::vec(0u8..6, 0..24),
            want in proptest::collection::vec(0u8..6, 0..24),
        ) {
            let h = held(&have);
            let desired = keys(&want);
            let d = diff(&desired, &h);
            let expect: Vec<Option<RuleKey>> = desired.iter().copied().map(Some).collect();
            prop_assert_eq!(play(&h, &desired, &d), expect.clone());
            for kept in d.kept.iter().flatten() {
                prop_assert!(!d.delete.contains(kept));
            }
            prop_assert!(d.len() <= have.len() + want.len());
            let fresh: Vec<u64> = (0..d.add.len() as u64).map(|n| 50_000 + n).collect();
            let after = d.after(&desired, &fresh).unwrap();
            prop_assert_eq!(after.iter().map(|a| a.key).collect::<Vec<_>>(), expect);
        }
    }

    fn held_rule(chain: &str, handle: u64, key: Option<&str>, verdict: u32, packets: u64) -> Rule {
        Rule {
            chain: chain.into(),
            handle,
            exprs: vec![Expr::Counter { packets, bytes: 1 }, Expr::Verdict(verdict)],
            comment: key.map(Into::into),
            key: None,
        }
    }

    fn want<'a>(chain: &'a str, key: &'a str, exprs: &'a [Expr]) -> Want<'a> {
        Want { chain, key, exprs }
    }

    #[test]
    fn only_what_differs_is_changed() {
        let accept = [
            Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            Expr::Verdict(NF_ACCEPT),
        ];
        let drop = [
            Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            Expr::Verdict(NF_DROP),
        ];
        let have = vec![
            held_rule("forward", 4, Some("weft base"), NF_ACCEPT, 99),
            held_rule("forward", 5, Some("weft slot 7"), NF_DROP, 3),
            held_rule("forward", 6, Some("weft slot 8"), NF_DROP, 0),
            held_rule("forward", 7, None, NF_ACCEPT, 0),
            held_rule("forward", 8, Some("someone's"), NF_ACCEPT, 0),
        ];
        let ours = |c: Option<&str>| c.is_some_and(|c| c.starts_with("weft "));
        // Slot 8 goes, slot 9 comes, the base and slot 7 stay (counters and all).
        let wanted = [
            want("forward", "weft base", &accept),
            want("forward", "weft slot 7", &drop),
            want("forward", "weft slot 9", &drop),
        ];
        let p = plan(&wanted, &have, ours);
        assert_eq!(p.delete, [("forward", 6)]);
        assert_eq!(p.add, [2]);
        // The same rule in another chain, or with other contents, is another rule.
        let moved = [want("input", "weft slot 7", &drop)];
        let p = plan(&moved, &have[1..2], ours);
        assert_eq!((p.delete, p.add), (vec![("forward", 5)], vec![0]));
        let changed = [want("forward", "weft slot 7", &accept)];
        let p = plan(&changed, &have[1..2], ours);
        assert_eq!((p.delete, p.add), (vec![("forward", 5)], vec![0]));
        // Out of scope (no comment, another's comment) is never deleted; in scope, a rule
        // nobody wants is.
        let p = plan(&[], &have, |c| c.is_none() || ours(c));
        assert_eq!(
            p.delete.iter().map(|d| d.1).collect::<Vec<_>>(),
            [4, 5, 6, 7]
        );
        // Nothing to do is an empty plan; a duplicate held rule is one too many.
        let p = plan(&wanted[..2], &have[..2], ours);
        assert!(p.is_empty());
        let mut twice = have[..2].to_vec();
        twice.push(held_rule("forward", 9, Some("weft slot 7"), NF_DROP, 0));
        let p = plan(&wanted[..2], &twice, ours);
        assert_eq!((p.delete, p.add), (vec![("forward", 9)], vec![]));
    }
}
