//! Property tests of the shard state machine over a real RocksDB store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::apply_shard;
use super::command::*;
use super::keys;
use crate::codec::decode;
use crate::ids::GroupId;
use crate::storage::Store;

const GROUP: GroupId = 1;
const CONV: &str = "conv";
const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];

fn apply(store: &Store, op: &ShardOp) -> ShardResponse {
    let mut txn = store.txn(GROUP);
    let resp = apply_shard(&mut txn, op).expect("apply");
    store.sm_commit(txn, Vec::new()).expect("commit");
    resp
}

#[derive(Debug, Clone)]
enum Op {
    Send { sender: usize, cmid: u8 },
    Add { target: usize },
    Remove { target: usize },
    Read { user: usize, seq_offset: i8 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5usize, 0..12u8).prop_map(|(sender, cmid)| Op::Send { sender, cmid }),
        1 => (1..5usize).prop_map(|target| Op::Add { target }),
        1 => (1..5usize).prop_map(|target| Op::Remove { target }),
        2 => (0..5usize, -3..3i8).prop_map(|(user, seq_offset)| Op::Read { user, seq_offset }),
    ]
}

fn open_store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

fn create(store: &Store) {
    let resp = apply(
        store,
        &ShardOp::CreateConversation {
            conversation_id: CONV.into(),
            kind: ConvKind::Group,
            title: None,
            creator: "u0".into(),
            members: vec!["u1".into(), "u2".into(), "u3".into()],
            ts: 1,
        },
    );
    assert!(matches!(resp, ShardResponse::Conversation(_)));
}

/// What the property test expects of the conversation, updated op by op.
#[derive(Default)]
struct Model {
    members: BTreeSet<usize>,
    last_seq: u64,
    first_acks: HashMap<(usize, u8), Ack>,
    reads: HashMap<usize, u64>,
    msg_counter: u64,
}

impl Model {
    /// Applies `op` to `store` and checks the answer against the model.
    fn step(&mut self, store: &Store, op: Op) -> Result<(), TestCaseError> {
        self.msg_counter += 1;
        let msg_id = format!("id{}", self.msg_counter);
        match op {
            Op::Send { sender, cmid } => self.send(store, sender, cmid, msg_id),
            Op::Add { target } => self.add(store, target, msg_id),
            Op::Remove { target } => self.remove(store, target, msg_id),
            Op::Read { user, seq_offset } => self.read(store, user, seq_offset),
        }
    }

    fn send(
        &mut self,
        store: &Store,
        sender: usize,
        cmid: u8,
        msg_id: String,
    ) -> Result<(), TestCaseError> {
        let resp = apply(
            store,
            &ShardOp::Send {
                conversation_id: CONV.into(),
                sender: USERS[sender].into(),
                sender_device: "d".into(),
                client_msg_id: format!("m{cmid}"),
                kind: MsgKind::Text,
                body: format!("body {}", self.msg_counter),
                ref_seq: None,
                msg_id,
                ts: self.msg_counter,
            },
        );
        match (self.first_acks.get(&(sender, cmid)), resp) {
            (Some(first), ShardResponse::Ack { ack, pushed }) => {
                prop_assert_eq!(&ack, first, "a retry returns the original ack");
                prop_assert!(pushed.is_none(), "a retry is not pushed again");
            }
            (Some(_), other) => prop_assert!(false, "retry got {:?}", other),
            (None, ShardResponse::Ack { ack, pushed }) => {
                prop_assert!(self.members.contains(&sender), "non-member's send accepted");
                prop_assert_eq!(ack.seq, self.last_seq + 1, "seq is last_seq + 1");
                prop_assert!(pushed.is_some());
                self.last_seq = ack.seq;
                // Sending moves the sender's read watermark.
                self.reads.insert(sender, self.last_seq);
                self.first_acks.insert((sender, cmid), ack);
            }
            (None, ShardResponse::Rejected(Rejection::Forbidden(_))) => {
                prop_assert!(!self.members.contains(&sender), "member's send refused");
            }
            (None, other) => prop_assert!(false, "unexpected {:?}", other),
        }
        Ok(())
    }

    fn add(&mut self, store: &Store, target: usize, msg_id: String) -> Result<(), TestCaseError> {
        let resp = apply(
            store,
            &ShardOp::AddMembers {
                conversation_id: CONV.into(),
                actor: "u0".into(),
                actor_device: "d".into(),
                members: vec![USERS[target].into()],
                msg_id,
                ts: self.msg_counter,
            },
        );
        let ShardResponse::Membership {
            conversation,
            pushed,
        } = resp
        else {
            prop_assert!(false, "add refused");
            unreachable!();
        };
        if self.members.insert(target) {
            prop_assert_eq!(pushed.map(|p| p.message.seq), Some(self.last_seq + 1));
            self.last_seq += 1;
        } else {
            prop_assert!(pushed.is_none(), "re-adding a member is a no-op");
        }
        prop_assert_eq!(conversation.last_seq, self.last_seq);
        Ok(())
    }

    fn remove(
        &mut self,
        store: &Store,
        target: usize,
        msg_id: String,
    ) -> Result<(), TestCaseError> {
        let resp = apply(
            store,
            &ShardOp::RemoveMember {
                conversation_id: CONV.into(),
                actor: "u0".into(),
                actor_device: "d".into(),
                user_id: USERS[target].into(),
                msg_id,
                ts: self.msg_counter,
            },
        );
        if self.members.remove(&target) {
            let ShardResponse::Membership { pushed, .. } = resp else {
                prop_assert!(false, "remove refused");
                unreachable!();
            };
            prop_assert_eq!(pushed.map(|p| p.message.seq), Some(self.last_seq + 1));
            self.last_seq += 1;
        } else {
            prop_assert!(
                matches!(resp, ShardResponse::Membership { pushed: None, .. }),
                "removing a non-member is a no-op"
            );
        }
        Ok(())
    }

    fn read(&mut self, store: &Store, user: usize, seq_offset: i8) -> Result<(), TestCaseError> {
        let seq = (self.last_seq as i64 + i64::from(seq_offset)).max(1) as u64;
        let resp = apply(
            store,
            &ShardOp::Receipt {
                conversation_id: CONV.into(),
                user_id: USERS[user].into(),
                delivered_seq: None,
                read_seq: Some(seq),
            },
        );
        match resp {
            ShardResponse::Receipt(r) => {
                prop_assert!(self.members.contains(&user));
                prop_assert!(seq <= self.last_seq);
                let before = self.reads.get(&user).copied().unwrap_or(0);
                prop_assert_eq!(r.read_seq, before.max(seq), "read watermark is monotonic");
                prop_assert!(r.delivered_seq >= r.read_seq, "read implies delivered");
                self.reads.insert(user, r.read_seq);
            }
            ShardResponse::Rejected(Rejection::Forbidden(_)) => {
                prop_assert!(!self.members.contains(&user))
            }
            ShardResponse::Rejected(Rejection::BadRequest(_)) => prop_assert!(seq > self.last_seq),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        Ok(())
    }

    /// Every seq 1..=last_seq is stored once; every client_msg_id once.
    fn check_stored(&self, store: &Store) -> Result<(), TestCaseError> {
        let rows = store
            .sm_scan_prefix(GROUP, &keys::message_prefix(CONV), false, usize::MAX)
            .expect("scan");
        let stored: Vec<Message> = rows
            .iter()
            .map(|(_, v)| decode(v).expect("decode"))
            .collect();
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        prop_assert_eq!(
            seqs,
            (1..=self.last_seq).collect::<Vec<_>>(),
            "seq gapless from 1"
        );
        let mut by_cmid: BTreeMap<(String, String), u32> = BTreeMap::new();
        for m in stored.iter().filter(|m| m.kind == MsgKind::Text) {
            *by_cmid
                .entry((m.sender_id.clone(), m.client_msg_id.clone()))
                .or_default() += 1;
        }
        prop_assert!(
            by_cmid.values().all(|n| *n == 1),
            "a client_msg_id stored twice"
        );
        prop_assert_eq!(by_cmid.len(), self.first_acks.len());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sends_retries_membership_and_receipts(ops in proptest::collection::vec(op_strategy(), 1..120)) {
        let (_dir, store) = open_store();
        create(&store);
        let mut model = Model {
            members: [0, 1, 2, 3].into_iter().collect(),
            ..Model::default()
        };
        for op in ops {
            model.step(&store, op)?;
        }
        model.check_stored(&store)?;
    }
}

#[test]
fn owner_leaving_hands_ownership_to_oldest_admin() {
    let (_dir, store) = open_store();
    create(&store);
    let set_role = |user: &str, role| ShardOp::SetRole {
        conversation_id: CONV.into(),
        actor: "u0".into(),
        actor_device: "d".into(),
        user_id: user.into(),
        role,
        msg_id: format!("r-{user}"),
        ts: 2,
    };
    apply(&store, &set_role("u3", Role::Admin));
    apply(&store, &set_role("u2", Role::Admin));
    let resp = apply(
        &store,
        &ShardOp::RemoveMember {
            conversation_id: CONV.into(),
            actor: "u0".into(),
            actor_device: "d".into(),
            user_id: "u0".into(),
            msg_id: "leave".into(),
            ts: 3,
        },
    );
    let ShardResponse::Membership { conversation, .. } = resp else {
        panic!("{resp:?}")
    };
    let owner: Vec<&str> = conversation
        .members
        .iter()
        .filter(|m| m.role == Role::Owner)
        .map(|m| m.user_id.as_str())
        .collect();
    // u2 and u3 joined in that order at creation (u1, u2, u3), so u2 is the oldest admin.
    assert_eq!(owner, vec!["u2"]);
    // A plain member cannot remove anyone.
    let resp = apply(
        &store,
        &ShardOp::RemoveMember {
            conversation_id: CONV.into(),
            actor: "u1".into(),
            actor_device: "d".into(),
            user_id: "u3".into(),
            msg_id: "x".into(),
            ts: 4,
        },
    );
    assert!(matches!(
        resp,
        ShardResponse::Rejected(Rejection::Forbidden(_))
    ));
}

/// The bodies of membership events are stored and pushed as they are: v1 clients show
/// them, so their words (the role's included) are fixed.
#[test]
fn membership_event_bodies_are_fixed_text() {
    let (_dir, store) = open_store();
    create(&store);
    let body = |resp: ShardResponse| match resp {
        ShardResponse::Membership {
            pushed: Some(p), ..
        } => p.message.body,
        other => panic!("{other:?}"),
    };
    let actor = |user: &str| ("u0".to_string(), "d".to_string(), format!("m-{user}"), 2);
    for (user, role, word) in [("u1", Role::Admin, "admin"), ("u2", Role::Owner, "owner")] {
        let (actor, actor_device, msg_id, ts) = actor(user);
        let resp = apply(
            &store,
            &ShardOp::SetRole {
                conversation_id: CONV.into(),
                actor,
                actor_device,
                user_id: user.into(),
                role,
                msg_id,
                ts,
            },
        );
        assert_eq!(body(resp), format!("u0 made {user} {word}"));
    }
    // u2 owns the conversation now; u0 (an admin since the handover) makes u1 a member.
    let resp = apply(
        &store,
        &ShardOp::SetRole {
            conversation_id: CONV.into(),
            actor: "u2".into(),
            actor_device: "d".into(),
            user_id: "u1".into(),
            role: Role::Member,
            msg_id: "m-3".into(),
            ts: 3,
        },
    );
    assert_eq!(body(resp), "u2 made u1 member");
    let resp = apply(
        &store,
        &ShardOp::AddMembers {
            conversation_id: CONV.into(),
            actor: "u2".into(),
            actor_device: "d".into(),
            members: vec!["u4".into(), "u5".into()],
            msg_id: "m-4".into(),
            ts: 4,
        },
    );
    assert_eq!(body(resp), "u2 added u4, u5");
    let leave = |actor: &str, user: &str, msg_id: &str| ShardOp::RemoveMember {
        conversation_id: CONV.into(),
        actor: actor.into(),
        actor_device: "d".into(),
        user_id: user.into(),
        msg_id: msg_id.into(),
        ts: 5,
    };
    assert_eq!(
        body(apply(&store, &leave("u2", "u4", "m-5"))),
        "u2 removed u4"
    );
    assert_eq!(body(apply(&store, &leave("u5", "u5", "m-6"))), "u5 left");
}

#[test]
fn edit_and_delete_rules() {
    let (_dir, store) = open_store();
    create(&store);
    let send = |sender: &str, cmid: &str, kind, ref_seq| ShardOp::Send {
        conversation_id: CONV.into(),
        sender: sender.into(),
        sender_device: "d".into(),
        client_msg_id: cmid.into(),
        kind,
        body: "b".into(),
        ref_seq,
        msg_id: cmid.into(),
        ts: 5,
    };
    assert!(matches!(
        apply(&store, &send("u1", "a", MsgKind::Text, None)),
        ShardResponse::Ack { .. }
    ));
    // Only the sender edits.
    assert!(matches!(
        apply(&store, &send("u2", "e1", MsgKind::Edit, Some(1))),
        ShardResponse::Rejected(Rejection::Forbidden(_))
    ));
    let ShardResponse::Ack { ack, .. } = apply(&store, &send("u1", "e2", MsgKind::Edit, Some(1)))
    else {
        panic!()
    };
    assert_eq!(ack.seq, 2);
    // The owner may delete anyone's message; a missing seq is not_found.
    assert!(matches!(
        apply(&store, &send("u0", "d1", MsgKind::Delete, Some(1))),
        ShardResponse::Ack { .. }
    ));
    assert!(matches!(
        apply(&store, &send("u0", "d2", MsgKind::Delete, Some(99))),
        ShardResponse::Rejected(Rejection::NotFound(_))
    ));
}

// ratelimit: the memberships cap at apply.

fn index(store: &Store, user: &str, conv: &str, cap: u32) -> ShardResponse {
    apply(
        store,
        &ShardOp::IndexUserConversationCapped {
            user_id: user.into(),
            conversation_id: conv.into(),
            cap,
        },
    )
}

fn indexed(store: &Store, user: &str) -> usize {
    store
        .sm_scan_prefix(GROUP, &keys::user_conversation_prefix(user), false, 1000)
        .expect("scan")
        .len()
}

#[test]
fn index_cap_holds_at_apply_and_stays_idempotent() {
    let (_dir, store) = open_store();
    for c in ["c0", "c1", "c2"] {
        assert_eq!(index(&store, "u", c, 3), ShardResponse::Done);
    }
    // A re-delivered entry is Done whatever the count; a new one past the cap is refused.
    assert_eq!(index(&store, "u", "c1", 3), ShardResponse::Done);
    assert!(matches!(
        index(&store, "u", "c3", 3),
        ShardResponse::Rejected(Rejection::BadRequest(_))
    ));
    assert_eq!(indexed(&store, "u"), 3);
    // Another user has their own count.
    assert_eq!(index(&store, "v", "c3", 3), ShardResponse::Done);
    // Unindexing frees a slot, once (idempotent).
    for _ in 0..2 {
        let r = apply(
            &store,
            &ShardOp::UnindexUserConversation {
                user_id: "u".into(),
                conversation_id: "c0".into(),
            },
        );
        assert_eq!(r, ShardResponse::Done);
    }
    assert_eq!(index(&store, "u", "c3", 3), ShardResponse::Done);
    assert!(matches!(
        index(&store, "u", "c4", 3),
        ShardResponse::Rejected(_)
    ));
    assert_eq!(indexed(&store, "u"), 3);
}

#[test]
fn index_written_before_the_count_existed_is_counted() {
    let (_dir, store) = open_store();
    for c in ["c0", "c1"] {
        let r = apply(
            &store,
            &ShardOp::IndexUserConversation {
                user_id: "u".into(),
                conversation_id: c.into(),
            },
        );
        assert_eq!(r, ShardResponse::Done);
    }
    // Drop the count, as an index of an older version would have none.
    let mut txn = store.txn(GROUP);
    txn.delete(keys::user_conversation_count("u"));
    store.sm_commit(txn, Vec::new()).expect("commit");
    assert_eq!(index(&store, "u", "c2", 3), ShardResponse::Done);
    assert!(matches!(
        index(&store, "u", "c3", 3),
        ShardResponse::Rejected(_)
    ));
}

#[test]
fn removal_queues_an_unindex_entry_after_the_join() {
    let (_dir, store) = open_store();
    create(&store);
    let r = apply(
        &store,
        &ShardOp::RemoveMember {
            conversation_id: CONV.into(),
            actor: "u2".into(),
            actor_device: "d".into(),
            user_id: "u2".into(),
            msg_id: "m1".into(),
            ts: 2,
        },
    );
    assert!(matches!(r, ShardResponse::Membership { .. }));
    let (start, end) = keys::outbox_range();
    let joins = store
        .sm_scan(GROUP, &start, &end, false, 100)
        .expect("scan");
    let (start, end) = keys::outbox_unindex_range();
    let leaves = store
        .sm_scan(GROUP, &start, &end, false, 100)
        .expect("scan");
    assert_eq!(joins.len(), 4);
    assert_eq!(leaves.len(), 1);
    let leave_id = keys::outbox_id(&leaves[0].0).expect("id");
    let entry: OutboxEntry = decode(&leaves[0].1).expect("decode");
    assert_eq!(entry.user_id, "u2");
    for (k, _) in &joins {
        assert!(keys::outbox_id(k).expect("id") < leave_id);
    }
    // OutboxDone drops both kinds.
    let mut ids: Vec<u64> = joins
        .iter()
        .map(|(k, _)| keys::outbox_id(k).unwrap())
        .collect();
    ids.push(leave_id);
    apply(&store, &ShardOp::OutboxDone { ids });
    let (start, end) = keys::outbox_unindex_range();
    assert!(store
        .sm_scan(GROUP, &start, &end, false, 100)
        .unwrap()
        .is_empty());
}

/// Strings a buggy or hostile peer could put in a command: valid ids, empty, too long
/// (over 128, over the 64 KiB a key string can hold), odd characters.
fn wild_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["conv", "u0", "u1", "u2", "d1", "m-1"]).prop_map(String::from),
        1 => Just(String::new()),
        1 => (0usize..6).prop_map(|i| "x".repeat([127, 128, 129, 4_000, 65_535, 70_000][i])),
        2 => "[ -~]{0,40}",
        1 => "\\PC{0,8}",
        1 => Just("a\u{0}b".to_string()),
    ]
}

fn wild_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => prop::collection::vec(wild_string(), 0..5),
        1 => (0usize..3).prop_map(|i| vec!["u1".to_string(); [200, 201, 5_000][i]]),
    ]
}

fn wild_kind() -> impl Strategy<Value = MsgKind> {
    prop::sample::select(vec![
        MsgKind::Text,
        MsgKind::Edit,
        MsgKind::Delete,
        MsgKind::MemberAdded,
        MsgKind::MemberRemoved,
        MsgKind::RoleChanged,
    ])
}

fn wild_op() -> impl Strategy<Value = ShardOp> {
    let seq = prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(1)),
        Just(Some(u64::MAX))
    ];
    prop_oneof![
        (
            wild_string(),
            any::<bool>(),
            prop::option::of(wild_string()),
            wild_string(),
            wild_list()
        )
            .prop_map(
                |(c, g, title, creator, members)| ShardOp::CreateConversation {
                    conversation_id: c,
                    kind: if g { ConvKind::Group } else { ConvKind::Direct },
                    title,
                    creator,
                    members,
                    ts: 1,
                }
            ),
        (
            wild_string(),
            wild_string(),
            wild_string(),
            wild_string(),
            wild_kind(),
            wild_string(),
            seq.clone(),
            wild_string()
        )
            .prop_map(|(c, s, d, cm, kind, body, ref_seq, msg_id)| ShardOp::Send {
                conversation_id: c,
                sender: s,
                sender_device: d,
                client_msg_id: cm,
                kind,
                body,
                ref_seq,
                msg_id,
                ts: u64::MAX,
            }),
        (wild_string(), wild_string(), wild_list(), wild_string()).prop_map(
            |(c, a, members, m)| {
                ShardOp::AddMembers {
                    conversation_id: c,
                    actor: a,
                    actor_device: "d1".into(),
                    members,
                    msg_id: m,
                    ts: 2,
                }
            }
        ),
        (wild_string(), wild_string(), wild_string()).prop_map(|(c, a, u)| ShardOp::RemoveMember {
            conversation_id: c,
            actor: a,
            actor_device: "d1".into(),
            user_id: u,
            msg_id: "m-2".into(),
            ts: 3,
        }),
        (wild_string(), wild_string(), wild_string()).prop_map(|(c, a, u)| ShardOp::SetRole {
            conversation_id: c,
            actor: a,
            actor_device: "d1".into(),
            user_id: u,
            role: Role::Admin,
            msg_id: "m-3".into(),
            ts: 4,
        }),
        (wild_string(), wild_string(), seq.clone(), seq).prop_map(|(c, u, d, r)| {
            ShardOp::Receipt {
                conversation_id: c,
                user_id: u,
                delivered_seq: d,
                read_seq: r,
            }
        }),
        (wild_string(), wild_string(), wild_string()).prop_map(|(u, n, h)| ShardOp::CreateUser {
            user_id: u,
            username: n,
            password_hash: h,
            ts: 5,
        }),
        (wild_string(), wild_string()).prop_map(|(n, u)| ShardOp::ClaimUsername {
            username: n,
            user_id: u
        }),
        (wild_string(), wild_string()).prop_map(|(u, c)| ShardOp::IndexUserConversation {
            user_id: u,
            conversation_id: c,
        }),
        prop::collection::vec(any::<u64>(), 0..300).prop_map(|ids| ShardOp::OutboxDone { ids }),
    ]
}

/// Apply is total: any command, however malformed (as a buggy or compromised peer could
/// propose it), is applied without a panic and without an IO error, and the same commands
/// give the same responses on two replicas. Fails without `validate::check_op` at apply: a
/// key string over 64 KiB panicked in `keys` (and stopped the group on every replica).
#[test]
fn apply_is_total_and_deterministic_on_arbitrary_commands() {
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(wild_op(), 1..12))| {
        let (_d1, a) = open_store();
        let (_d2, b) = open_store();
        create(&a);
        create(&b);
        for op in &ops {
            let mut ta = a.txn(GROUP);
            let ra = apply_shard(&mut ta, op);
            let mut tb = b.txn(GROUP);
            let rb = apply_shard(&mut tb, op);
            prop_assert!(ra.is_ok(), "apply failed: {:?}", ra.err());
            let (ra, rb) = (ra.expect("ok"), rb.expect("ok"));
            prop_assert_eq!(&ra, &rb);
            a.sm_commit(ta, Vec::new()).expect("commit");
            b.sm_commit(tb, Vec::new()).expect("commit");
        }
    });
}

/// A valid command passes the shape rules, and what the gateway could never send is
/// refused with `bad_request`.
#[test]
fn shape_rules_refuse_what_the_gateway_never_sends() {
    use super::validate::check_op;
    let send = |conv: &str, kind: MsgKind, body: &str, ref_seq: Option<u64>| ShardOp::Send {
        conversation_id: conv.into(),
        sender: "u0".into(),
        sender_device: "d1".into(),
        client_msg_id: "m-1".into(),
        kind,
        body: body.into(),
        ref_seq,
        msg_id: "01J".into(),
        ts: 1,
    };
    assert_eq!(check_op(&send("c", MsgKind::Text, "hi", None)), Ok(()));
    assert_eq!(check_op(&send("c", MsgKind::Delete, "", Some(1))), Ok(()));
    for bad in [
        send(&"c".repeat(129), MsgKind::Text, "hi", None),
        send("c d", MsgKind::Text, "hi", None),
        send("c", MsgKind::Text, "", None),
        send("c", MsgKind::Text, "nul\u{0}", None),
        send(
            "c",
            MsgKind::Text,
            &"x".repeat(super::validate::BODY_BYTES_MAX + 1),
            None,
        ),
        send("c", MsgKind::MemberRemoved, "spoofed", None),
        send("c", MsgKind::Text, "hi", Some(1)),
        send("c", MsgKind::Edit, "hi", None),
    ] {
        assert!(
            matches!(check_op(&bad), Err(Rejection::BadRequest(_))),
            "accepted {bad:?}"
        );
    }
}
