//! One node's `/admin/status` (the client library's typed schema), reshaped per group for
//! the checks the tests make: convergence, balance, lingering replicas.

use std::collections::{BTreeMap, BTreeSet};

use chatnode_client::status::{AdminStatus, GroupState, MemberState};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct GroupView {
    pub node: u64,
    pub state: GroupState,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub last_log_index: u64,
    pub applied: u64,
}

/// One node's `/admin/status`, parsed.
#[derive(Debug, Clone)]
pub struct View {
    pub status: AdminStatus,
    pub from: u64,
    /// Desired replicas per group.
    pub replicas: BTreeMap<u32, Vec<u64>>,
    /// Node id → state.
    pub nodes: BTreeMap<u64, MemberState>,
    /// Group → each reachable node's view of it.
    pub groups: BTreeMap<u32, Vec<GroupView>>,
    pub unreachable: BTreeSet<u64>,
}

impl View {
    /// Panics if `raw` is not an `/admin/status` answer.
    pub fn parse(raw: Value) -> View {
        let status: AdminStatus = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("not an /admin/status answer: {e}: {raw}"));
        View::new(status)
    }

    pub fn new(status: AdminStatus) -> View {
        let nodes = status.nodes.iter().map(|n| (n.id, n.state)).collect();
        let mut groups: BTreeMap<u32, Vec<GroupView>> = BTreeMap::new();
        let mut unreachable = BTreeSet::new();
        for ns in &status.node_statuses {
            if !ns.reachable {
                unreachable.insert(ns.node_id);
                continue;
            }
            for g in ns.groups() {
                groups.entry(g.group).or_default().push(GroupView {
                    node: ns.node_id,
                    state: g.state,
                    leader: g.leader,
                    term: g.term,
                    voters: g.voters.iter().copied().collect(),
                    learners: g.learners.iter().copied().collect(),
                    last_log_index: g.last_log_index,
                    applied: g.applied,
                });
            }
        }
        View {
            from: status.node_id,
            replicas: status.replicas.clone(),
            status,
            nodes,
            groups,
            unreachable,
        }
    }

    /// The replica reporting itself leader with the highest term.
    pub fn leader_view(&self, group: u32) -> Option<&GroupView> {
        self.groups
            .get(&group)?
            .iter()
            .filter(|g| g.state == GroupState::Leader)
            .max_by_key(|g| g.term)
    }

    pub fn leader_of(&self, group: u32) -> Option<u64> {
        self.leader_view(group).map(|g| g.node)
    }

    /// Groups led per node (every node of `members` listed, 0 if it leads nothing).
    pub fn leader_counts(&self, members: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = members.iter().map(|n| (*n, 0)).collect();
        for g in self.groups.keys() {
            if let Some(l) = self.leader_of(*g) {
                *c.entry(l).or_default() += 1;
            }
        }
        c
    }

    /// Voter replicas per node, as the groups' leaders see them.
    pub fn replica_counts(&self, members: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = members.iter().map(|n| (*n, 0)).collect();
        for g in self.groups.keys() {
            if let Some(l) = self.leader_view(*g) {
                for v in &l.voters {
                    *c.entry(*v).or_default() += 1;
                }
            }
        }
        c
    }

    /// Whether every group 0..=shards is settled on 3 voters of `members` (desired = actual,
    /// no learners), with one leader that every voter agrees on. Err says what is missing.
    pub fn converged(&self, shards: u32, members: &BTreeSet<u64>) -> Result<(), String> {
        if !self.unreachable.is_empty() {
            return Err(format!("unreachable nodes {:?}", self.unreachable));
        }
        for m in members {
            if self.nodes.get(m) != Some(&MemberState::Active) {
                return Err(format!("node {m} is not active: {:?}", self.nodes));
            }
        }
        // The desired placement covers every member with its fair share (so it was computed
        // for this membership).
        let mut planned: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
        for g in 0..=shards {
            for n in self.replicas.get(&g).into_iter().flatten() {
                *planned.entry(*n).or_default() += 1;
            }
        }
        let fair = (shards + 1) as f64 * 3.min(members.len()) as f64 / members.len() as f64;
        if planned.values().any(|c| (*c as f64 - fair).abs() > 1.0) {
            return Err(format!(
                "desired placement is not spread over {members:?}: {planned:?} (fair {fair:.2})"
            ));
        }
        for g in 0..=shards {
            let desired: BTreeSet<u64> = self
                .replicas
                .get(&g)
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default();
            let want = 3.min(members.len());
            if desired.len() != want || !desired.is_subset(members) {
                return Err(format!("group {g}: desired replicas {desired:?}"));
            }
            let Some(l) = self.leader_view(g) else {
                return Err(format!("group {g}: no leader"));
            };
            if l.voters != desired || !l.learners.is_empty() {
                return Err(format!(
                    "group {g}: leader {} has voters {:?} learners {:?}, desired {desired:?}",
                    l.node, l.voters, l.learners
                ));
            }
            for v in &desired {
                let Some(r) = self.groups[&g].iter().find(|x| x.node == *v) else {
                    return Err(format!("group {g}: voter {v} does not report it"));
                };
                if r.leader != Some(l.node) || r.term != l.term {
                    return Err(format!(
                        "group {g}: node {v} sees leader {:?} term {}, leader {} is in term {}",
                        r.leader, r.term, l.node, l.term
                    ));
                }
            }
            // No replica outside the members still thinks it leads.
            let leaders = self.groups[&g]
                .iter()
                .filter(|x| x.state == GroupState::Leader)
                .count();
            if leaders != 1 {
                return Err(format!("group {g}: {leaders} replicas say they lead"));
            }
        }
        Ok(())
    }

    /// Replicas that were moved away (not in the desired set) but still campaign or lead.
    /// Replicas the placement moved away that still act (candidate or leader): key
    /// (group, node) -> (term, description).
    pub fn lingering(&self) -> BTreeMap<(u32, u64), (u64, String)> {
        let mut out = BTreeMap::new();
        for (g, rs) in &self.groups {
            let desired = self.replicas.get(g).cloned().unwrap_or_default();
            for r in rs {
                if !desired.contains(&r.node)
                    && matches!(r.state, GroupState::Candidate | GroupState::Leader)
                {
                    out.insert((*g, r.node), (r.term, format!(
                        "group {g}: node {} is not a desired replica ({desired:?}) but is {} in term {} with voters {:?}",
                        r.node, r.state, r.term, r.voters
                    )));
                }
            }
        }
        out
    }

    /// Fair share ±1 of voter replicas and of leaderships over `members`, counting every
    /// group 0..=shards.
    pub fn balanced(&self, shards: u32, members: &BTreeSet<u64>) -> Result<(), String> {
        let n = members.len() as f64;
        let groups = (shards + 1) as f64;
        let rf = 3.min(members.len()) as f64;
        let replicas = self.replica_counts(members);
        let leaders = self.leader_counts(members);
        let fair_r = groups * rf / n;
        let fair_l = groups / n;
        for m in members {
            let r = replicas[m] as f64;
            let l = leaders[m] as f64;
            if (r - fair_r).abs() > 1.0 || (l - fair_l).abs() > 1.0 {
                return Err(format!(
                    "unbalanced: replicas {replicas:?} (fair {fair_r:.2}), leaders {leaders:?} (fair {fair_l:.2})"
                ));
            }
        }
        Ok(())
    }

    /// One line per group: desired replicas, and each reporting replica's state.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "status from node {}: nodes {:?}, unreachable {:?}\n",
            self.from, self.nodes, self.unreachable
        );
        let groups: BTreeSet<u32> = self
            .replicas
            .keys()
            .chain(self.groups.keys())
            .copied()
            .collect();
        for g in groups {
            out.push_str(&format!(
                "  group {g}: desired {:?};",
                self.replicas.get(&g)
            ));
            for r in self.groups.get(&g).into_iter().flatten() {
                out.push_str(&format!(
                    " n{} {} t{} leader {:?} voters {:?} learners {:?} applied {}/{};",
                    r.node,
                    r.state,
                    r.term,
                    r.leader,
                    r.voters,
                    r.learners,
                    r.applied,
                    r.last_log_index
                ));
            }
            out.push('\n');
        }
        out
    }

    /// Whether `node` holds any replica, desired or actual (in any reachable view).
    pub fn holds_anything(&self, node: u64) -> bool {
        self.replicas.values().any(|r| r.contains(&node))
            || self.groups.keys().any(|g| {
                self.leader_view(*g)
                    .is_some_and(|l| l.voters.contains(&node) || l.learners.contains(&node))
            })
    }
}
