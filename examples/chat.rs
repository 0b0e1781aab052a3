//! A tiny chat client for the README tour, on the client library (`chatnode-client`).
//!
//! `chat --token T --device D` prints every frame pushed to this device.
//! `chat --token T --device D --to USER_ID --say TEXT` opens (or finds) the direct
//! conversation with USER_ID, sends TEXT, prints the ack, then keeps printing pushes.

use std::time::Duration;

use chatnode_client::{WsClient, WsOptions};
use clap::Parser;
use serde_json::json;

/// How long to wait for each reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one wait for a push lasts before waiting again.
const PUSH_POLL: Duration = Duration::from_secs(3600);

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:7070")]
    url: String,
    #[arg(long)]
    token: String,
    #[arg(long, default_value = "cli")]
    device: String,
    /// User id to open a direct conversation with.
    #[arg(long)]
    to: Option<String>,
    /// Text to send to `--to`.
    #[arg(long)]
    say: Option<String>,
}

/// Prints and forgets the pushes that arrived while waiting for a reply.
fn print_pushes(ws: &mut WsClient) {
    for p in ws.pushes.drain(..) {
        println!("{p}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = args
        .url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("--url {}: only ws:// URLs", args.url))?
        .trim_end_matches('/');
    let mut ws = WsClient::connect(addr, &WsOptions::default()).await?;
    let auth = ws
        .authenticate(&args.token, &args.device, REPLY_TIMEOUT)
        .await?;
    println!("{auth}");
    if let Some(to) = &args.to {
        let conv = ws
            .request(
                json!({"type":"create_conversation","kind":"direct","members":[to]}),
                REPLY_TIMEOUT,
            )
            .await?;
        print_pushes(&mut ws);
        println!("{conv}");
        if let (Some(text), Some(cid)) =
            (&args.say, conv["conversation"]["conversation_id"].as_str())
        {
            let cmid = ulid::Ulid::new().to_string();
            let ack = ws
                .request(
                    json!({"type":"send","conversation_id":cid,"client_msg_id":cmid,"body":text}),
                    REPLY_TIMEOUT,
                )
                .await?;
            print_pushes(&mut ws);
            println!("{ack}");
        }
    }
    loop {
        match ws.recv(PUSH_POLL).await {
            Ok(Some(frame)) => println!("{frame}"),
            Ok(None) => {}
            Err(chatnode_client::Error::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
