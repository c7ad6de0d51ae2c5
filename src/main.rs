//! The `chat-server` binary: reads the command line, sets up logging, binds, and runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use chat_server::Config;

/// A 1:1 WebSocket chat server with room codes and a typing indicator.
///
/// Open http://ADDR/ in a browser, or speak the JSON protocol (docs/protocol.md) on ws://ADDR/ws.
/// Logging follows RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on, as HOST:PORT.
    #[arg(
        long,
        env = "CHAT_BIND",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    bind: String,

    /// How long a member shows as typing after its last keystroke signal, e.g. 5s or 400ms.
    #[arg(long, env = "CHAT_TYPING_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    typing_timeout: Duration,

    /// How often the server pings each client, e.g. 20s. A client silent for two intervals is
    /// disconnected.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", default_value = "20s", value_parser = duration, value_name = "DURATION")]
    heartbeat_interval: Duration,

    /// How long a room member whose connection dropped keeps its seat for a new connection to
    /// resume the session, e.g. 30s; the peer sees peer_disconnected meanwhile. 0s turns
    /// resuming off (protocol v1: peer_left at once).
    #[arg(long, env = "CHAT_RESUME_GRACE", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    resume_grace: Duration,

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

    /// Time a new connection has to send its HTTP request and complete the WebSocket handshake;
    /// slower connections are dropped. Plain HTTP connections are closed after it too.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    handshake_timeout: Duration,

    /// Time a WebSocket client has to set a valid username; an unnamed connection is then closed
    /// with code 1008.
    #[arg(long, env = "CHAT_USERNAME_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION")]
    username_timeout: Duration,

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
}

/// Parses a duration such as `400ms`, `5s` or `1m`; zero is refused, because every duration here
/// is a period or a timeout.
fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// jemalloc instead of the system allocator, with its background thread on: freed pages go back
/// to the system within seconds, so a server whose crowd has gone home shrinks back, where
/// glibc's malloc keeps its peak for good (BENCHMARKS.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

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
        typing_timeout: cli.typing_timeout,
        heartbeat_interval: cli.heartbeat_interval,
        resume_grace: cli.resume_grace,
        rate_limit: cli.rate_limit,
        rate_burst: cli.rate_burst,
        max_connections: cli.max_connections,
        max_connections_per_ip: cli.max_connections_per_ip,
        max_failed_joins: cli.max_failed_joins,
        handshake_timeout: cli.handshake_timeout,
        username_timeout: cli.username_timeout,
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
