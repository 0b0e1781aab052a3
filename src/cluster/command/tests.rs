//! The encodings of the commands are stored (log entries, the meta state) and sent between
//! nodes: these golden bytes were produced by the code from before the commands moved out
//! of `shard::command` (issue 13), so an existing data dir still decodes.

use super::*;
use crate::shard::command::*;
use crate::shard::query::ShardQuery;

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(v).expect("encode")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        cluster_id: "c-1".into(),
        shards: 4,
        jwt_secret: vec![1, 2, 3],
        created_ts: 1_700_000_000_000,
    }
}

fn meta_state() -> MetaState {
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(
        1,
        NodeInfo {
            node_id: 1,
            peer_addr: "10.0.0.1:7001".into(),
            client_addr: "10.0.0.1:8080".into(),
            state: NodeState::Leaving,
        },
    );
    let mut replicas = std::collections::BTreeMap::new();
    replicas.insert(0, vec![1, 2, 3]);
    replicas.insert(3, vec![2, 300]);
    MetaState {
        nodes,
        next_node_id: 4,
        replicas,
        placement_version: 9,
        secrets: ClusterSecrets {
            join_secret: SecretBytes(vec![7; 32]),
            join_epoch: 2,
            admin_token: "tok".into(),
        },
    }
}

fn send_op() -> ShardOp {
    ShardOp::Send {
        conversation_id: "conv".into(),
        sender: "u1".into(),
        sender_device: "d1".into(),
        client_msg_id: "m-1".into(),
        kind: MsgKind::Edit,
        body: "héllo".into(),
        ref_seq: Some(3),
        msg_id: "01HX".into(),
        ts: 1_700_000_000_123,
    }
}

fn conversation() -> ConversationState {
    ConversationState {
        conversation_id: "conv".into(),
        kind: ConvKind::Group,
        title: Some("t".into()),
        members: vec![Member {
            user_id: "u1".into(),
            role: Role::Admin,
            joined: 2,
        }],
        last_seq: 5,
        members_ever: 3,
        next_join: 4,
        created_ts: 77,
    }
}

/// `(name, bincode)` of one value of every top-level enum variant family that is stored
/// (log entries, the meta state) or sent between nodes.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "req_init",
            enc(&Request::Meta(MetaOp::InitCluster(settings()))),
        ),
        (
            "req_add_node",
            enc(&Request::Meta(MetaOp::AddNode {
                peer_addr: "p".into(),
                client_addr: "c".into(),
            })),
        ),
        (
            "req_set_node_state",
            enc(&Request::Meta(MetaOp::SetNodeState {
                node_id: 5,
                state: NodeState::Left,
            })),
        ),
        (
            "req_set_placement",
            enc(&Request::Meta(MetaOp::SetPlacement {
                version: 3,
                replicas: meta_state().replicas,
            })),
        ),
        (
            "req_init_secrets",
            enc(&Request::Meta(MetaOp::InitSecrets(meta_state().secrets))),
        ),
        (
            "req_rotate",
            enc(&Request::Meta(MetaOp::RotateJoinSecret {
                secret: SecretBytes(vec![9; 32]),
            })),
        ),
        ("req_send", enc(&Request::Shard(send_op()))),
        (
            "req_batch",
            enc(&Request::ShardBatch(vec![
                send_op(),
                ShardOp::SetRole {
                    conversation_id: "conv".into(),
                    actor: "u1".into(),
                    actor_device: "d".into(),
                    user_id: "u2".into(),
                    role: Role::Owner,
                    msg_id: "01HY".into(),
                    ts: 8,
                },
                ShardOp::OutboxDone { ids: vec![1, 1000] },
            ])),
        ),
        ("resp_none", enc(&Response::None)),
        ("resp_meta", enc(&Response::Meta(settings()))),
        (
            "resp_shard",
            enc(&Response::Shard(
                ShardResponse::Conversation(conversation()),
            )),
        ),
        (
            "resp_batch",
            enc(&Response::ShardBatch(vec![
                ShardResponse::Done,
                ShardResponse::Rejected(Rejection::Conflict("username is taken".into())),
            ])),
        ),
        (
            "resp_meta_state",
            enc(&Response::MetaState {
                state: meta_state(),
                node_id: Some(4),
            }),
        ),
        ("meta_state", enc(&meta_state())),
        ("query_meta", enc(&ShardQuery::Meta)),
        ("result_meta", enc(&QueryResult::Meta(meta_state()))),
        (
            "result_conversation",
            enc(&QueryResult::Conversation(Some(conversation()))),
        ),
        (
            "log_entry",
            enc(&openraft::Entry::<TypeConfig> {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 2), 17),
                payload: openraft::EntryPayload::Normal(Request::Shard(send_op())),
            }),
        ),
    ]
}

/// Printed by the same `samples()` compiled against the code of commit 248bcc8.
#[rustfmt::skip]
const GOLDEN: &[(&str, &str)] = &[
    ("req_init", "000003632d310403010203fd0068e5cf8b010000"),
    ("req_add_node", "000101700163"),
    ("req_set_node_state", "00030502"),
    ("req_set_placement", "000403020003010203030202fb2c01"),
    ("req_init_secrets", "00052007070707070707070707070707070707070707070707070707070707070707070203746f6b"),
    ("req_rotate", "0006200909090909090909090909090909090909090909090909090909090909090909"),
    ("req_send", "010104636f6e76027531026431036d2d31010668c3a96c6c6f01030430314858fd7b68e5cf8b010000"),
    ("req_batch", "02030104636f6e76027531026431036d2d31010668c3a96c6c6f01030430314858fd7b68e5cf8b0100000404636f6e76027531016402753200043031485908090201fbe803"),
    ("resp_none", "00"),
    ("resp_meta", "0103632d310403010203fd0068e5cf8b010000"),
    ("resp_shard", "020004636f6e76010101740102753101020503044d"),
    ("resp_batch", "030206070311757365726e616d652069732074616b656e"),
    ("resp_meta_state", "040101010d31302e302e302e313a373030310d31302e302e302e313a383038300104020003010203030202fb2c01092007070707070707070707070707070707070707070707070707070707070707070203746f6b0104"),
    ("meta_state", "0101010d31302e302e302e313a373030310d31302e302e302e313a383038300104020003010203030202fb2c01092007070707070707070707070707070707070707070707070707070707070707070203746f6b"),
    ("query_meta", "09"),
    ("result_meta", "080101010d31302e302e302e313a373030310d31302e302e302e313a383038300104020003010203030202fb2c01092007070707070707070707070707070707070707070707070707070707070707070203746f6b"),
    ("result_conversation", "000104636f6e76010101740102753101020503044d"),
    ("log_entry", "03021101010104636f6e76027531026431036d2d31010668c3a96c6c6f01030430314858fd7b68e5cf8b010000"),
];

#[test]
fn encodings_are_those_from_before_the_move() {
    let samples = samples();
    assert_eq!(samples.len(), GOLDEN.len());
    for ((name, bytes), (golden_name, golden)) in samples.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        assert_eq!(hex(bytes), *golden, "{name}");
    }
}

#[test]
fn stored_values_decode_to_themselves() {
    let decode = |name: &str| {
        let (_, bytes) = samples().into_iter().find(|(n, _)| *n == name).expect(name);
        bytes
    };
    let r: Request = crate::codec::decode(&decode("req_send")).expect("request");
    assert_eq!(r, Request::Shard(send_op()));
    let r: Response = crate::codec::decode(&decode("resp_meta_state")).expect("response");
    assert_eq!(
        r,
        Response::MetaState {
            state: meta_state(),
            node_id: Some(4)
        }
    );
    let m: MetaState = crate::codec::decode(&decode("meta_state")).expect("meta state");
    assert_eq!(m, meta_state());
    let q: QueryResult = crate::codec::decode(&decode("result_meta")).expect("result");
    assert_eq!(q, QueryResult::Meta(meta_state()));
}
