//! The node's connection registry and fan-out: committed messages, receipts, typing and
//! presence are pushed from here into each connection's bounded outbound queue.
//!
//! Invariants:
//! - Pushes of one conversation enter every queue in seq order: they come from delivery's
//!   one consumer task (`fanout`), which hands them over in the tracker's order, and each is
//!   enqueued before the call returns.
//! - The hub never calls into the cluster, and nothing it calls under its lock waits:
//!   presence changes leave through `PresenceOut`, which only queues into delivery's inbox.
//! - A connection whose queue is full (in frames or in bytes, see `queue`) is killed (it
//!   reconnects and syncs), never waited on: one slow client must not hold up the others.
//!   That holds for committed messages only: an ephemeral push (typing, receipt, presence)
//!   to a full queue is dropped instead, so that nobody can disconnect a member by typing at
//!   them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::out_queue::OutQueue;

use crate::metrics::Metrics;
use crate::protocol::{MessageView, ServerFrame};
use crate::shard::command::{Pushed, ReceiptState, UserId};

/// Offline is announced this long after a user's last connection closed.
pub(crate) const PRESENCE_OFFLINE_AFTER_MS: u64 = 30_000;
/// A typing `start` not refreshed within this long expires (a `stop` is pushed).
pub(crate) const TYPING_EXPIRY_MS: u64 = 10_000;
/// At most one receipt push per (user, conversation) per this interval.
pub(crate) const RECEIPT_COALESCE_MS: u64 = 500;
/// Bounds of the hub's ephemeral maps.
pub(crate) const TYPING_ENTRIES_MAX: usize = 100_000;
pub(crate) const RECEIPT_ENTRIES_MAX: usize = 200_000;
pub(crate) const PRESENCE_SUBSCRIPTIONS_PER_CONN_MAX: usize = 1_000;
/// How often the sweeper runs (receipt flush, typing expiry, offline announcements).
const SWEEP_INTERVAL_MS: u64 = 100;

/// A frame queued towards a connection: serialized once, shared by every recipient.
#[derive(Debug, Clone)]
pub(crate) enum OutFrame {
    Text(Arc<str>),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// Close the socket after the frames queued before this one.
    Close,
}

pub(crate) type ConnId = u64;

/// What the session keeps to talk to its hub entry.
pub(crate) struct ConnHandle {
    pub(crate) id: ConnId,
    pub(crate) kill: Arc<Notify>,
}

struct Conn {
    id: ConnId,
    device: String,
    tx: OutQueue,
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Presence {
    connections: usize,
    last_seen: u64,
    announced_online: bool,
    /// When the last connection left; offline is announced PRESENCE_OFFLINE_AFTER_MS later.
    left_at: Option<Instant>,
}

struct Typing {
    deadline: Instant,
    device: String,
    recipients: Vec<UserId>,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, Vec<Conn>>,
    presence: HashMap<UserId, Presence>,
    /// Watched user -> subscribed connections (with the subscriber's user for cleanup).
    presence_watchers: HashMap<UserId, HashMap<ConnId, OutQueue>>,
    /// Connection -> the users it watches.
    watching: HashMap<ConnId, Vec<UserId>>,
    typing: HashMap<(String, UserId), Typing>,
    receipt_last_push: HashMap<(String, UserId), Instant>,
    receipt_pending: HashMap<(String, UserId), ReceiptState>,
    /// Users online on other nodes: node -> until when (refreshed by the node's periodic
    /// presence broadcast), and the last_seen it reported.
    remote_presence: HashMap<UserId, (HashMap<u64, Instant>, u64)>,
    presence_refreshed_at: Option<Instant>,
}

/// Users whose presence on other nodes a hub remembers.
pub(crate) const REMOTE_PRESENCE_USERS_MAX: usize = 200_000;
/// A remote "online" without a refresh expires after this long (the node died or left).
pub(crate) const REMOTE_PRESENCE_TTL_MS: u64 = 30_000;
/// How often a node re-announces its online users to the others.
pub(crate) const PRESENCE_REFRESH_MS: u64 = 10_000;

/// Called with (user, online, last_seen) when a user's presence on this node changes, and
/// periodically for every user online here: delivery carries it to the other nodes. Must
/// not wait (see `Inbox::presence_out`).
pub(crate) type PresenceOut = Box<dyn Fn(Vec<(UserId, bool, u64)>) + Send + Sync>;

/// Refusal to register a connection.
#[derive(Debug, thiserror::Error)]
#[error("user already has {0} connected devices")]
pub(crate) struct TooManyDevices(pub(crate) usize);

pub(crate) struct Hub {
    state: Mutex<State>,
    presence_out: PresenceOut,
    next_conn: AtomicU64,
    devices_per_user: usize,
    metrics: Arc<Metrics>,
}

fn text(frame: &ServerFrame) -> OutFrame {
    OutFrame::Text(Arc::from(frame.to_json()))
}

impl Hub {
    /// A hub whose local presence changes go to `presence_out`.
    pub(crate) fn new(
        devices_per_user: usize,
        metrics: Arc<Metrics>,
        presence_out: PresenceOut,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            presence_out,
            next_conn: AtomicU64::new(1),
            devices_per_user,
            metrics,
        })
    }

    /// Hands presence changes to delivery (a queue: never calls into the cluster).
    fn tell_others(&self, changes: Vec<(UserId, bool, u64)>) {
        if !changes.is_empty() {
            (self.presence_out)(changes);
        }
    }

    /// Online on any node (this one, or another that said so within its TTL).
    fn effective_presence(st: &State, user: &str) -> (bool, u64) {
        let (local_online, local_seen) = st
            .presence
            .get(user)
            .map_or((false, 0), |p| (p.announced_online, p.last_seen));
        let (remote_online, remote_seen) = st
            .remote_presence
            .get(user)
            .map_or((false, 0), |(nodes, seen)| (!nodes.is_empty(), *seen));
        (local_online || remote_online, local_seen.max(remote_seen))
    }

    /// Another node says `user` is (or is no longer) online there.
    pub(crate) fn remote_presence(&self, node: u64, user: &str, online: bool, last_seen: u64) {
        let mut st = self.state.lock();
        let before = Self::effective_presence(&st, user).0;
        if online {
            if !st.remote_presence.contains_key(user)
                && st.remote_presence.len() >= REMOTE_PRESENCE_USERS_MAX
            {
                return;
            }
            let until = Instant::now() + Duration::from_millis(REMOTE_PRESENCE_TTL_MS);
            let e = st.remote_presence.entry(user.to_string()).or_default();
            e.0.insert(node, until);
            e.1 = e.1.max(last_seen);
        } else if let Some(e) = st.remote_presence.get_mut(user) {
            e.0.remove(&node);
            e.1 = e.1.max(last_seen);
            if e.0.is_empty() && !st.presence_watchers.contains_key(user) {
                st.remote_presence.remove(user);
            }
        }
        if Self::effective_presence(&st, user).0 != before {
            self.announce_presence(&st, user);
        }
    }

    /// Starts the sweeper; it stops at `shutdown` or when the hub is dropped.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>, shutdown: &crate::shutdown::Shutdown) {
        let weak = Arc::downgrade(self);
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(SWEEP_INTERVAL_MS));
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.sweep(Instant::now());
            }
        });
    }

    /// Enqueues without waiting; a full queue kills the connection.
    fn deliver(&self, conn: &Conn, frame: &OutFrame) {
        match conn.tx.try_send(frame.clone()) {
            Ok(()) => {
                self.metrics.pushes.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.slow_consumer_disconnects.inc();
                conn.kill.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Enqueues an ephemeral push (typing, receipt) without waiting; a full queue drops it.
    /// Nothing is lost that matters: typing expires anyway, and a later receipt carries the
    /// latest watermarks. Killing the connection instead would let anyone who shares a
    /// conversation disconnect a slow member by typing at them.
    fn deliver_ephemeral(&self, conn: &Conn, frame: &OutFrame) {
        match conn.tx.try_send(frame.clone()) {
            Ok(()) => {
                self.metrics.pushes.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.ephemeral_pushes_dropped.inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Registers a connection of `user` and queues `first` (the `auth_ok`) before any push;
    /// a connection with the same device id is replaced.
    pub(crate) fn register(
        &self,
        user: &str,
        device: &str,
        tx: OutQueue,
        first: &ServerFrame,
        now_ms: u64,
    ) -> Result<ConnHandle, TooManyDevices> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        let mut st = self.state.lock();
        let conns = st.users.entry(user.to_string()).or_default();
        if let Some(pos) = conns.iter().position(|c| c.device == device) {
            let old = conns.remove(pos);
            old.kill.notify_one();
        }
        if conns.len() >= self.devices_per_user {
            if conns.is_empty() {
                st.users.remove(user);
            }
            return Err(TooManyDevices(self.devices_per_user));
        }
        // Queued under the lock, so no push can overtake it.
        let _ = tx.try_send(text(first));
        conns.push(Conn {
            id,
            device: device.to_string(),
            tx,
            kill: kill.clone(),
        });
        let count = conns.len();
        let p = st.presence.entry(user.to_string()).or_default();
        p.connections = count;
        p.last_seen = now_ms;
        p.left_at = None;
        if !p.announced_online {
            p.announced_online = true;
            let was_online_elsewhere = st
                .remote_presence
                .get(user)
                .is_some_and(|(nodes, _)| !nodes.is_empty());
            if !was_online_elsewhere {
                self.announce_presence(&st, user);
            }
            // Under the lock, so that it is ordered with this user's other changes (only a
            // queue: nothing waits).
            self.tell_others(vec![(user.to_string(), true, now_ms)]);
        }
        Ok(ConnHandle { id, kill })
    }

    pub(crate) fn unregister(&self, user: &str, conn: ConnId, now_ms: u64) {
        let mut st = self.state.lock();
        if let Some(conns) = st.users.get_mut(user) {
            conns.retain(|c| c.id != conn);
            let count = conns.len();
            if count == 0 {
                st.users.remove(user);
            }
            if let Some(p) = st.presence.get_mut(user) {
                p.connections = count;
                p.last_seen = now_ms;
                if count == 0 {
                    p.left_at = Some(Instant::now());
                }
            }
        }
        if let Some(watched) = st.watching.remove(&conn) {
            for w in watched {
                if let Some(m) = st.presence_watchers.get_mut(&w) {
                    m.remove(&conn);
                    if m.is_empty() {
                        st.presence_watchers.remove(&w);
                    }
                }
            }
        }
    }

    /// Pushes a committed message to every connection of every recipient except the
    /// sending connection.
    pub(crate) fn push_message(&self, pushed: &Pushed) {
        let frame = text(&ServerFrame::Message(MessageView::from(&pushed.message)));
        let m = &pushed.message;
        let st = self.state.lock();
        for user in &pushed.recipients {
            let Some(conns) = st.users.get(user) else {
                continue;
            };
            for c in conns {
                if *user == m.sender_id && c.device == m.sender_device {
                    continue;
                }
                self.deliver(c, &frame);
            }
        }
    }

    /// Ephemeral pushes (typing, receipts): dropped on a full queue.
    fn push_to_users(
        &self,
        st: &State,
        users: &[UserId],
        frame: &OutFrame,
        skip: Option<(&str, &str)>,
    ) {
        for user in users {
            let Some(conns) = st.users.get(user) else {
                continue;
            };
            for c in conns {
                if skip == Some((user.as_str(), c.device.as_str())) {
                    continue;
                }
                self.deliver_ephemeral(c, frame);
            }
        }
    }

    /// A receipt watermark moved: pushed to every member, at most once per 500 ms per
    /// (user, conversation); the latest watermarks win.
    pub(crate) fn push_receipt(&self, r: &ReceiptState) {
        if !r.changed {
            return;
        }
        let key = (r.conversation_id.clone(), r.user_id.clone());
        let now = Instant::now();
        let mut st = self.state.lock();
        let recent = st
            .receipt_last_push
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(RECEIPT_COALESCE_MS));
        if recent && st.receipt_pending.len() < RECEIPT_ENTRIES_MAX {
            st.receipt_pending.insert(key, r.clone());
            return;
        }
        if st.receipt_last_push.len() >= RECEIPT_ENTRIES_MAX {
            st.receipt_last_push
                .retain(|_, t| now.duration_since(*t) < Duration::from_millis(RECEIPT_COALESCE_MS));
        }
        st.receipt_pending.remove(&key);
        st.receipt_last_push.insert(key, now);
        self.send_receipt(&st, r);
    }

    fn send_receipt(&self, st: &State, r: &ReceiptState) {
        let frame = text(&ServerFrame::Receipt {
            conversation_id: r.conversation_id.clone(),
            user_id: r.user_id.clone(),
            delivered_seq: r.delivered_seq,
            read_seq: r.read_seq,
        });
        self.push_to_users(st, &r.recipients, &frame, None);
    }

    /// Typing is pushed to the other members and the typist's other devices; never stored.
    pub(crate) fn typing(
        &self,
        conversation_id: &str,
        user: &str,
        device: &str,
        start: bool,
        recipients: Vec<UserId>,
    ) {
        let frame = text(&ServerFrame::Typing {
            conversation_id: conversation_id.to_string(),
            user_id: user.to_string(),
            state: if start { "start" } else { "stop" },
        });
        let key = (conversation_id.to_string(), user.to_string());
        let mut st = self.state.lock();
        self.push_to_users(&st, &recipients, &frame, Some((user, device)));
        if start {
            if st.typing.len() < TYPING_ENTRIES_MAX || st.typing.contains_key(&key) {
                st.typing.insert(
                    key,
                    Typing {
                        deadline: Instant::now() + Duration::from_millis(TYPING_EXPIRY_MS),
                        device: device.to_string(),
                        recipients,
                    },
                );
            }
        } else {
            st.typing.remove(&key);
        }
    }

    /// Subscribes a connection to presence of `users` and returns their current status.
    pub(crate) fn subscribe_presence(
        &self,
        user: &str,
        conn: ConnId,
        tx: &OutQueue,
        users: &[UserId],
    ) -> Vec<(UserId, bool, u64)> {
        let mut st = self.state.lock();
        let mut out = Vec::with_capacity(users.len());
        // The connection may have closed while the request was being authorized.
        // (Looked up under the subscriber: a scan of every connection would hold the lock
        // for as long as the node has connections, on every request.)
        let live = st
            .users
            .get(user)
            .is_some_and(|conns| conns.iter().any(|c| c.id == conn));
        if !live {
            return out;
        }
        for u in users {
            let already = st.watching.get(&conn).map_or(0, |w| w.len());
            if already >= PRESENCE_SUBSCRIPTIONS_PER_CONN_MAX {
                break;
            }
            let newly = st
                .presence_watchers
                .entry(u.clone())
                .or_default()
                .insert(conn, tx.clone())
                .is_none();
            if newly {
                st.watching.entry(conn).or_default().push(u.clone());
            }
            let (online, last_seen) = Self::effective_presence(&st, u);
            out.push((u.clone(), online, last_seen));
        }
        out
    }

    fn announce_presence(&self, st: &State, user: &str) {
        let Some(watchers) = st.presence_watchers.get(user) else {
            return;
        };
        let (online, last_seen) = Self::effective_presence(st, user);
        let frame = text(&ServerFrame::Presence {
            id: None,
            user_id: user.to_string(),
            status: if online { "online" } else { "offline" },
            last_seen,
            presences: None,
        });
        for tx in watchers.values() {
            if tx.try_send(frame.clone()).is_ok() {
                self.metrics.pushes.inc();
            }
        }
    }

    /// Asks every connection to reconnect elsewhere (or later) and closes it: the node is
    /// draining.
    pub(crate) fn drain_all(&self, retry_after_ms: u64) {
        let frame = text(&ServerFrame::Reconnect { retry_after_ms });
        let st = self.state.lock();
        for c in st.users.values().flatten() {
            let _ = c.tx.try_send(frame.clone());
            let _ = c.tx.try_send(OutFrame::Close);
            c.kill.notify_one();
        }
    }

    /// One round of the sweeper, under one hold of the lock; the presence changes for the
    /// other nodes leave after it is released.
    fn sweep(&self, now: Instant) {
        let mut st = self.state.lock();
        self.flush_due_receipts(&mut st, now);
        self.expire_typing(&mut st, now);
        let mut changes = self.announce_offline(&mut st, now);
        self.expire_remote_presence(&mut st, now);
        refresh_presence(&mut st, now, &mut changes);
        drop(st);
        self.tell_others(changes);
    }

    /// Pushes the receipts whose coalescing window ended.
    fn flush_due_receipts(&self, st: &mut State, now: Instant) {
        let due: Vec<(String, UserId)> = st
            .receipt_pending
            .keys()
            .filter(|k| {
                st.receipt_last_push.get(*k).is_none_or(|t| {
                    now.duration_since(*t) >= Duration::from_millis(RECEIPT_COALESCE_MS)
                })
            })
            .cloned()
            .collect();
        for key in due {
            if let Some(r) = st.receipt_pending.remove(&key) {
                st.receipt_last_push.insert(key, now);
                self.send_receipt(st, &r);
            }
        }
    }

    /// Typing that was not refreshed: a `stop` goes to whoever got the `start`.
    fn expire_typing(&self, st: &mut State, now: Instant) {
        let expired: Vec<(String, UserId)> = st
            .typing
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(t) = st.typing.remove(&key) {
                let frame = text(&ServerFrame::Typing {
                    conversation_id: key.0.clone(),
                    user_id: key.1.clone(),
                    state: "stop",
                });
                self.push_to_users(st, &t.recipients, &frame, Some((&key.1, &t.device)));
            }
        }
    }

    /// Offline announcements: users whose last connection here left
    /// [`PRESENCE_OFFLINE_AFTER_MS`] ago; returns the changes for the other nodes.
    fn announce_offline(&self, st: &mut State, now: Instant) -> Vec<(UserId, bool, u64)> {
        let gone: Vec<UserId> = st
            .presence
            .iter()
            .filter(|(_, p)| {
                p.connections == 0
                    && p.left_at.is_some_and(|t| {
                        now.duration_since(t) >= Duration::from_millis(PRESENCE_OFFLINE_AFTER_MS)
                    })
            })
            .map(|(u, _)| u.clone())
            .collect();
        let mut changes = Vec::new();
        for user in gone {
            let mut last_seen = 0;
            if let Some(p) = st.presence.get_mut(&user) {
                p.announced_online = false;
                p.left_at = None;
                last_seen = p.last_seen;
            }
            changes.push((user.clone(), false, last_seen));
            if !Self::effective_presence(st, &user).0 {
                self.announce_presence(st, &user);
            }
            // Keep last_seen for later subscribers, but drop users nobody watches.
            if !st.presence_watchers.contains_key(&user) {
                st.presence.remove(&user);
            }
        }
        changes
    }

    /// Remote "online"s that were not refreshed: their node died or left. The watchers
    /// of a user who is now offline everywhere are told.
    fn expire_remote_presence(&self, st: &mut State, now: Instant) {
        let mut expired_remote = Vec::new();
        for (user, (nodes, _)) in st.remote_presence.iter_mut() {
            let before = nodes.len();
            nodes.retain(|_, until| *until > now);
            if before > 0 && nodes.is_empty() {
                expired_remote.push(user.clone());
            }
        }
        for user in expired_remote {
            if !Self::effective_presence(st, &user).0 {
                self.announce_presence(st, &user);
            }
            if !st.presence_watchers.contains_key(&user) {
                st.remote_presence.remove(&user);
            }
        }
    }
}

/// Re-announces who is online here, so that other nodes' entries do not expire: every
/// [`PRESENCE_REFRESH_MS`], added to `changes`.
fn refresh_presence(st: &mut State, now: Instant, changes: &mut Vec<(UserId, bool, u64)>) {
    let refresh_due = st
        .presence_refreshed_at
        .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(PRESENCE_REFRESH_MS));
    if refresh_due {
        st.presence_refreshed_at = Some(now);
        changes.extend(
            st.presence
                .iter()
                .filter(|(_, p)| p.announced_online)
                .take(REMOTE_PRESENCE_USERS_MAX)
                .map(|(u, p)| (u.clone(), true, p.last_seen)),
        );
    }
}

/// Whether presence of `user` is known to be online (for tests and status).
pub(crate) fn presence_status(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}
