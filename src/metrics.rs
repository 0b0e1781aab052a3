//! Prometheus metrics of a node (`GET /metrics`).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    pub(crate) code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TypeLabel {
    pub(crate) r#type: &'static str,
}

/// All metrics of a node. Cheap to update from any task.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) sends: Counter,
    pub(crate) acks: Counter,
    pub(crate) errors: Family<CodeLabel, Counter>,
    pub(crate) requests: Family<TypeLabel, Counter>,
    pub(crate) connections: Gauge<i64, AtomicI64>,
    pub(crate) pushes: Counter,
    pub(crate) slow_consumer_disconnects: Counter,
    pub(crate) synced_writes: Counter,
    pub(crate) ack_latency_seconds: Histogram,
    // ratelimit
    /// Typing and receipt pushes dropped because the connection's queue was full.
    pub(crate) ephemeral_pushes_dropped: Counter,
    // delivery
    /// Push batches dropped at delivery's full inbox (each group is refilled after).
    pub(crate) delivery_inbox_overflows: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("chatnode");
        let sends = Counter::default();
        let acks = Counter::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let requests = Family::<TypeLabel, Counter>::default();
        let connections = Gauge::<i64, AtomicI64>::default();
        let pushes = Counter::default();
        let slow_consumer_disconnects = Counter::default();
        let synced_writes = Counter::default();
        // 100 µs .. ~3.3 s, doubling.
        let ack_latency_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        registry.register("sends", "Send requests received", sends.clone());
        registry.register("acks", "Sends acknowledged (committed)", acks.clone());
        registry.register("errors", "Error replies by code", errors.clone());
        registry.register("requests", "Client frames by type", requests.clone());
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register("pushes", "Frames pushed to connections", pushes.clone());
        registry.register(
            "slow_consumer_disconnects",
            "Connections dropped because their send queue was full",
            slow_consumer_disconnects.clone(),
        );
        registry.register(
            "synced_writes",
            "Synced RocksDB writes of the log writer (group commits)",
            synced_writes.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "Time from receiving a send to its ack",
            ack_latency_seconds.clone(),
        );
        // ratelimit
        let ephemeral_pushes_dropped = Counter::default();
        registry.register(
            "ephemeral_pushes_dropped",
            "Typing and receipt pushes dropped because the connection's send queue was full",
            ephemeral_pushes_dropped.clone(),
        );
        let delivery_inbox_overflows = Counter::default();
        registry.register(
            "delivery_inbox_overflows",
            "Push batches dropped at delivery's full inbox (their groups are re-read after)",
            delivery_inbox_overflows.clone(),
        );
        Metrics {
            registry,
            sends,
            acks,
            errors,
            requests,
            connections,
            pushes,
            slow_consumer_disconnects,
            synced_writes,
            ack_latency_seconds,
            ephemeral_pushes_dropped,
            delivery_inbox_overflows,
        }
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Renders the text format; `synced_writes_now` is the log writer's current count.
    pub(crate) fn render(&self, synced_writes_now: u64) -> String {
        let seen = self.synced_writes.get();
        if synced_writes_now > seen {
            self.synced_writes.inc_by(synced_writes_now - seen);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}
