//! Counters and gauges for `GET /metrics`, in the Prometheus text format.
//!
//! Each server owns its own registry (a [`PrometheusRecorder`](metrics_exporter_prometheus::PrometheusRecorder) that is *not* installed as the
//! process-wide recorder), so several servers in one process, as in the tests, count separately.
//! Every metric is registered once, up front; the hot path only bumps an atomic.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use strum::IntoEnumIterator;

use crate::error::ErrorCode;

/// Handshakes refused by each limit; the label is the flag that sets the limit.
#[derive(Debug)]
pub struct RefusedByLimit {
    /// `--max-connections`: the server was full (HTTP 503).
    pub max_connections: Counter,
    /// `--max-connections-per-ip`: the address had its share (HTTP 429).
    pub max_connections_per_ip: Counter,
    /// `--allowed-origin`: a web page from another site (HTTP 403).
    pub allowed_origin: Counter,
    /// `--handshake-timeout`: the request or handshake took too long (connection dropped).
    pub handshake_timeout: Counter,
}

/// The server's metrics, shared by the actor and the HTTP side behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    /// Renders the exposition text.
    handle: PrometheusHandle,
    /// Where metrics known only at run time are registered (one per Redis Cluster shard).
    recorder: PrometheusRecorder,
    /// WebSocket connections open now (`chat_connections`).
    pub connections: Gauge,
    /// Rooms that exist now (`chat_rooms`).
    pub rooms: Gauge,
    /// Chat messages accepted and relayed to their room (`chat_messages_relayed_total`).
    pub messages_relayed: Counter,
    /// What the rooms keep of their conversations, in bytes, as `--max-stored-bytes` counts it
    /// (`chat_stored_bytes`).
    pub stored_bytes: Gauge,
    /// Stored messages dropped to keep under `--max-stored-bytes`
    /// (`chat_messages_shed_total`).
    pub messages_shed: Counter,
    /// Clients disconnected because their outbound queue was full
    /// (`chat_slow_consumers_disconnected_total`).
    pub slow_consumers: Counter,
    /// WebSocket upgrade requests refused, whatever the reason (`chat_handshakes_refused_total`).
    pub handshakes_refused: Counter,
    /// Of those, the ones refused by a limit, one counter per limit
    /// (`chat_handshakes_refused_by_limit_total{limit="…"}`). Kept apart from the total so that
    /// the total's name and meaning stay as they were.
    pub refused_by_limit: RefusedByLimit,
    /// Clients disconnected for sending far over the rate limit
    /// (`chat_flooders_disconnected_total`).
    pub flooders_disconnected: Counter,
    /// Clients closed for not choosing a username in time (`chat_username_timeouts_total`).
    pub username_timeouts: Counter,
    /// `error` messages sent, one counter per code, in the order the codes are declared in
    /// (`chat_errors_sent_total{code="…"}`).
    errors_sent: Vec<Counter>,
    /// With `--redis`: how the node's link to Redis fares.
    pub redis: RedisMetrics,
}

/// With `--redis`: the node's link to Redis, its pub/sub, and its liveness.
#[derive(Debug)]
pub struct RedisMetrics {
    /// How long each step took in Redis, from sending it to its answer
    /// (`chat_redis_step_seconds`, a histogram).
    pub step_seconds: Histogram,
    /// Steps that failed: Redis unreachable, an error, or no answer in time
    /// (`chat_redis_errors_total`).
    pub errors: Counter,
    /// Room events received over pub/sub (`chat_redis_pubsub_events_total`).
    pub pubsub_events: Counter,
    /// Gaps in a room's events that this node noticed and repaired from the stored room
    /// (`chat_redis_gaps_repaired_total`).
    pub gaps_repaired: Counter,
    /// 1 while this node's link to Redis is up (`chat_redis_up`).
    pub up: Gauge,
    /// 1 while this node's heartbeat is recorded in Redis, so that the other nodes count it as
    /// alive (`chat_redis_node_live`).
    pub node_live: Gauge,
    /// On a Redis Cluster: the masters this node listens to with sharded pub/sub
    /// (`chat_redis_shard_connections`).
    pub shard_connections: Gauge,
    /// On a Redis Cluster: channels not listened to anywhere yet, their shard out of reach or
    /// their slot moving (`chat_redis_homeless_channels`).
    pub homeless_channels: Gauge,
    /// On a Redis Cluster: rooms listened to again on another shard after their slot moved,
    /// and repaired (`chat_redis_resubscribed_total`).
    pub resubscribed: Counter,
    /// On a Redis Cluster: a master's pub/sub connection that left a ping unanswered, and was
    /// given up (`chat_redis_probe_timeouts_total`).
    pub probe_timeouts: Counter,
    /// Batches of chats, read receipts and typing sent to Redis together
    /// (`chat_redis_batches_total`; see `store/redis/batch.rs`).
    pub batches: Counter,
    /// The steps those batches carried (`chat_redis_batched_steps_total`): divided by the
    /// batches, how many went together on average.
    pub batched_steps: Counter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("chat_redis_step_seconds".into()),
                &[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
                ],
            )
            .expect("the buckets are not empty")
            .build_recorder();
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.register_counter(&Key::from_static_name(name), &metadata)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(name.into(), None, help.into());
            recorder.register_gauge(&Key::from_static_name(name), &metadata)
        };
        let errors_name = "chat_errors_sent_total";
        recorder.describe_counter(
            errors_name.into(),
            None,
            "Error messages sent to clients, by error code.".into(),
        );
        let errors_sent = ErrorCode::iter()
            .map(|code| {
                let key = Key::from_parts(errors_name, vec![Label::new("code", code.as_str())]);
                recorder.register_counter(&key, &metadata)
            })
            .collect();

        let by_limit_name = "chat_handshakes_refused_by_limit_total";
        recorder.describe_counter(
            by_limit_name.into(),
            None,
            "Connections refused, or dropped before the handshake, by a limit: the flag that sets it."
                .into(),
        );
        let by_limit = |limit: &'static str| {
            let key = Key::from_parts(by_limit_name, vec![Label::new("limit", limit)]);
            recorder.register_counter(&key, &metadata)
        };
        let refused_by_limit = RefusedByLimit {
            max_connections: by_limit("max_connections"),
            max_connections_per_ip: by_limit("max_connections_per_ip"),
            allowed_origin: by_limit("allowed_origin"),
            handshake_timeout: by_limit("handshake_timeout"),
        };

        let step_name = "chat_redis_step_seconds";
        recorder.describe_histogram(
            step_name.into(),
            Some(metrics::Unit::Seconds),
            "With --redis: how long each step took in Redis, from sending it to its answer.".into(),
        );
        let redis = RedisMetrics {
            step_seconds: recorder.register_histogram(&Key::from_static_name(step_name), &metadata),
            errors: counter(
                "chat_redis_errors_total",
                "With --redis: steps that failed (Redis unreachable, an error, or no answer in time).",
            ),
            pubsub_events: counter(
                "chat_redis_pubsub_events_total",
                "With --redis: room events received over pub/sub.",
            ),
            gaps_repaired: counter(
                "chat_redis_gaps_repaired_total",
                "With --redis: gaps in a room's events noticed and repaired from the stored room.",
            ),
            up: gauge(
                "chat_redis_up",
                "With --redis: 1 while the link to Redis is up.",
            ),
            node_live: gauge(
                "chat_redis_node_live",
                "With --redis: 1 while this node's heartbeat is recorded, so others count it alive.",
            ),
            shard_connections: gauge(
                "chat_redis_shard_connections",
                "On a Redis Cluster: the masters this node listens to with sharded pub/sub.",
            ),
            homeless_channels: gauge(
                "chat_redis_homeless_channels",
                "On a Redis Cluster: channels not listened to anywhere yet (shard away, slot moving).",
            ),
            resubscribed: counter(
                "chat_redis_resubscribed_total",
                "On a Redis Cluster: rooms listened to again on another shard, and repaired.",
            ),
            probe_timeouts: counter(
                "chat_redis_probe_timeouts_total",
                "On a Redis Cluster: a master's pub/sub connection that left a ping unanswered.",
            ),
            batches: counter(
                "chat_redis_batches_total",
                "With --redis: batches of chats, read receipts and typing sent to Redis together.",
            ),
            batched_steps: counter(
                "chat_redis_batched_steps_total",
                "With --redis: the steps those batches carried.",
            ),
        };

        Metrics {
            redis,
            refused_by_limit,
            flooders_disconnected: counter(
                "chat_flooders_disconnected_total",
                "Clients disconnected for sending far over the rate limit.",
            ),
            username_timeouts: counter(
                "chat_username_timeouts_total",
                "Clients closed for not choosing a username in time.",
            ),
            connections: gauge("chat_connections", "WebSocket connections open now."),
            rooms: gauge("chat_rooms", "Rooms that exist now."),
            messages_relayed: counter(
                "chat_messages_relayed_total",
                "Chat messages accepted and relayed to their room.",
            ),
            stored_bytes: gauge(
                "chat_stored_bytes",
                "Bytes the rooms keep of their conversations, as --max-stored-bytes counts them.",
            ),
            messages_shed: counter(
                "chat_messages_shed_total",
                "Stored messages dropped to keep under --max-stored-bytes, largest rooms first.",
            ),
            slow_consumers: counter(
                "chat_slow_consumers_disconnected_total",
                "Clients disconnected because they read too slowly.",
            ),
            handshakes_refused: counter(
                "chat_handshakes_refused_total",
                "WebSocket upgrade requests refused.",
            ),
            errors_sent,
            handle: recorder.handle(),
            recorder,
        }
    }

    /// On a Redis Cluster: 1 while the master `shard` (its address) answers this node, 0 while
    /// it does not (`chat_redis_shard_up{shard="…"}`). Registered the first time it is asked
    /// for; the same gauge after that.
    pub fn shard_up(&self, shard: &str) -> Gauge {
        const NAME: &str = "chat_redis_shard_up";
        self.recorder.describe_gauge(
            NAME.into(),
            None,
            "On a Redis Cluster: 1 while this master answers the node, 0 while it does not.".into(),
        );
        let key = Key::from_parts(NAME, vec![Label::new("shard", shard.to_string())]);
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        self.recorder.register_gauge(&key, &metadata)
    }

    /// Counts one `error` message sent with `code`.
    pub fn error_sent(&self, code: ErrorCode) {
        // `ErrorCode::iter` yields the codes in the order they are declared, which is also the
        // order of their discriminants (0, 1, 2, …): a code's discriminant is its counter's index.
        self.errors_sent[code as usize].increment(1);
    }

    /// The current values in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error code is counted under its own label: one `error_sent` of every code shows a 1
    /// on each code's line, and no line shows more.
    #[test]
    fn every_error_code_has_its_own_counter() {
        let metrics = Metrics::new();
        for code in ErrorCode::iter() {
            metrics.error_sent(code);
        }
        let text = metrics.render();
        for code in ErrorCode::iter() {
            let line = format!(r#"chat_errors_sent_total{{code="{code}"}} 1"#);
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// Every metric appears in the exposition with its labels once it moves.
    #[test]
    fn render_shows_every_metric() {
        let metrics = Metrics::new();
        metrics.connections.set(2.0);
        metrics.messages_relayed.increment(3);
        metrics.error_sent(ErrorCode::RoomFull);
        let text = metrics.render();
        assert!(text.contains("chat_connections 2"), "{text}");
        assert!(text.contains("chat_messages_relayed_total 3"), "{text}");
        assert!(
            text.contains(r#"chat_errors_sent_total{code="ROOM_FULL"} 1"#),
            "{text}"
        );
        assert!(text.contains("# HELP chat_rooms"), "{text}");
    }
}
