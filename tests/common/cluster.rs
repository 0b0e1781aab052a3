//! A cluster of real `chatnode` processes on 127.0.0.1 for the multi-process tests, one file
//! per concern:
//!
//! - [`config`]: the cluster's config file, time limits, free addresses, secret files.
//! - [`process`]: spawning, joining, killing and restarting nodes ([`TestCluster`]).
//! - [`admin`]: HTTP through the client library — accounts and the admin endpoints (status,
//!   faults, leave).
//! - [`view`]: one node's typed `/admin/status`, reshaped for the checks.
//! - [`wait`]: waiting for convergence, for no lingering replicas, for identical replicas.
//! - [`ws`]: a WebSocket connection that never panics ([`Conn`]).
//! - [`load`]: retrying clients sending continuously, and the check that no acknowledged
//!   message was lost or duplicated.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod config;
pub mod load;
pub mod process;
pub mod view;
pub mod wait;
pub mod ws;

pub use admin::*;
pub use config::*;
pub use load::*;
pub use process::*;
pub use view::*;
pub use ws::*;
