//! Why a request could not be served by its group ([`RouteError`]), and, when the answer
//! is `unavailable`, which of its causes ([`UnavailableCause`]). Both travel between nodes
//! in peer replies; a client sees `unavailable` (retryable) with the error's text.

use serde::{Deserialize, Serialize};

use crate::ids::GroupId;

/// Why a request could not be served by its group.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub(crate) enum RouteError {
    #[error("not the leader of group {group}; leader hint: {leader_hint:?}")]
    NotLeader {
        group: GroupId,
        leader_hint: Option<u64>,
    },
    #[error("group {group} is unavailable: {cause}")]
    Unavailable {
        group: GroupId,
        cause: UnavailableCause,
    },
    #[error("no such group {0}")]
    NoSuchGroup(GroupId),
    #[error("group {group} timed out after {timeout_ms} ms")]
    Timeout { group: GroupId, timeout_ms: u64 },
}

/// Why a group is unavailable; its text is what clients have always been shown.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub(crate) enum UnavailableCause {
    /// Every attempt within the deadline failed without a more telling error.
    #[error("no leader reachable")]
    NoLeaderReachable,
    /// The last attempt's error when the route gave up (e.g. a leader that stepped down).
    #[error("{0}")]
    GaveUp(Box<RouteError>),
    /// Neither the meta state nor any group's membership names the node's address.
    #[error("no address for node {node}")]
    NoAddress { node: u64 },
    /// The call to another node failed (network, timeout, refused, batch dropped).
    #[error("node {node}: {error}")]
    Peer { node: u64, error: String },
    /// The other node could not serve the request at all.
    #[error("{0}")]
    PeerRefused(String),
    /// The answer was of another kind than the request.
    #[error("reply does not match the request")]
    ReplyMismatch,
    /// Reading the state machine failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Raft refused the write or read barrier (other than with a leader hint).
    #[error("{0}")]
    Raft(String),
    /// This node's proposer for the group is gone (shutting down).
    #[error("proposer stopped")]
    ProposerStopped,
    /// The group answered a batched proposal with something else than its answers.
    #[error("unexpected response {0}")]
    UnexpectedResponse(String),
    /// Delivering the group's outbox failed.
    #[error("{0}")]
    Outbox(String),
    /// A sabotage hook's proposal task failed (fault-injection builds only).
    #[error("proposal task: {0}")]
    ProposalTask(String),
}

impl RouteError {
    pub(crate) fn unavailable(group: GroupId, cause: UnavailableCause) -> Self {
        RouteError::Unavailable { group, cause }
    }
}
