//! The `ChatServer` actor: the one owner of all chat state.
//!
//! Every connection handler talks to the actor through a cloneable [`ChatServerHandle`], which
//! wraps the sending side of one bounded mpsc channel of [`ServerCommand`]s. The actor takes the
//! commands one at a time, so each rule is applied to a consistent view of all clients and rooms
//! without a single lock. It answers by queueing encoded messages on each client's own outbound
//! channel, never by waiting for a client.

use std::collections::HashMap;

// The actor's maps use foldhash, the fast hasher `hashbrown` defaults to, seeded at random per
// process: a lookup costs a few nanoseconds instead of SipHash's tens, on every message.
use foldhash::HashMap as FastMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::DelayQueue;
use tracing::{debug, warn};

use crate::client::{Client, Close};
use crate::config::Config;
use crate::error::{AppError, ErrorCode, Refusal, SendError};
use crate::limits::{MessageLimits, Verdict, limit_key};
use crate::message::{self, ChatMessage, ClientMessage, LeaveReason, ServerMessage};
use crate::metrics::Metrics;
use crate::outbox;
use crate::room::{Room, StoredChat};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// How many commands may wait for the actor. When it is full, handlers wait to send, which in
/// turn stops them reading their sockets: back-pressure reaches the clients that send the most.
const COMMAND_QUEUE: usize = 1024;

/// The most commands the actor takes from its queue in one turn of its loop.
const COMMAND_BATCH: usize = 64;

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
    /// The client sent a well-formed request (`set_username`, `create_room`, `join_room`, `chat`,
    /// `typing`, `stop_typing` or `leave_room`: the seed design's commands, one per message type).
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

/// A cheap, cloneable way to reach the actor. When the last handle is dropped, the actor's
/// channel closes and [`ChatServer::run`] returns.
#[derive(Debug, Clone)]
pub struct ChatServerHandle {
    commands: mpsc::Sender<ServerCommand>,
}

impl ChatServerHandle {
    /// Sends one command, waiting while the actor's queue is full. Fails only if the actor has
    /// stopped, which happens only once every handle is gone, or if it panicked.
    pub async fn send(&self, command: ServerCommand) -> Result<(), AppError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| AppError::ActorStopped)
    }
}

/// The actor. Owns all clients and rooms; see the module docs.
#[derive(Debug)]
pub struct ChatServer {
    /// Commands from every handle. The loop in [`ChatServer::run`] ends when all handles drop.
    commands: mpsc::Receiver<ServerCommand>,
    /// Every connected client, named or not, in a room or not, and every held session. Boxed:
    /// a hash map keeps up to twice as many slots as entries, so a slot should be a pointer
    /// rather than the whole record.
    clients: FastMap<ClientId, Box<Client>>,
    /// Every live room. A room is removed the moment its last member goes.
    rooms: FastMap<RoomCode, Room>,
    /// One timer per typing member, firing `typing_timeout` after its last `typing`. A single
    /// `DelayQueue` polled by the actor's loop instead of a task per timer: nothing to spawn,
    /// nothing to cancel from outside, and the expiry is handled like any other event.
    typing_timers: DelayQueue<ClientId>,
    /// How long a `typing` lasts without being repeated.
    typing_timeout: Duration,
    /// Capacity of each client's outbound queue.
    outbound_queue: usize,
    /// `--rate-limit`, `--rate-burst` and `--max-failed-joins`, and the failed joins counted
    /// per address.
    limits: MessageLimits,
    /// What a client over the rate limit is told; made once, since it names the limit.
    rate_refusal: Refusal,
    /// How long a client may stay without a username, or `None` for no limit.
    username_timeout: Option<Duration>,
    /// One timer per unnamed client, firing `username_timeout` after it connected. Like the
    /// typing timers: one `DelayQueue` polled by the actor's loop, no task per timer.
    naming_timers: DelayQueue<ClientId>,
    /// Clients whose queue was found full while handling the current event. They are
    /// disconnected once the event is done, not in the middle of it, so a rule that is sending
    /// to a room never sees that room change under it.
    too_slow: Vec<ClientId>,
    /// Which client holds each session: the token a `resume` presents, to the client it names.
    sessions: FastMap<SessionToken, ClientId>,
    /// `--resume-grace`: how long a room member whose connection dropped keeps its seat. Zero
    /// means no grace at all: protocol v1's immediate `peer_left`.
    resume_grace: Duration,
    /// One timer per held session, firing when its grace period is over. Like the typing
    /// timers: one `DelayQueue` polled by the actor's loop, no task per timer.
    grace_timers: DelayQueue<ClientId>,
    /// What all rooms' logs cost together ([`Room::stored_bytes`]).
    stored_bytes: usize,
    /// `--max-stored-bytes`: the most [`ChatServer::stored_bytes`] may reach, or `None` for no
    /// bound but each room's own.
    max_stored_bytes: Option<usize>,
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
        let server = ChatServer {
            limits: MessageLimits::new(
                config.rate_limit,
                config.rate_burst,
                config.max_failed_joins,
            ),
            rate_refusal,
            username_timeout: (!config.username_timeout.is_zero())
                .then_some(config.username_timeout),
            naming_timers: DelayQueue::new(),
            commands: commands_rx,
            clients: FastMap::default(),
            rooms: FastMap::default(),
            typing_timers: DelayQueue::new(),
            typing_timeout: config.typing_timeout,
            outbound_queue: config.outbound_queue.max(1),
            too_slow: Vec::new(),
            sessions: FastMap::default(),
            resume_grace: config.resume_grace,
            grace_timers: DelayQueue::new(),
            stored_bytes: 0,
            max_stored_bytes: (config.max_stored_bytes > 0).then_some(config.max_stored_bytes),
            metrics,
        };
        (
            server,
            ChatServerHandle {
                commands: commands_tx,
            },
        )
    }

    /// Capacity to give each client's outbound channel (see [`Config::outbound_queue`]).
    pub fn outbound_queue(&self) -> usize {
        self.outbound_queue
    }

    /// Handles commands and typing timeouts until every handle has been dropped.
    pub async fn run(mut self) {
        // Commands are taken in batches: under load many are waiting at once, and one turn of
        // this loop (the `select!`, polling the timers, going to sleep and waking up) is then
        // paid once for all of them.
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        loop {
            // Four event sources: commands from the handlers, a typing timer running out, a
            // client's time to choose a name running out, or a held session's grace period
            // ending. A timer queue with nothing in it is not polled at all (the `if` guards);
            // `DelayQueue::next` would only say `None`, which the `Some(..)` pattern skips.
            tokio::select! {
                received = self.commands.recv_many(&mut batch, COMMAND_BATCH) => {
                    if received == 0 {
                        break; // Every handle is gone.
                    }
                    for command in batch.drain(..) {
                        self.handle(command);
                    }
                }
                Some(expired) = self.typing_timers.next(), if !self.typing_timers.is_empty() => {
                    self.typing_expired(expired.into_inner());
                }
                Some(expired) = self.naming_timers.next(), if !self.naming_timers.is_empty() => {
                    self.username_overdue(expired.into_inner());
                }
                Some(expired) = self.grace_timers.next(), if !self.grace_timers.is_empty() => {
                    self.grace_expired(expired.into_inner());
                }
            }
            self.disconnect_slow_consumers();
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
            ServerCommand::Disconnect { client_id } => self.connection_lost(client_id, None),
            ServerCommand::Request { client_id, request } => {
                // A forgotten client (dropped as too slow, say) may still have requests on
                // their way: `admit` ignores them.
                if !self.admit(client_id) {
                    return;
                }
                if let Err(refusal) = self.handle_request(client_id, request) {
                    self.refuse(client_id, &refusal);
                }
            }
            ServerCommand::Reject { client_id, refusal } => {
                // Counted against the rate limit like any message: garbage costs us too.
                if self.admit(client_id) {
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
    fn admit(&mut self, id: ClientId) -> bool {
        let now = Instant::now();
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        if !client.is_connected() {
            // Its connection was dropped (too slow) but its reader had more on the way.
            return false;
        }
        let verdict = self.limits.check_message(&mut client.limits, now);
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
            self.forget(id, Some(&Close::FLOODING));
        } else {
            let refusal = self.rate_refusal.clone();
            self.refuse(id, &refusal);
        }
        false
    }

    /// How many clients are connected (for tests and the soak check).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A copy of who is where, for tests that hold the actor to a model of the protocol.
    #[doc(hidden)]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            clients: self
                .clients
                .iter()
                .map(|(id, client)| {
                    let view = ClientView {
                        username: client.username.as_ref().map(|name| name.to_string()),
                        room: client.room,
                        typing: client.typing.is_some(),
                    };
                    (*id, view)
                })
                .collect(),
            rooms: self
                .rooms
                .iter()
                .map(|(code, room)| {
                    let view = RoomView {
                        host: room.host(),
                        guest: room.guest(),
                        history: room.history().map(|message| message.id).collect(),
                    };
                    (*code, view)
                })
                .collect(),
        }
    }

    /// Checks the rules that must hold between any two events, and says which one is broken:
    /// every room has one or two members, who are known clients that agree they are in it;
    /// every client in a room is one of its members and has a name; only members type; a
    /// named client has no naming deadline; each timer queue (typing, naming, grace) holds one
    /// entry per client that needs one; every client's session token leads to it, and a held
    /// session has a grace timer; no slow consumer is left waiting to be dropped; and every
    /// room's log is in order, within its bounds and counted right, with the rooms' total
    /// within `--max-stored-bytes`.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        for (code, room) in &self.rooms {
            if room.code() != *code {
                return Err(format!("room {code} is filed under another code"));
            }
            let members: Vec<ClientId> = room.members().collect();
            if members.len() == 2 && members[0] == members[1] {
                return Err(format!("room {code} has the same client in both seats"));
            }
            for member in &members {
                let Some(client) = self.clients.get(member) else {
                    return Err(format!("room {code} has a member that is not connected"));
                };
                if client.room != Some(*code) {
                    return Err(format!(
                        "a member of {code} thinks it is in {:?}",
                        client.room
                    ));
                }
                if client.username.is_none() {
                    return Err(format!("a member of {code} has no name"));
                }
            }
        }
        for (id, client) in &self.clients {
            if client.id != *id {
                return Err(format!("client {id} is filed under another id"));
            }
            if let Some(code) = client.room {
                let Some(room) = self.rooms.get(&code) else {
                    return Err(format!("client {id} is in {code}, which does not exist"));
                };
                if !room.members().any(|member| member == *id) {
                    return Err(format!("client {id} is in {code}, which does not list it"));
                }
            } else if client.typing.is_some() {
                return Err(format!("client {id} types outside a room"));
            }
            if client.username.is_some() && client.naming_deadline.is_some() {
                return Err(format!(
                    "client {id} is named but still has a naming deadline"
                ));
            }
        }
        if self.typing_timers.len() != self.clients.values().filter(|c| c.typing.is_some()).count()
        {
            return Err("typing timers and typing members differ".into());
        }
        if self.naming_timers.len()
            != self
                .clients
                .values()
                .filter(|c| c.naming_deadline.is_some())
                .count()
        {
            return Err("naming timers and unnamed clients differ".into());
        }
        if !self.too_slow.is_empty() {
            return Err("slow consumers are left over after an event".into());
        }
        // Sessions: one per client, under its own token; a held one has a grace timer.
        if self.sessions.len() != self.clients.len() {
            return Err("sessions and clients differ in number".into());
        }
        for (id, client) in &self.clients {
            if self.sessions.get(&client.session_token) != Some(id) {
                return Err(format!("client {id}'s token does not lead to it"));
            }
            if client.grace.is_some() == client.is_connected() {
                return Err(format!(
                    "client {id} is held without a grace timer, or the reverse"
                ));
            }
        }
        if self.grace_timers.len() != self.clients.values().filter(|c| c.grace.is_some()).count() {
            return Err("grace timers and held sessions differ".into());
        }
        // Storage: each room's log is sound, and the total is theirs and within the budget.
        let mut stored = 0;
        for room in self.rooms.values() {
            room.check_log()?;
            stored += room.stored_bytes();
        }
        if stored != self.stored_bytes {
            return Err(format!(
                "rooms hold {stored} stored bytes, the total says {}",
                self.stored_bytes
            ));
        }
        if self.max_stored_bytes.is_some_and(|budget| stored > budget) {
            return Err(format!("{stored} stored bytes are over the budget"));
        }
        Ok(())
    }

    fn handle_request(&mut self, id: ClientId, request: ClientMessage) -> Result<(), Refusal> {
        match request {
            ClientMessage::SetUsername { username } => self.set_username(id, &username),
            ClientMessage::CreateRoom => self.create_room(id),
            ClientMessage::JoinRoom { room_code } => self.join_room(id, &room_code),
            ClientMessage::Chat { content } => self.chat(id, content),
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

    fn connect(&mut self, id: ClientId, address: IpAddr, outbound: outbox::Sender) {
        debug!(client = %id, "client connected");
        let now = Instant::now();
        let mut client = Client::new(id, limit_key(address), outbound);
        client.limits = self.limits.new_client(now);
        if let Some(timeout) = self.username_timeout {
            client.naming_deadline = Some(self.naming_timers.insert(id, timeout));
        }
        let greeting = ServerMessage::Connected {
            client_id: id,
            session_token: &client.session_token,
        }
        .encode();
        self.sessions.insert(client.session_token.clone(), id);
        self.clients.insert(id, Box::new(client));
        self.metrics.connections.increment(1.0);
        self.send(id, greeting);
    }

    /// A client's connection ended, or is to end with `close` (a slow consumer). A room member
    /// keeps its seat for the grace period, so that a new connection can `resume` the session;
    /// anyone else is forgotten at once.
    fn connection_lost(&mut self, id: ClientId, close: Option<&'static Close>) {
        let Some(client) = self.clients.get(&id) else {
            return; // Already forgotten (dropped as a flooder, or its session resumed elsewhere).
        };
        if !client.is_connected() {
            return; // Already held: it was dropped as too slow, and its handler has now ended.
        }
        if self.resume_grace.is_zero() || client.room.is_none() {
            self.forget(id, close);
            return;
        }
        // The peer sees typing end before it sees the member go.
        self.end_typing(id);
        let grace = self.grace_timers.insert(id, self.resume_grace);
        if let Some(client) = self.clients.get_mut(&id) {
            client.detach(close);
            client.grace = Some(grace);
        }
        self.metrics.connections.decrement(1.0);
        debug!(client = %id, "connection lost; seat held for a resume");
        if let Ok((code, username)) = self.membership(id) {
            let notice = ServerMessage::PeerDisconnected {
                username: &username,
            };
            self.send_to_peer(code, id, notice.encode());
        }
    }

    /// A held session's grace period ended without a resume: the member is gone for good.
    fn grace_expired(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        if let Some(client) = self.clients.get_mut(&id) {
            client.grace = None;
            debug!(client = %id, "resume grace period over");
            self.forget(id, None);
        }
    }

    /// Forgets a client for good: it leaves its room (the peer gets `peer_left` with
    /// `"disconnected"`), its session can no longer be resumed, and its connection, if it still
    /// has one, is closed with `close`.
    fn forget(&mut self, id: ClientId, close: Option<&'static Close>) {
        let Some(connected) = self.clients.get(&id).map(|client| client.is_connected()) else {
            return; // Already gone.
        };
        self.leave(id, LeaveReason::Disconnected);
        if let Some(mut client) = self.clients.remove(&id) {
            client.detach(close);
            // Timer keys still in the client are pending (an expired key is taken out of the
            // client before anything else), so they are there to remove.
            if let Some(key) = client.naming_deadline {
                self.naming_timers.remove(&key);
            }
            if let Some(key) = client.grace {
                self.grace_timers.remove(&key);
            }
            self.sessions.remove(&client.session_token);
        }
        if connected {
            self.metrics.connections.decrement(1.0);
        }
        debug!(client = %id, "client forgotten");
    }

    fn set_username(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let client = self.client_mut(id)?;
        if client.room.is_some() {
            return Err(ErrorCode::AlreadyInRoom.into());
        }
        let username = Username::parse(input)?;
        let reply = ServerMessage::UsernameSet {
            username: &username,
        }
        .encode();
        client.username = Some(username);
        // Named in time: the client may now stay as long as it answers the heartbeat.
        if let Some(key) = client.naming_deadline.take() {
            self.naming_timers.remove(&key);
        }
        self.send(id, reply);
        Ok(())
    }

    fn create_room(&mut self, id: ClientId) -> Result<(), Refusal> {
        self.check_can_enter_room(id)?;
        // 887 million codes: a collision with a live room is rare, and retrying settles it.
        let code = loop {
            let code = RoomCode::random();
            if !self.rooms.contains_key(&code) {
                break code;
            }
        };
        self.rooms.insert(code, Room::new(code, id));
        let client = self.client_mut(id)?;
        client.room = Some(code);
        client.history_from = 1;
        self.metrics.rooms.increment(1.0);
        debug!(client = %id, room = %code, "room created");
        self.send(id, ServerMessage::RoomCreated { room_code: code }.encode());
        Ok(())
    }

    /// Joins a room, counting the attempts that probe a code in vain against the failed-join
    /// limit: `ROOM_NOT_FOUND`, `ROOM_FULL` and `USERNAME_TAKEN`. A malformed code
    /// (`INVALID_ROOM_CODE`) probes nothing and is not counted, nor are the refusals that do not
    /// depend on the code at all (`USERNAME_REQUIRED`, `ALREADY_IN_ROOM`).
    fn join_room(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let joiner_name = self.check_can_enter_room(id)?;
        let code = RoomCode::parse(input)?;
        // Refused before the code is looked at, so that an attempt over the limit reveals
        // nothing about whether the room exists.
        self.check_failed_joins(id)?;
        let joined = self.join_existing_room(id, code, &joiner_name);
        if let Err(refusal) = &joined
            && matches!(
                refusal.code,
                ErrorCode::RoomNotFound | ErrorCode::RoomFull | ErrorCode::UsernameTaken
            )
        {
            self.count_failed_join(id);
        }
        joined
    }

    /// `RATE_LIMITED` if `id`, or its address, has used up its failed joins for now.
    fn check_failed_joins(&mut self, id: ClientId) -> Result<(), Refusal> {
        let client = self.clients.get_mut(&id).ok_or(ErrorCode::InternalError)?;
        let address = client.address;
        if self
            .limits
            .may_fail_a_join(&mut client.limits, address, Instant::now())
        {
            Ok(())
        } else {
            debug!(client = %id, "too many failed joins");
            Err(Refusal::new(
                ErrorCode::RateLimited,
                "Too many room codes that did not work: wait a minute before trying again.",
            ))
        }
    }

    /// Takes one failed join from `id`'s allowance and from its address's.
    fn count_failed_join(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(&id) {
            let address = client.address;
            self.limits
                .count_failed_join(&mut client.limits, address, Instant::now());
        }
    }

    /// The part of `join_room` that depends on the room: whether it exists, has a free seat,
    /// and a host with another name.
    fn join_existing_room(
        &mut self,
        id: ClientId,
        code: RoomCode,
        joiner_name: &Username,
    ) -> Result<(), Refusal> {
        let room = self.rooms.get(&code).ok_or(ErrorCode::RoomNotFound)?;
        if room.is_full() {
            return Err(ErrorCode::RoomFull.into());
        }
        let host = room.host();
        let host_name = self.username(host)?;
        if host_name == *joiner_name {
            return Err(ErrorCode::UsernameTaken.into());
        }

        // The history, and the `room_joined` carrying what fits of it; the rest follows it.
        let history: Vec<Utf8Bytes> = room.history().map(|chat| chat.frame.clone()).collect();
        let welcome = message::with_history(&history, |history, _| ServerMessage::RoomJoined {
            room_code: code,
            peer: &host_name,
            history,
        });
        let announcement = ServerMessage::PeerJoined {
            username: joiner_name,
        }
        .encode();
        let host_away = !self
            .clients
            .get(&host)
            .is_some_and(|client| client.is_connected());
        let history_from = self.room_mut(code)?.seat(id);
        let joiner = self.client_mut(id)?;
        joiner.room = Some(code);
        joiner.history_from = history_from;
        debug!(client = %id, room = %code, "room joined");
        self.send_all(id, welcome);
        self.send(host, announcement);
        if host_away {
            // The host's connection dropped and it may still resume: say so, as its peer would
            // have heard had it been here.
            let notice = ServerMessage::PeerDisconnected {
                username: &host_name,
            };
            self.send(id, notice.encode());
        }
        Ok(())
    }

    fn chat(&mut self, id: ClientId, content: String) -> Result<(), Refusal> {
        let (code, from) = self.membership(id)?;
        if content.trim().is_empty() {
            return Err(ErrorCode::EmptyMessage.into());
        }
        // A string has at least as many bytes as characters, so only long ones need counting.
        if content.len() > MAX_CHAT_CHARS && content.chars().count() > MAX_CHAT_CHARS {
            return Err(ErrorCode::MessageTooLong.into());
        }
        // The peer must see the typing indicator go away before the message it turned into.
        self.end_typing(id);

        let room = self.room_mut(code)?;
        let message = ChatMessage {
            id: room.next_id(),
            from,
            content,
            timestamp: unix_millis(),
        };
        // Encoded once; the room keeps the frame, and each member's queue gets a
        // reference-counted copy of the same bytes.
        let frame = ServerMessage::Chat(&message).encode();
        let stored = StoredChat {
            id: message.id,
            frame: frame.clone(),
        };
        let grown = room.store(stored);
        let members = room.members();
        self.stored_bytes = self.stored_bytes.saturating_add_signed(grown);
        for member in members {
            self.send(member, frame.clone());
        }
        self.metrics.messages_relayed.increment(1);
        self.keep_to_storage_budget();
        Ok(())
    }

    fn typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, username) = self.membership(id)?;
        // Field by field rather than through `client_mut`, so that the client and the timers can
        // be borrowed at the same time.
        let client = self.clients.get_mut(&id).ok_or(ErrorCode::InternalError)?;
        if let Some(key) = &client.typing {
            // Already typing: the peer knows; only push the deadline back.
            self.typing_timers.reset(key, self.typing_timeout);
            return Ok(());
        }
        client.typing = Some(self.typing_timers.insert(id, self.typing_timeout));
        self.send_to_peer(
            code,
            id,
            ServerMessage::Typing {
                username: &username,
            }
            .encode(),
        );
        Ok(())
    }

    fn stop_typing(&mut self, id: ClientId) -> Result<(), Refusal> {
        self.membership(id)?;
        self.end_typing(id);
        Ok(())
    }

    /// Takes over the session `token` names, for the new connection `id` (see
    /// [`ClientMessage::Resume`]). The session keeps everything but its connection: name, room,
    /// seat, read receipt and limits; `id`'s own fresh session is dropped.
    fn resume(&mut self, id: ClientId, token: &str, last_id: u64) -> Result<(), Refusal> {
        let fresh = self.clients.get(&id).ok_or(ErrorCode::InternalError)?;
        if fresh.username.is_some() || fresh.room.is_some() {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "`resume` must be the first message on a new connection.",
            ));
        }
        let token = SessionToken::from(token);
        let old_id = match self.sessions.get(&token) {
            Some(&old_id) if old_id != id => old_id,
            _ => return Err(ErrorCode::SessionExpired.into()),
        };
        // A session that never chose a name holds nothing worth resuming.
        if self
            .clients
            .get(&old_id)
            .is_none_or(|old| old.username.is_none())
        {
            return Err(ErrorCode::SessionExpired.into());
        }
        // If the old connection is still open, its typing ends with it.
        self.end_typing(old_id);

        let (Some(mut fresh), Some(mut session)) =
            (self.clients.remove(&id), self.clients.remove(&old_id))
        else {
            return Err(ErrorCode::InternalError.into());
        };
        if let Some(key) = fresh.naming_deadline.take() {
            self.naming_timers.remove(&key);
        }
        if let Some(key) = session.grace.take() {
            self.grace_timers.remove(&key);
        }
        self.sessions.remove(&fresh.session_token);
        self.sessions.insert(token, id);
        let old_connection = session.attach(fresh.take_queue());
        session.id = id;
        if let Some(code) = session.room
            && let Some(room) = self.rooms.get_mut(&code)
        {
            room.replace(old_id, id);
        }
        let username = session.username.clone();
        let room_code = session.room;
        let history_from = session.history_from;
        self.clients.insert(id, session);

        if let Some(old_connection) = old_connection {
            // Still open: another device or tab, or a connection that is dead but not yet
            // noticed. Its write task sends what is queued, then closes with 4000; the close
            // needs no room in the queue, so a full one cannot turn it into anything else.
            old_connection.close(&Close::TAKEN_OVER);
            self.metrics.connections.decrement(1.0);
        }
        debug!(client = %id, previous = %old_id, "session resumed");

        // The reply: where the session stands, and every message it may have missed, back to
        // when it entered the room; what a storage bound dropped meanwhile is counted as lost.
        let room = room_code.and_then(|code| self.rooms.get(&code));
        let peer = room
            .and_then(|room| room.peer_of(id))
            .and_then(|peer| self.clients.get(&peer));
        let peer_name = peer.and_then(|peer| peer.username.clone());
        let peer_read = peer.map_or(0, |peer| peer.read_up_to);
        let wanted_from = last_id.saturating_add(1).max(history_from);
        let (missed, lost): (Vec<Utf8Bytes>, u64) = match room {
            Some(room) => (
                room.messages_from(wanted_from)
                    .map(|chat| chat.frame.clone())
                    .collect(),
                (room.lost_through() + 1).saturating_sub(wanted_from),
            ),
            None => (Vec::new(), 0),
        };
        let reply = message::with_history(&missed, |missed, more| ServerMessage::Resumed {
            client_id: id,
            username: username.as_ref(),
            room_code,
            peer: peer_name.as_ref(),
            peer_connected: peer.is_some_and(|client| client.is_connected()),
            missed,
            more,
            lost,
        });
        if lost > 0 {
            debug!(client = %id, lost, "resumed with messages lost to the storage bounds");
        }
        self.send_all(id, reply);
        if let (Some(peer_name), true) = (&peer_name, peer_read > 0) {
            let receipt = ServerMessage::Read {
                username: peer_name,
                up_to: peer_read,
            };
            self.send(id, receipt.encode());
        }
        if let (Some(code), Some(username)) = (room_code, &username) {
            let notice = ServerMessage::PeerReconnected { username };
            self.send_to_peer(code, id, notice.encode());
        }
        Ok(())
    }

    /// A read receipt: tells the peer how far this member has read. Receipts only move
    /// forward: one that is not past the last is ignored.
    fn read(&mut self, id: ClientId, up_to: u64) -> Result<(), Refusal> {
        let (code, username) = self.membership(id)?;
        let last_id = self.rooms.get(&code).map_or(0, Room::last_id);
        if up_to > last_id {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                format!("`up_to` is {up_to}, but the last message in this room is {last_id}."),
            ));
        }
        let client = self.client_mut(id)?;
        if up_to <= client.read_up_to {
            return Ok(());
        }
        client.read_up_to = up_to;
        let receipt = ServerMessage::Read {
            username: &username,
            up_to,
        };
        self.send_to_peer(code, id, receipt.encode());
        Ok(())
    }

    fn leave_room(&mut self, id: ClientId) -> Result<(), Refusal> {
        let (code, _) = self.membership(id)?;
        self.leave(id, LeaveReason::Left);
        self.send(id, ServerMessage::RoomLeft { room_code: code }.encode());
        Ok(())
    }

    /// A typing timer ran out: the member stopped typing without saying so.
    fn typing_expired(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.typing = None;
        if let Ok((code, username)) = self.membership(id) {
            self.send_to_peer(
                code,
                id,
                ServerMessage::StopTyping {
                    username: &username,
                }
                .encode(),
            );
        }
    }

    /// A client's time to choose a name ran out: it is told why and closed (code 1008, sent by
    /// its write task when it finds its queue closed).
    fn username_overdue(&mut self, id: ClientId) {
        // The timer has fired, so its key is spent: clear it without `DelayQueue::remove`.
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.naming_deadline = None;
        if client.username.is_some() {
            return; // Cannot happen: naming removes the timer. Nothing to do if it did.
        }
        debug!(client = %id, "closing a connection that set no username in time");
        self.metrics.username_timeouts.increment(1);
        let refusal = Refusal::new(
            ErrorCode::UsernameRequired,
            "No username was chosen in time: closing the connection.",
        );
        self.refuse(id, &refusal);
        self.forget(id, Some(&Close::UNNAMED));
    }

    /// If `id` is typing, stops its timer and tells the peer. Does nothing for an idle member.
    fn end_typing(&mut self, id: ClientId) {
        let Some(key) = self
            .clients
            .get_mut(&id)
            .and_then(|client| client.typing.take())
        else {
            return;
        };
        self.typing_timers.remove(&key);
        if let Ok((code, username)) = self.membership(id) {
            self.send_to_peer(
                code,
                id,
                ServerMessage::StopTyping {
                    username: &username,
                }
                .encode(),
            );
        }
    }

    /// Takes `id` out of its room, if it is in one: typing ends first, then the member who stays
    /// gets `peer_left` and becomes the host, or the room is deleted if nobody stays.
    fn leave(&mut self, id: ClientId, reason: LeaveReason) {
        let Ok((code, username)) = self.membership(id) else {
            return;
        };
        self.end_typing(id);
        if let Some(client) = self.clients.get_mut(&id) {
            client.room = None;
            client.read_up_to = 0;
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return;
        };
        match room.remove(id) {
            Some(stays) => {
                // What was said before the one who stays entered is nobody's any more. The rest
                // is its own conversation: kept for its resume, though a joiner will not see it.
                let history_from = self.clients.get(&stays).map_or(0, |c| c.history_from);
                let freed = room.forget_before(history_from);
                self.stored_bytes -= freed;
                let notice = ServerMessage::PeerLeft {
                    username: &username,
                    reason,
                }
                .encode();
                self.send(stays, notice);
            }
            None => {
                if let Some(room) = self.rooms.remove(&code) {
                    self.stored_bytes -= room.stored_bytes();
                }
                self.metrics.rooms.decrement(1.0);
                debug!(room = %code, "room deleted");
            }
        }
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
    }

    /// Sheds stored messages while all rooms together hold more than `--max-stored-bytes`.
    ///
    /// Fairness: the largest rooms are cut down to a common level, oldest messages first, and
    /// no room below that level loses anything, so a few rooms full of long messages cannot
    /// push out everyone else's conversation. Shedding goes a little below the budget (by an
    /// eighth), so that it runs once per many messages rather than on each. A member whose
    /// messages were shed learns it when it resumes (`lost`): never a silent gap.
    fn keep_to_storage_budget(&mut self) {
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
        let Some(budget) = self.max_stored_bytes else {
            return;
        };
        if self.stored_bytes <= budget {
            return;
        }
        let target = budget - budget / 8;
        let mut sizes: Vec<usize> = self.rooms.values().map(Room::stored_bytes).collect();
        let level = level_for(&mut sizes, target);
        let mut shed = 0;
        for room in self.rooms.values_mut() {
            while room.stored_bytes() > level {
                let freed = room.shed_oldest();
                if freed == 0 {
                    break;
                }
                self.stored_bytes -= freed;
                shed += 1;
            }
        }
        warn!(
            shed,
            stored_bytes = self.stored_bytes,
            "over --max-stored-bytes: shed the oldest messages of the largest rooms"
        );
        self.metrics.messages_shed.increment(shed);
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
    }

    /// Sends an `error` to the client that caused it.
    fn refuse(&mut self, id: ClientId, refusal: &Refusal) {
        debug!(client = %id, code = %refusal.code, "request refused");
        self.metrics.error_sent(refusal.code);
        let frame = ServerMessage::Error {
            code: refusal.code,
            message: &refusal.message,
        };
        self.send(id, frame.encode());
    }

    /// Checks that `id` may create or join a room, and returns its name.
    fn check_can_enter_room(&self, id: ClientId) -> Result<Username, Refusal> {
        let client = self.clients.get(&id).ok_or(ErrorCode::InternalError)?;
        let username = client.username.clone().ok_or(ErrorCode::UsernameRequired)?;
        if client.room.is_some() {
            return Err(ErrorCode::AlreadyInRoom.into());
        }
        Ok(username)
    }

    /// The room `id` is in and its name, or `NOT_IN_ROOM`.
    fn membership(&self, id: ClientId) -> Result<(RoomCode, Username), Refusal> {
        let client = self.clients.get(&id).ok_or(ErrorCode::InternalError)?;
        let code = client.room.ok_or(ErrorCode::NotInRoom)?;
        // Joining a room requires a name, and the name cannot change inside a room.
        let username = client.username.clone().ok_or(ErrorCode::InternalError)?;
        Ok((code, username))
    }

    /// A room member's name. Every member has one, so a miss is a bug: `INTERNAL_ERROR`.
    fn username(&self, id: ClientId) -> Result<Username, Refusal> {
        let client = self.clients.get(&id).ok_or(ErrorCode::InternalError)?;
        Ok(client.username.clone().ok_or(ErrorCode::InternalError)?)
    }

    fn client_mut(&mut self, id: ClientId) -> Result<&mut Client, Refusal> {
        Ok(self.clients.get_mut(&id).ok_or(ErrorCode::InternalError)?)
    }

    fn room_mut(&mut self, code: RoomCode) -> Result<&mut Room, Refusal> {
        Ok(self.rooms.get_mut(&code).ok_or(ErrorCode::InternalError)?)
    }

    /// Queues `frame` for the other member of room `code`, if there is one.
    fn send_to_peer(&mut self, code: RoomCode, id: ClientId, frame: Utf8Bytes) {
        if let Some(peer) = self.rooms.get(&code).and_then(|room| room.peer_of(id)) {
            self.send(peer, frame);
        }
    }

    /// Queues `frame` for one client without waiting. A full queue marks the client as too slow;
    /// it is disconnected when the current event is done.
    fn send(&mut self, to: ClientId, frame: Utf8Bytes) {
        let Some(client) = self.clients.get(&to) else {
            return;
        };
        match client.send(frame) {
            Ok(()) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
            // The handler has ended; its `Disconnect` is already on the way.
            Err(SendError::Disconnected) => {}
        }
    }

    /// Queues frames that belong together for one client, as one item: a message that carries
    /// a history, and the rest of the history after it.
    fn send_all(&mut self, to: ClientId, mut frames: Vec<Utf8Bytes>) {
        if frames.len() == 1 {
            if let Some(frame) = frames.pop() {
                self.send(to, frame);
            }
            return;
        }
        let Some(client) = self.clients.get(&to) else {
            return;
        };
        match client.send_batch(frames) {
            Ok(()) | Err(SendError::Disconnected) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
        }
    }

    /// Disconnects every client found too slow. Telling their peers may find more, so loop.
    fn disconnect_slow_consumers(&mut self) {
        while let Some(id) = self.too_slow.pop() {
            if self
                .clients
                .get(&id)
                .is_some_and(|client| client.is_connected())
            {
                warn!(client = %id, "disconnecting a slow consumer: its outbound queue is full");
                self.metrics.slow_consumers.increment(1);
                // Closing the client's queue ends its connection: the write task sends what is
                // queued, then the close frame. Like any lost connection, a room member may
                // still `resume`.
                self.connection_lost(id, Some(&Close::TOO_SLOW));
            }
        }
    }
}

/// Who is where in the actor, copied out for tests ([`ChatServer::snapshot`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every connected client.
    pub clients: HashMap<ClientId, ClientView>,
    /// Every live room.
    pub rooms: HashMap<RoomCode, RoomView>,
}

/// One client in a [`Snapshot`].
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// Its name, if it has set one.
    pub username: Option<String>,
    /// Its room, if it is in one.
    pub room: Option<RoomCode>,
    /// Whether it is typing.
    pub typing: bool,
}

/// One room in a [`Snapshot`].
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    /// The host.
    pub host: ClientId,
    /// The guest, if there is one.
    pub guest: Option<ClientId>,
    /// The ids of the messages in its history, oldest first.
    pub history: Vec<u64>,
}

/// The highest level such that rooms of the given sizes, each cut down to at most that level,
/// hold at most `target` bytes together ("water-filling"). Sorts `sizes`.
fn level_for(sizes: &mut [usize], target: usize) -> usize {
    sizes.sort_unstable();
    // Raise the level room by room, smallest first: below the level a room keeps everything,
    // above it every room is cut to the level.
    let mut below = 0; // bytes of the rooms entirely under the level
    for (index, &size) in sizes.iter().enumerate() {
        let above = sizes.len() - index;
        if below + size * above > target {
            return (target - below) / above;
        }
        below += size;
    }
    usize::MAX
}

/// Now, in milliseconds since the Unix epoch, as chat timestamps are.
fn unix_millis() -> u64 {
    // A clock set before 1970 is not worth failing a chat message for: it reads as 0.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outbound;
    use serde_json::Value;
    use tokio::time::Instant;

    /// The address every test client connects from.
    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A client of the actor without a socket: its id, the receiving end of its queue, and the
    /// session token its `connected` gave.
    struct Peer {
        id: ClientId,
        inbox: outbox::Receiver,
        token: String,
    }

    impl Peer {
        /// The next queued message, which must be there already.
        fn next(&mut self) -> Value {
            decode(self.inbox.try_recv().expect("a queued message"))
        }

        /// The next message, waiting for it.
        async fn wait(&mut self) -> Value {
            decode(self.inbox.recv().await.expect("the queue is open"))
        }

        fn is_idle(&mut self) -> bool {
            self.inbox.try_recv().is_err()
        }
    }

    /// A queued message as JSON; a close request as `{"close": code}`.
    fn decode(item: Outbound) -> Value {
        match item {
            Outbound::Message(frame) => serde_json::from_str(&frame).expect("JSON"),
            Outbound::Batch(_) => panic!("a batch where one message was expected"),
            Outbound::Close(close) => serde_json::json!({ "close": close.code }),
        }
    }

    /// Protocol v1: no resume grace, so a lost connection is `peer_left` at once.
    fn v1() -> Config {
        Config {
            resume_grace: Duration::ZERO,
            ..Config::default()
        }
    }

    fn actor(config: Config) -> (ChatServer, ChatServerHandle) {
        ChatServer::new(&config, Arc::new(Metrics::new()))
    }

    /// A new connection, greeted with `connected`.
    fn connect_unnamed(server: &mut ChatServer) -> Peer {
        let (outbound, inbox) = outbox::channel(server.outbound_queue());
        let id = ClientId::new();
        server.handle(ServerCommand::Connect {
            client_id: id,
            address: LOCALHOST,
            outbound,
        });
        let mut peer = Peer {
            id,
            inbox,
            token: String::new(),
        };
        let connected = peer.next();
        assert_eq!(connected["type"], "connected");
        peer.token = connected["session_token"]
            .as_str()
            .expect("a token")
            .to_string();
        peer
    }

    fn connect(server: &mut ChatServer, name: &str) -> Peer {
        let mut peer = connect_unnamed(server);
        request(
            server,
            &peer,
            ClientMessage::SetUsername {
                username: name.into(),
            },
        );
        assert_eq!(peer.next()["type"], "username_set");
        peer
    }

    fn request(server: &mut ChatServer, peer: &Peer, request: ClientMessage) {
        server.handle(ServerCommand::Request {
            client_id: peer.id,
            request,
        });
    }

    /// Two clients in one room; returns (host, guest, code).
    fn pair(server: &mut ChatServer) -> (Peer, Peer, String) {
        let mut host = connect(server, "ada");
        request(server, &host, ClientMessage::CreateRoom);
        let code = host.next()["room_code"].as_str().expect("code").to_string();
        let mut guest = connect(server, "grace");
        request(
            server,
            &guest,
            ClientMessage::JoinRoom {
                room_code: code.clone(),
            },
        );
        assert_eq!(guest.next()["type"], "room_joined");
        assert_eq!(host.next()["type"], "peer_joined");
        (host, guest, code)
    }

    /// Rooms come and go with their members: the last one out deletes the room, and a
    /// disconnect forgets the client.
    // A runtime, because the actor's timers need one even when nothing awaits them.
    #[tokio::test]
    async fn rooms_and_clients_are_forgotten_when_empty() {
        let (mut server, _handle) = actor(v1());
        let (host, guest, _) = pair(&mut server);
        assert_eq!((server.client_count(), server.room_count()), (2, 1));
        server.handle(ServerCommand::Disconnect { client_id: host.id });
        assert_eq!((server.client_count(), server.room_count()), (1, 1));
        server.handle(ServerCommand::Disconnect {
            client_id: guest.id,
        });
        assert_eq!((server.client_count(), server.room_count()), (0, 0));
    }

    /// A second `Disconnect` for the same client, or requests from a forgotten client, change
    /// nothing and send nothing.
    // A runtime, because the actor's timers need one even when nothing awaits them.
    #[tokio::test]
    async fn a_forgotten_client_is_ignored() {
        let (mut server, _handle) = actor(v1());
        let (host, mut guest, _) = pair(&mut server);
        server.handle(ServerCommand::Disconnect { client_id: host.id });
        assert_eq!(guest.next()["reason"], "disconnected");
        server.handle(ServerCommand::Disconnect { client_id: host.id });
        request(
            &mut server,
            &host,
            ClientMessage::Chat {
                content: "ghost".into(),
            },
        );
        assert!(guest.is_idle());
        assert_eq!((server.client_count(), server.room_count()), (1, 1));
    }

    /// A member whose queue is full is disconnected after the event that filled it, and its
    /// peer is told; the peer's own messages are unaffected.
    // A runtime, because the actor's timers need one even when nothing awaits them.
    #[tokio::test]
    async fn a_full_queue_disconnects_the_slow_member_only() {
        let (mut server, _handle) = actor(Config {
            outbound_queue: 2,
            ..v1()
        });
        let (mut host, guest, _) = pair(&mut server);
        // The guest never reads. Two messages fill its queue; the third overflows it.
        for n in 0..3 {
            request(
                &mut server,
                &host,
                ClientMessage::Chat {
                    content: format!("m{n}"),
                },
            );
            server.disconnect_slow_consumers();
            assert_eq!(host.next()["type"], "chat");
        }
        assert_eq!(host.next()["reason"], "disconnected");
        assert_eq!((server.client_count(), server.room_count()), (1, 1));
        drop(guest);
    }

    /// A session resumed elsewhere closes its old connection with 4000 even when that
    /// connection's queue is full, after what was queued.
    #[tokio::test]
    async fn a_takeover_closes_a_full_queue_with_4000() {
        let (mut server, _handle) = actor(Config {
            outbound_queue: 2,
            ..Config::default()
        });
        let (mut host, mut guest, _) = pair(&mut server);
        // The guest's old connection reads nothing: two chats fill its queue.
        for n in 0..2 {
            let content = format!("m{n}");
            request(&mut server, &host, ClientMessage::Chat { content });
            assert_eq!(host.next()["type"], "chat");
        }
        let mut new_guest = connect_unnamed(&mut server);
        let resume = ClientMessage::Resume {
            session_token: guest.token.clone(),
            last_id: 0,
        };
        request(&mut server, &new_guest, resume);
        assert_eq!(new_guest.next()["type"], "resumed");
        assert_eq!(host.next()["type"], "peer_reconnected");
        assert_eq!(guest.next()["content"], "m0");
        assert_eq!(guest.next()["content"], "m1");
        assert_eq!(guest.next(), serde_json::json!({ "close": 4000 }));
        assert!(matches!(
            guest.inbox.try_recv(),
            Err(outbox::TryRecvError::Disconnected)
        ));
    }

    /// A member whose connection drops keeps its seat for exactly the grace period: the peer
    /// hears `peer_disconnected` at once and `peer_left` when the grace ends, and the session
    /// is then forgotten.
    #[tokio::test(start_paused = true)]
    async fn a_held_seat_is_given_up_when_the_grace_ends() {
        let grace = Duration::from_secs(30);
        let (mut server, handle) = actor(Config {
            resume_grace: grace,
            ..Config::default()
        });
        let (host, mut guest, _) = pair(&mut server);
        tokio::spawn(server.run());

        let started = Instant::now();
        let lost = ServerCommand::Disconnect { client_id: host.id };
        handle.send(lost).await.expect("actor runs");
        assert_eq!(guest.wait().await["type"], "peer_disconnected");
        let left = guest.wait().await;
        assert_eq!(
            (left["type"].as_str(), left["reason"].as_str()),
            (Some("peer_left"), Some("disconnected"))
        );
        assert_eq!(started.elapsed(), grace);
    }

    /// `--username-timeout 0s` turns the limit off: a client may stay unnamed for as long as it
    /// likes, and names itself whenever it wants.
    #[tokio::test(start_paused = true)]
    async fn a_zero_username_timeout_is_no_limit() {
        let (mut server, handle) = actor(Config {
            username_timeout: Duration::ZERO,
            ..Config::default()
        });
        let mut idle = connect_unnamed(&mut server);
        tokio::spawn(server.run());
        tokio::time::sleep(Duration::from_secs(24 * 60 * 60)).await;
        let name = ClientMessage::SetUsername {
            username: "ada".into(),
        };
        let request = ServerCommand::Request {
            client_id: idle.id,
            request: name,
        };
        handle.send(request).await.expect("actor runs");
        assert_eq!(idle.wait().await["type"], "username_set");
    }

    /// A typing member produces `stop_typing` for the peer exactly one typing timeout after its
    /// last `typing`; a repeated `typing` pushes the deadline back.
    #[tokio::test(start_paused = true)]
    async fn typing_expires_one_timeout_after_the_last_typing() {
        let timeout = Duration::from_secs(5);
        let (mut server, handle) = actor(Config {
            typing_timeout: timeout,
            ..Config::default()
        });
        let (host, mut guest, _) = pair(&mut server);
        tokio::spawn(server.run());

        let started = Instant::now();
        let typing = |id| ServerCommand::Request {
            client_id: id,
            request: ClientMessage::Typing,
        };
        handle.send(typing(host.id)).await.expect("actor runs");
        assert_eq!(guest.wait().await["type"], "typing");
        tokio::time::sleep(Duration::from_secs(4)).await;
        handle.send(typing(host.id)).await.expect("actor runs");

        // Time is paused: it jumps straight to the next timer, which must be the renewed one.
        assert_eq!(guest.wait().await["type"], "stop_typing");
        assert_eq!(started.elapsed(), Duration::from_secs(9));
    }

    /// The rate limit refills with time: once the burst is spent a message is refused with
    /// `RATE_LIMITED`, and one token later the next is handled again.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_refills_with_time() {
        let (mut server, _handle) = actor(Config {
            rate_limit: 2,
            rate_burst: 2,
            ..Config::default()
        });
        // `set_username` takes the first token.
        let mut ada = connect(&mut server, "ada");
        request(&mut server, &ada, ClientMessage::Typing);
        assert_eq!(ada.next()["code"], "NOT_IN_ROOM");
        request(&mut server, &ada, ClientMessage::Typing);
        assert_eq!(ada.next()["code"], "RATE_LIMITED");
        tokio::time::advance(Duration::from_millis(499)).await;
        request(&mut server, &ada, ClientMessage::Typing);
        assert_eq!(ada.next()["code"], "RATE_LIMITED");
        tokio::time::advance(Duration::from_millis(1)).await;
        request(&mut server, &ada, ClientMessage::Typing);
        assert_eq!(ada.next()["code"], "NOT_IN_ROOM");
        assert!(ada.is_idle());
    }

    /// Failed joins are allowed at `max_failed_joins` a minute: the allowance comes back a
    /// little at a time, not all at once at the end of the minute.
    #[tokio::test(start_paused = true)]
    async fn failed_joins_come_back_over_a_minute() {
        let (mut server, _handle) = actor(Config {
            max_failed_joins: 2,
            ..Config::default().unlimited()
        });
        let mut ada = connect(&mut server, "ada");
        let mut join = |ada: &mut Peer| {
            request(
                &mut server,
                ada,
                ClientMessage::JoinRoom {
                    room_code: "ABCDEF".into(),
                },
            );
            ada.next()["code"].clone()
        };
        assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
        assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
        assert_eq!(join(&mut ada), "RATE_LIMITED");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
        assert_eq!(join(&mut ada), "RATE_LIMITED");
    }
}
