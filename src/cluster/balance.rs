//! The desired placement of replicas: which nodes hold each group, and which of them should
//! lead it (the first of the list).
//!
//! Pure and deterministic: the meta leader's controller computes it from the current
//! placement and the active nodes, so the result moves as few replicas as possible (a node
//! that joins takes about 1/N of them; one that leaves hands its replicas to the others) and
//! every node ends with its fair share ±1 of replicas and of preferred leaderships.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{GroupId, NodeId};

pub(crate) type Placement = BTreeMap<GroupId, Vec<NodeId>>;

/// Replicas per group when enough nodes exist.
pub(crate) const REPLICATION_FACTOR: usize = 3;

fn load(p: &Placement, nodes: &[NodeId], leaders_only: bool) -> BTreeMap<NodeId, usize> {
    let mut l: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for replicas in p.values() {
        let counted = if leaders_only {
            &replicas[..replicas.len().min(1)]
        } else {
            &replicas[..]
        };
        for n in counted {
            if let Some(c) = l.get_mut(n) {
                *c += 1;
            }
        }
    }
    l
}

/// The most and least loaded nodes (ties: the lowest id for max, the lowest id for min).
fn extremes(l: &BTreeMap<NodeId, usize>) -> Option<((NodeId, usize), (NodeId, usize))> {
    let max = l.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    let min = l.iter().min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))?;
    Some(((*max.0, *max.1), (*min.0, *min.1)))
}

/// The placement of `groups` over `active` nodes, starting from `current`.
pub(crate) fn balance(current: &Placement, groups: &[GroupId], active: &[NodeId]) -> Placement {
    let active: Vec<NodeId> = active
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if active.is_empty() {
        return current.clone();
    }
    let rf = REPLICATION_FACTOR.min(active.len());
    let mut p = keep_alive_replicas(current, groups, &active, rf);
    fill_missing_replicas(&mut p, groups, &active, rf);
    // Bounds both spreading loops: a safety net, since each of their steps lowers the spread.
    let moves_max = groups.len() * rf * active.len() + 1;
    spread_replicas(&mut p, &active, moves_max);
    spread_leaders(&mut p, &active, moves_max);
    p
}

/// Keeps what can be kept: each group's current replicas on `active` nodes, at most `rf`.
fn keep_alive_replicas(
    current: &Placement,
    groups: &[GroupId],
    active: &[NodeId],
    rf: usize,
) -> Placement {
    let alive: BTreeSet<NodeId> = active.iter().copied().collect();
    groups
        .iter()
        .map(|g| {
            let mut kept = Vec::new();
            for n in current.get(g).into_iter().flatten() {
                if alive.contains(n) && !kept.contains(n) && kept.len() < rf {
                    kept.push(*n);
                }
            }
            (*g, kept)
        })
        .collect()
}

/// Fills missing replicas on the least loaded nodes.
fn fill_missing_replicas(p: &mut Placement, groups: &[GroupId], active: &[NodeId], rf: usize) {
    for g in groups {
        while p[g].len() < rf {
            let l = load(p, active, false);
            let pick = active
                .iter()
                .filter(|n| !p[g].contains(n))
                .min_by_key(|n| (l[n], **n));
            match (pick, p.get_mut(g)) {
                (Some(n), Some(replicas)) => replicas.push(*n),
                _ => break,
            }
        }
    }
}

/// Moves replicas from the most to the least loaded node until within ±1. Each move
/// lowers the spread, so this ends; the bound (`moves_max`) is a safety net.
fn spread_replicas(p: &mut Placement, active: &[NodeId], moves_max: usize) {
    for _ in 0..moves_max {
        let l = load(p, active, false);
        let Some(((max, max_load), (min, min_load))) = extremes(&l) else {
            break;
        };
        if max_load <= min_load + 1 {
            break;
        }
        let Some(replicas) = p
            .values_mut()
            .find(|r| r.contains(&max) && !r.contains(&min))
        else {
            break;
        };
        for n in replicas.iter_mut() {
            if *n == max {
                *n = min;
            }
        }
    }
}

/// Spreads preferred leaders (the first replica) within ±1 by reordering lists: each step
/// moves one leadership to a replica of the same group whose count is at least two lower,
/// the widest such gap first.
fn spread_leaders(p: &mut Placement, active: &[NodeId], moves_max: usize) {
    for _ in 0..moves_max {
        let l = load(p, active, true);
        let (lo, hi) = (
            l.values().copied().min().unwrap_or(0),
            l.values().copied().max().unwrap_or(0),
        );
        if hi <= lo + 1 {
            break;
        }
        let Some((g, i)) = widest_leader_gap(p, &l) else {
            break;
        };
        if let Some(r) = p.get_mut(&g) {
            r.swap(0, i);
        }
    }
}

/// The next leadership move of [`spread_leaders`]: the group, and the position in its list
/// of the replica whose count (`l`: preferred leaderships per node) is at least two lower
/// than the first replica's; the widest such gap, the first in order on a tie.
fn widest_leader_gap(p: &Placement, l: &BTreeMap<NodeId, usize>) -> Option<(GroupId, usize)> {
    let mut best: Option<(GroupId, usize, usize)> = None;
    for (g, r) in p {
        let Some(first) = r.first() else { continue };
        for (i, n) in r.iter().enumerate().skip(1) {
            let gap = l[first].saturating_sub(l[n]);
            if gap >= 2 && best.is_none_or(|(_, _, b)| gap > b) {
                best = Some((*g, i, gap));
            }
        }
    }
    best.map(|(g, i, _)| (g, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(n: u32) -> Vec<GroupId> {
        (0..=n).collect()
    }

    fn assert_fair(p: &Placement, nodes: &[NodeId]) {
        for leaders_only in [false, true] {
            let l = load(p, nodes, leaders_only);
            let (lo, hi) = (
                l.values().min().copied().unwrap_or(0),
                l.values().max().copied().unwrap_or(0),
            );
            assert!(hi <= lo + 1, "unfair (leaders_only={leaders_only}): {l:?}");
        }
        for r in p.values() {
            let distinct: BTreeSet<_> = r.iter().collect();
            assert_eq!(distinct.len(), r.len(), "a node twice in {r:?}");
            assert_eq!(r.len(), REPLICATION_FACTOR.min(nodes.len()));
        }
    }

    #[test]
    fn grows_from_one_node_to_five_fairly_and_moves_little() {
        let g = groups(16);
        let mut p = balance(&Placement::new(), &g, &[1]);
        assert_fair(&p, &[1]);
        let mut nodes = vec![1];
        for n in 2..=5 {
            nodes.push(n);
            let next = balance(&p, &g, &nodes);
            assert_fair(&next, &nodes);
            if n > 3 {
                // Replicas that stay put: at least all but about 1/N of them plus slack.
                let kept: usize = g
                    .iter()
                    .map(|k| next[k].iter().filter(|x| p[k].contains(x)).count())
                    .sum();
                let total = g.len() * REPLICATION_FACTOR;
                assert!(kept * n as usize >= total * (n as usize - 1) - n as usize * 2);
            }
            p = next;
        }
        // Deterministic.
        assert_eq!(balance(&p, &g, &nodes), p);
    }

    #[test]
    fn a_leaving_node_gets_nothing() {
        let g = groups(16);
        let p = balance(&Placement::new(), &g, &[1, 2, 3, 4]);
        let after = balance(&p, &g, &[1, 2, 3]);
        assert_fair(&after, &[1, 2, 3]);
        assert!(after.values().all(|r| !r.contains(&4)));
    }
}
