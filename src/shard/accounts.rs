//! Deterministic apply of the account commands: invites (in the shard the code hashes to)
//! and login sessions with the per-user token epoch (in the user's shard).
//!
//! Every check a refresh or an invite depends on happens here, at apply, so that two
//! concurrent uses of one invite or one refresh token cannot both succeed.

use super::apply::{get, put, ApplyResult};
use super::command::*;
use super::keys;
use crate::codec::decode;
use crate::ids::GroupId;
use crate::storage::{SmTxn, StorageError};

/// Sessions one user may hold; opening another drops the oldest.
pub(crate) const SESSIONS_PER_USER_MAX: usize = 64;

fn forbidden(m: &str) -> ApplyResult {
    Ok(ShardResponse::Rejected(Rejection::Forbidden(m.to_string())))
}

/// The user's token epoch (0 until the first `logout_all`).
pub(crate) fn epoch(txn: &SmTxn<'_>, user_id: &str) -> Result<u64, StorageError> {
    Ok(get(txn, &keys::token_epoch(user_id))?.unwrap_or(0))
}

/// Every session of the user (at most `SESSIONS_PER_USER_MAX` + 1 are ever stored).
fn sessions(txn: &SmTxn<'_>, user_id: &str) -> Result<Vec<SessionRecord>, StorageError> {
    let prefix = keys::session_prefix(user_id);
    let end = crate::storage::keys::prefix_successor(&prefix).unwrap_or_default();
    txn.scan(&prefix, &end, false, SESSIONS_PER_USER_MAX * 2)?
        .iter()
        .map(|(_, v)| Ok(decode(v)?))
        .collect()
}

/// Applies an account command; `None` if `op` is not one.
pub(crate) fn apply_account(txn: &mut SmTxn<'_>, op: &ShardOp) -> Option<ApplyResult> {
    Some(match op {
        ShardOp::CreateInvite {
            code,
            expires_at,
            uses,
            ts,
        } => create_invite(txn, code, *expires_at, *uses, *ts),
        ShardOp::UseInvite { code, ts, .. } => use_invite(txn, code, *ts),
        ShardOp::CreateSession {
            user_id,
            session_id,
            expires_at,
            ts,
        } => create_session(txn, user_id, session_id, *expires_at, *ts),
        ShardOp::RefreshSession {
            user_id,
            session_id,
            generation,
            expires_at,
            ts,
        } => refresh_session(txn, user_id, session_id, *generation, *expires_at, *ts),
        ShardOp::RevokeSession {
            user_id,
            session_id,
        } => {
            txn.delete(keys::session(user_id, session_id));
            Ok(ShardResponse::Done)
        }
        ShardOp::RevokeAllSessions { user_id } => revoke_all(txn, user_id),
        _ => return None,
    })
}

fn create_invite(
    txn: &mut SmTxn<'_>,
    code: &str,
    expires_at: u64,
    uses: u32,
    ts: u64,
) -> ApplyResult {
    let key = keys::invite(code);
    if txn.get(&key)?.is_some() {
        return Ok(ShardResponse::Rejected(Rejection::Conflict(
            "invite exists".into(),
        )));
    }
    let invite = Invite {
        expires_at,
        uses_left: uses.max(1),
        created_ts: ts,
    };
    put(txn, key, &invite)?;
    Ok(ShardResponse::Done)
}

fn use_invite(txn: &mut SmTxn<'_>, code: &str, ts: u64) -> ApplyResult {
    let key = keys::invite(code);
    let Some(mut invite) = get::<Invite>(txn, &key)? else {
        return forbidden("invalid or used invite");
    };
    if ts >= invite.expires_at || invite.uses_left == 0 {
        txn.delete(key);
        return forbidden("invalid or used invite");
    }
    invite.uses_left -= 1;
    if invite.uses_left == 0 {
        // Used up: nothing is left to keep (a missing invite is refused like a used one).
        txn.delete(key);
    } else {
        put(txn, key, &invite)?;
    }
    Ok(ShardResponse::Done)
}

fn create_session(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    session_id: &str,
    expires_at: u64,
    ts: u64,
) -> ApplyResult {
    if txn.get(&keys::user(user_id))?.is_none() {
        return Ok(ShardResponse::Rejected(Rejection::NotFound(
            "no such user".into(),
        )));
    }
    let epoch = epoch(txn, user_id)?;
    let mut live: Vec<SessionRecord> = Vec::new();
    for s in sessions(txn, user_id)? {
        if s.expires_at <= ts || s.epoch != epoch {
            txn.delete(keys::session(user_id, &s.session_id));
        } else {
            live.push(s);
        }
    }
    live.sort_by_key(|s| s.created_ts);
    let excess = (live.len() + 1).saturating_sub(SESSIONS_PER_USER_MAX);
    for s in live.iter().take(excess) {
        txn.delete(keys::session(user_id, &s.session_id));
    }
    let record = SessionRecord {
        session_id: session_id.to_string(),
        epoch,
        generation: 0,
        expires_at,
        created_ts: ts,
    };
    put(txn, keys::session(user_id, session_id), &record)?;
    Ok(ShardResponse::Session {
        epoch,
        session: Some(record),
    })
}

fn refresh_session(
    txn: &mut SmTxn<'_>,
    user_id: &str,
    session_id: &str,
    generation: u64,
    expires_at: u64,
    ts: u64,
) -> ApplyResult {
    let key = keys::session(user_id, session_id);
    let Some(mut s) = get::<SessionRecord>(txn, &key)? else {
        return forbidden("session revoked");
    };
    let epoch = epoch(txn, user_id)?;
    if s.epoch != epoch || s.expires_at <= ts {
        txn.delete(key);
        return forbidden("session expired or revoked");
    }
    if s.generation != generation {
        // A refresh token that was already rotated: whoever holds it is not (only) the
        // client. The whole session goes.
        txn.delete(key);
        return forbidden("refresh token reused; the session is revoked");
    }
    s.generation += 1;
    s.expires_at = expires_at;
    put(txn, key, &s)?;
    Ok(ShardResponse::Session {
        epoch,
        session: Some(s),
    })
}

fn revoke_all(txn: &mut SmTxn<'_>, user_id: &str) -> ApplyResult {
    let next = epoch(txn, user_id)?.saturating_add(1);
    for s in sessions(txn, user_id)? {
        txn.delete(keys::session(user_id, &s.session_id));
    }
    put(txn, keys::token_epoch(user_id), &next)?;
    Ok(ShardResponse::Session {
        epoch: next,
        session: None,
    })
}

/// The user's token epoch and live sessions, from this node's state of `group` (the caller
/// passed the read barrier). Blocking.
pub(crate) fn read_auth_state(
    store: &crate::storage::Store,
    group: GroupId,
    user_id: &str,
) -> Result<AuthState, StorageError> {
    let epoch = store
        .sm_get(group, &keys::token_epoch(user_id))?
        .map(|v| decode(&v))
        .transpose()?
        .unwrap_or(0);
    let sessions = store
        .sm_scan_prefix(
            group,
            &keys::session_prefix(user_id),
            false,
            SESSIONS_PER_USER_MAX * 2,
        )?
        .iter()
        .map(|(_, v)| decode(v))
        .collect::<Result<Vec<SessionRecord>, _>>()?;
    Ok(AuthState { epoch, sessions })
}
