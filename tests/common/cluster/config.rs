//! The cluster's config file, the harness' time limits, free addresses and the secret files
//! the nodes write.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Limits raised so that the load is never rate limited; fault injection on.
pub const CLUSTER_CONFIG: &str = r#"
[limits]
user_messages_per_minute = 1000000
conversation_messages_per_minute = 1000000
devices_per_user = 50
new_connections_per_second = 10000
connections_per_ip = 1000000
typing_per_minute = 1000000
receipts_per_minute = 1000000
presence_subscriptions_per_minute = 1000000
reads_per_minute = 1000000
membership_changes_per_minute = 1000000
pings_per_minute = 1000000
conversations_created_per_hour = 1000000
[accounts]
registrations_per_ip_per_hour = 1000000
[testing]
fault_injection = true
[admin]
checksum_interval_ms = 1000
"#;

/// A client-side request timeout: above the server's 5 s request deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long one load client keeps retrying one send before it counts as failed.
pub const SEND_GIVE_UP: Duration = Duration::from_secs(60);

/// The admin token in a node's data dir (mode 0600).
pub fn read_admin_token(data: &Path) -> String {
    let path = data.join("admin-token");
    let t = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    }
    assert!(t.starts_with("chatnode-admin-v1."), "{t:?}");
    t.trim().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn free_tcp() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}
