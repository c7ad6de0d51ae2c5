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
//! A node beats on three boards (`keys::BOARDS`), each in a slot of its own: a beat counts once
//! a majority of them recorded it, and a node is dead once a majority finds it silent. Any two
//! majorities share a board, and on a Redis Cluster no one master is one that every node
//! needs.
//!
//! Time is Redis's (`TIME` in the scripts), so nodes whose clocks disagree still agree on who
//! is dead. And a node judges others only once its own beats have been recorded for
//! [`DEAD_AFTER`] on one connection: after a Redis restart, every beat looks old, and a node
//! must first give the others the time to beat again.
//!
//! A node that cannot vouch for itself lets its clients go. The others count it dead
//! [`DEAD_AFTER`] after its last recorded beat; a node that has had no beat recorded for
//! [`LET_GO_AFTER`] (a little less) closes every connection with 1012 before they may, so that
//! its clients resume on another node, within their grace period, while their seats are still
//! theirs, and carries on as a new node. It cannot tell a Redis that is gone for everyone from a
//! network that cut it alone, so it lets go in both cases. Beats go over a connection of their
//! own, not the link that steps share: a beat never waits behind a batch of another task, and
//! after a cut heals, the next beat connects at once, without waiting for the link's supervisor
//! to notice that its connection died.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use super::RedisEvent;
use super::bus::Bus;
use super::link::Link;
use super::reap::Reaper;
use super::scripts::{self, Scripts, keys, millis};
use super::sweep::Sweeper;
use super::target::{Commands, Target};
use crate::metrics::Metrics;
use crate::store::NodeId;

/// How often a node beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long after its last beat a node's beats count as broken off: its next beat starts a new
/// run, and until then it judges no one (`node_beat.lua`, `node_dead.lua`).
pub const BEAT_GAP: Duration = Duration::from_secs(2);

/// How long a beat waits for each board's answer (after the node's own check, which waits
/// half a second at most): a board whose master does not answer costs the beat no more.
const BOARD_WITHIN: Duration = Duration::from_millis(400);

/// How long a node may be silent before the others count it dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// How long after the last beat Redis recorded (from when it was sent) a node lets its clients
/// go: half a second before the others may count it dead, and at least that before they notice
/// (they look every [`BEAT_EVERY`]).
pub const LET_GO_AFTER: Duration = Duration::from_millis(4_500);

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
    /// For the beats' own connection.
    pub target: Target,
    /// Whether the node counts itself alive, for `/healthz`.
    pub live: Arc<AtomicBool>,
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
            link: Arc::clone(&self.link),
            target: self.target,
            live: self.live,
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
    /// The link that steps share: the node serves only while it is up.
    link: Arc<Link>,
    /// Beats go over a connection of their own, to this Redis.
    target: Target,
    /// Whether the node can serve, for `/healthz`: set when a beat is recorded while the link
    /// is up, cleared when one is missed (and by the link when it goes down).
    live: Arc<AtomicBool>,
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
    /// Beats every [`BEAT_EVERY`], for as long as the actor runs, and lets the node's clients go
    /// when it can no longer vouch for itself.
    async fn run(self) {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        // After a slow beat, the next one a full interval later, not a burst to catch up.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut connection = None;
        // When the last beat that Redis recorded was sent: the others count the node alive
        // until at least DEAD_AFTER past it. `None` before the first, and once let go.
        let mut vouched: Option<Instant> = None;
        loop {
            let let_go_at = vouched.map(|sent| sent + LET_GO_AFTER);
            tokio::select! {
                _ = tick.tick() => {}
                () = until(let_go_at) => {
                    vouched = None;
                    if !self.let_go().await {
                        return;
                    }
                    continue;
                }
            }
            if self.events.is_closed() {
                return;
            }
            let sent = Instant::now();
            // A beat with no answer within an interval counts as missed; one still waiting
            // when the node must let go waits no more.
            let beat = tokio::select! {
                beat = tokio::time::timeout(BEAT_EVERY, self.beat(&mut connection, vouched)) => beat,
                () = until(let_go_at) => {
                    vouched = None;
                    if !self.let_go().await {
                        return;
                    }
                    continue;
                }
            };
            match beat {
                Ok(Ok(true)) => {
                    vouched = Some(sent);
                    self.recorded(sent);
                }
                Ok(Ok(false)) => {
                    // Found dead while cut off: everything it held went to the others.
                    vouched = None;
                    warn!(node = %self.node(), "this node was found dead and fenced: closing its connections, carrying on as a new node");
                    if !self.fence().await {
                        return;
                    }
                }
                Ok(Err(err)) => {
                    connection = None;
                    self.missed(&err.to_string());
                }
                Err(_) => {
                    connection = None;
                    self.missed("no answer in time");
                }
            }
        }
    }

    fn node(&self) -> NodeId {
        self.standing.borrow().node
    }

    /// Records a beat, on the beats' connection (made first if there is none). `Ok(false)`:
    /// the node was found dead meanwhile. `vouched`: when the last beat that Redis recorded was
    /// sent.
    async fn beat(
        &self,
        connection: &mut Option<Commands>,
        vouched: Option<Instant>,
    ) -> RedisResult<bool> {
        let redis = match connection {
            Some(redis) => redis,
            None => {
                let redis = self.target.connect(BEAT_EVERY).await?;
                // A new connection may reach a Redis that restarted, whose beats are all old:
                // the node judges no one until its own have been recorded for DEAD_AFTER.
                self.standing
                    .send_modify(|standing| standing.alive_since = None);
                connection.insert(redis)
            }
        };
        let node = self.node();
        // A script in the node's own slot, then one on each board (each in a slot of its own).
        if !self.not_fenced(redis, node, vouched).await? {
            return Ok(false);
        }
        self.beat_on_boards(redis, node).await?;
        Ok(true)
    }

    /// Whether `node` may carry on: `node_alive.lua`, in the node's own slot, says whether the
    /// others found it dead (and fenced it) while its beats were not recorded. `vouched`: when
    /// the last beat that Redis recorded was sent.
    async fn not_fenced(
        &self,
        redis: &mut Commands,
        node: NodeId,
        vouched: Option<Instant>,
    ) -> RedisResult<bool> {
        let check = async {
            self.scripts
                .node_alive
                .key(keys::node_rooms(node))
                .key(keys::node_dead(node))
                .arg(millis(scripts::ROOM_TTL))
                .invoke_async::<i64>(redis)
                .await
        };
        // Half the beat's time at most: the other half is the boards'.
        match tokio::time::timeout(BEAT_EVERY / 2, check).await {
            Ok(Ok(alive)) => Ok(alive != 0),
            // On a Redis Cluster, the master of the node's own slot may be down while the
            // boards answer. The check can wait for its replica: the others count a node dead
            // only DEAD_AFTER past its last recorded beat, so one recorded less than
            // LET_GO_AFTER ago means that no one can have found it dead yet.
            _ if vouched.is_some_and(|sent| sent.elapsed() < LET_GO_AFTER) => {
                debug!("the node's own slot does not answer: beating without its check");
                Ok(true)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "the node's own slot did not answer in time",
            ))),
        }
    }

    /// Records a beat of `node` on every board at once; `Ok` once a majority of them recorded
    /// it.
    async fn beat_on_boards(&self, redis: &Commands, node: NodeId) -> RedisResult<()> {
        let boards = (0..keys::BOARDS).map(|board| {
            let mut redis = redis.clone();
            async move {
                let beat = async {
                    self.scripts
                        .node_beat
                        .key(keys::live(board))
                        .key(keys::since(board))
                        .arg(node.to_string())
                        .arg(millis(scripts::ROOM_TTL))
                        .arg(millis(BEAT_GAP))
                        .invoke_async::<i64>(&mut redis)
                        .await
                };
                tokio::time::timeout(BOARD_WITHIN, beat).await
            }
        });
        let mut recorded = 0;
        let mut failures = Vec::new();
        for (board, answer) in join_all(boards).await.into_iter().enumerate() {
            match answer {
                Ok(Ok(_)) => recorded += 1,
                Ok(Err(err)) => failures.push(format!("board {board}: {err}")),
                Err(_) => failures.push(format!("board {board}: no answer in time")),
            }
        }
        if recorded < keys::MAJORITY {
            return Err(RedisError::from((
                ErrorKind::Io,
                "a beat was recorded on fewer than a majority of the boards",
                failures.join("; "),
            )));
        }
        if !failures.is_empty() {
            debug!(
                ?failures,
                "a beat was recorded on a majority of the boards only"
            );
        }
        Ok(())
    }

    /// A beat sent at `sent` was recorded.
    fn recorded(&self, sent: Instant) {
        let serving = self.link.connection().is_some();
        self.live.store(serving, Ordering::Relaxed);
        self.metrics.redis.node_live.set(1.0);
        self.standing.send_modify(|standing| {
            standing.alive_since.get_or_insert(sent);
        });
    }

    /// A beat that was not recorded: the node does not judge others until it has beaten for
    /// [`DEAD_AFTER`] again, and `/healthz` says 503 meanwhile.
    fn missed(&self, cause: &str) {
        warn!(cause, "heartbeat failed");
        self.live.store(false, Ordering::Relaxed);
        self.metrics.redis.node_live.set(0.0);
        self.standing
            .send_modify(|standing| standing.alive_since = None);
    }

    /// No beat recorded for [`LET_GO_AFTER`]: the others may soon count this node dead and hold
    /// its members' seats for them elsewhere. It lets them go first. Returns `false` once the
    /// actor has stopped.
    async fn let_go(&self) -> bool {
        warn!(node = %self.node(), "no beat recorded for {LET_GO_AFTER:?}: letting every connection go (1012) before the others count this node dead, carrying on as a new node");
        self.fence().await
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
        self.live.store(false, Ordering::Relaxed);
        self.metrics.redis.node_live.set(0.0);
        self.events.send(RedisEvent::Fenced(node)).await.is_ok()
    }
}

/// Waits until `deadline`, or forever if there is none.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
