use super::*;

#[test]
fn tokens_match_only_themselves() {
    let t = generate_admin_token();
    assert!(t.starts_with(ADMIN_TOKEN_PREFIX));
    assert!(token_matches(&t, &t));
    assert!(!token_matches(&t, &t[..t.len() - 1]));
    assert!(!token_matches(&t, ""));
    assert!(!token_matches("", ""));
    assert_ne!(t, generate_admin_token());
}

#[test]
fn older_secrets_never_replace_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalSecrets::new(dir.path(), [9; 32], [1; 32]);
    assert!(!s.known() && !s.admin_matches(""));
    let v0 = ClusterSecrets {
        join_secret: SecretBytes(vec![2; 32]),
        join_epoch: 0,
        admin_token: "admin".into(),
    };
    s.observe(&v0);
    assert!(s.admin_matches("admin") && !s.admin_matches("admin "));
    assert_eq!(s.join_token().secret, [2; 32]);
    let v1 = ClusterSecrets {
        join_secret: SecretBytes(vec![3; 32]),
        join_epoch: 1,
        ..v0.clone()
    };
    s.observe(&v1);
    s.observe(&v0);
    assert_eq!(s.join_token().secret, [3; 32]);
    s.write_files().unwrap();
    let written = std::fs::read_to_string(dir.path().join(JOIN_TOKEN_FILE)).unwrap();
    assert_eq!(written, s.join_token().to_string());
    let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
    assert_eq!(admin, "admin");
}
