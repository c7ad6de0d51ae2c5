//! The `ChatServer` actor: the one owner of this node's connections, and the only one that
//! changes the state of record (through its store).
//!
//! Every connection handler talks to the actor through a cloneable [`ChatServerHandle`], which
//! wraps the sending side of one bounded mpsc channel of [`ServerCommand`]s. The actor takes the
//! commands one at a time, so each rule is applied to a consistent view of all sessions and
//! rooms without a single lock. It answers by queueing encoded messages on each connection's
//! own outbound queue, never by waiting for a client.
//!
//! The actor is one type, [`ChatServer`], whose methods are split by subject over the files of
//! this module, each an `impl ChatServer` block of its own:
//!
//! - this file: the commands, the handle, the actor's state, and its loop, which reads like a
//!   table of contents: a command or a timer comes in, and goes to the method that handles it;
//! - `sessions.rs`: a connection arrives, names itself, drops (its seat held for a resume, or
//!   given up), resumes a session, or is closed; read receipts;
//! - `rooms.rs`: create, join, chat, typing, leave;
//! - `steps.rs`: how a request becomes a step of the store, and what its outcome then does;
//! - `delivery.rs`: what each member is told of the events of its room, queueing frames without
//!   ever waiting, and dropping clients too slow to read them;
//! - `timers.rs`: the typing, naming and grace timers, behind one type;
//! - `remote/`: what changes when the store is Redis, shared with other nodes: steps in
//!   flight while the actor carries on, and requests that wait for their client's step
//!   (`mod.rs`); the rooms this node hears over pub/sub, and their repair when events were lost
//!   (`heard.rs`);
//! - `inspect.rs` (tests only): a copy of the state, and the invariants that must hold.
//!
//! The state of record (rooms, seats, what was said, sessions that can be resumed) is the
//! store's ([`crate::store`]); the actor keeps its connections ([`crate::connection`]). The
//! limits' bookkeeping is [`crate::limits::MessageLimits`].

mod delivery;
#[cfg(any(test, feature = "testing"))]
mod inspect;
mod remote;
mod rooms;
mod sessions;
mod steps;
#[cfg(test)]
mod tests;
mod timers;

#[cfg(any(test, feature = "testing"))]
pub use inspect::{RoomView, SessionView, Snapshot};

// The actor's maps use foldhash, the fast hasher `hashbrown` defaults to, seeded at random per
// process: a lookup costs a few nanoseconds instead of SipHash's tens, on every message.
use foldhash::HashMap as FastMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::Config;
use crate::connection::Connection;
use crate::error::{AppError, ErrorCode, Refusal};
use crate::limits::{MessageLimits, Verdict};
use crate::message::ClientMessage;
use crate::metrics::Metrics;
use crate::outbox::{self, Close};
use crate::store::redis::{RedisEvent, scripts::TOUCH_EVERY};
use crate::store::{Conn, MemoryStore, NodeId, Notice, RedisStore};
use crate::types::{ClientId, RoomCode, Username};
use remote::Remote;
use timers::{Expired, Timers};

/// How many commands may wait for the actor. When it is full, handlers wait to send, which in
/// turn stops them reading their sockets: back-pressure reaches the clients that send the most.
const COMMAND_QUEUE: usize = 1024;

/// The most commands the actor takes from its queue in one turn of its loop.
const COMMAND_BATCH: usize = 64;

/// How long the actor, once every handle is gone, waits for the steps it submitted to Redis (a
/// restarting node's last drops, which hold its members' seats).
const FINISH_STEPS: Duration = Duration::from_secs(3);

/// How often the bookkeeping steps that found Redis away are tried again (and at once when the
/// link comes back).
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The longest chat message, in characters (Unicode scalar values).
pub const MAX_CHAT_CHARS: usize = 4096;

/// What a connection handler can ask of the actor.
#[derive(Debug)]
pub enum ServerCommand {
    /// A WebSocket connection was established from `address`. The actor greets it with
    /// `connected` on `outbound`. The address is needed for the per-address failed-join limit.
    Connect {
        client_id: ClientId,
        address: IpAddr,
        outbound: outbox::Sender,
    },
    /// The connection ended, however it ended. The actor tells the peer, and forgets the client
    /// or, if it is in a room, holds its seat for the resume grace period.
    Disconnect { client_id: ClientId },
    /// The client sent a well-formed request: the seed design's commands, one per message type
    /// (`set_username`, `create_room`, `join_room`, `chat`, `typing`, `stop_typing`,
    /// `leave_room`), and `resume` and `read`.
    Request {
        client_id: ClientId,
        request: ClientMessage,
    },
    /// The client sent something that is not a request (bad JSON, a binary frame). The handler
    /// only reads bytes; deciding what to answer, and counting it, is the actor's job.
    Reject {
        client_id: ClientId,
        refusal: Refusal,
    },
}

/// The next event of the Redis store, or never, with the in-memory store.
async fn next_event(events: &mut Option<mpsc::Receiver<RedisEvent>>) -> Option<RedisEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Completes at `deadline`, or never if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A cheap, cloneable way to reach the actor. When the last handle is dropped, the actor's
/// channel closes and [`ChatServer::run`] returns.
#[derive(Debug, Clone)]
pub struct ChatServerHandle {
    commands: mpsc::Sender<ServerCommand>,
    /// With `--redis`: whether the link to Redis is up.
    store_up: Option<Arc<AtomicBool>>,
    /// With `--redis` on a Redis Cluster: the masters that do not answer.
    shards_down: Option<Arc<std::sync::Mutex<Vec<String>>>>,
}

impl ChatServerHandle {
    /// Whether the store can be reached: always, in memory; with `--redis`, while the link to
    /// Redis is up. `/healthz` says 503 when it cannot, so that a balancer sends new clients to
    /// another node.
    pub fn store_reachable(&self) -> bool {
        self.store_up
            .as_ref()
            .is_none_or(|up| up.load(Ordering::Relaxed))
    }

    /// With `--redis` on a Redis Cluster: the masters (their addresses) that do not answer
    /// this node. The rooms of their slots are unavailable until replicas take over; the node
    /// serves the others, so `/healthz` names them but still says 200.
    pub fn shards_down(&self) -> Vec<String> {
        self.shards_down
            .as_ref()
            .and_then(|down| down.lock().ok().map(|down| down.clone()))
            .unwrap_or_default()
    }

    /// Sends one command, waiting while the actor's queue is full. Fails only if the actor has
    /// stopped, which happens only once every handle is gone, or if it panicked.
    pub async fn send(&self, command: ServerCommand) -> Result<(), AppError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| AppError::ActorStopped)
    }
}

/// Where the state of record is kept.
#[derive(Debug)]
enum Store {
    /// In this process's memory: steps are applied at once.
    Memory(MemoryStore),
    /// In Redis, shared with other nodes: steps are submitted, and answered later.
    Redis(Box<RedisStore>),
}

/// The actor. Owns this node's connections and the store; see the module docs.
#[derive(Debug)]
pub struct ChatServer {
    /// Commands from every handle. The loop in [`ChatServer::run`] ends when all handles drop.
    commands: mpsc::Receiver<ServerCommand>,
    /// This node, among those that share the store.
    node: NodeId,
    /// Every connection of this node, named or not, in a room or not. Boxed: a hash map keeps
    /// up to twice as many slots as entries, so a slot should be a pointer rather than the
    /// whole record.
    connections: FastMap<ClientId, Box<Connection>>,
    /// The state of record: rooms, seats, what was said, sessions that can be resumed.
    store: Store,
    /// With `--redis`: the store's outcomes and the rooms' events, as they arrive.
    store_events: Option<mpsc::Receiver<RedisEvent>>,
    /// With `--redis`: the steps in flight and what waits for them, and the rooms this node
    /// hears. Empty with the in-memory store.
    remote: Remote,
    /// What the current step told others, waiting to be delivered once its outcome is handled.
    notices: Vec<Notice>,
    /// The typing, naming and grace timers.
    timers: Timers,
    /// How long a `typing` lasts without being repeated.
    typing_timeout: Duration,
    /// How long a client may stay without a username, or `None` for no limit.
    username_timeout: Option<Duration>,
    /// `--resume-grace`: how long a room member whose connection dropped keeps its seat. Zero
    /// means no grace at all: protocol v1's immediate `peer_left`.
    resume_grace: Duration,
    /// Capacity of each connection's outbound queue.
    outbound_queue: usize,
    /// `--rate-limit`, `--rate-burst` and `--max-failed-joins`, and the failed joins counted
    /// per address.
    limits: MessageLimits,
    /// What a client over the rate limit is told; made once, since it names the limit.
    rate_refusal: Refusal,
    /// Clients whose queue was found full while handling the current event. They are
    /// disconnected once the event is done, not in the middle of it, so a rule that is sending
    /// to a room never sees that room change under it.
    too_slow: Vec<ClientId>,
    /// Counters for `/metrics`.
    metrics: Arc<Metrics>,
}

impl ChatServer {
    /// Creates the actor and its first handle. The caller spawns [`ChatServer::run`].
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> (ChatServer, ChatServerHandle) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let rate_refusal = Refusal::new(
            ErrorCode::RateLimited,
            format!(
                "Too many messages: at most {} a second. This one was dropped.",
                config.rate_limit
            ),
        );
        let node = NodeId::random();
        let (store, store_events, store_up, shards_down) = match &config.redis {
            None => (
                Store::Memory(MemoryStore::new(
                    config.max_stored_bytes,
                    Arc::clone(&metrics),
                )),
                None,
                None,
                None,
            ),
            Some(client) => {
                let (store, events) = RedisStore::start(
                    client.clone(),
                    node,
                    config.resume_grace,
                    Arc::clone(&metrics),
                );
                let up = store.reachable();
                let down = store.shards_down();
                (
                    Store::Redis(Box::new(store)),
                    Some(events),
                    Some(up),
                    Some(down),
                )
            }
        };
        let server = ChatServer {
            limits: MessageLimits::new(
                config.rate_limit,
                config.rate_burst,
                config.max_failed_joins,
            ),
            rate_refusal,
            username_timeout: (!config.username_timeout.is_zero())
                .then_some(config.username_timeout),
            commands: commands_rx,
            node,
            connections: FastMap::default(),
            store,
            store_events,
            remote: Remote::default(),
            notices: Vec::new(),
            timers: Timers::default(),
            typing_timeout: config.typing_timeout,
            outbound_queue: config.outbound_queue.max(1),
            too_slow: Vec::new(),
            resume_grace: config.resume_grace,
            metrics,
        };
        (
            server,
            ChatServerHandle {
                commands: commands_tx,
                store_up,
                shards_down,
            },
        )
    }

    /// Capacity to give each client's outbound channel (see [`Config::outbound_queue`]).
    pub fn outbound_queue(&self) -> usize {
        self.outbound_queue
    }

    /// Handles commands and timers until every handle has been dropped (and, with `--redis`,
    /// until the steps still in flight are done, or `FINISH_STEPS` has passed).
    pub async fn run(mut self) {
        // Commands are taken in batches: under load many are waiting at once, and one turn of
        // this loop (the `select!`, polling the timers, going to sleep and waking up) is then
        // paid once for all of them.
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        let mut store_events = self.store_events.take();
        let mut touch = tokio::time::interval(TOUCH_EVERY);
        touch.tick().await; // The first tick is now: nothing to touch yet.
        let mut retry = tokio::time::interval(RETRY_EVERY);
        // Once every handle is gone: until when the steps in flight may take to finish.
        let mut closing: Option<Instant> = None;
        loop {
            // The event sources: commands from the handlers; the actor's timers (typing that
            // runs out, a name not chosen in time, a grace period that ends), not polled at all
            // while none is pending (the `if` guard); and with `--redis`, the store's outcomes
            // and rooms' events, and the touch that keeps this node's rooms alive in Redis.
            tokio::select! {
                received = self.commands.recv_many(&mut batch, COMMAND_BATCH), if closing.is_none() => {
                    if received == 0 {
                        // Every handle is gone.
                        closing = Some(Instant::now() + FINISH_STEPS);
                    }
                    for command in batch.drain(..) {
                        self.handle(command);
                    }
                }
                expired = self.timers.next(), if !self.timers.is_empty() => match expired {
                    Expired::Typing(id) => self.typing_expired(id),
                    Expired::Naming(id) => self.username_overdue(id),
                    Expired::Grace(code, token, deadline) => self.grace_expired(code, token, deadline),
                },
                Some(event) = next_event(&mut store_events) => self.store_event(event),
                _ = touch.tick(), if store_events.is_some() => self.touch(),
                _ = retry.tick(), if self.remote.has_retries() => self.retry_bookkeeping(),
                () = sleep_until(closing) => break,
            }
            self.disconnect_slow_consumers();
            if closing.is_some() && self.remote.is_idle() {
                break;
            }
        }
        debug!("all handles dropped; chat server actor stopped");
    }

    /// Handles one command as [`ChatServer::run`] does: applies it to the state, then
    /// disconnects whoever it found too slow. Public so that the rules can be tested without
    /// sockets.
    pub fn handle(&mut self, command: ServerCommand) {
        self.apply(command);
        self.disconnect_slow_consumers();
    }

    fn apply(&mut self, command: ServerCommand) {
        match command {
            ServerCommand::Connect {
                client_id,
                address,
                outbound,
            } => self.connect(client_id, address, outbound),
            ServerCommand::Disconnect { client_id } => {
                // With `--redis`, after the step its client is waiting for.
                if !self.wait_for_step(client_id, remote::Waiting::Disconnect) {
                    self.connection_lost(client_id);
                }
            }
            ServerCommand::Request { client_id, request } => {
                // A forgotten client (dropped as a flooder, say) may still have requests on
                // their way: `within_rate_limit` ignores them.
                if !self.within_rate_limit(client_id) {
                    return;
                }
                // With `--redis`, a request waits for the step its client is waiting for, so
                // that a client's requests are handled in the order it sent them.
                let Some(request) = self.queue_behind_step(client_id, request) else {
                    return;
                };
                if let Err(refusal) = self.handle_request(client_id, request) {
                    self.refuse(client_id, &refusal);
                }
            }
            ServerCommand::Reject { client_id, refusal } => {
                // Counted against the rate limit like any message: garbage costs us too.
                if self.within_rate_limit(client_id) {
                    self.refuse(client_id, &refusal);
                }
            }
        }
    }

    /// Whether a message from `id` is to be handled: the client is known and under its rate
    /// limit. Every message counts, requests and garbage alike.
    ///
    /// Over the limit, the message is dropped with `RATE_LIMITED`. A client that keeps going
    /// also empties its second bucket, of refusals, and is then disconnected: its write task
    /// sends what is queued, the last `RATE_LIMITED` included, then closes with 1008.
    fn within_rate_limit(&mut self, id: ClientId) -> bool {
        let now = Instant::now();
        let Some(connection) = self.connections.get_mut(&id) else {
            // Already closed (dropped as a flooder, say) but its reader had more on the way.
            return false;
        };
        let verdict = self.limits.check_message(&mut connection.limits, now);
        if verdict == Verdict::Allowed {
            return true;
        }
        if verdict == Verdict::Flooding {
            warn!(client = %id, "disconnecting a client that keeps sending over the rate limit");
            self.metrics.flooders_disconnected.increment(1);
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                "Far too many messages, for too long: closing the connection.",
            );
            self.refuse(id, &refusal);
            // A flooder keeps no seat for a resume: its peer gets `peer_left` at once.
            self.close_connection(id, &Close::FLOODING, Duration::ZERO);
        } else {
            let refusal = self.rate_refusal.clone();
            self.refuse(id, &refusal);
        }
        false
    }

    pub(super) fn handle_request(
        &mut self,
        id: ClientId,
        request: ClientMessage,
    ) -> Result<(), Refusal> {
        match request {
            ClientMessage::SetUsername { username } => self.set_username(id, &username),
            ClientMessage::CreateRoom {
                encrypted,
                key_check,
            } => self.create_room(id, encrypted, key_check.as_deref()),
            ClientMessage::JoinRoom { room_code } => self.join_room(id, &room_code),
            ClientMessage::Chat {
                content,
                encrypted,
                client_msg_id,
            } => self.chat(id, content, encrypted, client_msg_id),
            ClientMessage::Typing => self.typing(id),
            ClientMessage::StopTyping => self.stop_typing(id),
            ClientMessage::LeaveRoom => self.leave_room(id),
            ClientMessage::Resume {
                session_token,
                last_id,
            } => self.resume(id, &session_token, last_id),
            ClientMessage::Read { up_to } => self.read(id, up_to),
        }
    }

    // Lookups shared by every subject.

    /// The connection `id` as the store knows it.
    fn conn(&self, id: ClientId) -> Conn {
        Conn {
            client: id,
            node: self.node,
        }
    }

    fn connection(&self, id: ClientId) -> Result<&Connection, Refusal> {
        Ok(self.connections.get(&id).ok_or(ErrorCode::InternalError)?)
    }

    /// Checks that `id` may create or join a room, and returns its name.
    fn check_can_enter_room(&self, id: ClientId) -> Result<Username, Refusal> {
        let connection = self.connection(id)?;
        let username = connection.name.clone().ok_or(ErrorCode::UsernameRequired)?;
        if connection.room.is_some() {
            return Err(ErrorCode::AlreadyInRoom.into());
        }
        Ok(username)
    }

    /// The room `id` is in and its name, or `NOT_IN_ROOM`.
    fn membership(&self, id: ClientId) -> Result<(RoomCode, Username), Refusal> {
        let connection = self.connection(id)?;
        let code = connection.room.ok_or(ErrorCode::NotInRoom)?;
        // Joining a room requires a name, and the name cannot change inside a room.
        let username = connection.name.clone().ok_or(ErrorCode::InternalError)?;
        Ok((code, username))
    }
}
