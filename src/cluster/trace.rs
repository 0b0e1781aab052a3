//! The trace id of the client request being served, carried across nodes in every forwarded
//! frame's header so that one request's log lines share one `trace_id` on every node.

use std::future::Future;

tokio::task_local! {
    static TRACE_ID: String;
}

/// Runs `fut` with `trace_id` as the current trace id.
pub(crate) fn scope<F: Future>(trace_id: String, fut: F) -> impl Future<Output = F::Output> {
    TRACE_ID.scope(trace_id, fut)
}

/// Serves a request from another node under its trace id (and in a span naming it).
pub(crate) fn remote_scope<F: Future>(trace_id: String, fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let span = if trace_id.is_empty() {
        tracing::Span::none()
    } else {
        tracing::info_span!("peer_request", trace_id = %trace_id)
    };
    TRACE_ID.scope(trace_id, fut.instrument(span))
}

/// The current request's trace id, or "" outside of a request.
pub(crate) fn current() -> String {
    TRACE_ID.try_with(|t| t.clone()).unwrap_or_default()
}
