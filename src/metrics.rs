//! Counters and gauges for `GET /metrics`, in the Prometheus text format.
//!
//! Each server owns its own registry (a [`PrometheusRecorder`] that is *not* installed as the
//! process-wide recorder), so several servers in one process, as in the tests, count separately.
//! Every metric is registered once, up front; the hot path only bumps an atomic.

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::ErrorCode;

/// The server's metrics, shared by the actor and the HTTP side behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    /// Renders the exposition text.
    handle: PrometheusHandle,
    /// WebSocket connections open now (`chat_connections`).
    pub connections: Gauge,
    /// Rooms that exist now (`chat_rooms`).
    pub rooms: Gauge,
    /// Chat messages accepted and relayed to their room (`chat_messages_relayed_total`).
    pub messages_relayed: Counter,
    /// Clients disconnected because their outbound queue was full
    /// (`chat_slow_consumers_disconnected_total`).
    pub slow_consumers: Counter,
    /// WebSocket upgrade requests refused, whatever the reason (`chat_handshakes_refused_total`).
    pub handshakes_refused: Counter,
    /// `error` messages sent, one counter per code, in the order of [`ErrorCode::ALL`]
    /// (`chat_errors_sent_total{code="…"}`).
    errors_sent: [Counter; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
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
        let errors_sent = ErrorCode::ALL.map(|code| {
            let key = Key::from_parts(errors_name, vec![Label::new("code", code.as_str())]);
            recorder.register_counter(&key, &metadata)
        });

        Metrics {
            connections: gauge("chat_connections", "WebSocket connections open now."),
            rooms: gauge("chat_rooms", "Rooms that exist now."),
            messages_relayed: counter(
                "chat_messages_relayed_total",
                "Chat messages accepted and relayed to their room.",
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
        }
    }

    /// Counts one `error` message sent with `code`.
    pub fn error_sent(&self, code: ErrorCode) {
        // `ErrorCode::ALL` lists the variants in declaration order, so the discriminant is the index.
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

    /// `ErrorCode::ALL` is in declaration order, which `error_sent` relies on.
    #[test]
    fn error_codes_index_their_counters() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, index);
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
