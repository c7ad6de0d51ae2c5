//! The `chat-server` binary: reads the command line, sets up logging, binds, and runs.

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

    /// How log lines are written: text for people, or json (one object a line) for log
    /// collectors.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Every setting of the server itself, declared in `chat_server::Config`.
    #[command(flatten)]
    config: Config,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, with the fields as keys.
    Json,
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

    let mut config = cli.config;
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        // clap's `requires` lets only both or neither through.
        match chat_server::tls::server_config(cert, key) {
            Ok(tls) => config.tls = Some(tls),
            Err(err) => {
                // Nothing is running yet, so exiting here leaves nothing half done.
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        }
    }
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
