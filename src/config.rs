//! Settings a server runs with, each declared once: its flag, its environment variable, its
//! default and its help text are the attributes and the doc comment of one field of
//! [`Config`]. The binary parses them from the command line (`chat-server --help` prints this
//! text); [`Config::default`] takes the same defaults, so tests and the binary cannot disagree.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::store::redis::Target;
use tokio_rustls::rustls::ServerConfig;

/// What an operator can tune, from the command line or `CHAT_…` environment variables.
///
/// For every count limit below, `0` turns the limit off.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// How long a member shows as typing after its last `typing`, e.g. 5s or 400ms. When it
    /// runs out the peer gets stop_typing, so a closed laptop does not leave "… is typing" up
    /// forever.
    #[arg(long, env = "CHAT_TYPING_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = period)]
    pub typing_timeout: Duration,

    /// How often the server pings each client, e.g. 20s. A client from which nothing at all
    /// arrives (not even a pong) for two intervals is disconnected.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", value_name = "DURATION", default_value = "20s", value_parser = period)]
    pub heartbeat_interval: Duration,

    /// How long a room member whose connection dropped keeps its seat for a new connection to
    /// resume the session, e.g. 30s: long enough for a phone to switch networks. The peer sees
    /// peer_disconnected at once and peer_left only when this runs out. 0s turns resuming off
    /// (protocol v1: peer_left at once).
    #[arg(long, env = "CHAT_RESUME_GRACE", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub resume_grace: Duration,

    /// Messages per second one connection may send on average, whatever their type; more are
    /// refused with RATE_LIMITED, and a client that keeps sending at over twice this rate is
    /// disconnected (close code 1008). 0 turns rate limiting off. No typist sends 20 a second
    /// for long.
    #[arg(long, env = "CHAT_RATE_LIMIT", value_name = "N", default_value = "20")]
    pub rate_limit: u32,

    /// How many messages one connection may send at once before --rate-limit applies: room for
    /// a script that pastes a hundred lines. Kept under the 128 messages queued for a reader, so
    /// a peer's burst alone cannot get a reader dropped as a slow consumer.
    #[arg(long, env = "CHAT_RATE_BURST", value_name = "N", default_value = "120")]
    pub rate_burst: u32,

    /// Most WebSocket connections at once; further upgrades get HTTP 503. Keep it under the
    /// process's open-file limit, so that the server refuses politely before `accept` starts
    /// failing. 0 turns the cap off.
    #[arg(
        long,
        env = "CHAT_MAX_CONNECTIONS",
        value_name = "N",
        default_value = "10000"
    )]
    pub max_connections: usize,

    /// Most WebSocket connections at once from one IPv4 address or IPv6 /64; further upgrades
    /// get HTTP 429. Enough for a household or an office behind one address with many tabs
    /// open. Behind a reverse proxy every client has the proxy's address: use 0 there. 0 turns
    /// the cap off.
    #[arg(
        long,
        env = "CHAT_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value = "64"
    )]
    pub max_connections_per_ip: usize,

    /// Failed join_room attempts (no such room, room full, name taken) allowed per minute, per
    /// connection and per address; more get RATE_LIMITED. At 10 a minute, trying every code
    /// would take 170 years per address. 0 turns the limit off.
    #[arg(
        long,
        env = "CHAT_MAX_FAILED_JOINS",
        value_name = "N",
        default_value = "10"
    )]
    pub max_failed_joins: u32,

    /// The most memory all rooms together keep of their conversations (history for joiners,
    /// messages kept for resumes), e.g. 128MiB or 1GiB; past it the oldest messages of the
    /// largest rooms are shed. Each room also has its own bound (1,000 messages, 4 MiB). 0 turns
    /// this bound off.
    #[arg(long, env = "CHAT_MAX_STORED_BYTES", value_name = "SIZE", default_value = "128MiB", value_parser = size)]
    pub max_stored_bytes: usize,

    /// Time a new connection has to send its HTTP request and complete the WebSocket handshake;
    /// slower connections (slow-loris) are dropped. Plain HTTP connections are closed after it
    /// too.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = period)]
    pub handshake_timeout: Duration,

    /// Time a WebSocket client has to set a valid username; an unnamed connection is then closed
    /// with code 1008, so idle sockets cannot be hoarded. 0s turns this limit off.
    #[arg(long, env = "CHAT_USERNAME_TIMEOUT", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub username_timeout: Duration,

    /// An origin (`scheme://host[:port]`) whose web pages may open a WebSocket, besides the
    /// server's own; repeat it for several, or give * to allow any. Clients that send no Origin
    /// header (programs, not browsers) are always allowed; other origins get HTTP 403. In the
    /// environment, separate origins with commas.
    #[arg(
        long = "allowed-origin",
        env = "CHAT_ALLOWED_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Vec<String>,

    /// Serve TLS (wss:// and https://) with this certificate chain, PEM, the server's own
    /// certificate first. Needs --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Share rooms with other nodes through the Redis server at this URL, such as
    /// redis://127.0.0.1:6379/, or through a Redis Cluster: several seed URLs, comma-separated,
    /// or one URL whose server is a cluster node. Rooms, messages and sessions live in Redis,
    /// and the nodes tell each other what happens in a room through Redis pub/sub
    /// (docs/scaling.md). Without it, everything is kept in this process's memory.
    #[arg(long, env = "CHAT_REDIS_URL", value_name = "URL[,URL...]", value_parser = Target::parse)]
    pub redis: Option<Target>,

    /// The TLS settings loaded from `tls_cert` and `tls_key` ([`crate::tls::server_config`]):
    /// when set, every connection is TLS, serving `wss://` and `https://` on the one port.
    #[arg(skip)]
    pub tls: Option<Arc<ServerConfig>>,

    /// How many encoded messages may wait for one client's socket: far more than a
    /// conversation ever has in flight. A client that falls this far behind is disconnected as
    /// a slow consumer instead of holding memory or the actor. Not a flag: tests set it.
    #[arg(skip = Config::OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
}

impl Config {
    /// [`Config::outbound_queue`] unless a test sets it.
    pub const OUTBOUND_QUEUE: usize = 128;

    /// These settings with every count limit off: for benchmarks and for tests that send far
    /// more than a person would.
    pub fn unlimited(self) -> Self {
        Config {
            rate_limit: 0,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_failed_joins: 0,
            ..self
        }
    }
}

impl Default for Config {
    /// The settings of a server started without any flag: the flags' own defaults, read from
    /// their declarations above. The environment is ignored here, so that a `CHAT_…` variable
    /// set where tests run cannot change them.
    fn default() -> Self {
        let command = Defaults::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["chat-server"])
            .expect("every setting has a default that parses");
        Config::from_arg_matches(&matches).expect("the defaults make a Config")
    }
}

/// A command line of the settings alone, to read their defaults.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

/// Parses a duration that is a period or a timeout, such as `400ms`, `5s` or `1m`: zero is
/// refused, since a period of zero cannot be kept.
fn period(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// Parses an amount of memory: a number of bytes, or a number followed by KiB, MiB or GiB.
fn size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 128MiB or 1GiB"))?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the flags' own, and the environment does not change them.
    #[test]
    fn the_defaults_are_the_flags() {
        let config = Config::default();
        assert_eq!(config.typing_timeout, Duration::from_secs(5));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(config.resume_grace, Duration::from_secs(30));
        assert_eq!((config.rate_limit, config.rate_burst), (20, 120));
        assert_eq!(
            (config.max_connections, config.max_connections_per_ip),
            (10_000, 64)
        );
        assert_eq!(config.max_failed_joins, 10);
        assert_eq!(config.max_stored_bytes, 128 * 1024 * 1024);
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.username_timeout, Duration::from_secs(60));
        assert_eq!(config.outbound_queue, Config::OUTBOUND_QUEUE);
        assert!(config.allowed_origins.is_empty() && config.tls.is_none());
        assert!(config.redis.is_none());
    }

    /// Sizes take binary units; anything else is refused with a reason.
    #[test]
    fn sizes_read_binary_units() {
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("64KiB"), Ok(64 * 1024));
        assert_eq!(size("128MiB"), Ok(128 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert!(size("lots").is_err());
        assert!(size("12MB").is_err());
    }
}
