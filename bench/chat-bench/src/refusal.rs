//! The server's own limits refusing the load, and which of its flags lift them.
//!
//! A load test sends far more than one person would, all from this machine, so a chat-server
//! started with its default limits turns much of it away: `RATE_LIMITED` for messages sent too
//! fast, HTTP 429 for too many connections from one address, HTTP 503 once it is full. Those
//! refusals are failures like any other (the run did not do what was asked), but they measure
//! how the server was started, not what it can carry. So besides counting them among the errors,
//! the report names the flag to change, once per limit, with how often it refused.

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite;

use crate::client::BenchError;
use crate::limits::thousands;

/// A limit of the server that refused part of the load.
///
/// Serialised in snake case (`"rate_limited"`) as a key of the worker's counts and in the
/// report's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// An `error` message with code `RATE_LIMITED`: a connection sent more than
    /// `--rate-limit` allows, or one address made more failed joins than `--max-failed-joins`
    /// (both give the same code, so the advice names both flags).
    RateLimited,
    /// HTTP 429 on the WebSocket upgrade: `--max-connections-per-ip` connections from one
    /// address are already open.
    PerAddress,
    /// HTTP 503 on the WebSocket upgrade: the server holds `--max-connections` already.
    ServerFull,
}

impl Limit {
    /// The limit that caused `error`, if it is one of the refusals above.
    pub fn of(error: &BenchError) -> Option<Limit> {
        match error {
            BenchError::Refused { code, .. } if code == "RATE_LIMITED" => Some(Limit::RateLimited),
            BenchError::Handshake(tungstenite::Error::Http(response)) => {
                match response.status().as_u16() {
                    429 => Some(Limit::PerAddress),
                    503 => Some(Limit::ServerFull),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// How the server said no.
    fn refusal(self) -> &'static str {
        match self {
            Limit::RateLimited => "RATE_LIMITED",
            Limit::PerAddress => "HTTP 429 (too many connections from one address)",
            Limit::ServerFull => "HTTP 503 (server full)",
        }
    }

    /// What was refused, singular and plural.
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Limit::RateLimited => ("request", "requests"),
            Limit::PerAddress | Limit::ServerFull => ("WebSocket upgrade", "WebSocket upgrades"),
        }
    }

    /// The chat-server flags (see its README) that turn this limit off.
    pub fn flags(self) -> &'static str {
        match self {
            Limit::RateLimited => "--rate-limit 0 (and --max-failed-joins 0)",
            Limit::PerAddress => "--max-connections-per-ip 0",
            Limit::ServerFull => "--max-connections 0 (and keep it under the open-file limit)",
        }
    }

    /// One sentence for the report: how often the server refused, and how to start it so
    /// that it does not.
    pub fn advice(self, count: u64) -> String {
        let (one, many) = self.what();
        format!(
            "the server refused {} {} with {}: start it with {}",
            thousands(count),
            if count == 1 { one } else { many },
            self.refusal(),
            self.flags()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    /// A handshake refused with an HTTP status, as tungstenite reports it.
    fn http_refusal(status: u16) -> BenchError {
        let response = Response::builder()
            .status(status)
            .body(None)
            .expect("a valid status");
        BenchError::Handshake(tungstenite::Error::Http(Box::new(response)))
    }

    /// `RATE_LIMITED`, 429 and 503 are the server's limits; other refusals and failures
    /// (a full room, a forbidden origin, a timeout) are not, and get no advice about flags.
    #[test]
    fn only_the_three_limits_are_classified() {
        let rate_limited = BenchError::Refused {
            code: "RATE_LIMITED".to_string(),
            message: "Too many messages".to_string(),
        };
        assert_eq!(Limit::of(&rate_limited), Some(Limit::RateLimited));
        assert_eq!(Limit::of(&http_refusal(429)), Some(Limit::PerAddress));
        assert_eq!(Limit::of(&http_refusal(503)), Some(Limit::ServerFull));

        let room_full = BenchError::Refused {
            code: "ROOM_FULL".to_string(),
            message: "Room is full".to_string(),
        };
        assert_eq!(Limit::of(&room_full), None);
        assert_eq!(Limit::of(&http_refusal(403)), None);
        assert_eq!(Limit::of(&BenchError::Timeout("handshake")), None);
    }

    /// The advice gives the count and names the flag that lifts each limit.
    #[test]
    fn advice_names_the_flag_and_the_count() {
        assert_eq!(
            Limit::RateLimited.advice(5),
            "the server refused 5 requests with RATE_LIMITED: \
             start it with --rate-limit 0 (and --max-failed-joins 0)"
        );
        assert_eq!(
            Limit::PerAddress.advice(1),
            "the server refused 1 WebSocket upgrade with HTTP 429 (too many connections from \
             one address): start it with --max-connections-per-ip 0"
        );
        assert!(
            Limit::ServerFull
                .advice(1200)
                .starts_with("the server refused 1,200 WebSocket upgrades with HTTP 503")
        );
        assert!(Limit::ServerFull.advice(2).contains("--max-connections 0"));
    }
}
