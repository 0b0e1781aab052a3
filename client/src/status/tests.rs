use super::*;

/// `/admin/status` as the server's `json!` wrote it before the schema existed (keys sorted).
const OLD_JSON: &str = r#"{"cluster_id":"c1","groups":[{"applied":7,"group":0,"last_log_index":7,"leader":1,"learners":[],"matched":[[1,7],[2,5]],"state":"leader","term":3,"voters":[1,2]}],"node_id":1,"node_statuses":[{"groups":[{"applied":7,"group":0,"last_log_index":7,"leader":1,"learners":[],"matched":[[1,7],[2,5]],"state":"leader","term":3,"voters":[1,2]}],"node_id":1,"reachable":true},{"error":"timed out","node_id":2,"reachable":false}],"nodes":[{"client_addr":"127.0.0.1:7070","id":1,"peer_addr":"127.0.0.1:7071","state":"active"},{"client_addr":"127.0.0.1:7080","id":2,"peer_addr":"127.0.0.1:7081","state":"leaving"}],"placement_version":4,"replicas":{"0":[1,2],"1":[1,2],"10":[2,1],"2":[2,1]}}"#;

#[test]
fn parses_the_servers_answer_and_writes_it_back_byte_for_byte() {
    let s: AdminStatus = serde_json::from_str(OLD_JSON).unwrap();
    assert_eq!(s.node_id, 1);
    assert_eq!(s.nodes[1].state, MemberState::Leaving);
    assert_eq!(s.node_statuses[1].error.as_deref(), Some("timed out"));
    assert!(s.node_statuses[1].groups().is_empty());
    assert_eq!(s.groups[0].state, GroupState::Leader);
    assert_eq!(s.replicas[&10], vec![2, 1]);
    // The server answers with the struct through a Value: the same bytes as before.
    let again = serde_json::to_string(&serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(again, OLD_JSON);
}

#[test]
fn finds_the_leader_and_the_lag() {
    let s: AdminStatus = serde_json::from_str(OLD_JSON).unwrap();
    let (node, g) = s.leader_of(0).unwrap();
    assert_eq!((node, g.term), (1, 3));
    assert!(s.leader_of(1).is_none());
    assert_eq!(g.lag().collect::<Vec<_>>(), vec![(1, 0), (2, 2)]);
    assert!(g.holds(2) && !g.holds(3));
}

#[test]
fn states_are_lowercase_words() {
    for (st, word) in [
        (GroupState::Leader, "leader"),
        (GroupState::Follower, "follower"),
        (GroupState::Candidate, "candidate"),
        (GroupState::Learner, "learner"),
        (GroupState::Shutdown, "shutdown"),
    ] {
        assert_eq!(serde_json::to_value(st).unwrap(), word);
        assert_eq!(st.to_string(), word);
    }
    assert_eq!(serde_json::to_value(MemberState::Left).unwrap(), "left");
}
