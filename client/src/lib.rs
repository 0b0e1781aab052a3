//! A client of chatnode, shared by the `chatnode` CLI, chatbench, the jepsen harness, the
//! integration tests and `examples/chat.rs`:
//!
//! - [`http`]: one HTTP/1.1 request per connection (register, login, refresh, `/ready`, the
//!   `/admin/*` endpoints with the admin token) over hyper's client.
//! - [`ws`]: a WebSocket connection that sends frames, awaits replies by request id and keeps
//!   pushes aside ([`ws::WsClient`]), with the socket options chatbench's hot path needs.
//! - [`status`]: the typed `/admin/status` schema; the server builds its answer from the same
//!   structs, so the two cannot drift apart.

pub mod error;
pub mod http;
pub mod status;
pub mod ws;

pub use error::{Error, Result};
pub use http::{HttpClient, Response};
pub use status::{AdminStatus, GroupState, GroupStatus, NodeEntry, NodeReport, NodeStatus};
pub use ws::{WsClient, WsOptions};
