use super::*;
use crate::transport::ClusterCa;

fn joiner(members: &[(u64, NodeState)]) -> Identity {
    let ca = ClusterCa::generate("c").expect("ca");
    Identity {
        cluster_id: "c".into(),
        node_id: 3,
        creator: false,
        credentials: ca.issue_node(3).expect("credentials"),
        ca_key_pem: ca.key_pem().to_string(),
        join_secret: vec![7; 32],
        settings: ClusterSettings {
            cluster_id: "c".into(),
            shards: 1,
            jwt_secret: vec![1; 32],
            created_ts: 0,
        },
        members: members
            .iter()
            .map(|&(id, state)| {
                let info = NodeInfo {
                    node_id: id,
                    peer_addr: format!("10.0.0.{id}:7001"),
                    client_addr: format!("10.0.0.{id}:7000"),
                    state,
                };
                (id, info)
            })
            .collect(),
    }
}

/// A joiner restarted before it was given any replica has no meta state of its own:
/// it starts from the members its identity remembers, or it could reach nobody (and a
/// node that left would never be told so).
#[test]
fn a_joiner_without_replicas_starts_from_the_members_it_remembers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let id = joiner(&[(1, NodeState::Active), (3, NodeState::Active)]);
    let meta = starting_meta(&store, MetaState::default(), &id).expect("meta");
    assert_eq!(meta.nodes, id.members);
    // The welcome, when there is one, wins.
    let welcome = MetaState {
        nodes: joiner(&[(2, NodeState::Active)]).members,
        ..Default::default()
    };
    let meta = starting_meta(&store, welcome.clone(), &id).expect("meta");
    assert_eq!(meta.nodes, welcome.nodes);
}

/// A `cluster.json` written before identities remembered the members still loads.
#[test]
fn an_identity_without_members_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = joiner(&[(1, NodeState::Active)]);
    id.save(dir.path()).expect("save");
    let path = dir.path().join(crate::cluster::identity::IDENTITY_FILE);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert!(json
        .as_object_mut()
        .expect("object")
        .remove("members")
        .is_some());
    std::fs::write(&path, serde_json::to_vec(&json).expect("encode")).expect("write");
    let back = Identity::load(dir.path()).expect("load").expect("present");
    assert!(back.members.is_empty());
    assert_eq!(back.node_id, 3);
}
