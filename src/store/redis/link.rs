//! The node's link to Redis: one multiplexed connection, which every step shares (each step's
//! commands are pipelined on it with the others'), watched by a supervisor that pings it,
//! notices when it is gone, and connects again with backoff.
//!
//! While the link is down, a step fails at once, without waiting: the client that asked gets
//! `UNAVAILABLE`, and nothing queues up for a Redis that may be gone for minutes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use super::RedisEvent;
use super::target::{Commands, Target};
use crate::metrics::Metrics;

/// How long a step may wait for its answer before it counts as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the supervisor pings a link that is up.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The first pause before connecting again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The link, shared by every step and the supervisor.
#[derive(Debug)]
pub struct Link {
    target: Target,
    /// The connection while the link is up.
    current: Mutex<Option<Commands>>,
    /// Whether the node can serve, for `/healthz`: cleared here when the link goes down, set by
    /// the beats (`node.rs`) when a beat is recorded while the link is up.
    serving: Arc<AtomicBool>,
    /// Wakes the supervisor early: a step just failed.
    trouble: Notify,
    /// On a Redis Cluster: the masters that did not answer the last check, for `/healthz`.
    /// Their rooms' steps fail (`UNAVAILABLE`) until their replicas take over; the others go on.
    shards_down: Arc<Mutex<Vec<String>>>,
}

impl Link {
    /// Notes which masters of a cluster answered ([`Commands::check`]).
    fn note_shards(&self, shards: &[(String, bool)], metrics: &Metrics) {
        let mut down = Vec::new();
        for (shard, up) in shards {
            metrics.shard_up(shard).set(if *up { 1.0 } else { 0.0 });
            if !up {
                down.push(shard.clone());
            }
        }
        if let Ok(mut shards_down) = self.shards_down.lock() {
            if *shards_down != down && !down.is_empty() {
                warn!(shards = ?down, "masters of the cluster do not answer: their rooms are unavailable");
            }
            *shards_down = down;
        }
    }

    pub fn new(target: Target, serving: Arc<AtomicBool>) -> Self {
        Link {
            target,
            current: Mutex::new(None),
            serving,
            trouble: Notify::new(),
            shards_down: Arc::default(),
        }
    }

    /// The masters of a cluster that did not answer the last check (shared, kept up to date).
    pub fn shards_down(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.shards_down)
    }

    /// The connection, if the link is up. A clone shares the one socket.
    pub fn connection(&self) -> Option<Commands> {
        self.current.lock().ok()?.clone()
    }

    /// A step failed: the supervisor checks the link now rather than at its next ping.
    pub fn report_trouble(&self) {
        self.trouble.notify_one();
    }

    fn set(&self, connection: Option<Commands>) {
        if connection.is_none() {
            self.serving.store(false, Ordering::Relaxed);
        }
        if let Ok(mut current) = self.current.lock() {
            *current = connection;
        }
    }

    /// Keeps the link up, for as long as the node runs, and tells the actor when it goes down
    /// and comes back.
    pub async fn supervise(
        self: Arc<Self>,
        events: mpsc::Sender<RedisEvent>,
        metrics: Arc<Metrics>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let connected = self.target.connect(ANSWER_TIMEOUT).await;
            let mut connection = match connected {
                Ok(connection) => connection,
                Err(err) => {
                    warn!(cause = %err, backoff_ms = backoff.as_millis(), "cannot reach Redis");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            info!("linked to Redis");
            backoff = FIRST_BACKOFF;
            self.set(Some(connection.clone()));
            metrics.redis.up.set(1.0);
            if events.send(RedisEvent::Link(true)).await.is_err() {
                return; // The actor has stopped.
            }
            // Ping until a ping fails, or the actor stops.
            loop {
                if events.is_closed() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(PING_EVERY) => {}
                    () = self.trouble.notified() => {}
                }
                match connection.check(ANSWER_TIMEOUT).await {
                    Ok(shards) => self.note_shards(&shards, &metrics),
                    Err(err) => {
                        warn!(cause = %err, "lost the link to Redis");
                        break;
                    }
                }
            }
            self.set(None);
            metrics.redis.up.set(0.0);
            metrics.redis.errors.increment(1);
            if events.send(RedisEvent::Link(false)).await.is_err() {
                return;
            }
        }
    }
}
