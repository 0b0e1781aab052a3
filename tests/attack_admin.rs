//! Attacks on the operator surface (issue 12, point 5): `/admin/*` without the admin token,
//! with a user's JWT or with the join token; `/admin/checksum` as a scan amplifier; the
//! modes of the data dir and the secret files. The cluster-level attacks (a rotated-out join
//! token, a node that left coming back under its old identity) are in `tests/cluster.rs`
//! (`rotated_join_token_and_left_identity_are_refused`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::try_http;
use common::*;
use serde_json::Value;

const HTTP_WAIT: Duration = Duration::from_secs(10);

fn admin_token_of(n: &TestNode) -> String {
    std::fs::read_to_string(n._dir.path().join("admin-token"))
        .expect("admin-token file")
        .trim()
        .to_string()
}

async fn call(n: &TestNode, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    // `auth` is the whole Authorization value (to try other schemes than Bearer too).
    let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let body = if path == "/admin/faults" {
        r#"{"action":"heal"}"#
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(HTTP_WAIT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    parse_http_response(&out)
}

/// (method, path) of every admin endpoint.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/admin/status"),
    ("GET", "/admin/checksum"),
    ("GET", "/admin/shard?conversation_id=abc"),
    ("POST", "/admin/faults"),
    ("POST", "/admin/rotate-join-token"),
    ("POST", "/admin/leave"),
];

/// Every `/admin/*` endpoint refuses a request without the admin token (none, a user's JWT,
/// the join token, a near miss, another scheme) with 401 and does nothing; with the admin
/// token it works.
#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_refuse_all_but_the_admin_token() {
    let n = start_node_with(|c| c.testing.fault_injection = true).await;
    let (_, jwt) = register(n.addr, "mallory").await;
    let join = n.node.join_token();
    let admin = admin_token_of(&n);
    assert!(admin.starts_with("chatnode-admin-v1."), "{admin}");
    assert_ne!(admin, join);
    let mut near = admin.clone();
    near.pop();
    near.push('A');
    let wrong: Vec<(String, Option<String>)> = vec![
        ("no token".into(), None),
        ("a user's JWT".into(), Some(format!("Bearer {jwt}"))),
        ("the join token".into(), Some(format!("Bearer {join}"))),
        ("a near miss".into(), Some(format!("Bearer {near}"))),
        (
            "the admin token plus a byte".into(),
            Some(format!("Bearer {admin}x")),
        ),
        ("an empty bearer".into(), Some("Bearer ".into())),
        (
            "the admin token as Basic".into(),
            Some(format!("Basic {admin}")),
        ),
        ("the bare admin token".into(), Some(admin.clone())),
    ];
    for (method, path) in ENDPOINTS {
        for (what, auth) in &wrong {
            let (status, body) = call(&n, method, path, auth.as_deref()).await;
            assert_eq!(status, 401, "{method} {path} with {what}: {status} {body}");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert_eq!(
                v["code"], "unauthorized",
                "{method} {path} with {what}: {body}"
            );
        }
    }
    // Nothing happened: the join token is the same, the node did not leave.
    assert_eq!(n.node.join_token(), join, "a refused rotation rotated");
    assert_eq!(call(&n, "GET", "/ready", None).await.0, 200);

    let bearer = format!("Bearer {admin}");
    let ok = |path: &str| format!("admin token on {path}");
    let (s, b) = call(&n, "GET", "/admin/status", Some(&bearer)).await;
    assert_eq!(s, 200, "{}: {b}", ok("status"));
    assert!(!b.contains(&admin), "status shows the admin token");
    assert!(!b.contains(&join), "status shows the join token");
    let (s, b) = call(&n, "GET", "/admin/shard?conversation_id=abc", Some(&bearer)).await;
    assert_eq!(s, 200, "{}: {b}", ok("shard"));
    let (s, b) = call(&n, "POST", "/admin/faults", Some(&bearer)).await;
    assert_eq!(s, 200, "{}: {b}", ok("faults"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = call(&n, "GET", "/admin/checksum", Some(&bearer)).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{}: {b}", ok("checksum"));
        assert!(Instant::now() < deadline, "no checksum within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, b) = call(&n, "POST", "/admin/rotate-join-token", Some(&bearer)).await;
    assert_eq!(s, 200, "{}: {b}", ok("rotate-join-token"));
    let v: Value = serde_json::from_str(&b).unwrap();
    let rotated = v["join_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, join);
    assert_eq!(n.node.join_token(), rotated);
    // The join-token file follows (written by a background task).
    let file = n._dir.path().join("join-token");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&file).unwrap_or_default().trim() != rotated {
        assert!(Instant::now() < deadline, "join-token file not rewritten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin token did not change with it.
    assert_eq!(admin_token_of(&n), admin);
}

/// 1,000 `/admin/checksum` requests in a row cause at most one scan per interval: the
/// answers carry the same `computed_at_ms`, and the node's scan count barely moves.
#[tokio::test(flavor = "multi_thread")]
async fn checksum_requests_do_not_scan() {
    const REQUESTS: usize = 1_000;
    let n = start_node().await;
    let bearer = admin_token_of(&n);
    let get = || async {
        try_http(
            n.addr,
            "GET",
            "/admin/checksum",
            Some(&bearer),
            "",
            HTTP_WAIT,
        )
        .await
        .expect("checksum answers")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first: Value = loop {
        let (s, b) = get().await;
        if s == 200 {
            break serde_json::from_str(&b).unwrap();
        }
        assert_eq!(s, 503, "{b}");
        assert!(Instant::now() < deadline, "no checksum within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let interval_ms = first["interval_ms"].as_u64().expect("interval_ms");
    let scans_before = first["scans"].as_u64().expect("scans");
    assert!(first["groups"].as_array().is_some_and(|g| !g.is_empty()));
    let t = Instant::now();
    let mut computed_at = std::collections::BTreeSet::new();
    let mut last = first.clone();
    for _ in 0..REQUESTS {
        let (s, b) = get().await;
        assert_eq!(s, 200, "{b}");
        last = serde_json::from_str(&b).unwrap();
        computed_at.insert(last["computed_at_ms"].as_u64().expect("computed_at_ms"));
        assert!(last["age_ms"].as_u64().is_some());
    }
    let elapsed_ms = t.elapsed().as_millis() as u64;
    let scans = last["scans"].as_u64().unwrap() - scans_before;
    let allowed = 1 + elapsed_ms / interval_ms;
    eprintln!(
        "{REQUESTS} requests in {elapsed_ms} ms: {scans} scans, {} distinct results (interval {interval_ms} ms)",
        computed_at.len()
    );
    assert!(
        scans <= allowed,
        "{REQUESTS} requests caused {scans} scans in {elapsed_ms} ms (at most {allowed})"
    );
    assert!(computed_at.len() as u64 <= allowed + 1, "{computed_at:?}");
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data dir and RocksDB's dir are 0700 (also when the data dir existed with 0755), the
/// identity and token files 0600 (also when a stale temp file was world-readable).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn data_dir_and_secret_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stale = data.join("admin-token.tmp");
    std::fs::write(&stale, "x").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = data.clone();
    let n = start_node_with(move |c| c.data_dir = d).await;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("db")), 0o700, "RocksDB dir");
    for f in ["cluster.json", "join-token", "admin-token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // A data dir that does not exist yet is created private, parents included.
    let fresh = parent.path().join("a/b");
    let f2 = fresh.clone();
    let m = start_node_with(move |c| c.data_dir = f2).await;
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("db")), 0o700);
    assert_eq!(mode(&fresh.join("admin-token")), 0o600);
    drop((n, m));
}
