//! The traits the embedding application implements.

use futures_util::future::BoxFuture;

use super::frame::{FrameHeader, JoinRequest};
use super::NodeId;

/// Serves validated calls. By the time `handle` runs, the transport has checked that the
/// caller holds a certificate of our cluster naming `header.from`, that `header.cluster_id`
/// is ours and that `header.to` is this node.
pub(crate) trait Handler<Req, Resp>: Send + Sync + 'static {
    fn handle(&self, header: FrameHeader, body: Req) -> BoxFuture<'static, Resp>;
}

/// Decides whether a joiner (whose token secret already matched) becomes a member.
pub(crate) trait JoinAdmitter: Send + Sync + 'static {
    /// Returns the joiner's node id and opaque bytes for the joiner's application (e.g. the
    /// current membership), or a reason for refusing.
    fn admit(&self, req: JoinRequest) -> BoxFuture<'static, Result<(NodeId, Vec<u8>), String>>;
}
