//! Crash test with the real binary: acked messages survive SIGKILL right after the ack.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ROUNDS: usize = 3;
const SENDS_PER_ROUND: usize = 40;

fn spawn(dir: &Path, config: &Path, addr: SocketAddr) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_chatnode"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--peer-listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chatnode"),
    )
}

async fn wait_ready(addr: SocketAddr) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, _) = http(addr, "GET", "/ready", "").await;
            if status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chatnode at {addr} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chatnode.toml");
    std::fs::write(
        &config,
        "shards = 4\n[limits]\nuser_messages_per_minute = 100000\nconversation_messages_per_minute = 100000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let mut child = spawn(&data, &config, addr);
    wait_ready(addr).await;
    let (_alice, at) = register(addr, "alice").await;
    let (bob, bt) = register(addr, "bob").await;
    let mut a = Client::connect(addr, &at, "a").await;
    let conv = a.create_direct(&bob).await;

    let mut acks: Vec<Value> = Vec::new();
    for round in 0..ROUNDS {
        // Pipelined sends: all in flight at once, then SIGKILL right after the last ack.
        for i in 0..SENDS_PER_ROUND {
            let cmid = format!("r{round}-{i}");
            a.send_text(json!({"type":"send","id":cmid,"conversation_id":conv,"client_msg_id":cmid,"body":format!("round {round} message {i}")}).to_string()).await;
        }
        for i in 0..SENDS_PER_ROUND {
            let ack = a.reply_to(json!(format!("r{round}-{i}"))).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            acks.push(ack);
        }
        child.0.kill().expect("SIGKILL");
        child.0.wait().unwrap();

        child = spawn(&data, &config, addr);
        wait_ready(addr).await;
        // Tokens stay valid across restarts (the signing key is in the data dir).
        a = Client::connect(addr, &at, "a").await;
        let mut b = Client::connect(addr, &bt, "b").await;

        // Every acked message is there, at its acked seq.
        let expected = acks.len() as u64;
        let s = b.request(json!({"type":"sync","conversations":{}})).await;
        let entry = &s["conversations"][0];
        assert_eq!(
            entry["last_seq"].as_u64(),
            Some(expected),
            "round {round}: {entry}"
        );
        let stored = b.history_all(&conv).await;
        assert_eq!(stored.len() as u64, expected);
        for ack in &acks {
            let m = stored
                .iter()
                .find(|m| m["seq"] == ack["seq"])
                .expect("acked seq present");
            assert_eq!(m["client_msg_id"], ack["client_msg_id"]);
            assert_eq!(m["msg_id"], ack["msg_id"]);
        }
        // A retry of an earlier client_msg_id returns its original ack.
        let first = &acks[round * SENDS_PER_ROUND];
        let retry = a
            .send_msg(&conv, first["client_msg_id"].as_str().unwrap(), "retry")
            .await;
        for f in ["seq", "msg_id", "ts"] {
            assert_eq!(retry[f], first[f], "retry after restart changed {f}");
        }
    }
    // The next send continues the seq with no gap.
    let next = a.send_msg(&conv, "after", "the end").await;
    assert_eq!(next["seq"].as_u64(), Some(acks.len() as u64 + 1));
    drop(child);
}
