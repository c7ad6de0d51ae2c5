//! A 1:1 WebSocket chat server: one person creates a private room and gets a short code, the
//! other joins with the code, and they chat in real time with a typing indicator.
//!
//! One actor, [`server::ChatServer`], owns the node's connections and applies every rule; it
//! receives commands over a bounded mpsc channel, and keeps rooms and sessions in a store: in
//! its own memory (the default), or in Redis shared with other nodes (`--redis`). Each WebSocket
//! connection is served by a read loop and a write task ([`handler`]) that only move bytes
//! between the socket and the actor. docs/architecture.md follows one message through all of
//! it; docs/protocol.md is the wire protocol.
//!
//! # Layout
//!
//! - [`run`] (this file): accepts connections and shuts everything down in order.
//! - [`http`]: HTTP/1.1 on each connection; routes requests and upgrades `/ws` to WebSocket.
//! - [`handler`]: one WebSocket connection: a read loop, a write task, the heartbeat.
//! - [`server`]: the `ChatServer` actor, its handle and its commands: every rule of the protocol,
//!   one file per subject (sessions, rooms, steps, delivery, timers, and the Redis mode).
//! - [`connection`]: the actor's record of one connection and the session it holds.
//! - [`store`]: the state of record (rooms, seats, what was said, sessions that can be
//!   resumed) and the atomic steps that change it, in memory or in Redis; [`room`] is one room
//!   of the in-memory store.
//! - [`outbox`]: each connection's small bounded outbound queue, from the actor to the write
//!   task, and what goes through it (messages, and the close that ends it).
//! - [`message`]: the JSON wire messages, client to server and server to client.
//! - [`envelope`]: the shape and size of an end-to-end encrypted chat's content, all the
//!   server can check of what it cannot read.
//! - [`tls`]: loading the certificate and key for `wss://` and `https://`.
//! - [`types`]: identifiers and validated values (`ClientId`, `RoomCode`, `Username`,
//!   `SessionToken`).
//! - [`mod@error`]: error codes sent to clients, and the server's own errors.
//! - [`config`]: the settings an operator can tune.
//! - [`limits`]: rate limits, connection caps and the `Origin` check.
//! - [`metrics`]: counters and gauges for `/metrics`.

pub mod config;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod handler;
pub mod http;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod room;
pub mod server;
pub mod store;
pub mod tls;
pub mod types;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

pub use crate::config::Config;
use crate::http::App;
use crate::metrics::Metrics;
use crate::server::ChatServer;

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The longest pause after a failed `accept`, such as when the process is out of file
/// descriptors. Pauses start at 10 ms and double up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves chat on `listener` until `shutdown` completes, then closes every WebSocket with code
/// 1001 ("going away") and returns once they are closed, or after a few seconds at most.
///
/// If the [`ChatServer`] actor stops first (a bug made it panic), nothing can be served any
/// more: `/healthz` answers 503 and new WebSockets are refused while every open connection is
/// closed with 1011 ("internal error"), and then this returns an error, so that the process
/// exits with a failure and its supervisor restarts it.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, config, shutdown, std::future::pending()).await
}

/// [`run`], with a way for tests to make the actor panic: when `stop_actor` completes, the
/// actor's task panics, as a bug in it would.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub async fn run_with_actor_stop(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    stop_actor: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, config, shutdown, stop_actor).await
}

async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    stop_actor: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut config = config;
    if let Some(target) = config.redis.take() {
        // One URL may name a node of a Redis Cluster: asked once, here.
        config.redis = Some(target.resolve(store::redis::ANSWER_TIMEOUT).await);
    }
    let metrics = Arc::new(Metrics::new());
    let (server, handle) = ChatServer::new(&config, Arc::clone(&metrics));
    // The actor runs until the last handle is dropped: the one in `app`, and the clones held by
    // connection handlers. So it outlives every connection and stops on its own after them.
    // Its `JoinHandle` is how `run` notices if it stops before that.
    let mut actor = tokio::spawn(async move {
        tokio::select! {
            () = server.run() => {}
            () = stop_actor => panic!("the actor was stopped on purpose (a test)"),
        }
    });

    let serves_tls = config.tls.is_some();
    let app = Arc::new(App::new(handle, config, metrics));

    let address = listener.local_addr()?;
    if serves_tls {
        info!(%address, "chat server listening on https://{address}/ (WebSocket at /ws, TLS)");
    } else {
        info!(%address, "chat server listening on http://{address}/ (WebSocket at /ws)");
    }

    tokio::pin!(shutdown);
    let mut actor_failure = None;
    // Set when the actor fails: how long its connections may take to close.
    let drained = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drained);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            stopped = &mut actor, if actor_failure.is_none() => {
                let cause = match stopped {
                    Err(err) if err.is_panic() => "it panicked",
                    _ => "its command channel closed",
                };
                error!(cause, "the chat server actor stopped: closing every connection with 1011");
                app.actor_stopped.cancel();
                // Every connection's queue went with the actor, so each write task is already
                // closing with 1011. Until they are done, keep answering: /healthz says 503.
                app.websockets.close();
                drained.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                actor_failure = Some(cause);
                continue;
            }
            () = app.websockets.wait(), if actor_failure.is_some() => break,
            () = &mut drained => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                // Chat messages are small and latency matters more than packet count; our write
                // task already batches what is queued, so Nagle's algorithm would only add delay.
                if let Err(err) = stream.set_nodelay(true) {
                    warn!(cause = %err, "failed to set TCP_NODELAY");
                }
                app.tasks
                    .spawn(http::serve_tcp(stream, peer, Arc::clone(&app)));
            }
            Err(err) => {
                // Usually EMFILE: out of file descriptors. Spinning on `accept` would not help;
                // waiting a little lets connections close and free some.
                error!(cause = %err, backoff_ms = backoff.as_millis(), "failed to accept");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }

    info!("shutting down");
    drop(listener);
    app.shutdown.cancel();
    app.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, app.tasks.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    // The connections are closed, and their handles with them: the actor stops once it has
    // finished the steps still in flight (with --redis, the drops that hold the seats of a
    // restarting node's members, so that they can resume on another node).
    drop(app);
    if actor_failure.is_none() && tokio::time::timeout(SHUTDOWN_GRACE, actor).await.is_err() {
        warn!("the chat server actor did not finish in time");
    }
    match actor_failure {
        Some(cause) => Err(std::io::Error::other(format!(
            "the chat server actor stopped: {cause}"
        ))),
        None => Ok(()),
    }
}
