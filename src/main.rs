//! The `chat-server` binary: reads the command line, sets up logging, binds, and runs.

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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let config = Config {
        typing_timeout: cli.typing_timeout,
        heartbeat_interval: cli.heartbeat_interval,
        ..Config::default()
    };
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(&cli.bind).await?;
    chat_server::run(listener, config, shutdown).await
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
