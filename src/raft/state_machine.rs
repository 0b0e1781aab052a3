//! A group's state machine over the node's [`Store`] (storage-v2 `RaftStateMachine`).
//!
//! The group's `sm` range holds the application data (written by the [`Applier`] through an
//! [`SmTxn`](crate::storage::SmTxn)) and, under the reserved `0x00` prefix, the last applied
//! log id, the last membership and a marker that a snapshot was built or installed. Applies
//! run on the store's apply thread, which writes the batches of many groups at once and without
//! sync: the synced log replays them after a crash.
//!
//! Snapshots are not stored separately: a snapshot is the group's data range, dumped from one
//! consistent view. `get_current_snapshot` rebuilds it from the current state once a snapshot
//! was built or installed (so it is never older than the last one built), and returns `None`
//! before that. Snapshot ids are derived from the last applied log id, so two snapshots with
//! the same id have the same content.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};

use tokio::sync::oneshot;

use super::{blocking, Applier, Entry, GroupId, GroupTypes, NodeId, SmTxn};
use crate::codec::{decode, encode};
use crate::storage::{KvPairs, SmJob, StorageError, Store};

type SError = openraft::StorageError<NodeId>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// Reserved `sm` keys of a group.
const KEY_APPLIED: &[u8] = &[0x00, 0x01];
const KEY_MEMBERSHIP: &[u8] = &[0x00, 0x02];
const KEY_SNAPSHOT: &[u8] = &[0x00, 0x03];

/// Snapshot blob: this magic, then `(u32 BE len, key, u32 BE len, value)*` of the user keys.
const SNAPSHOT_MAGIC: &[u8] = b"CNSNAP01";

fn io(e: StorageIOError<NodeId>) -> SError {
    SError::IO { source: e }
}

/// One `apply` call of a group, run on the store's apply thread (merged with other groups'
/// applies into one write), answered after the write.
struct ApplyJob<C: GroupTypes> {
    group: GroupId,
    entries: Vec<Entry<C>>,
    applier: Arc<dyn Applier<C>>,
    responses: Vec<C::R>,
    /// The entry whose apply failed (an IO error: the group's Raft stops).
    failed: Option<LogId<NodeId>>,
    reply: oneshot::Sender<Result<Vec<C::R>, SError>>,
}

impl<C: GroupTypes> SmJob for ApplyJob<C> {
    fn group(&self) -> GroupId {
        self.group
    }

    fn apply(&mut self, txn: &mut SmTxn<'_>) -> Result<KvPairs, StorageError> {
        let mut membership = None;
        self.responses.reserve(self.entries.len());
        for e in &self.entries {
            match &e.payload {
                EntryPayload::Blank => self.responses.push(C::blank_response()),
                EntryPayload::Normal(req) => match self.applier.apply(txn, req) {
                    Ok(r) => self.responses.push(r),
                    Err(err) => {
                        self.failed = Some(e.log_id);
                        return Err(err);
                    }
                },
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(e.log_id), m.clone()));
                    self.responses.push(C::blank_response());
                }
            }
        }
        let Some(last) = self.entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut reserved = vec![(KEY_APPLIED.to_vec(), encode(&last)?)];
        if let Some(m) = &membership {
            reserved.push((KEY_MEMBERSHIP.to_vec(), encode(m)?));
        }
        Ok(reserved)
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        let answer = match result {
            Ok(()) => {
                self.applier.after_write(self.group, &self.responses);
                Ok(self.responses)
            }
            Err(e) => Err(io(match self.failed {
                Some(at) => StorageIOError::apply(at, AnyError::new(&e)),
                None => StorageIOError::write_state_machine(AnyError::new(&e)),
            })),
        };
        // The caller may be gone (the group shut down): nothing to answer then.
        let _ = self.reply.send(answer);
    }
}

/// One group's state machine: a cheap, cloneable handle (also its own snapshot builder).
pub(crate) struct StateMachineStore<C: GroupTypes> {
    group: GroupId,
    store: Arc<Store>,
    applier: Arc<dyn Applier<C>>,
}

// Not derived: a derive would ask `C: Clone` of the applier.
impl<C: GroupTypes> Clone for StateMachineStore<C> {
    fn clone(&self) -> Self {
        Self {
            group: self.group,
            store: self.store.clone(),
            applier: self.applier.clone(),
        }
    }
}

impl<C: GroupTypes> StateMachineStore<C> {
    pub(crate) fn new(group: GroupId, store: Arc<Store>, applier: Arc<dyn Applier<C>>) -> Self {
        Self {
            group,
            store,
            applier,
        }
    }
}

fn read_applied(
    store: &Store,
    group: GroupId,
) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
    let applied = match store.sm_get(group, KEY_APPLIED)? {
        Some(b) => Some(decode::<LogId<NodeId>>(&b)?),
        None => None,
    };
    let membership = match store.sm_get(group, KEY_MEMBERSHIP)? {
        Some(b) => decode::<Membership>(&b)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

fn snapshot_id(last: &Option<LogId<NodeId>>) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "none".to_string(),
    }
}

fn push_chunk(out: &mut Vec<u8>, b: &[u8]) -> Result<(), StorageError> {
    let len =
        u32::try_from(b.len()).map_err(|_| StorageError::Encode("value over 4 GiB".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn take_chunk<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], StorageError> {
    let short = || StorageError::Corrupt("truncated snapshot".into());
    if buf.len() < 4 {
        return Err(short());
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let rest = &buf[4..];
    if rest.len() < len {
        return Err(short());
    }
    let (chunk, tail) = rest.split_at(len);
    *buf = tail;
    Ok(chunk)
}

/// Dumps a group into a snapshot (one consistent view of data + applied state).
fn build(store: &Store, group: GroupId) -> Result<(Meta, Vec<u8>), StorageError> {
    let mut applied = None;
    let mut membership = Membership::default();
    let mut blob = SNAPSHOT_MAGIC.to_vec();
    for (k, v) in store.sm_dump(group)? {
        if k == KEY_APPLIED {
            applied = Some(decode::<LogId<NodeId>>(&v)?);
        } else if k == KEY_MEMBERSHIP {
            membership = decode::<Membership>(&v)?;
        } else if k.first() == Some(&0x00) {
            continue;
        } else {
            push_chunk(&mut blob, &k)?;
            push_chunk(&mut blob, &v)?;
        }
    }
    let meta = Meta {
        snapshot_id: snapshot_id(&applied),
        last_log_id: applied,
        last_membership: membership,
    };
    Ok((meta, blob))
}

fn parse_blob(blob: &[u8]) -> Result<KvPairs, StorageError> {
    let mut buf = blob
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| StorageError::Corrupt("not a chatnode snapshot".into()))?;
    let mut pairs = Vec::new();
    while !buf.is_empty() {
        let k = take_chunk(&mut buf)?;
        let v = take_chunk(&mut buf)?;
        if k.first().is_none_or(|b| *b == 0x00) {
            return Err(StorageError::Corrupt("reserved key in snapshot".into()));
        }
        pairs.push((k.to_vec(), v.to_vec()));
    }
    Ok(pairs)
}

impl<C: GroupTypes> RaftSnapshotBuilder<C> for StateMachineStore<C> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, SError> {
        let (store, group) = (self.store.clone(), self.group);
        let (meta, blob) = blocking(move || {
            let (meta, blob) = build(&store, group)?;
            store.sm_commit(
                store.txn(group),
                vec![(KEY_SNAPSHOT.to_vec(), encode(&meta)?)],
            )?;
            Ok((meta, blob))
        })
        .await
        .map_err(|e| io(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        })
    }
}

impl<C: GroupTypes> RaftStateMachine<C> for StateMachineStore<C> {
    type SnapshotBuilder = StateMachineStore<C>;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), SError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || read_applied(&store, group))
            .await
            .map_err(|e| io(StorageIOError::read_state_machine(AnyError::new(&e))))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, SError>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let (reply, answer) = oneshot::channel();
        let job = ApplyJob {
            group: self.group,
            entries,
            applier: self.applier.clone(),
            responses: Vec::new(),
            failed: None,
            reply,
        };
        let closed = |e: &dyn std::fmt::Display| {
            io(StorageIOError::apply(last, AnyError::error(e.to_string())))
        };
        self.store
            .sm_submit(Box::new(job))
            .await
            .map_err(|e| closed(&e))?;
        answer.await.map_err(|e| closed(&e))?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let (store, group, meta2) = (self.store.clone(), self.group, meta.clone());
        blocking(move || {
            let mut pairs = parse_blob(snapshot.get_ref())?;
            if let Some(l) = &meta2.last_log_id {
                pairs.push((KEY_APPLIED.to_vec(), encode(l)?));
            }
            pairs.push((KEY_MEMBERSHIP.to_vec(), encode(&meta2.last_membership)?));
            pairs.push((KEY_SNAPSHOT.to_vec(), encode(&meta2)?));
            store.sm_replace(group, pairs)
        })
        .await
        .map_err(|e| {
            io(StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, SError> {
        let (store, group) = (self.store.clone(), self.group);
        let built = blocking(move || {
            if store.sm_get(group, KEY_SNAPSHOT)?.is_none() {
                return Ok(None);
            }
            build(&store, group).map(Some)
        })
        .await
        .map_err(|e| io(StorageIOError::read_snapshot(None, AnyError::new(&e))))?;
        Ok(built.map(|(meta, blob)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        }))
    }
}
