//! The `chat-server` binary: reads the command line, sets up logging, binds, and runs.

use std::path::PathBuf;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use chat_server::Config;

/// A 1:1 WebSocket chat server with room codes and a typing indicator.
///
/// Open http://ADDR/ in a browser, or speak the JSON protocol (docs/protocol.md) on ws://ADDR/ws.
/// Logging follows RUST_LOG (default: info).
//
// Every default below is `Config`'s own (`Config::DEFAULT_…`), so the flags and the library
// cannot disagree.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on, as HOST:PORT.
    #[arg(long, env = "CHAT_BIND", default_value = DEFAULT_BIND, value_name = "ADDR")]
    bind: String,

    /// How long a member shows as typing after its last keystroke signal, e.g. 5s or 400ms.
    #[arg(long, env = "CHAT_TYPING_TIMEOUT", value_name = "DURATION",
          default_value_t = Config::DEFAULT_TYPING_TIMEOUT.into(), value_parser = period)]
    typing_timeout: humantime::Duration,

    /// How often the server pings each client, e.g. 20s. A client silent for two intervals is
    /// disconnected.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", value_name = "DURATION",
          default_value_t = Config::DEFAULT_HEARTBEAT_INTERVAL.into(), value_parser = period)]
    heartbeat_interval: humantime::Duration,

    /// How long a room member whose connection dropped keeps its seat for a new connection to
    /// resume the session, e.g. 30s; the peer sees peer_disconnected meanwhile. 0s turns
    /// resuming off (protocol v1: peer_left at once).
    #[arg(long, env = "CHAT_RESUME_GRACE", value_name = "DURATION",
          default_value_t = Config::DEFAULT_RESUME_GRACE.into())]
    resume_grace: humantime::Duration,

    /// Messages per second one connection may send on average; more are refused with
    /// RATE_LIMITED, and a client that keeps sending at over twice this rate is disconnected
    /// (close code 1008). 0 turns rate limiting off.
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = Config::DEFAULT_RATE_LIMIT, value_name = "N")]
    rate_limit: u32,

    /// How many messages one connection may send at once before --rate-limit applies.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = Config::DEFAULT_RATE_BURST, value_name = "N")]
    rate_burst: u32,

    /// Most WebSocket connections at once; further upgrades get HTTP 503. Keep it under the
    /// process's open-file limit. 0 turns the cap off.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = Config::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    max_connections: usize,

    /// Most WebSocket connections at once from one IPv4 address or IPv6 /64; further upgrades
    /// get HTTP 429. Behind a reverse proxy every client has the proxy's address: use 0 there.
    /// 0 turns the cap off.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_IP, value_name = "N")]
    max_connections_per_ip: usize,

    /// Failed join_room attempts (no such room, room full, name taken) allowed per minute, per
    /// connection and per address; more get RATE_LIMITED. 0 turns the limit off.
    #[arg(long, env = "CHAT_MAX_FAILED_JOINS", default_value_t = Config::DEFAULT_MAX_FAILED_JOINS, value_name = "N")]
    max_failed_joins: u32,

    /// The most memory all rooms together keep of their conversations (history for joiners,
    /// messages kept for resumes), e.g. 128MiB or 1GiB; past it the oldest messages of the
    /// largest rooms are shed. 0 turns this bound off (each room keeps its own bound).
    #[arg(long, env = "CHAT_MAX_STORED_BYTES", value_name = "SIZE",
          default_value_t = Size(Config::DEFAULT_MAX_STORED_BYTES), value_parser = size)]
    max_stored_bytes: Size,

    /// Time a new connection has to send its HTTP request and complete the WebSocket handshake;
    /// slower connections are dropped. Plain HTTP connections are closed after it too.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", value_name = "DURATION",
          default_value_t = Config::DEFAULT_HANDSHAKE_TIMEOUT.into(), value_parser = period)]
    handshake_timeout: humantime::Duration,

    /// Time a WebSocket client has to set a valid username; an unnamed connection is then closed
    /// with code 1008. 0s turns this limit off.
    #[arg(long, env = "CHAT_USERNAME_TIMEOUT", value_name = "DURATION",
          default_value_t = Config::DEFAULT_USERNAME_TIMEOUT.into())]
    username_timeout: humantime::Duration,

    /// An origin (scheme://host[:port]) whose web pages may open a WebSocket, besides the
    /// server's own; repeat it for several, or give * to allow any. Clients that send no Origin
    /// header are always allowed; other origins get HTTP 403. In the environment, separate
    /// origins with commas.
    #[arg(
        long = "allowed-origin",
        env = "CHAT_ALLOWED_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    allowed_origins: Vec<String>,

    /// Serve TLS (wss:// and https://) with this certificate chain, PEM, the server's own
    /// certificate first. Needs --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// How log lines are written: text for people, or json (one object a line) for log
    /// collectors.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The address the server listens on by default: this machine only, port 8080.
const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, with the fields as keys.
    Json,
}

/// Parses a duration that is a period or a timeout, such as `400ms`, `5s` or `1m`: zero is
/// refused, since a period of zero cannot be kept.
fn period(text: &str) -> Result<humantime::Duration, String> {
    let duration: humantime::Duration = text.parse().map_err(|err| format!("{err}"))?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// An amount of memory, in bytes, written with a binary unit when it has one (`128MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size(usize);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        match units
            .iter()
            .find(|(_, unit)| self.0 >= *unit && self.0.is_multiple_of(*unit))
        {
            Some((name, unit)) => write!(f, "{}{name}", self.0 / unit),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Parses an amount of memory: a number of bytes, or a number followed by KiB, MiB or GiB.
fn size(text: &str) -> Result<Size, String> {
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
        .map(Size)
        .ok_or_else(|| format!("{text} is too large"))
}

/// jemalloc instead of the system allocator, with its background thread on: freed pages go back
/// to the system within seconds, so a server whose crowd has gone home shrinks back, where
/// glibc's malloc keeps its peak for good (BENCHMARKS.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }

    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => match chat_server::tls::server_config(cert, key) {
            Ok(tls) => Some(tls),
            Err(err) => {
                // Nothing is running yet, so exiting here leaves nothing half done.
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        },
        // clap's `requires` lets only both or neither through.
        _ => None,
    };
    let config = Config {
        typing_timeout: cli.typing_timeout.into(),
        heartbeat_interval: cli.heartbeat_interval.into(),
        resume_grace: cli.resume_grace.into(),
        rate_limit: cli.rate_limit,
        rate_burst: cli.rate_burst,
        max_connections: cli.max_connections,
        max_connections_per_ip: cli.max_connections_per_ip,
        max_failed_joins: cli.max_failed_joins,
        max_stored_bytes: cli.max_stored_bytes.0,
        handshake_timeout: cli.handshake_timeout.into(),
        username_timeout: cli.username_timeout.into(),
        allowed_origins: cli.allowed_origins,
        tls,
        ..Config::default()
    };
    warn_if_over_open_file_limit(config.max_connections);
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(&cli.bind).await?;
    chat_server::run(listener, config, shutdown).await
}

/// File descriptors the server needs besides one per WebSocket: the listener, connections still
/// in their HTTP handshake, logging, and some slack.
const SPARE_FILES: u64 = 256;

/// Warns when `--max-connections` does not fit under the process's open-file limit (or is off):
/// past that limit `accept` fails with "too many open files" before the cap can refuse anyone
/// with a clear 503. Linux only, where the limit can be read without `unsafe` from /proc.
fn warn_if_over_open_file_limit(max_connections: usize) {
    let Some(soft_limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    else {
        return; // Not Linux, or "unlimited": nothing to compare with.
    };
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX);
    if max_connections == 0 || wanted.saturating_add(SPARE_FILES) > soft_limit {
        tracing::warn!(
            max_connections,
            open_file_limit = soft_limit,
            "--max-connections is off or above the open-file limit less {SPARE_FILES}: \
             past the limit, connections fail at accept instead of getting a 503"
        );
    }
}

/// Listens for SIGINT (Ctrl-C) and SIGTERM, the signals a terminal or a service manager sends,
/// and returns a future that completes when either arrives.
///
/// The handlers are installed here, before the server starts, not when the future is first
/// polled: a signal that arrives in between would otherwise kill the process the default way,
/// without closing any connection.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
