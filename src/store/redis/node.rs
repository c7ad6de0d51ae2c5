//! Nodes watching over each other: each beats in Redis every second; a node silent for
//! [`DEAD_AFTER`] is dead, and the first node to notice reaps it (`reap.rs`: its members' seats
//! are held for a resume, and their peers told `peer_disconnected`); and every node sweeps the
//! grace periods that have ended, whichever node held the seat (`sweep.rs`).
//!
//! Three tasks, not one loop: a node that reaps 18,000 rooms, or sweeps a thousand ended grace
//! periods, must still beat on time, or the others take it for dead in turn and the death of one
//! node spreads to the rest. So the beats have a task of their own, which nothing else awaits;
//! the reaper and the sweeper learn from it, through a [`watch`] channel, what the node is
//! ([`Standing`]): its id, and since when its beats are recorded.
//!
//! Time is Redis's (`TIME` in the scripts), so nodes whose clocks disagree still agree on who
//! is dead. And a node judges others only once its own beats have been recorded for
//! [`DEAD_AFTER`]: after a Redis restart, every beat looks old, and a node must first give the
//! others the time to beat again.

use std::sync::Arc;
use std::time::Duration;

use redis::RedisResult;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use super::RedisEvent;
use super::bus::Bus;
use super::link::Link;
use super::reap::Reaper;
use super::scripts::{self, Scripts, keys, millis};
use super::sweep::Sweeper;
use crate::metrics::Metrics;
use crate::store::NodeId;

/// How often a node beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a node may be silent before the others count it dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// What the node is, as its beats say: the reaper and the sweeper read it.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    /// The node's id, which changes if it is fenced.
    pub node: NodeId,
    /// Since when the node's beats have been recorded without a miss; `None` while they are
    /// not.
    pub alive_since: Option<Instant>,
}

impl Standing {
    /// Whether the node may judge others: its own beats have been recorded for [`DEAD_AFTER`],
    /// so that any node still silent is silent of its own doing, not because Redis was away.
    pub fn may_judge(&self) -> bool {
        self.alive_since
            .is_some_and(|since| since.elapsed() >= DEAD_AFTER)
    }
}

/// What keeps the watch, as the store starts it.
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
    /// Starts the beats, the reaper and the sweeper, each in a task of its own; they stop with
    /// the actor.
    pub fn start(self) {
        let (standing, read_standing) = watch::channel(Standing {
            node: self.node,
            alive_since: None,
        });
        let reaper = Reaper {
            link: Arc::clone(&self.link),
            scripts: Arc::clone(&self.scripts),
            standing: read_standing.clone(),
            grace: self.grace,
            events: self.events.clone(),
        };
        let sweeper = Sweeper {
            link: Arc::clone(&self.link),
            scripts: Arc::clone(&self.scripts),
            events: self.events.clone(),
        };
        let beats = Beats {
            link: self.link,
            scripts: self.scripts,
            bus: self.bus,
            events: self.events,
            metrics: self.metrics,
            standing,
        };
        tokio::spawn(beats.run());
        tokio::spawn(reaper.run());
        tokio::spawn(sweeper.run());
    }
}

/// The task that beats.
struct Beats {
    link: Arc<Link>,
    scripts: Arc<Scripts>,
    /// Told the node's new id when it is fenced.
    bus: Bus,
    /// Where the actor hears that the node was fenced; closed once the actor has stopped.
    events: mpsc::Sender<RedisEvent>,
    metrics: Arc<Metrics>,
    /// What the node is, for the reaper and the sweeper.
    standing: watch::Sender<Standing>,
}

impl Beats {
    /// Beats every [`BEAT_EVERY`], for as long as the actor runs.
    async fn run(self) {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        // After a slow beat, the next one a full interval later, not a burst to catch up.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.events.is_closed() {
                return;
            }
            let sent = Instant::now();
            // A beat with no answer within an interval counts as missed.
            let beat = tokio::time::timeout(BEAT_EVERY, self.beat()).await;
            match beat {
                Ok(Ok(true)) => {
                    self.metrics.redis.node_live.set(1.0);
                    self.standing.send_modify(|standing| {
                        standing.alive_since.get_or_insert(sent);
                    });
                }
                Ok(Ok(false)) => {
                    // Found dead while cut off: everything it held went to the others.
                    warn!(node = %self.node(), "this node was found dead and fenced: closing its connections, carrying on as a new node");
                    if !self.fence().await {
                        return;
                    }
                }
                Ok(Err(err)) => self.missed(&err.to_string()),
                Err(_) => self.missed("no answer in time"),
            }
        }
    }

    fn node(&self) -> NodeId {
        self.standing.borrow().node
    }

    /// Records a beat. `Ok(false)`: the node was found dead meanwhile.
    async fn beat(&self) -> RedisResult<bool> {
        let Some(mut redis) = self.link.connection() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the link to Redis is down",
            )));
        };
        let node = self.node();
        let alive: i64 = self
            .scripts
            .node_beat
            .key(keys::LIVE)
            .key(keys::node_rooms(node))
            .key(keys::node_dead(node))
            .arg(node.to_string())
            .arg(millis(scripts::ROOM_TTL))
            .invoke_async(&mut redis)
            .await?;
        Ok(alive == 1)
    }

    /// A beat that was not recorded: the node does not judge others until it has beaten for
    /// [`DEAD_AFTER`] again.
    fn missed(&self, cause: &str) {
        warn!(cause, "heartbeat failed");
        self.metrics.redis.node_live.set(0.0);
        self.standing
            .send_modify(|standing| standing.alive_since = None);
    }

    /// Carries on under a new id, and has the actor close every connection, so that its
    /// clients resume where their seats are now. Returns `false` once the actor has stopped.
    async fn fence(&self) -> bool {
        let node = NodeId::random();
        self.bus.set_node(node);
        self.standing.send_replace(Standing {
            node,
            alive_since: None,
        });
        self.metrics.redis.node_live.set(0.0);
        self.events.send(RedisEvent::Fenced(node)).await.is_ok()
    }
}
