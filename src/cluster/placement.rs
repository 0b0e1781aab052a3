//! Where things live: a conversation's (or user's) shard is a pure function of its id.
//!
//! Consistent hashing (`hashring`, SipHash with fixed keys, so every node and every restart
//! agrees) over virtual nodes of the shard groups 1..=S.

use hashring::HashRing;

use crate::ids::GroupId;

/// Virtual nodes per shard: enough for an even spread of keys over shards.
const VNODES_PER_SHARD: u32 = 64;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct VShard {
    shard: GroupId,
    replica: u32,
}

/// Maps keys onto the shard groups of a cluster.
pub struct ShardMap {
    shards: u32,
    ring: HashRing<VShard>,
}

impl ShardMap {
    /// `shards` >= 1; groups are numbered 1..=shards (0 is the meta group).
    pub fn new(shards: u32) -> Self {
        assert!(shards >= 1, "a cluster has at least one shard"); // invariant: validated config
        let mut ring = HashRing::new();
        for shard in 1..=shards {
            for replica in 0..VNODES_PER_SHARD {
                ring.add(VShard { shard, replica });
            }
        }
        ShardMap { shards, ring }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn groups(&self) -> impl Iterator<Item = GroupId> {
        1..=self.shards
    }

    fn shard_of(&self, namespace: &str, id: &str) -> GroupId {
        // The ring is never empty (new() adds every shard), so get() always finds one.
        self.ring
            .get(&(namespace, id))
            .map(|v| v.shard)
            .unwrap_or(1)
    }

    pub fn shard_for_conversation(&self, conversation_id: &str) -> GroupId {
        self.shard_of("c", conversation_id)
    }

    pub fn shard_for_user(&self, user_id: &str) -> GroupId {
        self.shard_of("u", user_id)
    }

    pub fn shard_for_username(&self, username: &str) -> GroupId {
        self.shard_of("n", username)
    }

    /// The shard that holds an invite code's state.
    pub fn shard_for_invite(&self, code: &str) -> GroupId {
        self.shard_of("i", code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spread() {
        let a = ShardMap::new(16);
        let b = ShardMap::new(16);
        let mut counts = [0u32; 17];
        for i in 0..16_000 {
            let id = format!("conv-{i}");
            let s = a.shard_for_conversation(&id);
            assert_eq!(s, b.shard_for_conversation(&id));
            assert!((1..=16).contains(&s));
            counts[s as usize] += 1;
        }
        // Every shard gets a fair part: within half to double of the mean (1000).
        for c in &counts[1..] {
            assert!((500..2000).contains(c), "uneven spread: {counts:?}");
        }
    }
}
