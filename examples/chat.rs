//! A tiny chat client for the README tour.
//!
//! `chat --token T --device D` prints every frame pushed to this device.
//! `chat --token T --device D --to USER_ID --say TEXT` opens (or finds) the direct
//! conversation with USER_ID, sends TEXT, prints the ack, then keeps printing pushes.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn request(ws: &mut Ws, frame: Value) -> anyhow::Result<Value> {
    let id = frame["id"].clone();
    ws.send(Message::Text(frame.to_string().into())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["id"] == id {
                return Ok(v);
            }
            println!("{v}");
        }
    }
    anyhow::bail!("connection closed")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/v1/ws", args.url)).await?;
    let auth = request(
        &mut ws,
        json!({"type":"auth","id":0,"token":args.token,"device_id":args.device}),
    )
    .await?;
    println!("{auth}");
    if let Some(to) = &args.to {
        let conv = request(
            &mut ws,
            json!({"type":"create_conversation","id":1,"kind":"direct","members":[to]}),
        )
        .await?;
        println!("{conv}");
        if let (Some(text), Some(cid)) =
            (&args.say, conv["conversation"]["conversation_id"].as_str())
        {
            let cmid = ulid::Ulid::new().to_string();
            let ack = request(
                &mut ws,
                json!({"type":"send","id":2,"conversation_id":cid,"client_msg_id":cmid,"body":text}),
            )
            .await?;
            println!("{ack}");
        }
    }
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            println!("{t}");
        }
    }
    Ok(())
}
