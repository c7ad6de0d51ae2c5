//! Delivery: what each member is told of the events of its room, and how frames reach a client.
//!
//! Every event of a room ([`RoomEvent`]) reaches the node of each of its members, in the room's
//! order, and the node tells its own members what they are to hear of it: a member is not told
//! about itself, nor twice about the same message or event (its `seen_chat` and `seen_event`
//! say how far it has been told, which covers what a joiner's history or a resume's `missed`
//! already gave it), and a member told that its peer is typing is told that this is over
//! before anything that ends it (a message, a departure, a drop, a resume).
//!
//! Frames are queued for a client without ever waiting. A client whose queue is full is marked
//! too slow, and dropped once the current event is done.

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::steps::Then;
use super::{ChatServer, Store};
use crate::error::{Refusal, SendError};
use crate::message::ServerMessage;
use crate::outbox::Close;
use crate::store::{Notice, RoomEvent, Step};
use crate::types::{ClientId, RoomCode, SessionToken};

impl ChatServer {
    /// Tells room `code` something the store does not keep (typing), in order with the room's
    /// steps: through the store, so that the members on other nodes hear it too.
    pub(super) fn publish(&mut self, code: RoomCode, event: RoomEvent) {
        self.perform(Step::Publish { code, event }, Then::Nothing);
    }

    /// Delivers what the last steps told, in the order they told it.
    pub(super) fn deliver_notices(&mut self) {
        // Taken out and put back, so that the buffer's allocation is kept; delivering cannot
        // add notices (it only queues frames and kicks connections).
        let mut notices = std::mem::take(&mut self.notices);
        for notice in notices.drain(..) {
            match notice {
                Notice::Room(code, event) => self.deliver(code, &event),
                Notice::Kick(conn) => self.kick(conn),
            }
        }
        if self.notices.is_empty() {
            self.notices = notices;
        }
    }

    /// Tells this node's members of room `code` what they are to hear of `event`.
    pub(super) fn deliver(&mut self, code: RoomCode, event: &RoomEvent) {
        for member in self.members_here(code).into_iter().flatten() {
            self.tell(member, event);
        }
    }

    /// This node's members of room `code`: at most two.
    pub(super) fn members_here(&self, code: RoomCode) -> [Option<ClientId>; 2] {
        let mut members = [None; 2];
        match &self.store {
            // The seats held by a connection of ours that is up.
            Store::Memory(store) => {
                if let Some(room) = store.room(code) {
                    for (slot, seat) in members.iter_mut().zip(room.seats()) {
                        if seat.conn.node == self.node && seat.is_connected() {
                            *slot = Some(seat.conn.client);
                        }
                    }
                }
            }
            // The connections this node has seen enter the room.
            Store::Redis(_) => {
                if let Some(room) = self.remote.room(code) {
                    for (slot, member) in members.iter_mut().zip(room.members()) {
                        *slot = Some(member);
                    }
                }
            }
        }
        members
    }

    /// Tells `member` what it is to hear of `event`.
    fn tell(&mut self, member: ClientId, event: &RoomEvent) {
        let Some(connection) = self.connections.get_mut(&member) else {
            return;
        };
        if let RoomEvent::Chat {
            id,
            frame,
            token,
            ends_typing,
        } = event
        {
            if *id <= connection.seen_chat {
                return; // In its history or its `missed` already.
            }
            connection.seen_chat = *id;
            // A message recovered after a gap (`remote/heard.rs`) comes without its sender's
            // session: its sender is then known by name, which is unique in a room.
            let own = if *token == SessionToken::NOBODY {
                chat_sender(frame).is_some_and(|from| connection.name.as_ref() == Some(&from))
            } else {
                *token == connection.token
            };
            // A typing member's stop is told before the message it turned into (the message says
            // so: `ends_typing`), even to a peer that joined after the typing began, and so
            // never heard it (as `say` does for `StopTyping`). A peer told of typing is told
            // of its end all the same when the message does not say so: its sender's node went
            // away before it could, or the message was recovered after a gap.
            let peer_was_typing = !own && std::mem::take(&mut connection.peer_typing);
            if (peer_was_typing || (!own && *ends_typing))
                && let Some(name) = chat_sender(frame)
            {
                self.send(
                    member,
                    ServerMessage::StopTyping { username: &name }.encode(),
                );
            }
            self.send(member, frame.clone());
            return;
        }
        if *event.token() == connection.token {
            return; // A member is not told about itself.
        }
        if let Some(seq) = event.seq() {
            if seq <= connection.seen_event {
                return; // In its past already (it joined or resumed after it).
            }
            connection.seen_event = seq;
        }
        self.say(member, event);
    }

    /// Tells `member` of `event`, an event about its peer, whatever it was told before.
    pub(super) fn say(&mut self, member: ClientId, event: &RoomEvent) {
        let Some(connection) = self.connections.get_mut(&member) else {
            return;
        };
        let frame = match event {
            RoomEvent::Typing { name, .. } => {
                if std::mem::replace(&mut connection.peer_typing, true) {
                    return; // It knows already.
                }
                ServerMessage::Typing { username: name }.encode()
            }
            RoomEvent::StopTyping { name, .. } => {
                // Sent even to a member that joined after its peer started typing, and so never
                // heard `typing`: the rule is that a typing member's stop is always told.
                connection.peer_typing = false;
                ServerMessage::StopTyping { username: name }.encode()
            }
            RoomEvent::Joined { name, .. } => {
                connection.peer_typing = false;
                ServerMessage::PeerJoined { username: name }.encode()
            }
            RoomEvent::Left { name, .. }
            | RoomEvent::Disconnected { name, .. }
            | RoomEvent::Reconnected { name, .. } => {
                // Typing ends before the peer goes or comes back: its node says so first, and
                // this covers a node that went away before it could.
                if std::mem::take(&mut connection.peer_typing) {
                    self.send(
                        member,
                        ServerMessage::StopTyping { username: name }.encode(),
                    );
                }
                match event {
                    RoomEvent::Left { reason, .. } => ServerMessage::PeerLeft {
                        username: name,
                        reason: *reason,
                    },
                    RoomEvent::Disconnected { .. } => {
                        ServerMessage::PeerDisconnected { username: name }
                    }
                    _ => ServerMessage::PeerReconnected { username: name },
                }
                .encode()
            }
            RoomEvent::Read { name, up_to, .. } => ServerMessage::Read {
                username: name,
                up_to: *up_to,
            }
            .encode(),
            RoomEvent::Chat { .. } => return,
        };
        self.send(member, frame);
    }

    /// Sends an `error` to the client that caused it.
    pub(super) fn refuse(&mut self, id: ClientId, refusal: &Refusal) {
        debug!(client = %id, code = %refusal.code, "request refused");
        self.metrics.error_sent(refusal.code);
        let frame = ServerMessage::Error {
            code: refusal.code,
            message: &refusal.message,
        };
        self.send(id, frame.encode());
    }

    /// Queues `frame` for one client without waiting. A full queue marks the client as too slow;
    /// it is disconnected when the current event is done.
    pub(super) fn send(&mut self, to: ClientId, frame: Utf8Bytes) {
        let Some(connection) = self.connections.get(&to) else {
            return;
        };
        match connection.send(frame) {
            Ok(()) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
            // The handler has ended; its `Disconnect` is already on the way.
            Err(SendError::Disconnected) => {}
        }
    }

    /// Queues frames that belong together for one client, as one item: a message that carries
    /// a history, and the rest of the history after it.
    pub(super) fn send_all(&mut self, to: ClientId, mut frames: Vec<Utf8Bytes>) {
        if frames.len() == 1 {
            if let Some(frame) = frames.pop() {
                self.send(to, frame);
            }
            return;
        }
        let Some(connection) = self.connections.get(&to) else {
            return;
        };
        match connection.send_batch(frames) {
            Ok(()) | Err(SendError::Disconnected) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
        }
    }

    /// Disconnects every client found too slow. Telling their peers may find more, so loop.
    pub(super) fn disconnect_slow_consumers(&mut self) {
        while let Some(id) = self.too_slow.pop() {
            if self.connections.contains_key(&id) {
                warn!(client = %id, "disconnecting a slow consumer: its outbound queue is full");
                self.metrics.slow_consumers.increment(1);
                // Closing the client's queue ends its connection: the write task sends what is
                // queued, then the close frame. Like any lost connection, a room member may
                // still `resume`.
                self.close_connection(id, &Close::TOO_SLOW, self.resume_grace);
            }
        }
    }
}

/// The sender's name of a `chat` frame, read back from its JSON. Only needed for a message that
/// ended its sender's typing, which a person's typing spells out at typing speed.
pub(super) fn chat_sender(frame: &str) -> Option<crate::types::Username> {
    #[derive(serde::Deserialize)]
    struct From<'a> {
        from: &'a str,
    }
    let from: From = serde_json::from_str(frame).ok()?;
    crate::types::Username::parse(from.from).ok()
}
