//! Deliberately broken behaviours ("switches") that exist only to show that the jepsen
//! checker catches each class of bug (`chatnode-jepsen prove`, docs/RELIABILITY.md).
//!
//! They are compiled in only with the `fault-injection` cargo feature, and one is chosen at
//! start-up with the environment variable [`ENV`] (`CHATNODE_BREAK=ack-before-commit`). In a
//! default build [`on`] is a constant `false` and the variable makes `chatnode` refuse to
//! start, so a production binary can never run broken by accident.
//!
//! Every hook in the server goes through one macro, [`sabotage!`](crate::sabotage!), so a
//! reader finds them all with one search and a default build compiles none of them:
//! - `sabotage!(Switch)` is a `bool` (the constant `false` without the feature);
//! - `sabotage!(Switch => { … })` is a statement that runs the block when the switch is on,
//!   and is not compiled at all without the feature (the block may use items that exist
//!   only in fault-injection builds, e.g. `ShardOp::SendAtSeq`);
//! - `sabotage!(any => { … })` the same, when any switch is on (a hook that serves several).
//!
//! Only the data a hook needs (an enum variant, a helper function) carries
//! `#[cfg(feature = "fault-injection")]` itself.

/// A sabotage hook; see the [module docs](crate::sabotage).
#[macro_export]
macro_rules! sabotage {
    ($switch:ident) => {
        $crate::sabotage::on($crate::sabotage::Switch::$switch)
    };
    (any => $body:block) => {
        #[cfg(feature = "fault-injection")]
        if $crate::sabotage::active().is_some() $body
    };
    ($switch:ident => $body:block) => {
        #[cfg(feature = "fault-injection")]
        if $crate::sabotage::on($crate::sabotage::Switch::$switch) $body
    };
}

/// The environment variable that picks a switch.
pub const ENV: &str = "CHATNODE_BREAK";

/// One way to break the server on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// A send is acknowledged if its entry has not committed within
    /// [`EARLY_ACK_AFTER_MS`], with a guessed seq (G1: acked means committed).
    AckBeforeCommit,
    /// Log appends (and votes, truncations, purges) skip the WAL and fsync; a writeback
    /// thread flushes them every [`WRITEBACK_INTERVAL_MS`], like an OS page cache (G1).
    UnsyncedAppends,
    /// Deduplication by `client_msg_id` happens only in the leader's memory, never at apply
    /// (G2).
    LeaderMemoryDedup,
    /// History and sync pages are served by whatever replica the gateway holds, with no
    /// read barrier (G7).
    FollowerReads,
    /// The leader picks a send's seq when it proposes (`last_seq + 1` of what it applied so
    /// far) and apply uses it (G3).
    SeqAtProposal,
    /// The persisted Raft vote is not read back on restart (G1, G3: two leaders).
    ForgetVote,
    /// The leader pushes a send to subscribed connections before proposing it, with a
    /// guessed seq (G4).
    PushBeforeCommit,
}

/// A send not committed within this long is acknowledged anyway ([`Switch::AckBeforeCommit`]).
pub const EARLY_ACK_AFTER_MS: u64 = 100;
/// How often the unsynced log is flushed ([`Switch::UnsyncedAppends`]).
pub const WRITEBACK_INTERVAL_MS: u64 = 2_000;

impl Switch {
    pub const ALL: [Switch; 7] = [
        Switch::AckBeforeCommit,
        Switch::UnsyncedAppends,
        Switch::LeaderMemoryDedup,
        Switch::FollowerReads,
        Switch::SeqAtProposal,
        Switch::ForgetVote,
        Switch::PushBeforeCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Switch::AckBeforeCommit => "ack-before-commit",
            Switch::UnsyncedAppends => "unsynced-appends",
            Switch::LeaderMemoryDedup => "leader-memory-dedup",
            Switch::FollowerReads => "follower-reads",
            Switch::SeqAtProposal => "seq-at-proposal",
            Switch::ForgetVote => "forget-vote",
            Switch::PushBeforeCommit => "push-before-commit",
        }
    }

    pub fn parse(s: &str) -> Option<Switch> {
        Switch::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// Why the value of [`ENV`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SabotageError {
    #[error("{ENV}={0:?} but this chatnode was built without the fault-injection feature")]
    NotCompiledIn(String),
    #[error("{ENV}={0:?} names no switch; known: {1}")]
    Unknown(String, String),
}

/// Reads [`ENV`] once at start-up: `Ok(None)` when unset or empty.
pub fn from_env() -> Result<Option<Switch>, SabotageError> {
    let Ok(value) = std::env::var(ENV) else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(None);
    }
    if !cfg!(feature = "fault-injection") {
        return Err(SabotageError::NotCompiledIn(value));
    }
    match Switch::parse(&value) {
        Some(s) => Ok(Some(s)),
        None => Err(SabotageError::Unknown(
            value,
            Switch::ALL.map(Switch::name).join(", "),
        )),
    }
}

/// The switch that is on in this process, if any (read from [`ENV`] once).
#[cfg(feature = "fault-injection")]
pub fn active() -> Option<Switch> {
    static ACTIVE: std::sync::OnceLock<Option<Switch>> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| from_env().ok().flatten())
}

/// Whether `switch` is on in this process (call it through [`sabotage!`](crate::sabotage!)).
#[cfg(feature = "fault-injection")]
pub fn on(switch: Switch) -> bool {
    active() == Some(switch)
}

/// Whether `switch` is on in this process: never, in a build without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on(_switch: Switch) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Switch::ALL {
            assert_eq!(Switch::parse(s.name()), Some(s));
        }
        assert_eq!(Switch::parse("ack"), None);
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_default_build_has_every_switch_off() {
        for s in Switch::ALL {
            assert!(!on(s));
        }
        assert!(!crate::sabotage!(AckBeforeCommit));
        assert!(!crate::sabotage!(ForgetVote));
        let ran = std::cell::Cell::new(false);
        crate::sabotage!(UnsyncedAppends => { ran.set(true); });
        assert!(
            !ran.get(),
            "a hook's block is not even compiled without the feature"
        );
    }
}
