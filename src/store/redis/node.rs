//! Nodes watching over each other: each beats in Redis every second; a node silent for
//! [`DEAD_AFTER`] is dead, and the first node to notice reaps it (its members' seats are held
//! for a resume, and their peers told `peer_disconnected`); and every node sweeps the grace
//! periods that have ended, whichever node held the seat.
//!
//! Time is Redis's (`TIME` in the scripts), so nodes whose clocks disagree still agree on who
//! is dead. And a node judges others only once its own beats have been recorded for
//! [`DEAD_AFTER`]: after a Redis restart, every beat looks old, and a node must first give the
//! others the time to beat again.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::RedisEvent;
use super::bus::Bus;
use super::link::Link;
use super::scripts::{self, Scripts, keys, millis};
use crate::metrics::Metrics;
use crate::store::NodeId;
use crate::types::{RoomCode, SessionToken};

/// How often a node beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a node may be silent before the others count it dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// How often a node looks for grace periods that have ended.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How long a node that claimed an ended grace period has to finish it before another node
/// takes it over.
const SWEEP_LEASE: Duration = Duration::from_secs(5);

/// How many ended grace periods a sweep takes at once.
const SWEEP_BATCH: usize = 100;

/// How long a reaped node stays marked dead: should it come back within that time, its next
/// beat tells it that it was fenced. One that comes back later finds its seats gone when it
/// repairs its rooms.
const FENCE_FOR: Duration = Duration::from_secs(10 * 60);

/// How long a node that claimed a dead node has to reap it before another may.
const REAP_LEASE: Duration = Duration::from_secs(30);

/// What keeps the watch: the node's id, which changes if it is fenced.
pub struct Watch {
    pub link: Arc<Link>,
    pub scripts: Arc<Scripts>,
    pub bus: Bus,
    pub node: NodeId,
    pub grace: Duration,
    pub events: mpsc::Sender<RedisEvent>,
    pub metrics: Arc<Metrics>,
}

impl Watch {
    /// Beats, reaps and sweeps, for as long as the actor runs.
    pub async fn run(mut self) {
        let mut beat = tokio::time::interval(BEAT_EVERY);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        // Since when this node's beats have been recorded without a miss.
        let mut alive_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let Some(mut redis) = self.link.connection() else {
                        alive_since = None;
                        self.metrics.redis.node_live.set(0.0);
                        continue;
                    };
                    match self.beat(&mut redis).await {
                        Ok(true) => {
                            self.metrics.redis.node_live.set(1.0);
                            let since = *alive_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= DEAD_AFTER
                                && let Err(err) = self.reap_the_dead(&mut redis).await
                            {
                                warn!(cause = %err, "could not reap dead nodes");
                            }
                        }
                        Ok(false) => {
                            // Found dead while cut off: everything it held went to the others.
                            let node = NodeId::random();
                            warn!(old = %self.node, new = %node, "this node was found dead and fenced: closing its connections, carrying on as a new node");
                            self.node = node;
                            self.bus.set_node(node);
                            alive_since = None;
                            self.metrics.redis.node_live.set(0.0);
                            if self.events.send(RedisEvent::Fenced(node)).await.is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            warn!(cause = %err, "heartbeat failed");
                            alive_since = None;
                            self.metrics.redis.node_live.set(0.0);
                        }
                    }
                }
                _ = sweep.tick() => {
                    if let Some(mut redis) = self.link.connection()
                        && let Err(err) = self.sweep(&mut redis).await
                    {
                        warn!(cause = %err, "could not sweep grace periods");
                    }
                }
            }
            if self.events.is_closed() {
                return;
            }
        }
    }

    /// Records a beat. `Ok(false)`: the node was found dead meanwhile.
    async fn beat(&self, redis: &mut MultiplexedConnection) -> RedisResult<bool> {
        let alive: i64 = self
            .scripts
            .node_beat
            .key(keys::LIVE)
            .key(keys::node_rooms(self.node))
            .key(keys::node_dead(self.node))
            .arg(self.node.to_string())
            .arg(millis(scripts::ROOM_TTL))
            .invoke_async(redis)
            .await?;
        Ok(alive == 1)
    }

    /// Reaps every node that has been silent for [`DEAD_AFTER`].
    async fn reap_the_dead(&self, redis: &mut MultiplexedConnection) -> RedisResult<()> {
        let dead: Vec<String> = self
            .scripts
            .node_dead
            .key(keys::LIVE)
            .arg(millis(DEAD_AFTER))
            .invoke_async(redis)
            .await?;
        for node in dead.iter().filter_map(|node| NodeId::parse(node)) {
            if node != self.node {
                self.reap(redis, node).await?;
            }
        }
        Ok(())
    }

    /// Reaps one dead node, unless another node is doing it: the seats it held are held for a
    /// resume, with their grace periods filed for sweeping.
    async fn reap(&self, redis: &mut MultiplexedConnection, dead: NodeId) -> RedisResult<()> {
        let rooms: Option<Vec<String>> = self
            .scripts
            .node_claim
            .key(keys::LIVE)
            .key(keys::node_rooms(dead))
            .key(keys::node_dead(dead))
            .key(keys::node_reaper(dead))
            .arg(dead.to_string())
            .arg(millis(REAP_LEASE))
            .arg(millis(FENCE_FOR))
            .invoke_async(redis)
            .await?;
        let Some(rooms) = rooms else {
            return Ok(()); // Another node is reaping it.
        };
        info!(node = %dead, rooms = rooms.len(), "a node is dead: holding its members' seats");
        for code in rooms.iter().filter_map(|code| RoomCode::parse(code).ok()) {
            let held: Vec<Value> = self
                .scripts
                .room_reap
                .key(keys::room(code))
                .key(keys::log(code))
                .key(keys::channel(code))
                .arg(dead.to_string())
                .arg(millis(self.grace))
                .arg(millis(self.grace + scripts::GRACE_MARGIN))
                .invoke_async(redis)
                .await?;
            for pair in held.chunks(2) {
                let (Some(Value::BulkString(token)), Some(Value::Int(deadline))) =
                    (pair.first(), pair.get(1))
                else {
                    continue;
                };
                let (Ok(token), Ok(deadline)) =
                    (std::str::from_utf8(token), u64::try_from(*deadline))
                else {
                    continue;
                };
                let Some(token) = SessionToken::parse(token) else {
                    continue;
                };
                if deadline > 0 {
                    scripts::file_grace(&self.scripts, redis, code, &token, deadline, self.grace)
                        .await?;
                } else {
                    // Given up (no grace period): its session goes with the seat, as in memory.
                    scripts::forget_session(&self.scripts, redis, code, &token).await?;
                }
            }
        }
        let _: i64 = self
            .scripts
            .node_forget
            .key(keys::LIVE)
            .key(keys::node_rooms(dead))
            .key(keys::node_reaper(dead))
            .arg(dead.to_string())
            .invoke_async(redis)
            .await?;
        Ok(())
    }

    /// Ends the grace periods that are due: their members leave for good, unless they resumed.
    async fn sweep(&self, redis: &mut MultiplexedConnection) -> RedisResult<()> {
        let due: Vec<String> = self
            .scripts
            .grace_claim
            .key(keys::GRACE)
            .arg(millis(SWEEP_LEASE))
            .arg(SWEEP_BATCH)
            .invoke_async(redis)
            .await?;
        for entry in due {
            let mut parts = entry.splitn(3, '|');
            if let (Some(code), Some(token), Some(deadline)) =
                (parts.next(), parts.next(), parts.next())
                && let (Ok(code), Ok(deadline)) = (RoomCode::parse(code), deadline.parse())
                && let Some(token) = SessionToken::parse(token)
            {
                scripts::expire(&self.scripts, redis, code, &token, deadline).await?;
            }
            let _: i64 = redis::cmd("ZREM")
                .arg(keys::GRACE)
                .arg(&entry)
                .query_async(redis)
                .await?;
        }
        Ok(())
    }
}
