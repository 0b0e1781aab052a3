//! [`LocalGroups`]: the Raft groups this node holds, and the two things done to one of them
//! here: propose a write, and wait for a read barrier. Getting a request to the node that
//! leads a group is `Cluster::route`'s job (cluster/route.rs).

use std::collections::HashMap;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use super::command::{GroupHandle, Request, Response};
use super::{RouteError, UnavailableCause};
use crate::ids::GroupId;

/// How long one request may wait for its write or read barrier before `unavailable`.
pub(crate) const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The groups this node holds, by id.
pub(crate) struct LocalGroups {
    groups: HashMap<GroupId, GroupHandle>,
}

impl LocalGroups {
    pub(crate) fn new(groups: impl IntoIterator<Item = GroupHandle>) -> Self {
        LocalGroups {
            groups: groups.into_iter().map(|g| (g.group, g)).collect(),
        }
    }

    pub(crate) fn group(&self, group: GroupId) -> Result<&GroupHandle, RouteError> {
        self.groups
            .get(&group)
            .ok_or(RouteError::NoSuchGroup(group))
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupHandle> {
        self.groups.values()
    }

    /// Proposes `req` to `group` and waits for it to be committed and applied.
    pub(crate) async fn write(&self, group: GroupId, req: Request) -> Result<Response, RouteError> {
        let handle = self.group(group)?;
        let fut = handle.raft.client_write(req);
        match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), fut).await {
            Err(_) => Err(RouteError::Timeout {
                group,
                timeout_ms: REQUEST_TIMEOUT_MS,
            }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(map_write_error(group, e)),
        }
    }

    /// Waits until the local state machine of `group` reflects every write acknowledged
    /// before this call (read index on the leader, G7).
    pub(crate) async fn read_barrier(&self, group: GroupId) -> Result<(), RouteError> {
        let handle = self.group(group)?;
        let fut = handle.raft.ensure_linearizable();
        match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), fut).await {
            Err(_) => Err(RouteError::Timeout {
                group,
                timeout_ms: REQUEST_TIMEOUT_MS,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(RouteError::NotLeader {
                    group,
                    leader_hint: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(RouteError::unavailable(
                group,
                UnavailableCause::Raft(e.to_string()),
            )),
        }
    }
}

fn map_write_error(
    group: GroupId,
    e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>,
) -> RouteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RouteError::NotLeader {
            group,
            leader_hint: f.leader_id,
        },
        other => RouteError::unavailable(group, UnavailableCause::Raft(other.to_string())),
    }
}
