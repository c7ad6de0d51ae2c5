//! Settings a server runs with.

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::ServerConfig;

/// What an operator can tune. The binary fills it from the command line and `CHAT_…`
/// environment variables; tests build it directly.
///
/// For every count limit below, `0` turns the limit off.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a member counts as typing after its last `typing` message. When it runs out the
    /// peer gets `stop_typing`, so a closed laptop does not leave "… is typing" up forever.
    pub typing_timeout: Duration,
    /// How often the server pings each client. A client that sends nothing at all (not even a
    /// pong) for two intervals is disconnected.
    pub heartbeat_interval: Duration,
    /// How many encoded messages may wait for one client's socket. A client that falls this far
    /// behind is disconnected as a slow consumer instead of holding memory or the actor.
    pub outbound_queue: usize,
    /// How long a room member whose connection dropped keeps its seat, waiting for a new
    /// connection to `resume` its session (`--resume-grace`). The peer gets `peer_disconnected`
    /// at once and `peer_left` only when this runs out. Zero turns resuming off: the server then
    /// behaves exactly as protocol v1 says.
    pub resume_grace: Duration,
    /// Messages per second one connection may send, on average (`--rate-limit`). Every message
    /// counts, whatever its type: a flood of `set_username` or of bad JSON costs the actor as
    /// much as a flood of chat. Over it, a message is refused with `RATE_LIMITED`.
    pub rate_limit: u32,
    /// How many messages one connection may send at once before [`Config::rate_limit`] applies
    /// (`--rate-burst`): the size of its token bucket.
    pub rate_burst: u32,
    /// How many WebSocket connections the server holds at once (`--max-connections`). Further
    /// upgrades get HTTP 503. Kept under the process's open-file limit, so that the server
    /// refuses politely before `accept` starts failing for lack of file descriptors.
    pub max_connections: usize,
    /// How many WebSocket connections one address (an IPv4 address or an IPv6 /64) holds at
    /// once (`--max-connections-per-ip`). Further upgrades from it get HTTP 429.
    pub max_connections_per_ip: usize,
    /// How many failed `join_room` attempts one connection, and separately one address, may
    /// make per minute (`--max-failed-joins`), so that room codes cannot be guessed at speed.
    pub max_failed_joins: u32,
    /// How long a new TCP connection has to complete its HTTP request and, for `/ws`, the
    /// WebSocket handshake (`--handshake-timeout`). Slower ones (slow-loris) are dropped.
    pub handshake_timeout: Duration,
    /// How long a WebSocket client has to set a valid username (`--username-timeout`). A
    /// connection that never names itself is closed with 1008, so idle sockets cannot be
    /// hoarded.
    pub username_timeout: Duration,
    /// The most bytes all rooms together keep of their conversations (`--max-stored-bytes`):
    /// history for joiners and messages kept for resumes. Past it the oldest messages of the
    /// largest rooms are shed. Each room also has its own bound
    /// ([`crate::room::Room::MAX_STORED_BYTES`]). `0` turns this one off.
    pub max_stored_bytes: usize,
    /// Origins, besides the server's own, whose pages may open a WebSocket (`--allowed-origin`);
    /// `*` allows any. Clients that send no `Origin` (programs, not browsers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// TLS settings (`--tls-cert`, `--tls-key`, loaded by [`crate::tls::server_config`]): when
    /// set, every connection is TLS, serving `wss://` and `https://` on the one port.
    pub tls: Option<Arc<ServerConfig>>,
}

impl Config {
    /// Default for [`Config::typing_timeout`].
    pub const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`Config::heartbeat_interval`].
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
    /// Default for [`Config::outbound_queue`]: far more than a conversation ever has in flight.
    pub const DEFAULT_OUTBOUND_QUEUE: usize = 128;
    /// Default for [`Config::resume_grace`]: long enough for a phone to switch networks or a
    /// laptop lid to be opened again.
    pub const DEFAULT_RESUME_GRACE: Duration = Duration::from_secs(30);
    /// Default for [`Config::rate_limit`]: no typist sends 20 messages a second for long.
    pub const DEFAULT_RATE_LIMIT: u32 = 20;
    /// Default for [`Config::rate_burst`]: room for a script that pastes a hundred lines, or a
    /// test that fills a room's history, at once, while a flood is still held to
    /// [`Config::DEFAULT_RATE_LIMIT`] after it. Kept under [`Config::DEFAULT_OUTBOUND_QUEUE`], so
    /// a peer's burst alone cannot fill a reader's queue and get the reader dropped as a slow
    /// consumer.
    pub const DEFAULT_RATE_BURST: u32 = 120;
    /// Default for [`Config::max_connections`]: half of the 20,000 open files this server is
    /// deployed with, leaving room for connections still in their HTTP handshake.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// Default for [`Config::max_connections_per_ip`]: enough for a household or an office
    /// behind one NAT address with many tabs open, far too few to exhaust the server.
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
    /// Default for [`Config::max_failed_joins`]: a person mistyping a code fails a few times; at
    /// 10 a minute, trying every code would take 170 years per address.
    pub const DEFAULT_MAX_FAILED_JOINS: u32 = 10;
    /// Default for [`Config::max_stored_bytes`]: 128 MiB, an eighth of a small 1 GiB machine.
    /// An ordinary conversation keeps about 150 bytes a message, so this holds the last
    /// hundred messages of 8,000 busy rooms before anything is shed.
    pub const DEFAULT_MAX_STORED_BYTES: usize = 128 * 1024 * 1024;
    /// Default for [`Config::handshake_timeout`].
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`Config::username_timeout`]: generous for a person typing a name.
    pub const DEFAULT_USERNAME_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for Config {
    fn default() -> Self {
        Config {
            typing_timeout: Config::DEFAULT_TYPING_TIMEOUT,
            heartbeat_interval: Config::DEFAULT_HEARTBEAT_INTERVAL,
            outbound_queue: Config::DEFAULT_OUTBOUND_QUEUE,
            resume_grace: Config::DEFAULT_RESUME_GRACE,
            rate_limit: Config::DEFAULT_RATE_LIMIT,
            rate_burst: Config::DEFAULT_RATE_BURST,
            max_connections: Config::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: Config::DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_failed_joins: Config::DEFAULT_MAX_FAILED_JOINS,
            handshake_timeout: Config::DEFAULT_HANDSHAKE_TIMEOUT,
            username_timeout: Config::DEFAULT_USERNAME_TIMEOUT,
            max_stored_bytes: Config::DEFAULT_MAX_STORED_BYTES,
            allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

impl Config {
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
