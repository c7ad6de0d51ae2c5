//! The `ChatServer` actor: the one owner of all chat state.
//!
//! Every connection handler talks to the actor through a cloneable [`ChatServerHandle`], which
//! wraps the sending side of one bounded mpsc channel of [`ServerCommand`]s. The actor takes the
//! commands one at a time, so each rule is applied to a consistent view of all clients and rooms
//! without a single lock. It answers by queueing encoded messages on each client's own outbound
//! channel, never by waiting for a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::DelayQueue;
use tracing::{debug, warn};

use crate::client::Client;
use crate::config::Config;
use crate::error::{AppError, ErrorCode, Refusal, SendError};
use crate::message::{ClientMessage, LeaveReason, ServerMessage};
use crate::metrics::Metrics;
use crate::room::Room;
use crate::types::{ClientId, RoomCode, Username};

/// How many commands may wait for the actor. When it is full, handlers wait to send, which in
/// turn stops them reading their sockets: back-pressure reaches the clients that send the most.
const COMMAND_QUEUE: usize = 1024;

/// The longest chat message, in characters (Unicode scalar values).
pub const MAX_CHAT_CHARS: usize = 4096;

/// What a connection handler can ask of the actor.
#[derive(Debug)]
pub enum ServerCommand {
    /// A WebSocket connection was established. The actor greets it with `connected` on `outbound`.
    Connect {
        client_id: ClientId,
        outbound: mpsc::Sender<Utf8Bytes>,
    },
    /// The connection ended, however it ended. The actor tells the peer and forgets the client.
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
    /// Every connected client, named or not, in a room or not.
    clients: HashMap<ClientId, Client>,
    /// Every live room. A room is removed the moment its last member goes.
    rooms: HashMap<RoomCode, Room>,
    /// One timer per typing member, firing `typing_timeout` after its last `typing`. A single
    /// `DelayQueue` polled by the actor's loop instead of a task per timer: nothing to spawn,
    /// nothing to cancel from outside, and the expiry is handled like any other event.
    typing_timers: DelayQueue<ClientId>,
    /// How long a `typing` lasts without being repeated.
    typing_timeout: Duration,
    /// Capacity of each client's outbound queue.
    outbound_queue: usize,
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
        let server = ChatServer {
            commands: commands_rx,
            clients: HashMap::new(),
            rooms: HashMap::new(),
            typing_timers: DelayQueue::new(),
            typing_timeout: config.typing_timeout,
            outbound_queue: config.outbound_queue.max(1),
            too_slow: Vec::new(),
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
        loop {
            // Two event sources, one at a time: a command from a handler, or a typing timer
            // running out. `DelayQueue::next` yields `None` when no timer is set; the pattern
            // then disables that branch for this turn and we wait for commands alone.
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(expired) = self.typing_timers.next() => {
                    self.typing_expired(expired.into_inner());
                }
            }
            self.disconnect_slow_consumers();
        }
        debug!("all handles dropped; chat server actor stopped");
    }

    /// Applies one command to the state. Public so that the rules can be tested without sockets.
    pub fn handle(&mut self, command: ServerCommand) {
        match command {
            ServerCommand::Connect {
                client_id,
                outbound,
            } => self.connect(client_id, outbound),
            ServerCommand::Disconnect { client_id } => self.disconnect(client_id),
            ServerCommand::Request { client_id, request } => {
                // A client dropped as a slow consumer may still have requests on their way.
                if !self.clients.contains_key(&client_id) {
                    return;
                }
                if let Err(refusal) = self.handle_request(client_id, request) {
                    self.refuse(client_id, &refusal);
                }
            }
            ServerCommand::Reject { client_id, refusal } => self.refuse(client_id, &refusal),
        }
    }

    /// How many clients are connected (for tests and the soak check).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
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
        }
    }

    fn connect(&mut self, id: ClientId, outbound: mpsc::Sender<Utf8Bytes>) {
        debug!(client = %id, "client connected");
        self.clients.insert(id, Client::new(id, outbound));
        self.metrics.connections.increment(1.0);
        self.send(id, ServerMessage::Connected { client_id: id }.encode());
    }

    /// Forgets a client whose connection ended (or that was too slow): its peer is told first.
    fn disconnect(&mut self, id: ClientId) {
        if !self.clients.contains_key(&id) {
            return; // Already gone: a slow consumer's handler reports its end later.
        }
        self.leave(id, LeaveReason::Disconnected);
        self.clients.remove(&id);
        self.metrics.connections.decrement(1.0);
        debug!(client = %id, "client disconnected");
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
        self.client_mut(id)?.room = Some(code);
        self.metrics.rooms.increment(1.0);
        debug!(client = %id, room = %code, "room created");
        self.send(id, ServerMessage::RoomCreated { room_code: code }.encode());
        Ok(())
    }

    fn join_room(&mut self, id: ClientId, input: &str) -> Result<(), Refusal> {
        let joiner_name = self.check_can_enter_room(id)?;
        let code = RoomCode::parse(input)?;
        let room = self.rooms.get(&code).ok_or(ErrorCode::RoomNotFound)?;
        if room.is_full() {
            return Err(ErrorCode::RoomFull.into());
        }
        let host = room.host();
        let host_name = self.username(host)?;
        if host_name == joiner_name {
            return Err(ErrorCode::UsernameTaken.into());
        }

        let welcome = ServerMessage::RoomJoined {
            room_code: code,
            peer: &host_name,
            history: room.history(),
        }
        .encode();
        let announcement = ServerMessage::PeerJoined {
            username: &joiner_name,
        }
        .encode();
        self.room_mut(code)?.admit(id);
        self.client_mut(id)?.room = Some(code);
        debug!(client = %id, room = %code, "room joined");
        self.send(id, welcome);
        self.send(host, announcement);
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
        let message = room.record(from, content, unix_millis());
        let frame = ServerMessage::Chat(message).encode();
        let members = room.members();
        // Encoded once above; each member's queue gets a reference-counted copy of the bytes.
        for member in members {
            self.send(member, frame.clone());
        }
        self.metrics.messages_relayed.increment(1);
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
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return;
        };
        match room.remove(id) {
            Some(stays) => {
                let notice = ServerMessage::PeerLeft {
                    username: &username,
                    reason,
                }
                .encode();
                self.send(stays, notice);
            }
            None => {
                self.rooms.remove(&code);
                self.metrics.rooms.decrement(1.0);
                debug!(room = %code, "room deleted");
            }
        }
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

    /// Disconnects every client found too slow. Telling their peers may find more, so loop.
    fn disconnect_slow_consumers(&mut self) {
        while let Some(id) = self.too_slow.pop() {
            if self.clients.contains_key(&id) {
                warn!(client = %id, "disconnecting a slow consumer: its outbound queue is full");
                self.metrics.slow_consumers.increment(1);
                // Dropping the client drops the queue's sender: its write task sees the queue
                // close and ends the connection.
                self.disconnect(id);
            }
        }
    }
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
    use serde_json::Value;
    use tokio::time::Instant;

    /// A client of the actor without a socket: its id and the receiving end of its queue.
    struct Peer {
        id: ClientId,
        inbox: mpsc::Receiver<Utf8Bytes>,
    }

    impl Peer {
        /// The next queued message, which must be there already.
        fn next(&mut self) -> Value {
            let frame = self.inbox.try_recv().expect("a queued message");
            serde_json::from_str(&frame).expect("JSON")
        }

        /// The next message, waiting for it.
        async fn wait(&mut self) -> Value {
            let frame = self.inbox.recv().await.expect("the queue is open");
            serde_json::from_str(&frame).expect("JSON")
        }

        fn is_idle(&mut self) -> bool {
            self.inbox.try_recv().is_err()
        }
    }

    fn actor(config: Config) -> (ChatServer, ChatServerHandle) {
        ChatServer::new(&config, Arc::new(Metrics::new()))
    }

    fn connect(server: &mut ChatServer, name: &str) -> Peer {
        let (outbound, inbox) = mpsc::channel(server.outbound_queue());
        let id = ClientId::new();
        server.handle(ServerCommand::Connect {
            client_id: id,
            outbound,
        });
        let mut peer = Peer { id, inbox };
        assert_eq!(peer.next()["type"], "connected");
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
    #[test]
    fn rooms_and_clients_are_forgotten_when_empty() {
        let (mut server, _handle) = actor(Config::default());
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
    #[test]
    fn a_forgotten_client_is_ignored() {
        let (mut server, _handle) = actor(Config::default());
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
    #[test]
    fn a_full_queue_disconnects_the_slow_member_only() {
        let (mut server, _handle) = actor(Config {
            outbound_queue: 2,
            ..Config::default()
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
}
