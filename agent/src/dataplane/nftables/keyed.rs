//! Rules keyed by a tag they carry (their comment, in the rule's userdata), changed a key at
//! a time. A [`plan`] compares the rules a table should hold with the rules it holds and
//! names only those that differ: the rules to delete (by handle) and the rules to add. Sent as
//! one transaction ([`write`]), it changes nothing else: rules that did not change keep their
//! handles and counters, and rules outside the plan's scope (other keys, other owners) are
//! never named.
//!
//! Rules are compared by chain, key and expressions, counters excepted (they count what the
//! rule saw, not what it is). Order within a chain is not compared: a keyed table is one
//! whose rules mean the same in any order.

use std::collections::HashMap;

use super::batch::Batch;
use super::expr::Expr;
use super::{Rule, TableRef};

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

    fn held(chain: &str, handle: u64, key: Option<&str>, verdict: u32, packets: u64) -> Rule {
        Rule {
            chain: chain.into(),
            handle,
            exprs: vec![Expr::Counter { packets, bytes: 1 }, Expr::Verdict(verdict)],
            comment: key.map(Into::into),
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
            held("forward", 4, Some("weft base"), NF_ACCEPT, 99),
            held("forward", 5, Some("weft slot 7"), NF_DROP, 3),
            held("forward", 6, Some("weft slot 8"), NF_DROP, 0),
            held("forward", 7, None, NF_ACCEPT, 0),
            held("forward", 8, Some("someone's"), NF_ACCEPT, 0),
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
        twice.push(held("forward", 9, Some("weft slot 7"), NF_DROP, 0));
        let p = plan(&wanted[..2], &twice, ours);
        assert_eq!((p.delete, p.add), (vec![("forward", 9)], vec![]));
    }
}
