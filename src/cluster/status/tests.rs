use super::*;

#[test]
fn group_state_travels_as_the_string_it_replaced() {
    for s in GroupState::ALL {
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json, serde_json::Value::String(s.as_str().to_string()));
        assert_eq!(serde_json::from_value::<GroupState>(json).unwrap(), s);
        // The peer transport's bincode: byte for byte what a `String` state was.
        let config = bincode::config::standard();
        let as_enum = bincode::serde::encode_to_vec(s, config).unwrap();
        let as_string = bincode::serde::encode_to_vec(s.as_str().to_string(), config).unwrap();
        assert_eq!(as_enum, as_string);
        let (back, _): (GroupState, usize) =
            bincode::serde::decode_from_slice(&as_string, config).unwrap();
        assert_eq!(back, s);
    }
    assert_eq!(
        [
            GroupState::Leader,
            GroupState::Follower,
            GroupState::Candidate,
            GroupState::Learner,
            GroupState::Shutdown
        ]
        .map(GroupState::as_str),
        ["leader", "follower", "candidate", "learner", "shutdown"]
    );
}

#[test]
fn unknown_group_state_is_refused() {
    assert!(serde_json::from_str::<GroupState>("\"Leader\"").is_err());
    assert!(serde_json::from_str::<GroupState>("\"boss\"").is_err());
}

#[test]
fn from_openraft_server_state() {
    assert_eq!(group_state(ServerState::Leader), GroupState::Leader);
    assert_eq!(group_state(ServerState::Follower), GroupState::Follower);
    assert_eq!(group_state(ServerState::Candidate), GroupState::Candidate);
    assert_eq!(group_state(ServerState::Learner), GroupState::Learner);
    assert_eq!(group_state(ServerState::Shutdown), GroupState::Shutdown);
}
