//! The state of record in Redis, shared by several nodes (`--redis URL`).
//!
//! Each step is a Lua script ([`scripts`]), atomic in Redis, so the rules hold whichever node
//! asks: a code is issued once, a room seats two, ids increase. What happens in a room is
//! published on its channel, and every node with members there hears it on its pub/sub
//! connection (`bus.rs`) and tells its own members, as the in-memory store's notices would.
//!
//! The actor never waits for Redis. It hands a step to [`RedisStore::submit`] and carries on;
//! the step runs in a task of its own, and its outcome comes back to the actor as a
//! [`RedisEvent::Done`]. Steps run in lanes: those of one room (or, outside rooms, of one
//! session) run one after another, in the order they were submitted, while the steps of
//! different rooms are in flight together, pipelined on one connection (`link.rs`). The steps
//! of the hot path (chats, read receipts, typing) go in batches (`batch.rs`).
//!
//! Nodes watch over each other (`node.rs`): a node that stops beating is reaped by the others
//! (`reap.rs`), and every node sweeps the grace periods that have ended (`sweep.rs`).

mod batch;
mod bus;
mod failpoint;
mod link;
mod node;
mod prelude;
mod reap;
mod router;
pub mod scripts;
mod shards;
pub mod steps;
mod sweep;
mod target;
mod wire;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use foldhash::HashMap as FastMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::{Conn, NodeId, Notice, Outcome, RoomEvent, Step};
use crate::metrics::Metrics;
use crate::types::{ClientId, RoomCode, SessionToken};
use bus::Bus;
pub use link::ANSWER_TIMEOUT;
use link::Link;
use scripts::{Scripts, keys};
pub use target::{Commands, Target};

/// For the tests only (`testing`): reads a room event as the bus does, from what a script
/// published on the room's channel, so that a test listening to Redis itself (`tests/
/// store_model.rs`) sees the events a node would.
#[cfg(feature = "testing")]
pub use wire::decode as decode_event;

/// How many events may wait for the actor. Outcomes wait for room; pub/sub events that find it
/// full are dropped, and repaired from Redis (see [`bus`]).
const EVENT_QUEUE: usize = 8192;

/// What the Redis store tells the actor.
#[derive(Debug)]
pub enum RedisEvent {
    /// A step is done, with this outcome. `lane` is free for the next step.
    Done {
        op: u64,
        lane: Lane,
        outcome: Outcome,
        notices: Vec<Notice>,
    },
    /// Something happened in a room where this node has members.
    Room(RoomCode, RoomEvent),
    /// Another node asks this one to close a connection: its session was resumed there.
    Kick(ClientId),
    /// Room events may have been lost (pub/sub reconnected, or events were dropped): every room
    /// is to be repaired from what Redis keeps.
    Resync,
    /// On a Redis Cluster: these rooms' channels moved to another shard (a failover, a
    /// migration, a lost connection) and are listened to there again; what was published
    /// meanwhile is lost, and these rooms are to be repaired.
    Moved(Vec<RoomCode>),
    /// The link to Redis went down (`false`) or came back (`true`).
    Link(bool),
    /// The node has nobody in room `code` any more (as node `NodeId`): the room is to be
    /// unlisted from the node's rooms, once the steps that the actor submitted with that news
    /// (a member's drop) are done. Sent by the store to the actor's queue, so that it comes
    /// after them.
    Unlist(RoomCode, NodeId),
    /// The other nodes found this node dead while it was cut off, and gave its seats away: it
    /// carries on under a new id, after closing every connection so that its clients resume.
    Fenced(NodeId),
}

/// How far this node has told a room's members its chat ids and event numbers, sent with the
/// room's steps that hand out ids or event numbers (a chat, a join, a read receipt, a leave, a
/// drop, a resume) or read where the room stands (a repair): should
/// Redis have lost writes it had acknowledged, and its counters gone back behind these, the
/// script raises them first, so that no id is handed out twice (`raise_chat` in `prelude.lua`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Floors {
    /// The last chat id told.
    pub chat: u64,
    /// The last event number told.
    pub event: u64,
}

/// Steps that must keep their order: those of one room, or of one session outside rooms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Room(RoomCode),
    Session(SessionToken),
}

impl Lane {
    fn of(step: &Step) -> Lane {
        match step {
            Step::Open { token, .. }
            | Step::Name { token, .. }
            | Step::TakeSession { token, .. }
            | Step::Drop {
                room: None, token, ..
            } => Lane::Session(*token),
            Step::Drop {
                room: Some(code), ..
            }
            | Step::Create { code, .. }
            | Step::Join { code, .. }
            | Step::Chat { code, .. }
            | Step::Read { code, .. }
            | Step::Leave { code, .. }
            | Step::Expire { code, .. }
            | Step::ResumeSeat { code, .. }
            | Step::Range { code, .. }
            | Step::State { code }
            | Step::Publish { code, .. } => Lane::Room(*code),
        }
    }
}

/// The parts every step's task shares.
#[derive(Debug)]
struct Shared {
    link: Arc<Link>,
    /// Whether this node's beats are recorded (the `/healthz` flag): a member enters a room
    /// only on a node the others watch, whose rooms they would reap should it die.
    live: Arc<AtomicBool>,
    scripts: Arc<Scripts>,
    bus: Bus,
    events: mpsc::Sender<RedisEvent>,
    metrics: Arc<Metrics>,
}

/// The Redis store, as the actor holds it. See the module docs.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The lanes with a step in flight, and the steps waiting behind it.
    lanes: FastMap<Lane, VecDeque<(u64, Step, Floors)>>,
    /// Where the steps of the hot path wait for their batch (`batch.rs`).
    batch: mpsc::UnboundedSender<batch::Job>,
    /// Rooms where this node has nobody any more, to unlist from its rooms once their lane is
    /// done: a member's drop may still be in flight there, and until it has filed the seat's
    /// grace period, the room must stay listed for a reap, should the node die meanwhile.
    unlist: FastMap<RoomCode, NodeId>,
    /// Whether this node counts itself alive (its beats are recorded), for `/healthz`.
    up: Arc<AtomicBool>,
}

impl RedisStore {
    /// Starts the store's tasks (the link, the bus, the watch) for node `node`, and returns the
    /// store and where its events arrive. Nothing is connected yet: the link connects in the
    /// background, and keeps trying while Redis is away.
    pub fn start(
        target: Target,
        node: NodeId,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> (RedisStore, mpsc::Receiver<RedisEvent>) {
        let (events, received) = mpsc::channel(EVENT_QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Link::new(target.clone(), Arc::clone(&up)));
        let scripts = Arc::new(Scripts::for_target(&target));
        let bus = bus::start(&target, node, events.clone(), Arc::clone(&metrics));
        tokio::spawn(Arc::clone(&link).supervise(events.clone(), Arc::clone(&metrics)));
        let watch = node::Watch {
            target,
            live: Arc::clone(&up),
            link: Arc::clone(&link),
            scripts: Arc::clone(&scripts),
            bus: bus.clone(),
            node,
            grace,
            events: events.clone(),
            metrics: Arc::clone(&metrics),
        };
        watch.start();
        let shared = Arc::new(Shared {
            link,
            live: Arc::clone(&up),
            scripts,
            bus,
            events,
            metrics,
        });
        let batch = batch::start(Arc::clone(&shared));
        let store = RedisStore {
            shared,
            batch,
            lanes: FastMap::default(),
            unlist: FastMap::default(),
            up,
        };
        (store, received)
    }

    /// Whether the node can serve: its link to Redis is up and its beats are recorded, so that
    /// the other nodes count it alive. False from the first missed beat (or the link's loss)
    /// until the next beat recorded with the link up.
    pub fn reachable(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.up)
    }

    /// On a Redis Cluster: the masters that did not answer the link's last check.
    pub fn shards_down(&self) -> Arc<std::sync::Mutex<Vec<String>>> {
        self.shared.link.shards_down()
    }

    /// Runs `step` once the steps before it in its lane are done; its outcome comes back as
    /// [`RedisEvent::Done`] with `op`. `floors`: how far the node has told the step's room.
    pub fn submit(&mut self, op: u64, step: Step, floors: Floors) {
        let lane = Lane::of(&step);
        if let Step::Create { code, .. } | Step::Join { code, .. } | Step::ResumeSeat { code, .. } =
            &step
        {
            // Entering again: the room stays listed (the step lists it anyway).
            self.unlist.remove(code);
        }
        if let Some(waiting) = self.lanes.get_mut(&lane) {
            waiting.push_back((op, step, floors));
            return;
        }
        self.lanes.insert(lane.clone(), VecDeque::new());
        self.spawn(op, lane, step, floors);
    }

    /// The step in flight in `lane` is done: the next one there may run.
    pub fn finished(&mut self, lane: Lane) {
        let Some(waiting) = self.lanes.get_mut(&lane) else {
            return;
        };
        match waiting.pop_front() {
            Some((op, step, floors)) => self.spawn(op, lane, step, floors),
            None => {
                self.lanes.remove(&lane);
                if let Lane::Room(code) = lane
                    && let Some(node) = self.unlist.remove(&code)
                {
                    self.unlist_now(node, code);
                }
            }
        }
    }

    fn spawn(&self, op: u64, lane: Lane, step: Step, floors: Floors) {
        let job = batch::Job {
            op,
            lane,
            step,
            floors,
        };
        if batch::is_batched(&job.step) {
            // Only fails once the batching task has stopped, with the runtime.
            let _ = self.batch.send(job);
        } else {
            tokio::spawn(Arc::clone(&self.shared).perform(job));
        }
    }

    /// The node has no member in room `code` any more: it stops listening there, and will
    /// unlist the room from its rooms (see [`RedisStore::unlist`]).
    ///
    /// Not at once: the member who went has its drop still to run (the actor submits it right
    /// after), and until the drop has held the seat and filed its grace period, the room must
    /// stay listed, for a reap to find the seat should the node die in between. So the store
    /// sends itself [`RedisEvent::Unlist`], which the actor hands back once it has submitted
    /// what goes with this.
    pub fn forget_room(&mut self, node: NodeId, code: RoomCode) {
        self.shared.bus.unsubscribe(code);
        if self
            .shared
            .events
            .try_send(RedisEvent::Unlist(code, node))
            .is_err()
        {
            self.unlist(node, code);
        }
    }

    /// Unlists room `code` from node `node`'s rooms once the room's steps in flight are done.
    pub fn unlist(&mut self, node: NodeId, code: RoomCode) {
        if self.lanes.contains_key(&Lane::Room(code)) {
            self.unlist.insert(code, node);
        } else {
            self.unlist_now(node, code);
        }
    }

    /// Takes room `code` off the list of node `node`'s rooms.
    fn unlist_now(&self, node: NodeId, code: RoomCode) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            if let Some(mut redis) = shared.link.connection() {
                let removed: redis::RedisResult<i64> = redis::cmd("SREM")
                    .arg(keys::node_rooms(node))
                    .arg(code.as_str())
                    .query_async(&mut redis)
                    .await;
                if let Err(err) = removed {
                    warn!(cause = %err, "could not unlist a room");
                }
            }
        });
    }

    /// Asks the node of `conn` to close it: its session was resumed on this node.
    pub fn kick_remote(&self, conn: Conn) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            if let Some(mut redis) = shared.link.connection() {
                let sent: redis::RedisResult<i64> = redis::cmd(shared.scripts.publish)
                    .arg(keys::node_control(conn.node))
                    .arg(conn.client.to_string())
                    .query_async(&mut redis)
                    .await;
                if let Err(err) = sent {
                    warn!(cause = %err, "could not ask another node to close a connection");
                }
            }
        });
    }

    /// Keeps the rooms and sessions of this node's connections from running out
    /// ([`scripts::ROOM_TTL`]).
    pub fn touch(&self, rooms: Vec<RoomCode>, sessions: Vec<SessionToken>) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let Some(mut redis) = shared.link.connection() else {
                return;
            };
            let ttl = scripts::millis(scripts::ROOM_TTL);
            for code in rooms {
                let touched: redis::RedisResult<i64> = shared
                    .scripts
                    .room_touch
                    .key(keys::room(code))
                    .key(keys::log(code))
                    .arg(ttl)
                    .invoke_async(&mut redis)
                    .await;
                if touched.is_err() {
                    break; // The link failed: the next touch will do.
                }
            }
            let renewals = sessions
                .iter()
                .map(|token| {
                    let mut renew = redis::cmd("PEXPIRE");
                    renew
                        .arg(keys::session(token))
                        .arg(scripts::millis(scripts::SESSION_TTL));
                    renew
                })
                .collect();
            if let Err(err) = redis.each(renewals).await {
                warn!(cause = %err, "could not renew the sessions' keys: the next touch will");
            }
        });
    }
}

impl Shared {
    /// Runs a step and reports its outcome to the actor.
    async fn perform(self: Arc<Self>, job: batch::Job) {
        let batch::Job {
            op,
            lane,
            step,
            floors,
        } = job;
        let (outcome, notices) = self.run(step, floors).await;
        let done = RedisEvent::Done {
            op,
            lane,
            outcome,
            notices,
        };
        // Only fails once the actor has stopped.
        let _ = self.events.send(done).await;
    }

    /// Runs one step, timing it; a step that fails or gets no answer in time is `Unavailable`.
    async fn run(&self, step: Step, floors: Floors) -> (Outcome, Vec<Notice>) {
        let entering = match &step {
            Step::Create { code, .. } | Step::Join { code, .. } | Step::ResumeSeat { code, .. } => {
                Some(*code)
            }
            _ => None,
        };
        // A member enters a room only on a node whose beats are recorded (its room list is one
        // the others would reap), and once this node hears the room, so that it misses none of
        // what happens there after it entered.
        if entering.is_some() && !self.live.load(Ordering::Relaxed) {
            self.metrics.redis.errors.increment(1);
            return (Outcome::Unavailable, Vec::new());
        }
        if let Some(code) = entering
            && !self.bus.subscribe(code).await
        {
            self.metrics.redis.errors.increment(1);
            return (Outcome::Unavailable, Vec::new());
        }
        let Some(mut redis) = self.link.connection() else {
            self.metrics.redis.errors.increment(1);
            return (Outcome::Unavailable, Vec::new());
        };
        let started = Instant::now();
        let ran = tokio::time::timeout(
            link::ANSWER_TIMEOUT,
            steps::run(&self.scripts, &mut redis, step, floors),
        )
        .await;
        self.metrics
            .redis
            .step_seconds
            .record(started.elapsed().as_secs_f64());
        match ran {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => {
                warn!(cause = %err, "a step failed in Redis");
                self.failed()
            }
            Err(_) => {
                warn!("a step got no answer from Redis in time");
                self.failed()
            }
        }
    }

    fn failed(&self) -> (Outcome, Vec<Notice>) {
        self.metrics.redis.errors.increment(1);
        self.link.report_trouble();
        (Outcome::Unavailable, Vec::new())
    }
}
