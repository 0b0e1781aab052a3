use super::*;

#[test]
fn example_config_parses_and_equals_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/single-node.toml");
    let c = Config::from_file(&path).expect("example config parses");
    assert_eq!(c, Config::default());
}

#[test]
fn cluster_example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster");
    for n in 1..=3 {
        let c = Config::from_file(&dir.join(format!("node{n}.toml"))).expect("parses");
        assert_eq!(
            c.join.is_some(),
            n > 1,
            "node {n}: only joiners name a seed"
        );
        assert_eq!(c.listen.port(), 7060 + 10 * n);
    }
}

#[test]
fn registration_defaults_to_open_only_on_loopback() {
    let a = Accounts::default();
    let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
    assert_eq!(a.registration_for(lo), Registration::Open);
    assert_eq!(a.registration_for(any), Registration::Invite);
    let closed: Config = toml::from_str("[accounts]\nregistration = \"closed\"\n").unwrap();
    assert_eq!(closed.accounts.registration_for(lo), Registration::Closed);
    assert!(toml::from_str::<Config>("[accounts]\nregistration = \"maybe\"\n").is_err());
}

#[test]
fn tls_files_go_together() {
    let mut c = Config::default();
    c.tls.cert_file = Some("cert.pem".into());
    assert!(c.validate().is_err());
    c.tls.key_file = Some("key.pem".into());
    assert!(c.validate().is_ok());
    c.limits.connections_per_ip = 0;
    assert!(c.validate().is_err());
}

#[test]
fn unknown_keys_are_refused() {
    assert!(toml::from_str::<Config>("[limits]\nbogus = 1\n").is_err());
}

#[test]
fn raft_log_compaction_keys_are_bounded() {
    let c: Config =
        toml::from_str("[raft]\nsnapshot_every_logs = 200\nkeep_logs_behind_snapshot = 50\n")
            .unwrap();
    assert_eq!(c.raft.snapshot_every_logs, 200);
    assert_eq!(c.raft.keep_logs_behind_snapshot, 50);
    assert!(c.validate().is_ok());
    let mut c = Config::default();
    c.raft.snapshot_every_logs = SNAPSHOT_EVERY_LOGS_MIN - 1;
    assert!(c.validate().is_err());
    c.raft.snapshot_every_logs = RAFT_LOG_ENTRIES_MAX + 1;
    assert!(c.validate().is_err());
    c.raft.snapshot_every_logs = SNAPSHOT_EVERY_LOGS;
    c.raft.keep_logs_behind_snapshot = RAFT_LOG_ENTRIES_MAX + 1;
    assert!(c.validate().is_err());
}
